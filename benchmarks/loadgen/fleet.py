"""N simulated nodes in one event loop: dialling, registering and polling with bounded
concurrency, one applier that decodes and applies their map messages, watches that timestamp
when a node first sees something, and the end-of-phase check of every peer table.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import zstandard

from benchmarks.loadgen.node import SimNode
from benchmarks.loadgen.peertable import MapMessage, Peer, decode_message
from headscale_core.protocol.mapstream import decompress_frames
from headscale_core.testing.tsclient import fetch_server_key

# Frames below this size are applied on arrival: deltas cost microseconds to decode.
INLINE_FRAME_BYTES = 8192
DEFAULT_CONCURRENCY = 64
# Large frames wait while others are still arriving (reading them is what is timed), unless
# this many bytes are waiting.
BACKLOG_LIMIT = 512 << 20
QUIET_SECONDS = 0.002
# Decoded messages kept by frame: a server shares one frame among a batch's recipients.
DECODED_CACHE = 32


@dataclass(frozen=True)
class Watch:
    """Record, per node, when ``peer_id`` first satisfies ``test`` (None: the peer is absent)."""

    name: str
    peer_id: int
    test: Callable[[Peer | None], bool]


class Fleet:
    def __init__(self, url: str, nodes: list[SimNode]) -> None:
        self.url = url
        self.nodes = nodes
        self.server_public: Any = None
        self._ready: deque[SimNode] = deque()
        self._work = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._decompressor = zstandard.ZstdDecompressor()
        self._watches: dict[int, list[Watch]] = {}
        # Nodes that have seen each watch so far: waiting on a change's thousand recipients
        # checks a count, not every node's record, while the last deliveries are being read.
        self.seen_counts: Counter[str] = Counter()
        self._decoded: dict[bytes, MapMessage] = {}
        self._last_arrival = 0.0
        self._backlog = 0

    @classmethod
    def generate(cls, url: str, count: int, seed: int = 1, prefix: str = "sim") -> Fleet:
        rng = random.Random(seed)
        return cls(url, [SimNode.generate(i, rng, prefix) for i in range(count)])

    async def __aenter__(self) -> Fleet:
        self.server_public = await fetch_server_key(self.url)
        self._applier = asyncio.get_running_loop().create_task(self._apply_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.gather(self.nodes, SimNode.disconnect, concurrency=256)
        if self._applier is not None:
            self._applier.cancel()
            await asyncio.gather(self._applier, return_exceptions=True)

    # ---- driving many nodes ------------------------------------------------------------------

    @staticmethod
    async def gather(nodes: Iterable[SimNode], action: Callable[[SimNode], Awaitable[None]], *,
                     concurrency: int = DEFAULT_CONCURRENCY, timeout: float = 120.0) -> list[str]:
        """Run ``action`` on every node, at most ``concurrency`` at once, all within ``timeout``
        seconds; the errors, by node."""
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        deadline = asyncio.get_running_loop().time() + timeout  # for the whole batch, not per node

        async def one(node: SimNode) -> None:
            async with gate:
                try:
                    async with asyncio.timeout_at(deadline):
                        await action(node)
                except Exception as exc:
                    node.error = f"{type(exc).__name__}: {exc}"
                    errors.append(f"{node.name}: {node.error}")

        await asyncio.gather(*(one(n) for n in nodes))
        return errors

    async def join(self, node: SimNode) -> None:
        """Dial, register with the node's pre-auth key and start the map poll."""
        await node.dial(self.url, self.server_public)
        await node.register()
        node.error = None
        node.start_poll(self.deliver)

    async def redial(self, node: SimNode) -> None:
        """Dial and poll an already registered node (a restarted tailscaled does this)."""
        await node.dial(self.url, self.server_public)
        node.error = None
        node.start_poll(self.deliver)

    async def wait_until(self, done: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
        deadline = time.perf_counter() + timeout
        while not done():
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(interval)
        return True

    # ---- receiving ---------------------------------------------------------------------------

    def deliver(self, node: SimNode, arrived: float, frame: bytes) -> None:
        node.messages += 1
        self._last_arrival = arrived
        if node.first_map_at is None:
            node.first_map_at = arrived
        if not node.pending and len(frame) < INLINE_FRAME_BYTES:
            self._apply(node, arrived, frame)
            return
        node.pending.append((arrived, frame))
        self._backlog += len(frame)
        if not node.queued:
            node.queued = True
            self._ready.append(node)
            self._work.set()

    async def _apply_forever(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._ready:
                # Readers first: while frames are still arriving, decoding waits (bounded).
                if time.perf_counter() - self._last_arrival < QUIET_SECONDS and self._backlog < BACKLOG_LIMIT:
                    await asyncio.sleep(QUIET_SECONDS)
                    continue
                node = self._ready.popleft()
                arrived, frame = node.pending.popleft()
                self._backlog -= len(frame)
                try:
                    self._apply(node, arrived, frame)
                except Exception as exc:  # a bad message spoils one node's table, not the applier
                    node.error = f"could not apply a {len(frame)}-byte map message: {type(exc).__name__}: {exc}"
                if node.pending:
                    self._ready.append(node)
                else:
                    node.queued = False
                await asyncio.sleep(0)  # let readers timestamp what has arrived meanwhile

    def _decode(self, frame: bytes) -> MapMessage:
        """The message of ``frame``, decoded once for all recipients of the same frame (the
        decoded message is shared: appliers must not modify it)."""
        message = self._decoded.get(frame)
        if message is None:
            message = decode_message(decompress_frames(self._decompressor, frame))
            if len(self._decoded) >= DECODED_CACHE:
                del self._decoded[next(iter(self._decoded))]
            self._decoded[frame] = message
        return message

    def _apply(self, node: SimNode, arrived: float, frame: bytes) -> None:
        message = self._decode(frame)
        if message.KeepAlive:  # tailscaled ignores the rest of a keep-alive message
            node.keepalives += 1
            return
        own = message.Node
        if own is not None:
            if own.Key != node.node_key:  # the server sent another node's map on this stream
                node.wrong_self += 1
                node.error = f"received the map of node {own.ID} ({own.Key[:16]}…)"
                return
            if node.node_id is None:
                node.node_id = own.ID
        touched = node.table.apply(message)
        if not self._watches:
            return
        for peer_id in touched:
            for watch in self._watches.get(peer_id, ()):
                if watch.name not in node.seen and watch.test(node.table.peers.get(peer_id)):
                    node.seen[watch.name] = arrived
                    node.seen_read[watch.name] = time.perf_counter()
                    self.seen_counts[watch.name] += 1

    @property
    def idle(self) -> bool:
        return not self._ready

    async def settle(self, timeout: float = 120.0) -> bool:
        """Wait until every received message has been applied."""
        return await self.wait_until(lambda: self.idle, timeout, interval=0.01)

    # ---- watches -----------------------------------------------------------------------------

    def watch(self, watches: Iterable[Watch]) -> None:
        for w in watches:
            self._watches.setdefault(w.peer_id, []).append(w)

    def clear_watches(self) -> None:
        self._watches.clear()
        self.seen_counts.clear()
        for node in self.nodes:
            node.seen.clear()
            node.seen_read.clear()

    # ---- figures -----------------------------------------------------------------------------

    def bytes_received(self) -> int:
        return sum(n.bytes_received for n in self.nodes)

    def messages(self) -> int:
        return sum(n.messages for n in self.nodes)

    def by_id(self) -> dict[int, SimNode]:
        return {n.node_id: n for n in self.nodes if n.node_id is not None}

    def verify(self, expected_peers: Mapping[int, set[int]], nodes: Iterable[SimNode] | None = None, *,
               check_online: bool = False) -> list[str]:
        """Every node's table (of ``nodes``, default all) holds exactly its expected peers, each
        with the key, endpoints and disco key that peer last reported; returns the problems
        found (empty when all agree)."""
        problems: list[str] = []
        by_id = self.by_id()
        if nodes is None:
            problems += [f"{n.name}: no map applied yet ({n.messages} messages received, {len(n.pending)} pending, "
                         f"error: {n.error})" for n in self.nodes if n.node_id is None]
            problems += [f"{n.name}: {n.wrong_self} map message(s) meant for another node ({n.error})"
                         for n in self.nodes if n.wrong_self]
            if len(by_id) < len(self.nodes) - sum(1 for n in self.nodes if n.node_id is None):
                problems.append("two simulated nodes received the same node ID")
        for node in self.nodes if nodes is None else nodes:
            if node.node_id is None:
                continue
            want = expected_peers.get(node.node_id, set())
            have = set(node.table.peers)
            if have != want:
                problems.append(f"{node.name}: {len(have)} peers, expected {len(want)} "
                                f"(missing {sorted(want - have)[:5]}, extra {sorted(have - want)[:5]})")
                continue
            for peer_id in want:
                peer, truth = node.table.peers[peer_id], by_id.get(peer_id)
                if truth is None:
                    continue  # a peer that is not one of ours (a real client in the e2e test)
                if sorted(peer.endpoints) != sorted(truth.endpoints) or peer.key != truth.node_key \
                        or peer.disco_key != truth.disco_key:
                    problems.append(f"{node.name}: peer {peer_id} has endpoints {peer.endpoints}, "
                                    f"expected {truth.endpoints}")
                    break
                if check_online and peer.online is not (truth.client is not None):
                    problems.append(f"{node.name}: peer {peer_id} Online={peer.online}")
                    break
        return problems
