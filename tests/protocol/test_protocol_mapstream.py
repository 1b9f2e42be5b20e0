"""Map-response framing: LE32 length || zstd(JSON) (``headscale_core.protocol.mapstream``)."""

from __future__ import annotations

import json
import struct

import pytest
import zstandard

from headscale_core.protocol.errors import RemoteProtocolError
from headscale_core.protocol.mapstream import (
    KEEPALIVE_JSON,
    KEEPALIVE_MESSAGE,
    KEEPALIVE_MESSAGE_RAW,
    MapMessageEncoder,
    MapStreamDecoder,
)
from headscale_core.protocol.noise import NoiseTransport

K1, K2 = b"\x01" * 32, b"\x02" * 32


def test_keepalive_is_le32_length_then_one_zstd_frame() -> None:
    (length,) = struct.unpack_from("<I", KEEPALIVE_MESSAGE)
    assert length == len(KEEPALIVE_MESSAGE) - 4
    assert zstandard.ZstdDecompressor().decompress(KEEPALIVE_MESSAGE[4:]) == b'{"KeepAlive":true}'
    assert KEEPALIVE_MESSAGE_RAW == struct.pack("<I", len(KEEPALIVE_JSON)) + KEEPALIVE_JSON


def test_encoded_message_is_plain_bytes_shareable_between_recipients() -> None:
    body = json.dumps({"Peers": [{"ID": i} for i in range(100)]}).encode()
    message = MapMessageEncoder().encode(body)
    decoders = [MapStreamDecoder() for _ in range(3)]
    assert all(decoder.receive_data(message) == [body] for decoder in decoders)


STREAM = KEEPALIVE_MESSAGE + MapMessageEncoder().encode(b'{"Node":{"ID":1}}') + KEEPALIVE_MESSAGE
EXPECTED = [KEEPALIVE_JSON, b'{"Node":{"ID":1}}', KEEPALIVE_JSON]


def test_decoder_fed_whole() -> None:
    assert MapStreamDecoder().receive_data(STREAM) == EXPECTED


def test_decoder_fed_one_byte_at_a_time() -> None:
    decoder = MapStreamDecoder()
    out = [m for i in range(len(STREAM)) for m in decoder.receive_data(STREAM[i : i + 1])]
    assert out == EXPECTED
    assert decoder.pending == 0


def test_decoder_keeps_a_trailing_partial_message() -> None:
    decoder = MapStreamDecoder()
    assert decoder.receive_data(STREAM + KEEPALIVE_MESSAGE[:7]) == EXPECTED
    assert decoder.pending == 7
    assert decoder.receive_data(KEEPALIVE_MESSAGE[7:]) == [KEEPALIVE_JSON]


def test_raw_json_mode_when_compression_was_not_requested() -> None:
    encoder = MapMessageEncoder()
    data = encoder.encode(b"{}", compress=False) + KEEPALIVE_MESSAGE_RAW
    assert MapStreamDecoder(compressed=False).receive_data(data) == [b"{}", KEEPALIVE_JSON]


def test_frames_without_content_size_decode() -> None:
    body = zstandard.ZstdCompressor(write_content_size=False).compress(b'{"a":1}')
    assert MapStreamDecoder().receive_data(struct.pack("<I", len(body)) + body) == [b'{"a":1}']


def test_message_split_across_noise_records_and_several_in_one() -> None:
    big = json.dumps({"Peers": [{"ID": i, "Name": f"node-{i}"} for i in range(3000)]}).encode()
    stream = MapMessageEncoder().encode(big) + KEEPALIVE_MESSAGE * 3
    sender = NoiseTransport(send_key=K1, receive_key=K2)
    receiver = NoiseTransport(send_key=K2, receive_key=K1)
    decoder = MapStreamDecoder()
    messages = [
        m for chunk in receiver.receive_data(sender.encrypt(stream)) for m in decoder.receive_data(chunk)
    ]
    assert messages == [big] + [KEEPALIVE_JSON] * 3


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (struct.pack("<I", 5) + b"hello", "not valid zstd"),
        (struct.pack("<I", len(KEEPALIVE_MESSAGE) - 5) + KEEPALIVE_MESSAGE[4:-1], "truncated"),
        (
            struct.pack("<I", len(KEEPALIVE_MESSAGE) - 3) + KEEPALIVE_MESSAGE[4:] + b"x",
            "not valid zstd after 1 whole zstd frame",
        ),
        (struct.pack("<I", 1 << 30), "exceeds"),
    ],
)
def test_bad_messages_are_the_servers_fault(data: bytes, problem: str) -> None:
    decoder = MapStreamDecoder()
    with pytest.raises(RemoteProtocolError, match=problem):
        decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.receive_data(KEEPALIVE_MESSAGE)


def test_decompressed_size_limit() -> None:
    message = MapMessageEncoder().encode(bytes(10_000))
    with pytest.raises(RemoteProtocolError, match="decompresses to more than the 1000-byte limit"):
        MapStreamDecoder(max_message_size=1000).receive_data(message)


def test_a_message_may_be_several_zstd_frames_of_one_document() -> None:
    # RFC 8878 3.1: a decoder concatenates the frames' contents (the mapper's full maps).
    encoder = MapMessageEncoder()
    peer = b'{"ID":1,"Name":"' + b"n" * 200 + b'"}'
    parts = [b'{"Peers":[' + peer, b"," + peer, b'],"Domain":"x"}']
    message = encoder.frame([encoder.compress(part) for part in parts])
    assert MapStreamDecoder().receive_data(message) == [b"".join(parts)]
    limit = len(message) + 1  # the compressed message fits; its contents do not
    with pytest.raises(RemoteProtocolError, match=f"decompresses to more than the {limit}-byte limit"):
        MapStreamDecoder(max_message_size=limit).receive_data(message)
