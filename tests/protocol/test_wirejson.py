"""Map JSON is encoded by orjson; what a server sends never needs the slow fallback."""

from __future__ import annotations

import json

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
