"""DERP wire frames: ``type:u8 | length:u32be | payload``, and an incremental frame reader.

This is the bottom of the relay's data path: bytes from a socket go into ``FrameReader``,
whole frames come out and are parsed into the frozen dataclasses below; the connection state
machine (``connection.py``) decides which frames are legal when. No I/O happens here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar

MAGIC = "DERP🔑".encode()
PROTOCOL_VERSION = 2
KEY_LEN = 32
NONCE_LEN = 24
HEADER_LEN = 5
MAX_PACKET_SIZE = 64 << 10
MAX_CLIENT_INFO_LEN = 256 << 10
MIN_CLIENT_INFO_LEN = KEY_LEN + NONCE_LEN
MAX_CLIENT_FRAME_LEN = 1 << 20
MAX_PING_LEN = 1000
DISCO_MAGIC = "TS💬".encode()
DISCO_MIN_LEN = len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN

HEADER = struct.Struct(">BI")
_PORT = struct.Struct(">H")
_RESTART = struct.Struct(">II")


class FrameType(IntEnum):
    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(IntEnum):
    DISCONNECTED = 0x00
    NOT_HERE = 0x01
    MESH_CONN_BROKE = 0xF0


class PeerPresentFlags(IntFlag):
    REGULAR = 0x01
    MESH_PEER = 0x02
    PROBER = 0x04
    NOT_IDEAL = 0x08


class DerpError(Exception):
    """Base of every DERP protocol error."""


class RemoteProtocolError(DerpError):
    """The peer broke the protocol; the connection must be closed. ``frame_type`` is the
    offending frame's type when one was read."""

    def __init__(self, message: str, frame_type: int | None = None) -> None:
        super().__init__(message)
        self.frame_type = frame_type


class LocalProtocolError(DerpError):
    """This program used the API out of order (a bug here, not in the peer)."""


def is_disco(packet: bytes) -> bool:
    """Whether a relayed packet is a Tailscale disco message (it gets its own queue)."""
    return len(packet) >= DISCO_MIN_LEN and packet.startswith(DISCO_MAGIC)


def frame_name(frame_type: int) -> str:
    return FrameType(frame_type).name if frame_type in FrameType._value2member_map_ else f"0x{frame_type:02x}"


def encode_header(frame_type: int, length: int) -> bytes:
    return HEADER.pack(frame_type, length)


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    return HEADER.pack(frame_type, len(payload)) + payload


def _need(payload: bytes, size: int, frame_type: FrameType, exact: bool = False) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        want = f"exactly {size}" if exact else f"at least {size}"
        raise RemoteProtocolError(f"{frame_type.name} frame of {len(payload)} bytes, want {want}", frame_type)


def _key(key: bytes, what: str) -> None:
    if len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")


@dataclass(frozen=True, slots=True)
class ServerKey:
    frame_type: ClassVar[FrameType] = FrameType.SERVER_KEY
    server_key: bytes

    def payload(self) -> bytes:
        return MAGIC + self.server_key

    @classmethod
    def parse(cls, payload: bytes) -> ServerKey:
        _need(payload, len(MAGIC) + KEY_LEN, cls.frame_type)
        if not payload.startswith(MAGIC):
            raise RemoteProtocolError("ServerKey frame without the DERP magic", cls.frame_type)
        return cls(payload[len(MAGIC) : len(MAGIC) + KEY_LEN])


@dataclass(frozen=True, slots=True)
class ClientInfoFrame:
    """The client's key and the NaCl box holding its ClientInfo JSON (``handshake.py``)."""

    frame_type: ClassVar[FrameType] = FrameType.CLIENT_INFO
    client_key: bytes
    sealed: bytes

    def payload(self) -> bytes:
        return self.client_key + self.sealed

    @classmethod
    def parse(cls, payload: bytes) -> ClientInfoFrame:
        _need(payload, MIN_CLIENT_INFO_LEN, cls.frame_type)
        return cls(payload[:KEY_LEN], payload[KEY_LEN:])


