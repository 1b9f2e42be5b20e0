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

from collections.abc import Sequence

from headscale_core.mapper.wire import PeerVariant
from headscale_core.protocol.mapstream import MapMessageEncoder

RUN_SPAN = 64  # node IDs per run
MIN_RUN_PEERS = 16  # fewer peers per run on average: the map is one frame, no runs
KEEP_PER_RUN = 8  # contents kept per stretch of IDs (the oldest goes first)
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
        if len(peers) < MIN_RUN_PEERS * len(runs):
            # Peers scattered over the IDs (a user's nodes among everyone's): thin runs would
            # compress badly (3x the bytes at sparse N = 5,000) and are rarely shared. One frame.
            encoded = b",".join([variant.encoded for _, variant in peers])
            return [self._encoder.compress(b"".join((_FIRST, encoded, b"],", rest[1:])))]
        frames = [self._run(run_id, run, first=not index) for index, (run_id, run) in enumerate(runs)]
        frames.append(self._encoder.compress(b"]," + rest[1:]))
        return frames

    def kept_frames(self) -> int:
        return sum(map(len, self._kept.values()))

    def kept_bytes(self) -> int:
        return sum(len(frame) for names in self._kept.values() for frame in names.values())

    def _run(self, run_id: int, run: list[PeerVariant], *, first: bool) -> bytes:
        slot = self._kept.get((first, run_id))
        name = (int(first), *(variant.serial for variant in run))
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
