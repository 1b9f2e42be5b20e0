"""One accepted DERP client inside the relay: its queues, writer task and reader loop.

The reader feeds socket bytes to the sans-IO ``DerpConnection`` and hands events to the
``Relay`` (routing lives there). Packets routed *to* this client go into two bounded queues
(data and disco, drop-oldest); a single writer task drains them, coalescing everything ready
into one write, and closes the connection if the socket stays blocked past the write timeout.
A slow receiver therefore costs its own packets, never the sender's reader.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headscale_derp.connection import DerpConnection
from headscale_derp.frames import (
    FrameType,
    KeepAlive,
    PeerGone,
    PeerPresent,
    PeerPresentFlags,
    Pong,
    is_disco,
)
from headscale_derp.handshake import ClientInfo

if TYPE_CHECKING:
    from headscale_derp.relay import Relay

log = logging.getLogger("headscale_derp.relay")


@dataclass(frozen=True)
class RelayLimits:
    """Timers and bounds of the relay; defaults follow derper."""

    queue_depth: int = 32
    write_timeout: float = 2.0
    mesh_write_timeout: float = 30.0
    keepalive_interval: float = 60.0
    keepalive_jitter: float = 5.0
    handshake_timeout: float = 10.0
    high_water: int = 256 << 10
    # Per-client token bucket on received bytes; 0 disables it. Mesh peers are exempt.
    rate_bytes_per_second: int = 0
    rate_burst_bytes: int = 0


class ClientSession:
    """The relay's view of one connected client."""

    def __init__(
        self,
        relay: Relay,
        conn: DerpConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        key: bytes,
        info: ClientInfo,
        is_mesh: bool,
        ideal: bool,
        remote: tuple[str, int],
    ) -> None:
        self.relay = relay
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.key = key
        self.info = info
        self.is_mesh = is_mesh
        self.ideal = ideal
        self.remote = remote
        self.preferred = False
        self.connected_at = time.monotonic()
        self.last_active = 0.0
        self.closing = False
        self.watching = False
        self.received_from: set[bytes] = set()
        limits = relay.limits
        self._depth = limits.queue_depth
        self._write_timeout = limits.mesh_write_timeout if is_mesh else limits.write_timeout
        self._data: deque[tuple[bytes, bytes]] = deque()
        self._disco: deque[tuple[bytes, bytes]] = deque()
        self._control: list[PeerGone | PeerPresent] = []
        self._pong: bytes | None = None
        self._keepalive_due = False
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._keepalive_period = limits.keepalive_interval + random.uniform(0, limits.keepalive_jitter)

    @property
    def name(self) -> str:
        return f"nodekey:{self.key.hex()[:16]}… from {self.remote[0]}:{self.remote[1]}"

    def peer_present_frame(self) -> PeerPresent:
        flags = PeerPresentFlags.MESH_PEER if self.is_mesh else PeerPresentFlags.REGULAR
        if self.info.is_prober:
            flags |= PeerPresentFlags.PROBER
        if not self.ideal:
            flags |= PeerPresentFlags.NOT_IDEAL
        return PeerPresent(self.key, self.remote[0], self.remote[1], int(flags))

    # -- routed into this client (called by the relay) -------------------------------------

    def enqueue_packet(self, src: bytes, packet: bytes) -> None:
        disco = is_disco(packet)
        stats = self.relay.stats
        if self.closing:
            stats.drop("gone_disconnected", disco, len(packet))
            return
        queue = self._disco if disco else self._data
        if len(queue) >= self._depth:
            _, old = queue.popleft()
            stats.drop("queue_head", disco, len(old))
        queue.append((src, packet))
        self.received_from.add(src)
        self._wake.set()

    def enqueue_control(self, frame: PeerGone | PeerPresent) -> None:
        if not self.closing:
            self._control.append(frame)
            self._wake.set()

    def enqueue_pong(self, data: bytes) -> None:
        if self._pong is None:  # one pending pong, like derper; extra pings are dropped
            self._pong = data
            self._wake.set()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Write ServerInfo synchronously, then start the writer (reference §11.2)."""
        self.writer.write(self.conn.data_to_send())
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())
        self._arm_keepalive()

    def _arm_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive_handle = loop.call_later(self._keepalive_period, self._on_keepalive)

    def _on_keepalive(self) -> None:
        self._keepalive_due = True
        self._wake.set()
        self._arm_keepalive()

    def close(self) -> None:
        """Stop relaying to this client and drop its socket (also used by ClosePeer)."""
        if self.closing:
            return
        self.closing = True
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        if self._writer_task is not None:
            self._writer_task.cancel()
        stats = self.relay.stats
        for queue in (self._data, self._disco):
            for _, packet in queue:
                stats.drop("gone_disconnected", queue is self._disco, len(packet))
            queue.clear()
        self.writer.transport.abort()

    async def wait_writer(self) -> None:
        if self._writer_task is not None:
            await asyncio.wait([self._writer_task])  # it was cancelled by close(); don't re-raise that

    # -- writer --------------------------------------------------------------------------------

    def _fill(self) -> int:
        """Move everything ready into the connection's output; returns frames written."""
        conn = self.conn
        frames = 0
        if self._control:
            for frame in self._control:
                conn.send(frame)
            frames += len(self._control)
            self._control.clear()
        if self._pong is not None:
            conn.send(Pong(self._pong))
            self._pong = None
            self.relay.stats.sent_pong += 1
            frames += 1
        sent = sent_bytes = 0
        for queue in (self._disco, self._data):
            while queue:
                src, packet = queue.popleft()
                conn.send_raw(FrameType.RECV_PACKET, src, packet)
                sent += 1
                sent_bytes += len(packet)
        if sent:
            stats = self.relay.stats
            stats.packets_sent += sent
            stats.bytes_sent += sent_bytes
        if self._keepalive_due:
            self._keepalive_due = False
            conn.send(KeepAlive())
            frames += 1
        return frames + sent

    async def _write_loop(self) -> None:
        writer = self.writer
        transport = writer.transport
        high_water = self.relay.limits.high_water
        try:
            while not self.closing:
                await self._wake.wait()
                self._wake.clear()
                if not self._fill():
                    continue
                writer.write(self.conn.data_to_send())
                if transport.get_write_buffer_size() > high_water:
                    async with asyncio.timeout(self._write_timeout):
                        await writer.drain()
        except TimeoutError:
            self.relay.stats.write_timeouts += 1
            log.info("closing %s: socket blocked for %.0f s", self.name, self._write_timeout)
        except (ConnectionError, OSError) as exc:
            log.debug("write to %s failed: %s", self.name, exc)
        finally:
            if not self.closing:
                self.close()