@dataclass(frozen=True, slots=True)
class ServerInfoFrame:
    frame_type: ClassVar[FrameType] = FrameType.SERVER_INFO
    sealed: bytes

    def payload(self) -> bytes:
        return self.sealed

    @classmethod
    def parse(cls, payload: bytes) -> ServerInfoFrame:
        _need(payload, NONCE_LEN, cls.frame_type)
        return cls(payload)


@dataclass(frozen=True, slots=True)
class SendPacket:
    frame_type: ClassVar[FrameType] = FrameType.SEND_PACKET
    dst: bytes
    packet: bytes

    def payload(self) -> bytes:
        return self.dst + self.packet

    @classmethod
    def parse(cls, payload: bytes) -> SendPacket:
        _need(payload, KEY_LEN, cls.frame_type)
        return cls(payload[:KEY_LEN], payload[KEY_LEN:])


@dataclass(frozen=True, slots=True)
class RecvPacket:
    frame_type: ClassVar[FrameType] = FrameType.RECV_PACKET
    src: bytes
    packet: bytes

    def payload(self) -> bytes:
        return self.src + self.packet

    @classmethod
    def parse(cls, payload: bytes) -> RecvPacket:
        _need(payload, KEY_LEN, cls.frame_type)
        return cls(payload[:KEY_LEN], payload[KEY_LEN:])


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    frame_type: ClassVar[FrameType] = FrameType.FORWARD_PACKET
    src: bytes
    dst: bytes
    packet: bytes

    def payload(self) -> bytes:
        return self.src + self.dst + self.packet

    @classmethod
    def parse(cls, payload: bytes) -> ForwardPacket:
        _need(payload, 2 * KEY_LEN, cls.frame_type)
        return cls(payload[:KEY_LEN], payload[KEY_LEN : 2 * KEY_LEN], payload[2 * KEY_LEN :])


@dataclass(frozen=True, slots=True)
class KeepAlive:
    frame_type: ClassVar[FrameType] = FrameType.KEEP_ALIVE

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, payload: bytes) -> KeepAlive:
        return cls()


@dataclass(frozen=True, slots=True)
class WatchConns:
    frame_type: ClassVar[FrameType] = FrameType.WATCH_CONNS

    def payload(self) -> bytes:
        return b""

    @classmethod
    def parse(cls, payload: bytes) -> WatchConns:
        _need(payload, 0, cls.frame_type, exact=True)
        return cls()


@dataclass(frozen=True, slots=True)
class NotePreferred:
    frame_type: ClassVar[FrameType] = FrameType.NOTE_PREFERRED
    preferred: bool

    def payload(self) -> bytes:
        return b"\x01" if self.preferred else b"\x00"

    @classmethod
    def parse(cls, payload: bytes) -> NotePreferred:
        _need(payload, 1, cls.frame_type, exact=True)
        return cls(payload[0] != 0)


@dataclass(frozen=True, slots=True)
class PeerGone:
    frame_type: ClassVar[FrameType] = FrameType.PEER_GONE
    peer: bytes
    reason: int = PeerGoneReason.DISCONNECTED

    def payload(self) -> bytes:
        return self.peer + bytes([self.reason])

    @classmethod
    def parse(cls, payload: bytes) -> PeerGone:
        _need(payload, KEY_LEN, cls.frame_type)
        reason = payload[KEY_LEN] if len(payload) > KEY_LEN else PeerGoneReason.DISCONNECTED
        return cls(payload[:KEY_LEN], reason)


