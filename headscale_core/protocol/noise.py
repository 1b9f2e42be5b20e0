"""ts2021 Noise layer: the IK handshake, transport records and the early payload (sans-IO).

Data path: ``server/ts2021`` hands the 101-byte initiation from ``X-Tailscale-Handshake`` to
``NoiseResponder.respond``, writes the 51-byte response it returns, and from then on every byte
of the connection goes through the returned ``NoiseTransport``: ``receive_data`` turns records
into plaintext for HTTP/2, ``encrypt`` turns HTTP/2 output into records. ``NoiseInitiator`` is the
client side, used by the test client and the load generator.

Two details differ from a stock Noise library: transport nonces are 4 zero bytes followed by a
*big-endian* 64-bit counter, and records carry a 3-byte header (type 0x04, BE16 length) with at
most 4096 bytes in total.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from headscale_core.protocol.errors import LocalProtocolError, RemoteProtocolError
from headscale_core.protocol.keys import MachinePublic, x25519

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 0x01
MSG_RESPONSE = 0x02
MSG_ERROR = 0x03
MSG_RECORD = 0x04

INITIATION_SIZE = 101
INITIATION_PAYLOAD_SIZE = 96
RESPONSE_SIZE = 51
RESPONSE_PAYLOAD_SIZE = 48
TAG_SIZE = 16
RECORD_HEADER_SIZE = 3
MAX_RECORD_SIZE = 4096
MAX_CIPHERTEXT_SIZE = MAX_RECORD_SIZE - RECORD_HEADER_SIZE
MAX_PLAINTEXT_SIZE = MAX_CIPHERTEXT_SIZE - TAG_SIZE

EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"
EARLY_PAYLOAD_HEADER_SIZE = 9
MAX_EARLY_PAYLOAD_SIZE = 10 << 20

_INITIAL_HASH = hashlib.blake2s(PROTOCOL_NAME).digest()
_ZERO_NONCE = bytes(12)
_NONCE = struct.Struct(">4xQ")
_RECORD_HEADER = struct.Struct(">BH")
_INITIATION_HEADER = struct.Struct(">HBH")
_MAX_NONCE = (1 << 64) - 1


class HandshakeError(RemoteProtocolError):
    """The peer's handshake message is unacceptable.

    ``error_frame`` holds the bytes to send back (a type 0x03 frame naming the problem), or is
    None when the connection should just be closed (a decryption failure gets no hint).
    """

    def __init__(self, message: str, *, error_frame: bytes | None = None) -> None:
        super().__init__(message)
        self.error_frame = error_frame


def error_frame(message: str) -> bytes:
    """A cleartext handshake error frame: 0x03, BE16 length, UTF-8 message."""
    body = message.encode()[:0xFFFF]
    return _RECORD_HEADER.pack(MSG_ERROR, len(body)) + body


def _hkdf2(chaining_key: bytes, material: bytes) -> tuple[bytes, bytes]:
    prk = hmac.digest(chaining_key, material, hashlib.blake2s)
    first = hmac.digest(prk, b"\x01", hashlib.blake2s)
    return first, hmac.digest(prk, first + b"\x02", hashlib.blake2s)


def _load_or_generate(private: bytes | None) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(private) if private else X25519PrivateKey.generate()


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


class _SymmetricState:
    """Noise's h/ck pair; each ``mix_dh`` returns the one-shot cipher for the next AEAD step."""

    __slots__ = ("h", "ck")

    def __init__(self, capver: int, responder_static: bytes) -> None:
        self.h = self.ck = _INITIAL_HASH
        self.mix_hash(PROLOGUE_PREFIX + str(capver).encode())
        self.mix_hash(responder_static)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.blake2s(self.h + data).digest()

    def mix_dh(self, private: X25519PrivateKey, public: bytes) -> ChaCha20Poly1305:
        self.ck, key = _hkdf2(self.ck, x25519(private, public))
        return ChaCha20Poly1305(key)

    def encrypt_and_hash(self, cipher: ChaCha20Poly1305, plaintext: bytes) -> bytes:
        sealed = cipher.encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(sealed)
        return sealed

    def decrypt_and_hash(self, cipher: ChaCha20Poly1305, sealed: bytes) -> bytes:
        plaintext = cipher.decrypt(_ZERO_NONCE, sealed, self.h)
        self.mix_hash(sealed)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


