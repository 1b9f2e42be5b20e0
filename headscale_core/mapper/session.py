"""A map session: one client's streaming ``/machine/map`` response.

Its first message is the full map; later messages come from the mapper's batches through a
bounded queue, and a keep-alive goes out when nothing else has for a while. A session that
cannot keep up is closed: the client reconnects and gets a fresh full map, which is cheaper
than an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from headscale_core.protocol.mapstream import KEEPALIVE_MESSAGE

log = logging.getLogger(__name__)

QUEUE_LIMIT = 512


class Stream(Protocol):
    closed: asyncio.Event

    async def send_data(self, data: bytes) -> None: ...


class MapSession:
    def __init__(self, node_id: int, stream: Stream, *, capver: int, keepalive: float) -> None:
        self.node_id = node_id
        self.stream = stream
        self.capver = capver
        self.keepalive = keepalive
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_LIMIT)
        self.known_peers: AbstractSet[int] = frozenset()
        # The filter and SSH policy the client holds: the objects the policy handed out (an
        # identity check says "unchanged") and their encodings (equal bytes say the same).
        self.filter_seen: Any = None
        self.ssh_seen: Any = None
        self.last_filter: bytes = b""
        self.last_ssh: bytes = b""
        self.closed = asyncio.Event()
        self.messages_sent = 0
        self.bytes_sent = 0

    def remember(self, packet_filter: Any, ssh: Any, filter_encoded: bytes, ssh_encoded: bytes) -> None:
        self.filter_seen, self.ssh_seen = packet_filter, ssh
        self.last_filter, self.last_ssh = filter_encoded, ssh_encoded

    def push(self, frame: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("map session of node %s fell %d messages behind: closing it so it resyncs",
                        self.node_id, QUEUE_LIMIT)
            self.close()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            try:
                self.queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    async def run(self) -> None:
        """Write queued frames and keep-alives until the client leaves or the session closes."""
        stream_gone = asyncio.ensure_future(self.stream.closed.wait())
        try:
            while not self.closed.is_set():
                timeout = self.keepalive + random.uniform(0, 9)
                getter: asyncio.Future[Any] = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter, stream_gone}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stream_gone in done:
                    getter.cancel()
                    break
                if getter in done:
                    frame = getter.result()
                    if frame is None:
                        break
                else:
                    getter.cancel()
                    frame = KEEPALIVE_MESSAGE
                await self.stream.send_data(frame)
                self.messages_sent += 1
                self.bytes_sent += len(frame)
        finally:
            stream_gone.cancel()
            self.closed.set()
