"""verify_clients admission, and hostile input that must close only the offender."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from headscale_derp.client import DerpClient
from headscale_derp.frames import FrameType, encode_frame
from headscale_derp.handshake import ClientInfo, generate_private_key, public_key
from headscale_derp.session import RelayLimits
from headscale_derp.testing import RunningRelay, eventually


async def test_verify_clients_admits_known_and_refuses_unknown(relays) -> None:  # type: ignore[no-untyped-def]
    known_priv = generate_private_key()
    known = public_key(known_priv)

    async def admit(node_key: bytes, info: ClientInfo, ip: str) -> bool:
        return node_key == known

    running = await relays(admit=admit)
    member = await running.client(known_priv)
    with pytest.raises(ConnectionError, match="during the DERP handshake"):
        await running.client()
    assert running.metric("derp_rejected_clients_total") == 1
    member.send_packet(member.public_key, b"self")
    assert await member.recv_packet() == (member.public_key, b"self")


async def test_mesh_key_bypasses_admission(relays) -> None:  # type: ignore[no-untyped-def]
    mesh_key = os.urandom(32).hex()

    async def refuse(node_key: bytes, info: ClientInfo, ip: str) -> bool:
        return False

    running = await relays(admit=refuse, mesh_key=mesh_key)
    peer = await running.client(client_info=ClientInfo(mesh_key=mesh_key))
    await eventually(lambda: running.metric("derp_current_connections") == 1)
    assert running.relay.clients[peer.public_key].active.is_mesh  # type: ignore[union-attr]


async def _bystanders(running: RunningRelay) -> tuple[DerpClient, DerpClient]:
    return await running.client(), await running.client()


async def _still_relaying(a: DerpClient, b: DerpClient) -> None:
    a.send_packet(b.public_key, b"still here")
    assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"still here")


async def _closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(5):
        while await reader.read(1 << 16):
            pass


async def _upgraded(running: RunningRelay) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(45)
    return reader, writer


async def test_garbage_after_upgrade_closes_only_that_connection(derp: RunningRelay) -> None:
    a, b = await _bystanders(derp)
    reader, writer = await _upgraded(derp)
    writer.write(os.urandom(4096))
    await _closed(reader)
    await _still_relaying(a, b)


async def test_bad_box_closes_only_that_connection(derp: RunningRelay) -> None:
    a, b = await _bystanders(derp)
    reader, writer = await _upgraded(derp)
    writer.write(encode_frame(FrameType.CLIENT_INFO, os.urandom(32 + 24 + 40)))
    await _closed(reader)
    assert derp.metric("derp_protocol_errors_total") == 1
    await _still_relaying(a, b)


async def test_oversized_frame_and_forward_without_mesh_key_close_the_offender(derp: RunningRelay) -> None:
    a, b = await _bystanders(derp)
    for frame in (
        encode_frame(FrameType.SEND_PACKET, b"\0" * (32 + 65537)),
        encode_frame(FrameType.FORWARD_PACKET, os.urandom(64) + b"x"),
        encode_frame(FrameType.WATCH_CONNS, b""),
    ):
        offender = await derp.client()
        offender.writer.write(frame)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(offender.recv_packet(), 5)
    await _still_relaying(a, b)


async def test_unknown_frame_type_is_skipped(derp: RunningRelay) -> None:
    a, b = await _bystanders(derp)
    a.writer.write(encode_frame(0x7F, b"abc"))
    await _still_relaying(a, b)


async def test_flooding_client_is_throttled_while_others_relay(relays, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, "headscale_derp.relay")
    running = await relays(limits=RelayLimits(rate_bytes_per_second=2_000_000, rate_burst_bytes=200_000))
    flooder, sink = await running.client(), await running.client()
    a, b = await _bystanders(running)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        packet = os.urandom(1400)
        for _ in range(20_000):  # 28 MB, bounded
            flooder.send_packet(sink.public_key, packet)
            sent += 1
            if sent % 64 == 0:
                await flooder.drain()

    task = asyncio.create_task(flood())
    try:
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        for _ in range(20):
            await _still_relaying(a, b)
        assert asyncio.get_running_loop().time() - started < 2
        assert running.metric("derp_throttled_clients_total") >= 1
        assert any("throttling" in r.message for r in caplog.records)
        # The reader was held back: far less than everything was taken in.
        assert running.metric("derp_bytes_received_total") < 0.5 * 20_000 * 1400
    finally:
        task.cancel()
