"""The DERP handshake's cryptography and JSON: ClientInfo and ServerInfo in NaCl boxes.

After the ServerKey frame the client seals its ClientInfo JSON to the server's key
(X25519 + XSalsa20-Poly1305, wire form ``nonce ‖ tag ‖ ciphertext``); opening it proves the
client holds the private key of the node key it claims. The server answers with ServerInfo
sealed the other way. Pure functions; the state machine in ``connection.py`` calls them.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from headscale_derp.frames import (
    KEY_LEN,
    NONCE_LEN,
    PROTOCOL_VERSION,
    ClientInfoFrame,
    RemoteProtocolError,
    ServerInfoFrame,
    ServerKey,
)


class HandshakeError(RemoteProtocolError):
    """The peer's handshake frame cannot be opened or read; close without answering."""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a client says about itself (Go's ``derp.ClientInfo``)."""

    version: int = PROTOCOL_VERSION
    mesh_key: str = ""
    can_ack_pings: bool = True
    is_prober: bool = False
    app_name: str = ""

    def to_json(self) -> bytes:
        body: dict[str, Any] = {}
        if self.mesh_key:
            body["meshKey"] = self.mesh_key
        if self.version:
            body["version"] = self.version
        body["CanAckPings"] = self.can_ack_pings
        if self.is_prober:
            body["IsProber"] = True
        if self.app_name:
            body["AppName"] = self.app_name
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ClientInfo:
        # Go decodes JSON keys case-insensitively and ignores unknown ones; so do we.
        fields = _lower_keys(raw, "ClientInfo")
        try:
            return cls(
                version=int(fields.get("version", 0)),
                mesh_key=str(fields.get("meshkey", "")),
                can_ack_pings=bool(fields.get("canackpings", False)),
                is_prober=bool(fields.get("isprober", False)),
                app_name=str(fields.get("appname", "")),
            )
        except (TypeError, ValueError) as exc:
            raise HandshakeError(f"ClientInfo JSON has a field of the wrong type: {exc}") from exc

    def mesh_key_matches(self, mesh_key: str) -> bool:
        """Constant-time comparison with the server's mesh key (empty never matches)."""
        return bool(mesh_key) and hmac.compare_digest(self.mesh_key.encode(), mesh_key.encode())


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server tells the client; a non-zero token bucket makes the client rate-limit."""

    version: int = PROTOCOL_VERSION
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"version": self.version}
        if self.token_bucket_bytes_per_second:
            body["TokenBucketBytesPerSecond"] = self.token_bucket_bytes_per_second
        if self.token_bucket_bytes_burst:
            body["TokenBucketBytesBurst"] = self.token_bucket_bytes_burst
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ServerInfo:
        fields = _lower_keys(raw, "ServerInfo")
        try:
            return cls(
                int(fields.get("version", 0)),
                int(fields.get("tokenbucketbytespersecond", 0)),
                int(fields.get("tokenbucketbytesburst", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise HandshakeError(f"ServerInfo JSON has a field of the wrong type: {exc}") from exc


def _lower_keys(raw: bytes, what: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HandshakeError(f"{what} box holds invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HandshakeError(f"{what} JSON is a {type(body).__name__}, not an object")
    return {str(k).lower(): v for k, v in body.items()}


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of a raw 32-byte private scalar."""
    return bytes(PrivateKey(private_key).public_key)


def generate_private_key() -> bytes:
    return bytes(PrivateKey.generate())


def _box(private_key: bytes, peer_key: bytes) -> Box:
    if len(peer_key) != KEY_LEN:
        raise HandshakeError(f"peer key of {len(peer_key)} bytes, want {KEY_LEN}")
    return Box(PrivateKey(private_key), PublicKey(peer_key))


def server_key_frame(server_private_key: bytes) -> ServerKey:
    return ServerKey(public_key(server_private_key))


def seal_client_info(
    client_private_key: bytes, server_key: bytes, info: ClientInfo, nonce: bytes | None = None
) -> ClientInfoFrame:
    sealed = _box(client_private_key, server_key).encrypt(info.to_json(), nonce or random(NONCE_LEN))
    return ClientInfoFrame(public_key(client_private_key), bytes(sealed))


def open_client_info(server_private_key: bytes, frame: ClientInfoFrame) -> ClientInfo:
    """Open a client's box; ``HandshakeError`` if it was not sealed for this server's key."""
    try:
        raw = _box(server_private_key, frame.client_key).decrypt(frame.sealed)
    except CryptoError as exc:
        raise HandshakeError(
            f"ClientInfo box from nodekey:{frame.client_key.hex()} does not open with this server's "
            "key: the client holds another server key or a corrupt frame"
        ) from exc
    return ClientInfo.from_json(raw)


def seal_server_info(
    server_private_key: bytes, client_key: bytes, info: ServerInfo, nonce: bytes | None = None
) -> ServerInfoFrame:
    sealed = _box(server_private_key, client_key).encrypt(info.to_json(), nonce or random(NONCE_LEN))
    return ServerInfoFrame(bytes(sealed))


def open_server_info(client_private_key: bytes, server_key: bytes, frame: ServerInfoFrame) -> ServerInfo:
    try:
        raw = _box(client_private_key, server_key).decrypt(frame.sealed)
    except CryptoError as exc:
        raise HandshakeError(
            f"ServerInfo box does not open with server key {server_key.hex()}: wrong server or corrupt frame"
        ) from exc
    return ServerInfo.from_json(raw)
