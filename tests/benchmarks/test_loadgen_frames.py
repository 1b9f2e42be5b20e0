"""The load generator's map-stream reader cuts plain DATA frames of its map streams out of the
decrypted bytes and leaves every other frame, whole and in order, to h2."""

from __future__ import annotations

from benchmarks.loadgen.node import CountingClient


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def reader() -> tuple[CountingClient, list[bytes], list[bytes]]:
    client = CountingClient.__new__(CountingClient)  # no connection: only the frame splitter
    client._frames = bytearray()
    client._uncredited = {}
    got: list[bytes] = []
    to_h2: list[bytes] = []
    client._sinks = {3: got.append}
    client._to_h2 = to_h2.append  # type: ignore[method-assign]
    return client, got, to_h2


def test_sink_frames_are_cut_out_and_the_rest_reaches_h2_in_order() -> None:
    client, got, to_h2 = reader()
    headers = frame(1, 4, 5, b"hdrs")
    data = [frame(0, 0, 3, b"abc"), frame(0, 0, 3, b"defgh")]
    last = frame(0, 1, 3, b"z")  # END_STREAM: h2 must see it
    other = frame(0, 0, 7, b"not ours")
    ping = frame(6, 0, 0, b"12345678")
    wire = headers + data[0] + other + data[1] + last + ping
    for i in range(0, len(wire), 5):  # frames split across reads
        client._split(wire[i : i + 5])
    assert got == [b"abc", b"defgh"]
    assert b"".join(to_h2) == headers + other + last + ping
    assert client._uncredited == {3: 8}
    assert client._frames == bytearray()


def test_a_partial_frame_waits_for_the_rest() -> None:
    client, got, to_h2 = reader()
    whole = frame(0, 0, 3, b"x" * 100)
    client._split(whole[:50])
    assert got == [] and to_h2 == []
    client._split(whole[50:])
    assert got == [b"x" * 100] and to_h2 == []


def test_a_read_of_exactly_one_data_frame_goes_straight_to_the_sink() -> None:
    client, got, to_h2 = reader()
    client._split(frame(0, 0, 3, b"abc"))
    client._split(frame(0, 0, 7, b"not ours"))  # no sink: through the buffer to h2
    assert got == [b"abc"]
    assert to_h2 == [frame(0, 0, 7, b"not ours")]
    assert client._uncredited == {3: 3}
    assert client._frames == bytearray()
