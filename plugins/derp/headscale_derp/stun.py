"""STUN binding responder for Tailscale's netcheck (RFC 5389 subset, reference §5).

Clients send a 40-byte Binding Request (SOFTWARE ``tailnode``, then FINGERPRINT) to learn
their public address; the answer carries one XOR-MAPPED-ADDRESS. Like derper, anything else
is ignored without a reply, and nothing is rate-limited. ``parse_binding_request`` and
``binding_response`` are pure; ``StunProtocol`` is the asyncio shell.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from headscale_derp.metrics import StunStats

log = logging.getLogger("headscale_derp.stun")

MAGIC_COOKIE = b"\x21\x12\xa4\x42"
BINDING_REQUEST = b"\x00\x01"
BINDING_SUCCESS = b"\x01\x01"
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_ALT = 0x8020
ATTR_MAPPED_ADDRESS = 0x0001
SOFTWARE = b"tailnode"
FINGERPRINT_XOR = 0x5354554E
HEADER_LEN = 20

_HEADER = struct.Struct(">2sH4s12s")
_ATTR = struct.Struct(">HH")


def _xor(data: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask[: len(data)], "big")).to_bytes(len(data), "big")


def _fingerprint(data: bytes) -> bytes:
    return struct.pack(">I", (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF)


def _attributes(body: bytes) -> list[tuple[int, int, bytes]] | None:
    """``(offset, type, value)`` of each attribute, or None if the TLVs are malformed."""
    attrs = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < _ATTR.size:
            return None
        attr_type, length = _ATTR.unpack_from(body, offset)
        start = offset + _ATTR.size
        if start + length > len(body):
            return None
        attrs.append((offset, attr_type, body[start : start + length]))
        offset = start + (length + 3) // 4 * 4
    return attrs


def binding_request(txid: bytes) -> bytes:
    """The exact request tailscaled sends (for tests and probes)."""
    if len(txid) != 12:
        raise ValueError("STUN transaction ID must be 12 bytes")
    head = BINDING_REQUEST + b"\x00\x14" + MAGIC_COOKIE + txid
    body = _ATTR.pack(ATTR_SOFTWARE, len(SOFTWARE)) + SOFTWARE
    # The CRC covers everything before the FINGERPRINT attribute, its own TLV header
    # excluded (Go's net/stun; the reference vector confirms it).
    return head + body + _ATTR.pack(ATTR_FINGERPRINT, 4) + _fingerprint(head + body)


def parse_binding_request(packet: bytes) -> bytes | None:
    """The transaction ID of a valid Tailscale Binding Request; None for anything else."""
    if len(packet) < HEADER_LEN or packet[0] & 0xC0:
        return None
    msg_type, length, cookie, txid = _HEADER.unpack_from(packet)
    if msg_type != BINDING_REQUEST or cookie != MAGIC_COOKIE or HEADER_LEN + length != len(packet):
        return None
    attrs = _attributes(packet[HEADER_LEN:])
    if not attrs:
        return None
    software = [value for _, attr_type, value in attrs if attr_type == ATTR_SOFTWARE]
    if software != [SOFTWARE]:
        return None
    offset, attr_type, value = attrs[-1]
    end = HEADER_LEN + offset
    if attr_type != ATTR_FINGERPRINT or value != _fingerprint(packet[:end]):
        return None
    return txid


def binding_response(txid: bytes, ip: str, port: int) -> bytes:
    """A Binding Success with one XOR-MAPPED-ADDRESS; IPv4-mapped IPv6 is answered as IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    family = b"\x01" if addr.version == 4 else b"\x02"
    mask = MAGIC_COOKIE + txid
    xored = _xor(addr.packed, mask)
    value = b"\x00" + family + struct.pack(">H", port ^ 0x2112) + xored
    attr = _ATTR.pack(ATTR_XOR_MAPPED_ADDRESS, len(value)) + value
    return BINDING_SUCCESS + struct.pack(">H", len(attr)) + MAGIC_COOKIE + txid + attr


def parse_binding_response(packet: bytes) -> tuple[bytes, str, int] | None:
    """``(txid, ip, port)`` from a Binding Success, as tailscaled reads it; None if invalid."""
    if len(packet) < HEADER_LEN:
        return None
    msg_type, length, cookie, txid = _HEADER.unpack_from(packet)
    if msg_type != BINDING_SUCCESS or cookie != MAGIC_COOKIE or HEADER_LEN + length > len(packet):
        return None
    fallback = None
    for _, attr_type, value in _attributes(packet[HEADER_LEN : HEADER_LEN + length]) or ():
        if len(value) < 8:
            continue
        family, port = value[1], struct.unpack_from(">H", value, 2)[0]
        raw = value[4:8] if family == 1 else value[4:20]
        if attr_type in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_ALT):
            raw = _xor(raw, MAGIC_COOKIE + txid)
            return txid, _unmap(raw), port ^ 0x2112
        if attr_type == ATTR_MAPPED_ADDRESS:
            fallback = (txid, _unmap(raw), port)
    return fallback


def _unmap(raw: bytes) -> str:
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class StunProtocol(asyncio.DatagramProtocol):
    """Answers every valid request from the socket it arrived on."""

    def __init__(self, stats: StunStats | None = None) -> None:
        self.stats = stats or StunStats()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        txid = parse_binding_request(data)
        if txid is None or self.transport is None:
            self.stats.requests["not_stun"] += 1
            return
        ip, port = str(addr[0]), int(addr[1])
        response = binding_response(txid, ip, port)
        try:
            self.transport.sendto(response, addr)
        except OSError:
            self.stats.requests["write_error"] += 1
            return
        self.stats.requests["success"] += 1
        self.stats.families["ipv4" if response[25] == 1 else "ipv6"] += 1

    def error_received(self, exc: Exception) -> None:
        log.debug("STUN socket error: %s", exc)


def split_host_port(listen_addr: str) -> tuple[str, int]:
    """``0.0.0.0:3478`` / ``[::]:3478`` -> (host, port)."""
    host, sep, port = listen_addr.rpartition(":")
    if not sep:
        raise ValueError(f"STUN listen address {listen_addr!r} needs a port, e.g. 0.0.0.0:3478")
    return host.strip("[]") or "0.0.0.0", int(port)


@asynccontextmanager
async def stun_listener(listen_addr: str, stats: StunStats | None = None) -> AsyncIterator[StunProtocol]:
    """Serve STUN on ``listen_addr`` for the duration of the context."""
    host, port = split_host_port(listen_addr)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(stats), local_addr=(host, port)
    )
    log.info("STUN listening on %s", transport.get_extra_info("sockname"))
    try:
        yield protocol
    finally:
        transport.close()