@dataclass(frozen=True)
class HandshakeResult:
    """What a completed server-side handshake yields."""

    response: bytes
    machine_key: MachinePublic
    capver: int
    transport: NoiseTransport
    handshake_hash: bytes


class NoiseResponder:
    """The server side of the handshake; one instance serves every connection for a key."""

    def __init__(self, static_private: bytes) -> None:
        self._private = X25519PrivateKey.from_private_bytes(static_private)
        self.static_public = _public_bytes(self._private)

    def respond(self, initiation: bytes, *, ephemeral_private: bytes | None = None) -> HandshakeResult:
        """Check and answer a 101-byte initiation; raise ``HandshakeError`` if it is bad.

        ``ephemeral_private`` is for reproducible test vectors only.
        """
        if len(initiation) != INITIATION_SIZE:
            raise HandshakeError(
                f"handshake initiation is {len(initiation)} bytes, expected {INITIATION_SIZE}",
                error_frame=error_frame("wrong handshake initiation size"),
            )
        capver, msg_type, length = _INITIATION_HEADER.unpack_from(initiation)
        if msg_type != MSG_INITIATION:
            raise HandshakeError(
                f"handshake message type {msg_type:#04x}, expected {MSG_INITIATION:#04x}",
                error_frame=error_frame("unexpected handshake message type"),
            )
        if length != INITIATION_PAYLOAD_SIZE:
            raise HandshakeError(
                f"handshake initiation length field {length}, expected {INITIATION_PAYLOAD_SIZE}",
                error_frame=error_frame("wrong handshake initiation length"),
            )
        client_ephemeral = initiation[5:37]
        state = _SymmetricState(capver, self.static_public)
        try:
            state.mix_hash(client_ephemeral)
            cipher = state.mix_dh(self._private, client_ephemeral)
            machine_public = state.decrypt_and_hash(cipher, initiation[37:85])
            cipher = state.mix_dh(self._private, machine_public)
            state.decrypt_and_hash(cipher, initiation[85:101])
        except (InvalidTag, ValueError) as exc:
            raise HandshakeError(f"handshake initiation does not decrypt: {exc or 'bad tag'}") from None

        ephemeral = _load_or_generate(ephemeral_private)
        ephemeral_public = _public_bytes(ephemeral)
        state.mix_hash(ephemeral_public)
        state.mix_dh(ephemeral, client_ephemeral)
        try:
            cipher = state.mix_dh(ephemeral, machine_public)
        except ValueError as exc:
            raise HandshakeError(f"client machine key is unusable: {exc}") from None
        tag = state.encrypt_and_hash(cipher, b"")
        client_to_server, server_to_client = state.split()
        response = _RECORD_HEADER.pack(MSG_RESPONSE, RESPONSE_PAYLOAD_SIZE) + ephemeral_public + tag
        return HandshakeResult(
            response=response,
            machine_key=MachinePublic(machine_public),
            capver=capver,
            transport=NoiseTransport(send_key=server_to_client, receive_key=client_to_server),
            handshake_hash=state.h,
        )


