"""Full maps from shared compressed runs of peers (``mapper.fullmap``)."""

from __future__ import annotations

import json

import zstandard

from headscale_core.mapper.fullmap import KEEP_PER_RUN, RUN_SPAN, FullMapFrames
from headscale_core.mapper.wire import PeerVariant
from headscale_core.protocol.mapstream import MapMessageEncoder, decompress_frames


def peers(ids: list[int], variants: dict[int, PeerVariant]) -> list[tuple[int, PeerVariant]]:
    for node_id in ids:
        if node_id not in variants:
            variants[node_id] = PeerVariant({"ID": node_id, "Name": f"node{node_id}.example.", "AllowedIPs": []})
    return [(node_id, variants[node_id]) for node_id in ids]


def decode(frames: list[bytes]) -> dict:
    return json.loads(decompress_frames(zstandard.ZstdDecompressor(), b"".join(frames)))


def test_the_frames_decode_to_the_whole_map() -> None:
    variants: dict[int, PeerVariant] = {}
    maps = FullMapFrames(MapMessageEncoder())
    ids = [*range(1, RUN_SPAN), *range(RUN_SPAN, RUN_SPAN + 40), *range(3 * RUN_SPAN, 3 * RUN_SPAN + 30)]
    frames = maps.body(peers(ids, variants), json.dumps({"Node": {"ID": 9}, "Domain": "x"}).encode())
    assert len(frames) == 4  # runs 0, 1 and 3, and the viewer's own fields
    assert decode(frames) == {"Peers": [variants[i].json for i in ids], "Node": {"ID": 9}, "Domain": "x"}
    one = maps.body(peers([7], variants), b'{"Domain":"x"}')
    assert decode(one) == {"Peers": [variants[7].json], "Domain": "x"}


def test_peers_scattered_thinly_over_the_ids_make_one_frame() -> None:
    variants: dict[int, PeerVariant] = {}
    maps = FullMapFrames(MapMessageEncoder())
    ids = list(range(5, 40 * RUN_SPAN, RUN_SPAN // 2))  # two peers in each of 40 stretches
    frames = maps.body(peers(ids, variants), b'{"Domain":"x"}')
    assert len(frames) == 1
    assert decode(frames) == {"Peers": [variants[i].json for i in ids], "Domain": "x"}
    assert maps.misses == maps.hits == 0  # no runs: nothing to share or keep


def test_a_run_is_kept_once_two_viewers_asked_for_it_and_only_then() -> None:
    variants: dict[int, PeerVariant] = {}
    maps = FullMapFrames(MapMessageEncoder())
    everyone = list(range(1, 3 * RUN_SPAN))
    for viewer in range(1, 6):  # viewers 1-5 all sit in run 0: they differ there, share the rest
        seen = [i for i in everyone if i != viewer]
        frames = maps.body(peers(seen, variants), b'{"Domain":"x"}')
        assert decode(frames)["Peers"] == [variants[i].json for i in seen]
    # runs 1 and 2 compressed for viewers 1 and 2 and then reused by 3, 4 and 5; run 0 differs
    # for each viewer (it lacks the viewer) and is compressed every time, never kept
    assert (maps.hits, maps.misses) == (2 * 3, 5 + 2 * 2)
    assert maps.kept_bytes() > 0
    held = maps.kept_bytes()
    # a peer of run 1 changes: its run is new content, the old one stays until pushed out
    variants[RUN_SPAN + 1] = PeerVariant({"ID": RUN_SPAN + 1, "Name": "renamed.example.", "AllowedIPs": []})
    for _ in range(2 * KEEP_PER_RUN):
        variants[RUN_SPAN + 2] = PeerVariant({"ID": RUN_SPAN + 2, "Name": f"n{_}.example.", "AllowedIPs": []})
        for _viewer in range(2):
            frames = maps.body(peers(everyone[1:], variants), b'{"Domain":"x"}')
        got = {peer["ID"]: peer for peer in decode(frames)["Peers"]}
        assert got[RUN_SPAN + 1] == variants[RUN_SPAN + 1].json
        assert got[RUN_SPAN + 2] == variants[RUN_SPAN + 2].json
    # stale contents of run 1 gave way: at most KEEP_PER_RUN of them, each about as big as before
    assert maps.kept_frames() <= 2 + KEEP_PER_RUN
    assert maps.kept_bytes() <= held * (1 + KEEP_PER_RUN) * 1.2
