"""Full maps assembled from compressed runs of peers that many viewers share.

A full map's ``Peers`` is most of its bytes, and where many nodes see the same peers it is
mostly the same for each of them: a reconnect storm at dense N = 1,000 compressed the same
1.6 MB of peer JSON a thousand times (a third of its CPU). So the body is written as several
zstd frames, which a client decodes as the concatenation of their contents (RFC 8878 §3.1;
tailscaled's decoder takes "zero or more frames"):

    {"Peers":[ peer, … | ,peer, … | … | ],"Node":…,"PacketFilter":…,…}
    `-------- run 0 --------'`- run 1 -'      `------- the viewer's own tail -------'

Peers are cut into runs by node ID (``RUN_SPAN`` consecutive IDs per run); a viewer whose
peers are scattered thinly over the IDs gets its map as one frame instead. Each run is
compressed once per distinct content, named by the serials of the peer variants in it, and its
frame is kept once a second viewer asks for the very same run: a run only one viewer gets (the
one holding the viewer itself, in a dense tailnet) costs no memory. Each stretch of IDs keeps
its ``KEEP_PER_RUN`` latest contents (viewers of different users may see different peers of
one stretch), so runs made stale by a peer's change give way to their successors. A run costs a
few bytes more than the same peers inside one big frame (a frame header, no matches across runs).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from headscale_core.mapper.wire import PeerJSON, PeerVariant
from headscale_core.protocol.mapstream import MapMessageEncoder

if TYPE_CHECKING:
    from headscale_core.state.service import StateService

RUN_SPAN = 64  # node IDs per run
MIN_RUN_PEERS = 16  # fewer peers per run on average: the map is one frame, no runs
KEEP_PER_RUN = 8  # contents kept per stretch of IDs (the oldest goes first)
KEEP_PEER_RUNS = 4  # PeerRuns kept per stretch: the whole stretch, and what viewers inside it see
SEEN_LIMIT = 1 << 16  # names of runs asked for once, remembered at most

_FIRST = b'{"Peers":['


class FullMapFrames:
    """Compressed runs of peers, shared between the full maps of different viewers."""

    def __init__(self, encoder: MapMessageEncoder) -> None:
        self._encoder = encoder
        # (first?, stretch) -> {name: frame}; a name is first? and the variants' serials
        self._kept: dict[tuple[int, int], dict[tuple[int, ...], bytes]] = {}
        self._seen: set[tuple[int, ...]] = set()
        self.hits = 0
        self.misses = 0

    def body(self, peers: Sequence[tuple[int, PeerVariant]], rest: bytes) -> list[bytes]:
        """The zstd frames of a full map: ``peers`` (node ID and variant, in ID order, at
        least one) as ``Peers``, then the other fields, ``rest`` (a JSON object's encoding)."""
        runs: list[tuple[int, list[PeerVariant]]] = []
        for node_id, variant in peers:
            run_id = node_id // RUN_SPAN
            if not runs or runs[-1][0] != run_id:
                runs.append((run_id, []))
            runs[-1][1].append(variant)
        return self._frames([(run_id, run, None) for run_id, run in runs], len(peers), rest)

    def body_runs(self, runs: Sequence[PeerRun], rest: bytes) -> list[bytes]:
        """``body`` for peers already cut into runs (``PeerRuns``, at least one)."""
        return self._frames([(run.run_id, run.variants, run.serials) for run in runs],
                            sum(len(run.ids) for run in runs), rest)

    def _frames(self, runs: list[tuple[int, list[PeerVariant], tuple[int, ...] | None]], count: int,
                rest: bytes) -> list[bytes]:
        if count < MIN_RUN_PEERS * len(runs):
            # Peers scattered over the IDs (a user's nodes among everyone's): thin runs would
            # compress badly (3x the bytes at sparse N = 5,000) and are rarely shared. One frame.
            encoded = b",".join([variant.encoded for _, run, _ in runs for variant in run])
            return [self._encoder.compress(b"".join((_FIRST, encoded, b"],", rest[1:])))]
        frames = [self._run(run_id, run, serials, first=not index)
                  for index, (run_id, run, serials) in enumerate(runs)]
        frames.append(self._encoder.compress(b"]," + rest[1:]))
        return frames

    def kept_frames(self) -> int:
        return sum(map(len, self._kept.values()))

    def kept_bytes(self) -> int:
        return sum(len(frame) for names in self._kept.values() for frame in names.values())

    def _run(self, run_id: int, run: list[PeerVariant], serials: tuple[int, ...] | None, *, first: bool) -> bytes:
        slot = self._kept.get((first, run_id))
        if serials is None:
            serials = tuple([variant.serial for variant in run])
        name = (int(first), *serials)
        frame = slot.get(name) if slot is not None else None
        if frame is not None:
            self.hits += 1
            return frame
        self.misses += 1
        encoded = b",".join([variant.encoded for variant in run])
        frame = self._encoder.compress(_FIRST + encoded if first else b"," + encoded)
        if name in self._seen:
            self._seen.discard(name)
            if slot is None:
                slot = self._kept[first, run_id] = {}
            elif len(slot) >= KEEP_PER_RUN:
                del slot[next(iter(slot))]
            slot[name] = frame
        else:
            if len(self._seen) >= SEEN_LIMIT:
                self._seen.clear()
            self._seen.add(name)
        return frame


@dataclass(slots=True, eq=False)
class PeerRun:
    """The peers of one stretch of node IDs that a viewer sees, as JSON variants."""

    run_id: int
    ids: tuple[int, ...]
    variants: list[PeerVariant]
    serials: tuple[int, ...]
    user_ids: frozenset[int | None]
    stamp: int  # the latest ``NodeStore.touched`` of its nodes when it was made
    policy_version: int
    expires: datetime | None  # the earliest future expiry among its nodes (a peer's JSON changes then)


class PeerRuns:
    """Peers cut into runs of ``RUN_SPAN`` node IDs, each run's variants shared between the
    viewers that see the very same peers of it (its content the same for each of them).

    In a dense tailnet every viewer sees every other node: its full map is the tailnet's runs
    but its own. A reconnect storm at N = 1,000 looked at each peer for each viewer, a million
    look-ups; a run is made again only when one of its nodes changed (``NodeStore.touched``),
    the policy moved on, or one of its peers expired.
    """

    def __init__(self, state: StateService, peers: PeerJSON) -> None:
        self.state = state
        self.peers = peers
        self._kept: dict[int, dict[tuple[int, ...], PeerRun]] = {}
        self.hits = 0
        self.misses = 0

    def runs(self, ids: Sequence[int], viewer_id: int) -> list[PeerRun]:
        """``ids`` (sorted, all in the store) in runs, as ``viewer_id`` sees them."""
        now = datetime.now(UTC)
        span = RUN_SPAN
        out: list[PeerRun] = []
        start, end = 0, len(ids)
        while start < end:
            run_id = ids[start] // span
            stop = bisect_left(ids, (run_id + 1) * span, start, end)
            out.append(self._run(run_id, tuple(ids[start:stop]), viewer_id, now))
            start = stop
        return out

    def _run(self, run_id: int, chunk: tuple[int, ...], viewer_id: int, now: datetime) -> PeerRun:
        store = self.state.store
        version = self.state.policy.version
        stamp = max(map(store.touched.__getitem__, chunk))
        slot = self._kept.get(run_id)
        kept = slot.get(chunk) if slot is not None else None
        if (kept is not None and kept.stamp == stamp and kept.policy_version == version
                and (kept.expires is None or now < kept.expires)):
            self.hits += 1
            return kept
        self.misses += 1
        nodes = [store.nodes[node_id] for node_id in chunk]
        variants, shared = self.peers.run_variants(nodes, viewer_id, now)
        run = PeerRun(run_id, chunk, variants, tuple([variant.serial for variant in variants]),
                      frozenset(node.user_id for node in nodes), stamp, version,
                      min((n.expiry for n in nodes if n.expiry is not None and n.expiry > now), default=None))
        if shared:  # the same for any viewer that sees exactly these peers
            if slot is None:
                slot = self._kept[run_id] = {}
            elif kept is None and len(slot) >= KEEP_PEER_RUNS:
                # The oldest goes, but never the largest: the whole stretch, which every viewer
                # outside it sees, outlives the chunks its own nodes see (each lacks the viewer).
                largest = max(slot, key=len)
                del slot[next(key for key in slot if key is not largest)]
            slot[chunk] = run
        return run