class NoiseInitiator:
    """The client side: ``initiation`` to send, then feed the server's bytes to ``receive_data``."""

    def __init__(
        self,
        machine_private: bytes,
        server_public: bytes,
        capver: int,
        *,
        ephemeral_private: bytes | None = None,
    ) -> None:
        if not 0 <= capver <= 0xFFFF:
            raise LocalProtocolError(f"capver {capver} does not fit the 16-bit handshake header")
        self.capver = capver
        self._machine_private = X25519PrivateKey.from_private_bytes(machine_private)
        self._ephemeral = _load_or_generate(ephemeral_private)
        self._state = _SymmetricState(capver, server_public)
        ephemeral_public = _public_bytes(self._ephemeral)
        self._state.mix_hash(ephemeral_public)
        cipher = self._state.mix_dh(self._ephemeral, server_public)
        sealed_machine = self._state.encrypt_and_hash(cipher, _public_bytes(self._machine_private))
        cipher = self._state.mix_dh(self._machine_private, server_public)
        tag = self._state.encrypt_and_hash(cipher, b"")
        header = _INITIATION_HEADER.pack(capver, MSG_INITIATION, INITIATION_PAYLOAD_SIZE)
        self.initiation = header + ephemeral_public + sealed_machine + tag
        self.unused_data = b""
        self.handshake_hash = b""
        self._buffer = b""

    def receive_data(self, data: bytes) -> NoiseTransport | None:
        """Buffer the server's reply; return the transport once the handshake is complete.

        Bytes past the response are left in ``unused_data`` (they are already transport
        records). A server error frame raises ``HandshakeError`` with the server's message.
        """
        self._buffer += data
        if len(self._buffer) < RECORD_HEADER_SIZE:
            return None
        msg_type, length = _RECORD_HEADER.unpack_from(self._buffer)
        if msg_type == MSG_ERROR:
            if len(self._buffer) < RECORD_HEADER_SIZE + length:
                return None
            message = self._buffer[3 : 3 + length].decode(errors="replace")
            raise HandshakeError(f"server error: {message!r}")
        if msg_type != MSG_RESPONSE or length != RESPONSE_PAYLOAD_SIZE:
            raise HandshakeError(
                f"unexpected handshake response header: type {msg_type:#04x}, length {length}"
            )
        if len(self._buffer) < RESPONSE_SIZE:
            return None
        response, self.unused_data = self._buffer[:RESPONSE_SIZE], self._buffer[RESPONSE_SIZE:]
        server_ephemeral = response[3:35]
        state = self._state
        try:
            state.mix_hash(server_ephemeral)
            state.mix_dh(self._ephemeral, server_ephemeral)
            cipher = state.mix_dh(self._machine_private, server_ephemeral)
            state.decrypt_and_hash(cipher, response[35:51])
        except (InvalidTag, ValueError) as exc:
            raise HandshakeError(f"handshake response does not decrypt: {exc or 'bad tag'}") from None
        client_to_server, server_to_client = state.split()
        self.handshake_hash = state.h
        return NoiseTransport(send_key=client_to_server, receive_key=server_to_client)


