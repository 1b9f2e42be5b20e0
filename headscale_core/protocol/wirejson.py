"""JSON for the wire: compact bytes, encoded by orjson.

Map messages are the server's largest output (a full map at 1,000 peers is about a megabyte
of JSON) and every batch encodes some; orjson is several times faster than the standard
library here. The output is the same compact JSON apart from non-ASCII text, which orjson
writes as UTF-8 instead of ``\\u`` escapes (both decode alike in Go). Values orjson refuses
(integers beyond 64 bits from a client's free-form Hostinfo) fall back to the standard library,
so nothing a client sent can make a map unencodable; the fallback is counted in ``FALLBACKS``
(a test asserts a full map never needs it).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

FALLBACKS = 0


def dumps(obj: Any) -> bytes:
    try:
        # Integer keys (the DERP map's region IDs) become strings, as the standard library does.
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        global FALLBACKS
        FALLBACKS += 1
        return json.dumps(obj, separators=(",", ":")).encode()
