"""The HTTP/2 server session that runs inside one Noise transport (used by ``server/h2conn``).

``H2Session`` reads bytes from a ``ByteChannel`` (TCP stream or WebSocket), decrypts them with
the connection's ``NoiseTransport``, feeds them to an ``h2`` server connection and dispatches
every complete request to the handler in a task of its own. Everything ``h2`` wants to send is
encrypted and written in one step, so frames of concurrent streams never interleave inside a
Noise record. Streaming responses wait for the peer's flow-control windows and for the socket
to drain; nothing is buffered beyond one window per stream.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream

from headscale_core.flag import Flag
from headscale_core.protocol.errors import RemoteProtocolError
from headscale_core.protocol.keys import MachinePublic
from headscale_core.protocol.noise import NoiseTransport

log = logging.getLogger("headscale_core.server.h2conn")

# Past this much unsent output the reader stops reading until the socket drains.
_WRITE_HIGH_WATER = 1 << 20
# How long handlers may take to notice a dead connection before they are cancelled.
HANDLER_GRACE_SECONDS = 5.0


class StreamClosed(Exception):
    """The client reset the stream or the connection ended; nothing more can be sent."""


class ByteChannel(abc.ABC):
    """The byte pipe under the Noise records: raw TCP/TLS after the upgrade, or a WebSocket."""

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The next bytes from the client; ``b""`` once the connection has ended."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queue bytes for the client, in order, without waiting."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until queued bytes are below the transport's limit; raise ``ConnectionError``."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Bytes queued but not yet sent."""

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass(slots=True)
class MachineRequest:
    """One HTTP/2 request from a client whose machine key the Noise handshake proved.

    ``path`` is the path without the query string; ``query`` the raw text after ``?``. Header
    names are lower-case; pseudo-headers are not included. Treat it as read-only, except that
    a handler takes the body with ``take_body``.
    """

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    machine_key: MachinePublic
    capver: int
    remote: str
    query: str = ""

    def take_body(self) -> bytes:
        """The body, no longer held here: a map poll keeps its request for hours."""
        body, self.body = self.body, b""
        return body

    def drop_headers(self) -> None:
        """Forget the headers: a map poll keeps its request for hours and reads them no more."""
        self.headers = ()

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default


