"""Map JSON is encoded by orjson; what a server sends never needs the slow fallback."""

from __future__ import annotations

import json
import sys
import tracemalloc

import pytest

from headscale_core.protocol import wirejson


def test_what_a_server_sends_is_encoded_by_orjson_like_the_standard_library() -> None:
    message = {
        "DERPMap": {"Regions": {1: {"RegionID": 1, "RegionCode": "a", "Nodes": [{"Name": "1a", "RegionID": 1}]}}},
        "Peers": [{"ID": 7, "Hostinfo": {"OS": "linux", "Hostname": "höst", "NetInfo": {"DERPLatency": {"1-v4": 0.01}}},
                   "AllowedIPs": ["100.64.0.7/32"], "Online": True, "Endpoints": None}],
    }
    before = wirejson.FALLBACKS
    encoded = wirejson.dumps(message)
    assert wirejson.FALLBACKS == before, "a region-keyed DERP map must not need the stdlib fallback"
    assert json.loads(encoded) == json.loads(json.dumps(message))
    assert b'"Regions":{"1":' in encoded and b" " not in encoded.replace(b"h\xc3\xb6st", b"")


def test_values_orjson_refuses_fall_back_to_the_standard_library() -> None:
    hostinfo = {"Hostinfo": {"Counter": 1 << 70}}  # beyond 64 bits: a client may send anything
    before = wirejson.FALLBACKS
    assert json.loads(wirejson.dumps(hostinfo)) == hostinfo
    assert wirejson.FALLBACKS == before + 1


def test_kept_encodings_are_exact_size_copies() -> None:
    node = {"Hostinfo": {"OSVersion": "x" * 1400}}
    kept = wirejson.dumps_kept(node)
    assert kept == wirejson.dumps(node)
    # orjson's own result sits in a 16 KB buffer; the kept copy is its length plus a header
    assert sys.getsizeof(kept) < len(kept) + 64
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [wirejson.dumps_kept(node) for _ in range(50)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 50 * 2 * len(kept), f"{grown / 50:.0f} bytes held per {len(kept)}-byte encoding"
    assert len(held) == 50


def test_loads_takes_what_orjson_refuses_through_the_standard_library() -> None:
    assert wirejson.loads(b'{"Hostinfo":{"Hostname":"a"}}') == {"Hostinfo": {"Hostname": "a"}}
    big = 1 << 70  # beyond 64 bits: orjson refuses it
    assert wirejson.loads(b'{"n":%d}' % big) == {"n": big}
    with pytest.raises(ValueError, match="Expecting"):
        wirejson.loads(b'{"n":')