class NoiseTransport:
    """Encrypts and decrypts transport records for one connection (both directions)."""

    __slots__ = ("_send", "_receive", "_send_nonce", "_receive_nonce", "_buffer", "_failure")

    def __init__(self, *, send_key: bytes, receive_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._receive = ChaCha20Poly1305(receive_key)
        self._send_nonce = 0
        self._receive_nonce = 0
        self._buffer = bytearray()
        self._failure: str | None = None

    def encrypt(self, data: bytes) -> bytes:
        """Seal ``data`` into as many records as needed (at most 4077 plaintext bytes each)."""
        if len(data) <= MAX_PLAINTEXT_SIZE:  # one record (every delta of a fan-out): no slicing
            nonce = self._send_nonce
            if nonce >= _MAX_NONCE:
                raise LocalProtocolError("Noise send nonce exhausted: open a new connection")
            self._send_nonce = nonce + 1
            sealed = self._send.encrypt(_NONCE.pack(nonce), data, None)
            return _RECORD_HEADER.pack(MSG_RECORD, len(sealed)) + sealed
        view = memoryview(data)
        parts: list[bytes] = []
        for start in range(0, len(view), MAX_PLAINTEXT_SIZE):
            if self._send_nonce >= _MAX_NONCE:
                raise LocalProtocolError("Noise send nonce exhausted: open a new connection")
            sealed = self._send.encrypt(
                _NONCE.pack(self._send_nonce), view[start : start + MAX_PLAINTEXT_SIZE], None
            )
            self._send_nonce += 1
            parts.append(_RECORD_HEADER.pack(MSG_RECORD, len(sealed)))
            parts.append(sealed)
        return b"".join(parts)

    def receive_data(self, data: bytes) -> list[bytes]:
        """Decrypt every complete record in the bytes received so far.

        Partial records stay buffered; empty records are skipped. Raises
        ``RemoteProtocolError`` for a wrong record type, an oversized record or a record that
        does not decrypt, after which the transport refuses all further input.
        """
        if self._failure is not None:
            raise RemoteProtocolError(f"Noise transport already failed: {self._failure}")
        buffer = self._buffer
        if not buffer and len(data) > RECORD_HEADER_SIZE:
            # Exactly one whole record and nothing pending (most reads): decrypt it in place.
            msg_type, length = _RECORD_HEADER.unpack_from(data)
            if (msg_type == MSG_RECORD and len(data) == RECORD_HEADER_SIZE + length
                    and length <= MAX_CIPHERTEXT_SIZE and self._receive_nonce + 1 < _MAX_NONCE):
                try:
                    plaintext = self._receive.decrypt(
                        _NONCE.pack(self._receive_nonce), memoryview(data)[RECORD_HEADER_SIZE:], None
                    )
                except InvalidTag:
                    self._fail(f"record {self._receive_nonce} does not decrypt")
                self._receive_nonce += 1
                return [plaintext] if plaintext else []
        buffer += data
        plaintexts: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= RECORD_HEADER_SIZE:
            msg_type, length = _RECORD_HEADER.unpack_from(buffer, pos)
            if msg_type != MSG_RECORD:
                self._fail(f"record type {msg_type:#04x}, expected {MSG_RECORD:#04x}")
            if length > MAX_CIPHERTEXT_SIZE:
                self._fail(f"record of {length} bytes exceeds the {MAX_CIPHERTEXT_SIZE}-byte limit")
            if end - pos < RECORD_HEADER_SIZE + length:
                break
            start = pos + RECORD_HEADER_SIZE
            try:
                plaintext = self._receive.decrypt(
                    _NONCE.pack(self._receive_nonce), buffer[start : start + length], None
                )
            except InvalidTag:
                self._fail(f"record {self._receive_nonce} does not decrypt")
            self._receive_nonce += 1
            if self._receive_nonce >= _MAX_NONCE:
                self._fail("receive nonce exhausted")
            if plaintext:
                plaintexts.append(plaintext)
            pos = start + length
        del buffer[:pos]
        return plaintexts

    def _fail(self, problem: str) -> NoReturn:
        self._failure = problem
        self._buffer.clear()
        raise RemoteProtocolError(problem)


def encode_early_payload(payload: Mapping[str, Any] | bytes) -> bytes:
    """Frame a ``tailcfg.EarlyNoise`` (a mapping, or JSON bytes) to precede the HTTP/2 stream."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    if len(body) > MAX_EARLY_PAYLOAD_SIZE:
        raise LocalProtocolError(f"early payload of {len(body)} bytes exceeds {MAX_EARLY_PAYLOAD_SIZE}")
    return EARLY_PAYLOAD_MAGIC + len(body).to_bytes(4, "big") + body


class EarlyPayloadReader:
    """Client side: separates an optional early payload from the server's HTTP/2 bytes.

    The first 9 plaintext bytes decide: the magic ``FF FF FF 54 53`` starts an early payload;
    anything else is the 9-byte header of the server's first HTTP/2 frame (its SETTINGS, whose
    length field can never be ``FF FF FF`` followed by type 0x54), handed on untouched.
    """

    def __init__(self) -> None:
        self.done = False
        self.payload: dict[str, Any] | None = None
        self._buffer = b""

    def receive_data(self, data: bytes) -> bytes:
        """Return the bytes that belong to HTTP/2 (nothing until the first 9 bytes are seen)."""
        if self.done:
            return data
        self._buffer += data
        buffer = self._buffer
        if len(buffer) < EARLY_PAYLOAD_HEADER_SIZE:
            return b""
        if not buffer.startswith(EARLY_PAYLOAD_MAGIC):
            self.done, self._buffer = True, b""
            return buffer
        length = int.from_bytes(buffer[5:9], "big")
        if length > MAX_EARLY_PAYLOAD_SIZE:
            raise RemoteProtocolError(f"early payload of {length} bytes exceeds {MAX_EARLY_PAYLOAD_SIZE}")
        end = EARLY_PAYLOAD_HEADER_SIZE + length
        if len(buffer) < end:
            return b""
        try:
            payload = json.loads(buffer[EARLY_PAYLOAD_HEADER_SIZE:end])
        except ValueError as exc:
            raise RemoteProtocolError(f"early payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise RemoteProtocolError(f"early payload is a JSON {type(payload).__name__}, expected an object")
        self.payload, self.done, self._buffer = payload, True, b""
        return buffer[end:]