@dataclass(frozen=True, slots=True)
class PeerPresent:
    """A key connected to the sending server; ``ip``/``port`` are its client address."""

    frame_type: ClassVar[FrameType] = FrameType.PEER_PRESENT
    peer: bytes
    ip: str = "::"
    port: int = 0
    flags: int = 0

    def payload(self) -> bytes:
        addr = ipaddress.ip_address(self.ip)
        if isinstance(addr, ipaddress.IPv4Address):
            addr = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
        return self.peer + addr.packed + _PORT.pack(self.port) + bytes([self.flags])

    @classmethod
    def parse(cls, payload: bytes) -> PeerPresent:
        _need(payload, KEY_LEN, cls.frame_type)
        peer = payload[:KEY_LEN]
        if len(payload) < KEY_LEN + 18:
            return cls(peer)
        addr = ipaddress.IPv6Address(payload[KEY_LEN : KEY_LEN + 16])
        ip = str(addr.ipv4_mapped or addr)
        (port,) = _PORT.unpack_from(payload, KEY_LEN + 16)
        flags = payload[KEY_LEN + 18] if len(payload) > KEY_LEN + 18 else 0
        return cls(peer, ip, port, flags)


@dataclass(frozen=True, slots=True)
class ClosePeer:
    frame_type: ClassVar[FrameType] = FrameType.CLOSE_PEER
    peer: bytes

    def payload(self) -> bytes:
        return self.peer

    @classmethod
    def parse(cls, payload: bytes) -> ClosePeer:
        _need(payload, KEY_LEN, cls.frame_type, exact=True)
        return cls(payload)


@dataclass(frozen=True, slots=True)
class Ping:
    frame_type: ClassVar[FrameType] = FrameType.PING
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, payload: bytes) -> Ping:
        _need(payload, 8, cls.frame_type)
        if len(payload) > MAX_PING_LEN:
            raise RemoteProtocolError(f"Ping of {len(payload)} bytes, limit {MAX_PING_LEN}", cls.frame_type)
        return cls(payload[:8])


@dataclass(frozen=True, slots=True)
class Pong:
    frame_type: ClassVar[FrameType] = FrameType.PONG
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, payload: bytes) -> Pong:
        _need(payload, 8, cls.frame_type)
        return cls(payload[:8])


@dataclass(frozen=True, slots=True)
class Health:
    """A problem the server wants shown to the user; empty text means healthy again."""

    frame_type: ClassVar[FrameType] = FrameType.HEALTH
    problem: str = ""

    def payload(self) -> bytes:
        return self.problem.encode()

    @classmethod
    def parse(cls, payload: bytes) -> Health:
        return cls(payload.decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Restarting:
    frame_type: ClassVar[FrameType] = FrameType.RESTARTING
    reconnect_in_ms: int
    try_for_ms: int

    def payload(self) -> bytes:
        return _RESTART.pack(self.reconnect_in_ms, self.try_for_ms)

    @classmethod
    def parse(cls, payload: bytes) -> Restarting:
        _need(payload, _RESTART.size, cls.frame_type)
        return cls(*_RESTART.unpack_from(payload))


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame of a type this side does not handle; its payload was skipped."""

    frame_type: int
    length: int


Frame = (
    ServerKey
    | ClientInfoFrame
    | ServerInfoFrame
    | SendPacket
    | RecvPacket
    | ForwardPacket
    | KeepAlive
    | WatchConns
    | NotePreferred
    | PeerGone
    | PeerPresent
    | ClosePeer
    | Ping
    | Pong
    | Health
    | Restarting
)

FRAME_CLASSES: dict[int, type[Frame]] = {
    cls.frame_type: cls
    for cls in (
        ServerKey, ClientInfoFrame, ServerInfoFrame, SendPacket, RecvPacket, ForwardPacket, KeepAlive,
        WatchConns, NotePreferred, PeerGone, PeerPresent, ClosePeer, Ping, Pong, Health, Restarting,
    )
}  # fmt: skip


def encode(frame: Frame) -> bytes:
    return encode_frame(frame.frame_type, frame.payload())


def parse(frame_type: int, payload: bytes) -> Frame:
    """Parse one frame's payload; raises ``RemoteProtocolError`` for a malformed one."""
    cls = FRAME_CLASSES.get(frame_type)
    if cls is None:
        raise RemoteProtocolError(f"unknown frame type 0x{frame_type:02x}", frame_type)
    return cls.parse(payload)
