"""STUN vectors from the reference §5/§10, and a request/response over real UDP."""

from __future__ import annotations

import asyncio
import os

import pytest
from headscale_derp import stun
from headscale_derp.metrics import StunStats

TXID = bytes.fromhex("0102030405060708090a0b0c")
REQUEST = bytes.fromhex("000100142112a4420102030405060708090a0b0c802200087461696c6e6f646580280004b32c370f")


def test_request_vector() -> None:
    assert stun.binding_request(TXID) == REQUEST
    assert stun.parse_binding_request(REQUEST) == TXID


@pytest.mark.parametrize(
    ("ip", "wire"),
    [
        ("192.0.2.1", "0101000c2112a4420102030405060708090a0b0c00200008000183bbe112a643"),
        ("::ffff:192.0.2.1", "0101000c2112a4420102030405060708090a0b0c00200008000183bbe112a643"),
        (
            "2001:db8::1",
            "010100182112a4420102030405060708090a0b0c00200014000283bb0113a9fa0102030405060708090a0b0d",
        ),
    ],
)
def test_response_vectors(ip: str, wire: str) -> None:
    response = stun.binding_response(TXID, ip, 41641)
    assert response.hex() == wire
    assert stun.parse_binding_response(response) == (TXID, ip.removeprefix("::ffff:"), 41641)


@pytest.mark.parametrize(
    ("wire", "ip", "port"),
    [
        ("0101000c2112a4422360b11e3ec68ffa93e08007002000080001c7866957856f", "72.69.33.45", 59028),
        (
            "010100182112a4424fd5d202dcb37d31fc773306002000140002cd3d2112a4424fd5d202dcb382ce2dc3fcc7",
            "209.180.207.193",
            60463,
        ),
    ],
    ids=["google-1", "no-4in6"],
)
def test_go_parser_vectors(wire: str, ip: str, port: int) -> None:
    parsed = stun.parse_binding_response(bytes.fromhex(wire))
    assert parsed is not None and parsed[1:] == (ip, port)


def _refinger(data: bytearray) -> bytes:
    data[-4:] = stun._fingerprint(bytes(data[:-8]))
    return bytes(data)


@pytest.mark.parametrize(
    "packet",
    [
        REQUEST[:-1] + bytes([REQUEST[-1] ^ 1]),  # wrong CRC
        _refinger(bytearray(REQUEST.replace(b"tailnode", b"mailnode"))),  # other SOFTWARE
        bytes([REQUEST[0] | 0x80]) + REQUEST[1:],  # top bits of byte 0
        REQUEST[:20],  # no attributes
        REQUEST[:20] + REQUEST[32:] + REQUEST[20:32],  # FINGERPRINT not last
        REQUEST[:-3],  # truncated
        b"",
    ],
    ids=["crc", "software", "top-bits", "no-attrs", "fp-not-last", "truncated", "empty"],
)
def test_malformed_requests_get_no_answer(packet: bytes) -> None:
    assert stun.parse_binding_request(packet) is None


def test_parser_fuzz_returns_none_or_txid() -> None:
    import random

    rng = random.Random(7)
    for _ in range(3000):
        data = bytearray(REQUEST)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        result = stun.parse_binding_request(bytes(data[: rng.randint(0, len(data))]))
        assert result is None or len(result) == 12


async def test_request_and_response_over_udp_on_loopback() -> None:
    stats = StunStats()
    async with stun.stun_listener("127.0.0.1:0", stats) as protocol:
        assert protocol.transport is not None
        server_addr = protocol.transport.get_extra_info("sockname")
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                answers.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
        try:
            transport.sendto(b"garbage", server_addr)
            txid = os.urandom(12)
            transport.sendto(stun.binding_request(txid), server_addr)
            answer = await asyncio.wait_for(answers.get(), 2)
            mine = transport.get_extra_info("sockname")
            assert stun.parse_binding_response(answer) == (txid, "127.0.0.1", mine[1])
            assert len(answer) == 32
            assert answers.empty()
        finally:
            transport.close()
    assert stats.requests["success"] == 1 and stats.requests["not_stun"] == 1