class ResponseStream:
    """The response side of one HTTP/2 stream, handed to the handler."""

    def __init__(self, session: H2Session, stream_id: int) -> None:
        self.stream_id = stream_id
        self._data_frame_tail = _DATA_FRAME_TAIL + stream_id.to_bytes(4, "big")  # type, flags, stream
        self.closed = Flag()
        self.headers_sent = False
        self.ended = False
        self._session = session
        self._wakeup = Flag()
        self._on_close: list[Callable[[], None]] | None = None

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the stream closes (at once if it has)."""
        if self.closed.is_set():
            callback()
        elif self._on_close is None:
            self._on_close = [callback]
        else:
            self._on_close.append(callback)

    async def send_headers(self, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        self._h2_call(self._session.h2.send_headers, self.stream_id, _encode_headers(status, headers or ()))
        self.headers_sent = True
        await self._session.flush()

    async def send_data(self, data: bytes) -> None:
        """Send ``data``, waiting for flow-control window; raise ``StreamClosed`` if gone."""
        h2conn = self._session.h2
        view = memoryview(data)
        pos, total = 0, len(view)
        while pos < total:
            window = self._h2_call(h2conn.local_flow_control_window, self.stream_id)
            if window <= 0:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            stop = pos + min(window, total - pos)
            frame_size = h2conn.max_outbound_frame_size
            while pos < stop:
                step = min(frame_size, stop - pos)
                self._h2_call(h2conn.send_data, self.stream_id, view[pos : pos + step])
                pos += step
            await self._session.flush()

    def try_send_nowait(self, data: bytes) -> bool:
        """Send ``data`` at once if the flow-control window takes all of it and the socket is
        not backed up; False (nothing sent) otherwise, and the caller awaits ``send_data``.

        A fan-out to a thousand streams then costs no task switch per stream, and no pass
        through h2's frame objects and state machines: a DATA frame without END_STREAM changes
        no state but the two send windows, so it is framed here and the windows charged as h2
        would charge them (``_SENDING`` lists the states where h2 itself allows it).
        """
        # Few calls: this runs once per recipient of every change (a thousand times per endpoint
        # change at N=1,000); the DATA header is made here, its stream part once per stream.
        session = self._session
        channel = session._channel
        if self.closed.is_set() or session._dead or channel.backlog() > _WRITE_HIGH_WATER:
            return False
        h2conn = session.h2
        stream = h2conn.streams.get(self.stream_id)
        if (stream is None or stream.state_machine.state not in _SENDING
                or h2conn.state_machine.state is not _SERVER_OPEN):
            return False  # send_data will say why
        size = len(data)
        if size > h2conn.outbound_flow_control_window or size > stream.outbound_flow_control_window:
            return False
        h2conn.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        if size <= h2conn.max_outbound_frame_size:
            frames = size.to_bytes(3, "big") + self._data_frame_tail + data
        else:
            frames = data_frames(self.stream_id, data, h2conn.max_outbound_frame_size)
        session.flush_nowait(frames)
        return True

    async def end(self) -> None:
        self._h2_call(self._session.h2.end_stream, self.stream_id)
        self.ended = True
        await self._session.flush()

    async def respond(
        self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Send a complete response: headers with ``content-length``, the body, end of stream."""
        fields = [*(headers or ()), ("content-length", str(len(body)))]
        h2conn = self._session.h2
        window = self._h2_call(h2conn.local_flow_control_window, self.stream_id)
        if len(body) > min(window, h2conn.max_outbound_frame_size):
            await self.send_headers(status, fields)
            await self.send_data(body)
            await self.end()
            return
        # The common small answer: one frame batch, one Noise write, one drain.
        self._h2_call(h2conn.send_headers, self.stream_id, _encode_headers(status, fields), not body)
        if body:
            self._h2_call(h2conn.send_data, self.stream_id, body, True)
        self.headers_sent = self.ended = True
        await self._session.flush()

    def reset(self) -> None:
        """Abort the stream (RST_STREAM INTERNAL_ERROR), e.g. after a failure mid-response."""
        if not self.closed.is_set():
            try:
                self._session.h2.reset_stream(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            except h2.exceptions.ProtocolError:
                pass
            self._close()
            self._session.flush_nowait()

    def _h2_call(self, method: Callable[..., Any], *args: Any) -> Any:
        if self.closed.is_set():
            raise StreamClosed(f"stream {self.stream_id} is closed")
        try:
            return method(*args)
        except h2.exceptions.ProtocolError as exc:
            self._close()
            raise StreamClosed(f"stream {self.stream_id}: {exc}") from None

    def _wake(self) -> None:
        self._wakeup.set()

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._wakeup.set()
        callbacks, self._on_close = self._on_close, None
        for callback in callbacks or ():
            callback()


Handler = Callable[[MachineRequest, ResponseStream], Awaitable[None]]


class _SettingValues(list[Any]):
    """The values of one HTTP/2 setting (current first, then any not yet acknowledged).

    h2 keeps them in a ``collections.deque`` per setting: twelve of them per connection, each a
    64-slot block, were ~9 KB of every idle client's memory. A list answers the three
    operations h2 uses (``[0]``, ``append``, ``popleft``) in a tenth of the space."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def compact_settings(settings: h2.settings.Settings) -> None:
    """Swap ``settings``' per-key deques for ``_SettingValues`` (same values, same order).
    An h2 without that private mapping is left as it is (only the memory saving is lost)."""
    values = getattr(settings, "_settings", None)
    if not isinstance(values, dict):
        return
    for key, items in values.items():
        if type(items) is not _SettingValues:
            values[key] = _SettingValues(items)  # type: ignore[assignment]


class _HeaderEntries(list[Any]):
    """An HPACK dynamic table's entries, newest first.

    hpack keeps them in a ``collections.deque`` (a 64-slot block each, two tables per
    connection): ~1.5 KB of every idle client's memory for the handful of headers a Tailscale
    client sends. A list answers the operations hpack uses (``appendleft``, ``pop``, indexing,
    iteration, ``clear``) for a table of a few entries as fast."""

    __slots__ = ()

    def appendleft(self, entry: Any) -> None:
        self.insert(0, entry)


def compact_header_tables(conn: h2.connection.H2Connection) -> None:
    """Swap the HPACK encoder's and decoder's dynamic tables for ``_HeaderEntries`` (same
    entries, same order); an h2 or hpack without those attributes is left as it is."""
    for coder in (getattr(conn, "encoder", None), getattr(conn, "decoder", None)):
        table = getattr(coder, "header_table", None)
        entries = getattr(table, "dynamic_entries", None)
        if entries is not None and type(entries) is not _HeaderEntries:
            table.dynamic_entries = _HeaderEntries(entries)  # type: ignore[union-attr]


_SENDING = frozenset({h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE})
_DATA_FRAME_TAIL = b"\x00\x00"  # type DATA, no flags
_SERVER_OPEN = h2.connection.ConnectionState.SERVER_OPEN


def data_frames(stream_id: int, data: bytes, max_frame_size: int) -> bytes:
    """``data`` as HTTP/2 DATA frames of at most ``max_frame_size`` bytes each (RFC 9113 §6.1),
    none of them ending the stream."""
    tail = _DATA_FRAME_TAIL + stream_id.to_bytes(4, "big")
    if len(data) <= max_frame_size:
        return len(data).to_bytes(3, "big") + tail + data
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for pos in range(0, len(data), max_frame_size):
        chunk = view[pos : pos + max_frame_size]
        parts += (len(chunk).to_bytes(3, "big"), tail, chunk)
    return b"".join(parts)


def _encode_headers(status: int, headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(b":status", str(status).encode())] + [
        (name.lower().encode(), value.encode()) for name, value in headers
    ]


class _Incoming:
    __slots__ = ("method", "path", "query", "headers", "body", "refused")

    def __init__(self, method: str, path: str, query: str, headers: tuple[tuple[str, str], ...]) -> None:
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.body = bytearray()
        self.refused = False


class H2Session:
    """One HTTP/2 server connection over a Noise transport; ``run`` serves it to the end."""

    def __init__(
        self,
        channel: ByteChannel,
        transport: NoiseTransport,
        handler: Handler,
        *,
        machine_key: MachinePublic,
        capver: int,
        remote: str,
        max_body: int = 1 << 20,
    ) -> None:
        # Outbound headers are ours (lowercase, fixed names): h2's per-header checks and
        # normalisation of them cost more than the rest of a small response. Inbound headers,
        # the client's, are still validated.
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None,
                                      validate_outbound_headers=False, normalize_outbound_headers=False)
        )
        compact_settings(self.h2.local_settings)
        compact_settings(self.h2.remote_settings)
        compact_header_tables(self.h2)
        compact_frame_dispatch(self.h2)
        self._channel = channel
        self._transport = transport
        self._handler = handler
        self._machine_key = machine_key
        self._capver = capver
        self._remote = remote
        self._max_body = max_body
        self._incoming: dict[int, _Incoming] = {}
        self._responses: dict[int, ResponseStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dead = False
        self._terminated = False

    async def run(self, buffered: bytes = b"") -> None:
        """Serve until the client closes, breaks the protocol, or we are cancelled."""
        self.h2.initiate_connection()
        self.flush_nowait()
        cancelled = False
        try:
            data = buffered
            while True:
                if data:
                    self._receive(data)
                    data = b""  # not held for the minutes a long poll waits
                    self.flush_nowait()
                    if self._channel.backlog() > _WRITE_HIGH_WATER:
                        await self._channel.drain()
                if self._terminated:
                    break
                data = await self._channel.read()
                if not data:
                    break
        except RemoteProtocolError as exc:
            log.warning("ts2021 %s (%s): closing connection: %s", self._remote, self._machine_key, exc)
        except h2.exceptions.ProtocolError as exc:
            log.warning(
                "ts2021 %s (%s): closing connection: HTTP/2 error: %s", self._remote, self._machine_key, exc
            )
            self.flush_nowait()  # h2 queued a GOAWAY naming the problem
        except (ConnectionError, OSError) as exc:
            log.info("ts2021 %s (%s): connection lost: %s", self._remote, self._machine_key, exc)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await self._shutdown(cancel_now=cancelled)

    def flush_nowait(self, frames: bytes = b"") -> None:
        """Send what h2 has queued, then ``frames`` made outside h2 (the fast DATA path), in
        one Noise write."""
        if self._dead:
            return
        # h2's data_to_send copies and replaces its buffer even when empty; a fan-out's sessions
        # have nothing queued in h2, so look first.
        data = self.h2.data_to_send() if self.h2._data_to_send else b""
        if frames:
            data = data + frames if data else frames
        if data:
            self._channel.write(self._transport.encrypt(data))

    async def flush(self) -> None:
        """Send what h2 has queued and wait for the socket to drain (back-pressure)."""
        if self._dead:
            raise StreamClosed("connection closed")
        self.flush_nowait()
        try:
            await self._channel.drain()
        except (ConnectionError, OSError) as exc:
            self._mark_dead()
            raise StreamClosed(f"connection lost: {exc}") from None

    def _receive(self, data: bytes) -> None:
        for plaintext in self._transport.receive_data(data):
            for event in self.h2.receive_data(plaintext):
                self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self._on_data(event.stream_id, event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_request_complete(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._incoming.pop(event.stream_id, None)
            response = self._responses.get(event.stream_id)
            if response is not None:
                response._close()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                response = self._responses.get(event.stream_id)
                if response is not None:
                    response._wake()
            else:
                self._wake_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            compact_settings(self.h2.remote_settings)  # the client's new keys came as deques
            self._wake_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._terminated = True

    def _on_request(self, stream_id: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        method = target = ""
        headers: list[tuple[str, str]] = []
        for name, value in raw_headers:
            text = value.decode("latin-1")
            if name == b":method":
                method = text
            elif name == b":path":
                target = text
            elif not name.startswith(b":"):
                headers.append((name.decode("latin-1"), text))
        path, _, query = target.partition("?")
        incoming = _Incoming(method, path, query, tuple(headers))
        self._incoming[stream_id] = incoming
        declared = dict(headers).get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            self._refuse(
                stream_id, incoming, 413, f"request body of {declared} bytes exceeds {self._max_body}"
            )

    def _on_data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        # Credit the window at once: the body limit, not flow control, bounds what we hold.
        self.h2.acknowledge_received_data(flow_controlled_length, stream_id)
        incoming = self._incoming.get(stream_id)
        if incoming is None or incoming.refused:
            return
        incoming.body += data
        if len(incoming.body) > self._max_body:
            self._refuse(stream_id, incoming, 413, f"request body exceeds {self._max_body} bytes")

    def _refuse(self, stream_id: int, incoming: _Incoming, status: int, problem: str) -> None:
        log.info("ts2021 %s: %s %s refused: %s", self._remote, incoming.method, incoming.path, problem)
        incoming.refused = True
        incoming.body = bytearray()
        body = problem.encode() + b"\n"
        fields = [(b":status", str(status).encode()), (b"content-type", b"text/plain; charset=utf-8")]
        try:
            if self.h2.local_flow_control_window(stream_id) >= len(body):
                self.h2.send_headers(stream_id, [*fields, (b"content-length", str(len(body)).encode())])
                self.h2.send_data(stream_id, body, end_stream=True)
            else:
                self.h2.send_headers(stream_id, fields, end_stream=True)
            # Tell the client to stop sending the rest of the body (RFC 9113 §8.1).
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass

    def _on_request_complete(self, stream_id: int) -> None:
        incoming = self._incoming.pop(stream_id, None)
        if incoming is None or incoming.refused:
            return
        request = MachineRequest(
            method=incoming.method,
            path=incoming.path,
            query=incoming.query,
            headers=incoming.headers,
            body=bytes(incoming.body),
            machine_key=self._machine_key,
            capver=self._capver,
            remote=self._remote,
        )
        response = ResponseStream(self, stream_id)
        self._responses[stream_id] = response
        task = asyncio.get_running_loop().create_task(self._run_handler(request, response))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, request: MachineRequest, response: ResponseStream) -> None:
        try:
            await self._handler(request, response)
            if not response.headers_sent and not response.closed.is_set():
                log.error(
                    "ts2021 %s: handler for %s %s returned without a response",
                    self._remote,
                    request.method,
                    request.path,
                )
                await self._answer_failure(response)
            elif not response.ended and not response.closed.is_set():
                await response.end()
        except StreamClosed:
            pass
        except Exception:
            log.exception("ts2021 %s: handler for %s %s failed", self._remote, request.method, request.path)
            await self._answer_failure(response)
        finally:
            self._responses.pop(response.stream_id, None)

    async def _answer_failure(self, response: ResponseStream) -> None:
        if response.closed.is_set() or response.ended:
            return
        if response.headers_sent:
            response.reset()
            return
        try:
            await response.respond(
                500, b"internal server error\n", [("content-type", "text/plain; charset=utf-8")]
            )
        except StreamClosed:
            pass

    def _wake_all(self) -> None:
        for response in self._responses.values():
            response._wake()

    def _mark_dead(self) -> None:
        self._dead = True
        for response in list(self._responses.values()):
            response._close()

    async def _shutdown(self, *, cancel_now: bool) -> None:
        self._mark_dead()
        try:
            if not self._tasks:
                return
            pending = set(self._tasks)
            if not cancel_now:
                _, pending = await asyncio.wait(pending, timeout=HANDLER_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            release_h2(self.h2)


class _FrameDispatch:
    """h2's frame-class → handler table, answering each lookup with the connection's method.

    h2 builds a dict of twelve bound methods per connection (~1.4 KB of every idle client's
    memory, 7 MB at 5,000 nodes); this holds the connection and one table of method names that
    every connection shares. h2 only looks frames up in it (``table[frame.__class__]``)."""

    __slots__ = ("_conn", "_names")

    def __init__(self, conn: h2.connection.H2Connection, names: dict[type, str]) -> None:
        self._conn: h2.connection.H2Connection | None = conn
        self._names = names

    def __getitem__(self, frame_class: type) -> Callable[..., Any]:
        if self._conn is None:
            raise KeyError(frame_class)  # released: the session is over
        return getattr(self._conn, self._names[frame_class])  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._conn = None


_DISPATCH_NAMES: dict[tuple[tuple[type, str], ...], dict[type, str]] = {}


def compact_frame_dispatch(conn: h2.connection.H2Connection) -> None:
    """Swap ``conn``'s per-connection dispatch dict for a ``_FrameDispatch`` over a shared table
    of names; an h2 whose table is not a dict of the connection's own methods is left alone."""
    table = getattr(conn, "_frame_dispatch_table", None)
    if not isinstance(table, dict):
        return
    pairs = []
    for frame_class, handler in table.items():
        if getattr(handler, "__self__", None) is not conn:
            return
        pairs.append((frame_class, handler.__name__))
    key = tuple(pairs)
    names = _DISPATCH_NAMES.get(key)
    if names is None:
        names = _DISPATCH_NAMES[key] = dict(pairs)
    conn._frame_dispatch_table = _FrameDispatch(conn, names)  # type: ignore[assignment]


def release_h2(conn: h2.connection.H2Connection) -> None:
    """Break the reference cycle inside a finished ``H2Connection`` (its frame dispatch table
    refers to the connection), so reference counting frees the connection's whole state when
    the session ends. Left to the cycle collector, and with the heap frozen (``server/heap``),
    every closed connection of a reconnect storm stayed in memory until the next sweep: the
    peak RSS of the storm. Receiving is over by then; sending needs no table."""
    table = getattr(conn, "_frame_dispatch_table", None)
    if isinstance(table, dict | _FrameDispatch):
        table.clear()
