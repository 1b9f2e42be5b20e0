"""A map session: one client's streaming ``/machine/map`` response.

Its first message is the full map; later messages come from the mapper's batches through a
bounded queue, and a keep-alive goes out when nothing else has for a while. A session that
cannot keep up is closed: the client reconnects and gets a fresh full map, which is cheaper
than an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from headscale_core.flag import Flag
from headscale_core.protocol.mapstream import KEEPALIVE_MESSAGE
from headscale_core.protocol.wirejson import dumps

log = logging.getLogger(__name__)

QUEUE_LIMIT = 512
KEEPALIVE_TICK = 1.0  # seconds: keep-alive deadlines fall on multiples of this (see run)


class Stream(Protocol):
    @property
    def closed(self) -> Flag: ...

    async def send_data(self, data: bytes) -> None: ...

    def try_send_nowait(self, data: bytes) -> bool: ...

    def add_close_callback(self, callback: Callable[[], None]) -> None: ...


def _digest(encoded: bytes) -> bytes:
    return hashlib.blake2b(encoded, digest_size=16).digest()


class MapSession:
    def __init__(self, node_id: int, stream: Stream, *, capver: int, keepalive: float,
                 keepalive_frame: Callable[[], bytes] = lambda: KEEPALIVE_MESSAGE) -> None:
        self.node_id = node_id
        self.stream = stream
        self.capver = capver
        self.keepalive = keepalive
        self.keepalive_frame = keepalive_frame
        # Frames waiting behind a send that had to wait for the client (rare: made on demand).
        self._backlog: deque[bytes] | None = None
        self._ready = Flag()  # the backlog has frames, or the session closed
        self.known_peers: AbstractSet[int] = frozenset()
        # What the client holds of each policy-derived field (PacketFilter, SSHPolicy): the object
        # the policy handed out, and a digest of its encoding once a comparison needed it (a
        # filter's JSON is kilobytes per session; 16 bytes tell as well whether it changed).
        self._views: dict[str, list[Any]] = {}
        self.closed = Flag()
        self.messages_sent = 0
        self.bytes_sent = 0
        self._last_sent = 0.0
        self._sending = False  # run() is inside send_data: later frames queue behind it
        self._timer: asyncio.TimerHandle | None = None

    def remember(self, field: str, value: Any) -> None:
        """The client was sent ``value`` for ``field`` (in its full map)."""
        self._views[field] = [value, None]

    def view_update(self, field: str, value: Any) -> bytes | None:
        """``value``'s encoding when the client must be sent it for ``field``, else None.

        The policy hands out the same object while an answer is unchanged, so most calls end at
        the identity check; a new object is encoded and sent only if its JSON differs."""
        held = self._views.get(field)
        if held is not None and held[0] is value:
            return None
        encoded = dumps(value)
        digest = _digest(encoded)
        if held is not None:
            if held[1] is None:
                held[1] = _digest(dumps(held[0]))
            if held[1] == digest:
                held[0] = value
                return None
        self._views[field] = [value, digest]
        return encoded

    def push(self, frame: bytes) -> None:
        """Send ``frame`` now when nothing is ahead of it and the stream takes it whole (the
        common case: no task switch); otherwise queue it for ``run``."""
        if self.closed.is_set():
            return
        backlog = self._backlog
        if not self._sending and not backlog:
            try:
                sent = self.stream.try_send_nowait(frame)
            except Exception as exc:  # StreamClosed and the like: the client is gone
                log.debug("map session of node %s: stream gone while sending: %s", self.node_id, exc)
                self.close()
                return
            if sent:
                self._sent(frame)
                return
        if backlog is None:
            backlog = self._backlog = deque()
        if len(backlog) >= QUEUE_LIMIT:
            log.warning("map session of node %s fell %d messages behind: closing it so it resyncs",
                        self.node_id, QUEUE_LIMIT)
            self.close()
            return
        backlog.append(frame)
        self._ready.set()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._ready.set()

    def _sent(self, frame: bytes) -> None:
        self._last_sent = time.monotonic()
        self.messages_sent += 1
        self.bytes_sent += len(frame)

    def _jitter(self) -> float:
        return random.uniform(0, min(9.0, self.keepalive / 5))

    async def run(self) -> None:
        """Write queued frames until the client leaves or the session closes; a keep-alive goes
        out when nothing else has for ``keepalive`` seconds.

        One timer per session and keep-alive interval, not one per frame: a storm fans a frame
        out to every session, and per-frame timers and waiter tasks would double its cost.
        """
        self._last_sent = time.monotonic()
        self._schedule_keepalive(self.keepalive)
        self.stream.add_close_callback(self.close)
        try:
            while not self.closed.is_set():
                backlog = self._backlog
                if not backlog:
                    self._backlog = None  # drained: do not keep the deque for hours
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                if self.stream.closed.is_set():
                    break
                frame = backlog.popleft()
                self._sending = True
                await self.stream.send_data(frame)
                self._sending = False
                self._sent(frame)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.closed.set()

    # Keep-alives are methods, not closures inside run(): a closure that schedules itself is a
    # reference cycle (function, cell, function) holding the session, its stream and the whole
    # connection after the client left, until a cycle collection, which the frozen heap defers.
    def _schedule_keepalive(self, delay: float) -> None:
        """Arm the timer ``delay`` (plus jitter) from now, rounded up to a tick shared by every
        session: an idle server then wakes once per tick for all the keep-alives due in it, not
        once per session. Each wake-up from idle cost ~200 us of CPU (cold caches, the
        scheduler), twenty times the send."""
        if self.closed.is_set():
            return
        loop = asyncio.get_running_loop()
        tick = min(KEEPALIVE_TICK, self.keepalive / 10)
        when = math.ceil((loop.time() + delay + self._jitter()) / tick) * tick
        self._timer = loop.call_at(when, self._keepalive_due)

    def _keepalive_due(self) -> None:
        idle = time.monotonic() - self._last_sent
        if idle >= self.keepalive:
            self.push(self.keepalive_frame())
            idle = 0.0
        self._schedule_keepalive(self.keepalive - idle)
