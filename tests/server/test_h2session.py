"""``H2Session``'s fast DATA path (``ResponseStream.try_send_nowait``) against a real h2 client:
frames it builds by hand decode as h2's own would, and the flow-control books stay exact."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame
import pytest

from headscale_core.protocol.keys import MachinePublic
from headscale_core.protocol.noise import NoiseTransport
from headscale_core.server.h2session import ByteChannel, H2Session, ResponseStream, data_frames, release_h2


class _Wire(ByteChannel):
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def read(self) -> bytes:
        await asyncio.sleep(3600)
        return b""

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    async def drain(self) -> None:
        pass

    def backlog(self) -> int:
        return 0

    async def close(self) -> None:
        pass


class _Pair:
    """A server session and the h2 client talking to it through Noise records."""

    def __init__(self) -> None:
        a, b = os.urandom(32), os.urandom(32)
        self.wire = _Wire()
        self.client_noise = NoiseTransport(send_key=b, receive_key=a)
        self.responses: list[ResponseStream] = []
        self.requests: list[Any] = []
        self.session = H2Session(self.wire, NoiseTransport(send_key=a, receive_key=b), self._handler,
                                 machine_key=MachinePublic(bytes(32)), capver=100, remote="test")
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.session.h2.initiate_connection()
        self.session.flush_nowait()
        self.client.initiate_connection()

    async def _handler(self, request: Any, response: ResponseStream) -> None:
        self.requests.append(request)
        self.responses.append(response)
        await response.send_headers(200)
        await asyncio.sleep(3600)

    def to_server(self) -> None:
        self.session._receive(self.client_noise.encrypt(self.client.data_to_send()))

    def to_client(self) -> list[h2.events.Event]:
        events: list[h2.events.Event] = []
        for record in self.wire.sent:
            for plain in self.client_noise.receive_data(record):
                events += self.client.receive_data(plain)
        self.wire.sent.clear()
        return events

    async def open_stream(self) -> tuple[int, ResponseStream]:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(":method", "POST"), (":path", "/machine/map"), (":scheme", "http"),
                                       (":authority", "x")], end_stream=True)
        self.to_server()
        await asyncio.sleep(0)
        return sid, self.responses[-1]


def _data(events: list[h2.events.Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)


def test_data_frames_split_at_the_frame_size() -> None:
    frames = data_frames(3, b"a" * 10, 4)
    assert frames == (b"\x00\x00\x04\x00\x00\x00\x00\x00\x03aaaa" b"\x00\x00\x04\x00\x00\x00\x00\x00\x03aaaa"
                      b"\x00\x00\x02\x00\x00\x00\x00\x00\x03aa")


def test_fast_path_frames_decode_and_windows_match_both_sides() -> None:
    async def scenario() -> None:
        pair = _Pair()
        sid, response = await pair.open_stream()
        pair.to_client()
        small, large = b"k" * 40, os.urandom(40_000)  # the large one spans three 16 KB frames
        before = pair.session.h2.local_flow_control_window(sid)
        assert response.try_send_nowait(small)
        pair.client.increment_flow_control_window(1 << 20)
        pair.client.increment_flow_control_window(1 << 20, stream_id=sid)
        pair.to_server()
        assert response.try_send_nowait(large)
        events = pair.to_client()
        assert _data(events, sid) == small + large
        assert pair.session.h2.local_flow_control_window(sid) == before + (1 << 20) - len(small) - len(large)
        # the client's books agree: acknowledging what arrived must not upset the server's h2
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                pair.client.acknowledge_received_data(e.flow_controlled_length, sid)
        pair.to_server()
        await response.send_data(b"after")  # h2's own path still works on the same stream
        assert _data(pair.to_client(), sid) == b"after"

    asyncio.run(scenario())


def test_fast_path_declines_what_the_window_cannot_take() -> None:
    async def scenario() -> None:
        pair = _Pair()
        sid, response = await pair.open_stream()
        window = pair.session.h2.local_flow_control_window(sid)
        assert not response.try_send_nowait(b"x" * (window + 1))
        assert pair.session.h2.local_flow_control_window(sid) == window, "nothing charged"
        assert response.try_send_nowait(b"x" * window)
        assert not response.try_send_nowait(b"y")
        assert _data(pair.to_client(), sid) == b"x" * window

    asyncio.run(scenario())


def test_frames_queued_by_h2_go_out_first() -> None:
    async def scenario() -> None:
        pair = _Pair()
        sid, response = await pair.open_stream()
        pair.to_client()
        pair.session.h2.ping(b"12345678")  # queued in h2, not yet flushed
        assert response.try_send_nowait(b"data")
        events = pair.to_client()
        kinds = [type(e) for e in events if isinstance(e, h2.events.PingReceived | h2.events.DataReceived)]
        assert kinds == [h2.events.PingReceived, h2.events.DataReceived]

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["reset", "goaway"])
def test_fast_path_declines_a_stream_the_client_ended(how: str) -> None:
    async def scenario() -> None:
        pair = _Pair()
        sid, response = await pair.open_stream()
        pair.to_client()
        if how == "reset":
            pair.client.reset_stream(sid)
        else:
            pair.client.close_connection()
        pair.to_server()
        pair.wire.sent.clear()
        assert not response.try_send_nowait(b"late")
        assert pair.wire.sent == []

    asyncio.run(scenario())


def test_settings_are_kept_compact_and_still_change() -> None:
    async def scenario() -> None:
        pair = _Pair()
        codes = h2.settings.SettingCodes
        pair.client.update_settings({codes.INITIAL_WINDOW_SIZE: 1 << 20, codes.MAX_HEADER_LIST_SIZE: 1 << 16})
        pair.to_server()
        server = pair.session.h2
        for settings in (server.local_settings, server.remote_settings):
            assert {type(v).__name__ for v in settings._settings.values()} == {"_SettingValues"}
        assert server.remote_settings.initial_window_size == 1 << 20
        assert server.remote_settings.max_header_list_size == 1 << 16
        sid, response = await pair.open_stream()
        assert server.local_flow_control_window(sid) == min(server.outbound_flow_control_window, 1 << 20)
        # the client acknowledges our settings: the compacted values take the ack as h2's deques did
        assert [type(e) for e in pair.to_client() if isinstance(e, h2.events.SettingsAcknowledged)]
        pair.to_server()
        server.update_settings({codes.MAX_CONCURRENT_STREAMS: 50})
        pair.session.flush_nowait()
        pair.to_client()
        pair.to_server()
        assert server.local_settings.max_concurrent_streams == 50

    asyncio.run(scenario())


def test_header_tables_are_kept_compact_and_still_index_and_evict() -> None:
    async def scenario() -> None:
        pair = _Pair()
        server = pair.session.h2
        for coder in (server.encoder, server.decoder):
            assert type(coder.header_table.dynamic_entries).__name__ == "_HeaderEntries"
        # Repeated headers are sent as indexes into the decoder's dynamic table; values large
        # enough to overflow its 4,096 bytes make it evict (pop) the oldest.
        for k in range(12):
            sid = pair.client.get_next_available_stream_id()
            pair.client.send_headers(sid, [(":method", "POST"), (":path", "/machine/map"), (":scheme", "http"),
                                           (":authority", "x"), ("x-same", "kept"), ("x-big", f"{k}" * 600)],
                                     end_stream=True)
            pair.to_server()
            await asyncio.sleep(0)
            request = pair.requests[-1]
            assert (request.header("x-same"), request.header("x-big")) == ("kept", f"{k}" * 600)
        table = server.decoder.header_table
        assert table._current_size <= table.maxsize
        assert table.dynamic_entries[0] == (b"x-big", b"11" * 600)
        assert len(table.dynamic_entries) < 12 + 1, "older entries were evicted"
        headers = [e for e in pair.to_client() if isinstance(e, h2.events.ResponseReceived)]
        assert len(headers) == 12  # our encoder's table (":status 200" indexed) answers every one

    asyncio.run(scenario())


def test_frame_dispatch_is_shared_and_released() -> None:
    async def scenario() -> None:
        pair = _Pair()
        other = _Pair()
        table = pair.session.h2._frame_dispatch_table
        assert type(table).__name__ == "_FrameDispatch"
        assert table._names is other.session.h2._frame_dispatch_table._names, "one table of names for all"
        sid, _ = await pair.open_stream()  # HEADERS, SETTINGS and WINDOW_UPDATE frames dispatch through it
        assert sid in pair.session._responses
        assert table[hyperframe.frame.HeadersFrame] == pair.session.h2._receive_headers_frame
        release_h2(pair.session.h2)
        with pytest.raises(KeyError):
            table[hyperframe.frame.HeadersFrame]

    asyncio.run(scenario())
