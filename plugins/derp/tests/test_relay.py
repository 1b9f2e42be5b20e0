"""Two or more in-process DERP clients exchanging packets through the relay over TCP."""

from __future__ import annotations

import asyncio
import hashlib
import os

from headscale_derp.frames import (
    DISCO_MAGIC,
    FrameType,
    KeepAlive,
    NotePreferred,
    PeerGone,
    PeerGoneReason,
    Ping,
    Pong,
    RecvPacket,
)
from headscale_derp.testing import RunningRelay, eventually


async def test_two_clients_exchange_packets_byte_for_byte(derp: RunningRelay) -> None:
    a, b = await derp.client(), await derp.client()
    a.send_packet(b.public_key, b"hello")
    assert await b.recv_packet() == (a.public_key, b"hello")
    b.send_packet(a.public_key, b"")
    assert await a.recv_packet() == (b.public_key, b"")
    big = os.urandom(65536)
    a.send_packet(b.public_key, big)
    assert await b.recv_packet() == (a.public_key, big)
    await a.close()
    await b.close()


async def test_a_few_megabytes_arrive_intact_and_in_order(derp: RunningRelay) -> None:
    a, b = await derp.client(), await derp.client()
    chunks = [os.urandom(1200 + i % 200) for i in range(3000)]  # about 3.9 MB
    received: list[bytes] = []

    async def receive() -> None:
        while len(received) < len(chunks):
            src, packet = await b.recv_packet()
            assert src == a.public_key
            received.append(packet)

    reader = asyncio.create_task(receive())
    for i, chunk in enumerate(chunks):
        a.send_packet(b.public_key, chunk)
        if i % 16 == 15:
            # Stay within the relay's 32-packet queue: wait until the receiver caught up.
            await a.drain()
            await eventually(lambda i=i: len(received) > i - 16)
    await asyncio.wait_for(reader, 20)
    assert hashlib.sha256(b"".join(received)).digest() == hashlib.sha256(b"".join(chunks)).digest()
    assert derp.metric("derp_packets_sent_total") == len(chunks)
    assert derp.metric("derp_bytes_received_total") == sum(map(len, chunks))


async def test_peer_gone_after_sender_disconnects(derp: RunningRelay) -> None:
    a, b = await derp.client(), await derp.client()
    a.send_packet(b.public_key, b"ping")
    await b.recv_packet()
    await a.close()
    assert await _next_of(b, PeerGone) == PeerGone(a.public_key, PeerGoneReason.DISCONNECTED)


async def test_disco_to_unknown_key_gets_peer_gone_not_here_rate_limited(derp: RunningRelay) -> None:
    a = await derp.client()
    nobody = os.urandom(32)
    disco = DISCO_MAGIC + os.urandom(60)
    for _ in range(10):
        a.send_packet(nobody, disco)
    a.send_packet(nobody, b"wireguard")  # not disco: dropped silently
    first = await _next_of(a, PeerGone)
    assert first == PeerGone(nobody, PeerGoneReason.NOT_HERE)
    await eventually(
        lambda: derp.metric("derp_packets_dropped_total", reason="unknown_dest", kind="other") == 1
    )
    assert derp.metric("derp_peer_gone_not_here_frames_total") == 3
    assert derp.metric("derp_packets_dropped_total", reason="unknown_dest", kind="disco") == 10


async def test_ping_gets_pong_and_note_preferred_counts_home(derp: RunningRelay) -> None:
    a = await derp.client()
    a.send(NotePreferred(True))
    a.send(Ping(b"12345678"))
    assert await _next_of(a, Pong) == Pong(b"12345678")
    await eventually(lambda: derp.metric("derp_current_home_connections") == 1)


async def test_keepalive_is_sent(relays) -> None:  # type: ignore[no-untyped-def]
    from headscale_derp.session import RelayLimits

    running = await relays(limits=RelayLimits(keepalive_interval=0.05, keepalive_jitter=0.01))
    a = await running.client()
    assert await asyncio.wait_for(_next_of(a, KeepAlive), 2) == KeepAlive()


async def test_duplicate_connections_newest_then_last_writer_is_active(derp: RunningRelay) -> None:
    key = os.urandom(32)
    sender = await derp.client()
    first = await derp.client(key)
    second = await derp.client(key)
    await eventually(lambda: derp.metric("derp_current_dup_client_conns") == 2)
    sender.send_packet(first.public_key, b"to-newest")
    assert await second.recv_packet() == (sender.public_key, b"to-newest")
    first.send(NotePreferred(False))  # any frame makes the old connection the active one
    await eventually(
        lambda: derp.relay.clients[first.public_key].active.conn is not None and _active_is(derp, first)
    )
    sender.send_packet(first.public_key, b"to-writer")
    assert await first.recv_packet() == (sender.public_key, b"to-writer")
    await first.close()
    await eventually(lambda: derp.metric("derp_current_dup_client_keys") == 0)
    sender.send_packet(second.public_key, b"to-survivor")
    assert await second.recv_packet() == (sender.public_key, b"to-survivor")


def _active_is(derp: RunningRelay, client: object) -> bool:
    keyset = derp.relay.clients[client.public_key]  # type: ignore[attr-defined]
    active = keyset.active
    return active is not None and active.remote[1] == client.writer.get_extra_info("sockname")[1]  # type: ignore[attr-defined]


async def test_fast_start_client_info_pipelined_after_the_head_is_not_lost(derp: RunningRelay) -> None:
    a = await derp.client(fast_start_key=derp.relay.public_key)
    b = await derp.client()
    b.send_packet(a.public_key, b"fast")
    assert await a.recv_packet() == (b.public_key, b"fast")


async def test_slow_receiver_drops_oldest_and_sender_keeps_going(derp: RunningRelay) -> None:
    a, b = await derp.client(), await derp.client()
    b.writer.transport.pause_reading()  # type: ignore[attr-defined]
    for i in range(20000):
        a.send_packet(b.public_key, i.to_bytes(4, "big") * 300)
        if i % 500 == 0:
            await a.drain()
    await a.drain()
    await eventually(lambda: derp.metric("derp_packets_dropped_total", reason="queue_head", kind="other") > 0)
    c = await derp.client()
    c.send_packet(a.public_key, b"still relaying")
    assert await a.recv_packet() == (c.public_key, b"still relaying")


async def _next_of(client, kind):  # type: ignore[no-untyped-def]
    while True:
        event = await asyncio.wait_for(client.recv(), 5)
        if isinstance(event, kind):
            return event
        assert isinstance(event, RecvPacket | KeepAlive | PeerGone | Pong), event


__all__ = ["FrameType"]
