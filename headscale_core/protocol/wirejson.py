"""JSON for the wire: compact bytes, encoded by orjson.

Map messages are the server's largest output (a full map at 1,000 peers is about a megabyte
of JSON) and every batch encodes some; orjson is several times faster than the standard
library here. The output is the same compact JSON apart from non-ASCII text, which orjson
writes as UTF-8 instead of ``\\u`` escapes (both decode alike in Go). Values orjson refuses
(integers beyond 64 bits from a client's free-form Hostinfo) fall back to the standard library,
so nothing a client sent can make a map unencodable; the fallback is counted in ``FALLBACKS``
(a test asserts a full map never needs it).

orjson builds its output in a buffer it does not shrink: 16 KB behind a 1.4 KB peer, 4 KB behind
a 100-byte patch. Encodings kept for long (each peer's JSON, held for every full map) go through
``dumps_kept``, which copies them to their size. Requests are parsed by orjson too (``loads``),
which shares the strings of repeated keys between documents: every node's Hostinfo has the same
few dozen.
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


def dumps_kept(obj: Any) -> bytes:
    """``dumps`` for bytes that will be kept: an exact-size copy, not orjson's big buffer."""
    return bytes(memoryview(dumps(obj)))


def loads(data: bytes) -> Any:
    """Parse ``data``; what orjson refuses (integers beyond 64 bits, say) goes to the standard
    library, whose errors (``ValueError``) say what and where."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
