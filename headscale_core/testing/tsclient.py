"""An in-process ts2021 client for tests and the load generator.

It walks the same path as ``tailscaled``: ``GET /key``, ``POST /ts2021`` with the Noise
initiation, the 101 answer, the Noise response, an optional early payload, then HTTP/2 (prior
knowledge) inside the Noise records. One reader task per client and no HTTP session objects,
so thousands can share one event loop. Response bodies are credited back to the server's
flow-control window only as the caller consumes them, like Go's transport.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from headscale_core.protocol.keys import MachinePublic, NLPublic, NodePublic, PrivateKey, public_from_private
from headscale_core.protocol.mapstream import MapStreamDecoder
from headscale_core.protocol.noise import EarlyPayloadReader, NoiseInitiator, NoiseTransport

CURRENT_CAPVER = 145
ZERO_TIME = "0001-01-01T00:00:00Z"
# Go's HTTP/2 transport: 4 MiB per stream, +1 GiB for the connection.
DEFAULT_STREAM_WINDOW = 4 << 20
DEFAULT_CONNECTION_WINDOW_BOOST = 1 << 30
# tailscaled allows 10 s for dial + upgrade + handshake.
DIAL_TIMEOUT_SECONDS = 10.0


class ControlError(Exception):
    """The control server answered with a status other than the one the protocol expects."""

    def __init__(self, what: str, status: int, body: bytes) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status
        self.body = body


class ConnectionClosed(Exception):
    """The ts2021 connection ended (or a stream was reset) before the answer was complete."""


async def fetch_server_key(base_url: str, capver: int = CURRENT_CAPVER) -> MachinePublic:
    """``GET /key?v=<capver>`` and return the server's Noise public key."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url.rstrip('/')}/key", params={"v": str(capver)}) as response:
            body = await response.read()
            if response.status != 200:
                raise ControlError("GET /key", response.status, body)
    return MachinePublic.parse(json.loads(body)["publicKey"])


class _Stream:
    __slots__ = ("status", "headers", "chunks", "ended", "error", "changed")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.error: str | None = None
        self.changed = asyncio.Event()


class TSClient:
    """One client machine's ts2021 connection; use ``await TSClient.connect(...)``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transport: NoiseTransport,
        *,
        authority: str,
        path_prefix: str,
        machine_key: MachinePublic,
        capver: int,
        stream_window: int,
    ) -> None:
        self.machine_key = machine_key
        self.capver = capver
        self.early_payload: dict[str, Any] | None = None
        self._reader = reader
        self._writer = writer
        self._transport = transport
        self._authority = authority
        self._prefix = path_prefix
        self._early = EarlyPayloadReader()
        self._streams: dict[int, _Stream] = {}
        self._closed: str | None = None
        self._window_open = asyncio.Event()
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        codes = h2.settings.SettingCodes
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.MAX_HEADER_LIST_SIZE: 1 << 16,
                codes.INITIAL_WINDOW_SIZE: stream_window,
            },
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(DEFAULT_CONNECTION_WINDOW_BOOST)
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        base_url: str,
        *,
        machine_private: bytes | PrivateKey,
        capver: int = CURRENT_CAPVER,
        server_public: bytes | MachinePublic | None = None,
        stream_window: int = DEFAULT_STREAM_WINDOW,
    ) -> TSClient:
        """Fetch the server key (unless given), upgrade ``/ts2021`` and complete Noise + HTTP/2."""
        private = machine_private.raw if isinstance(machine_private, PrivateKey) else machine_private
        if server_public is None:
            server_public = await fetch_server_key(base_url, capver)
        server_raw = server_public.raw if isinstance(server_public, MachinePublic) else server_public
        url = urlsplit(base_url)
        https = url.scheme == "https"
        port = url.port or (443 if https else 80)
        context = ssl.create_default_context() if https else None
        if context is not None:  # like tailscaled: Noise, not TLS, authenticates the server
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        prefix = url.path.rstrip("/")
        async with asyncio.timeout(DIAL_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(url.hostname, port, ssl=context)
            try:
                transport = await cls._upgrade(
                    reader, writer, url.netloc, prefix, private, server_raw, capver
                )
            except BaseException:
                writer.close()
                raise
        client = cls(
            reader,
            writer,
            transport[0],
            authority=url.netloc,
            path_prefix=prefix,
            machine_key=MachinePublic(public_from_private(private)),
            capver=capver,
            stream_window=stream_window,
        )
        client._start(transport[1])
        return client

    @staticmethod
    async def _upgrade(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        prefix: str,
        private: bytes,
        server_public: bytes,
        capver: int,
    ) -> tuple[NoiseTransport, bytes]:
        initiator = NoiseInitiator(private, server_public, capver)
        writer.write(
            (
                f"POST {prefix}/ts2021 HTTP/1.1\r\nHost: {host}\r\n"
                "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
                f"X-Tailscale-Handshake: {base64.b64encode(initiator.initiation).decode()}\r\n"
                "Content-Length: 0\r\nUser-Agent: headscale-core-tsclient\r\n\r\n"
            ).encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        status = int(status_line.split()[1])
        if status != 101:
            length = int(fields.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            raise ControlError("POST /ts2021", status, body)
        if fields.get("upgrade", "").lower() != "tailscale-control-protocol":
            raise ConnectionClosed(f"101 without 'Upgrade: tailscale-control-protocol': {fields!r}")
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionClosed("server closed the connection during the Noise handshake")
            transport = initiator.receive_data(data)
            if transport is not None:
                return transport, initiator.unused_data

    def _start(self, leftover: bytes) -> None:
        self._flush()
        if leftover:
            self._receive(leftover)
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # --- requests --------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, bytes]:
        """Send a request over Noise and return ``(status, body)`` once the body is complete."""
        stream_id = await self._open(method, path, json_body, headers)
        try:
            status = await self._wait_status(stream_id)
            parts = []
            while (chunk := await self._next_chunk(stream_id)) is not None:
                parts.append(chunk)
            return status, b"".join(parts)
        finally:
            self._streams.pop(stream_id, None)

    async def register(
        self,
        node_key: NodePublic | str,
        auth_key: str | None = None,
        hostinfo: Mapping[str, Any] | None = None,
        followup: str = "",
        old_node_key: NodePublic | str | None = None,
        expiry: datetime | str | None = None,
        ephemeral: bool = False,
    ) -> dict[str, Any]:
        """``POST /machine/register`` as ``tailscaled`` builds it; returns the RegisterResponse."""
        body: dict[str, Any] = {
            "Version": self.capver,
            "NodeKey": str(node_key),
            "OldNodeKey": str(old_node_key or NodePublic.zero()),
            "NLKey": str(NLPublic.zero()),
            "Expiry": _time_text(expiry),
            "Followup": followup,
            "Hostinfo": dict(hostinfo or {"Hostname": "tsclient", "OS": "linux"}),
            "NodeKeySignature": None,
        }
        if auth_key is not None:
            body["Auth"] = {"AuthKey": auth_key}
        if ephemeral:
            body["Ephemeral"] = True
        lb = [("ts-lb", str(old_node_key))] if old_node_key else []
        status, answer = await self.request(
            "POST", "/machine/register", body, headers=[*lb, ("ts-lb", str(node_key))]
        )
        if status != 200:
            raise ControlError("POST /machine/register", status, answer)
        result: dict[str, Any] = json.loads(answer)
        return result

    def map_stream(self, map_request: Mapping[str, Any]) -> MapStream:
        """Open ``POST /machine/map``; iterate the result for decoded MapResponse dicts."""
        return MapStream(self, map_request)

    async def lite_update(
        self,
        node_key: NodePublic | str,
        *,
        disco_key: str | None = None,
        endpoints: list[str] | None = None,
        hostinfo: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        """A non-streaming ``OmitPeers`` map request; the server must answer 200."""
        body: dict[str, Any] = {
            "Version": self.capver,
            "NodeKey": str(node_key),
            "OmitPeers": True,
            "Stream": False,
            "Compress": "zstd",
            "KeepAlive": True,
            **extra,
        }
        if disco_key is not None:
            body["DiscoKey"] = disco_key
        if endpoints is not None:
            body["Endpoints"] = endpoints
        if hostinfo is not None:
            body["Hostinfo"] = dict(hostinfo)
        status, answer = await self.request("POST", "/machine/map", body)
        if status != 200:
            raise ControlError("POST /machine/map (lite update)", status, answer)

    def _goodbye(self) -> None:
        """Send GOAWAY (if the connection is still up) and mark the client closed."""
        if self._closed is None:
            try:
                self._h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self._shut("client closed the connection")

    async def close(self) -> None:
        self._goodbye()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- stream plumbing (used by MapStream) -----------------------------------------------------

    async def _open(
        self, method: str, path: str, json_body: Any, headers: list[tuple[str, str]] | None
    ) -> int:
        self._check_open()
        if isinstance(json_body, bytes):  # raw bytes: for tests of malformed bodies
            body = json_body
        else:
            body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode()
        stream_id = self._h2.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", self._authority.encode()),
            (b":path", (self._prefix + path).encode()),
            (b"user-agent", b"headscale-core-tsclient"),
        ]
        if json_body is not None:
            fields += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        fields += [(k.lower().encode(), v.encode()) for k, v in headers or ()]
        stream = self._streams[stream_id] = _Stream()
        self._h2.send_headers(stream_id, fields, end_stream=not body)
        view, pos = memoryview(body), 0
        # An early answer (413) or a reset ends the upload; the caller still reads the answer.
        while pos < len(view) and not stream.ended and stream.error is None:
            try:
                window = self._h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                break
            if window <= 0:
                self._window_open.clear()
                await self._wait(self._window_open)
                continue
            step = min(window, self._h2.max_outbound_frame_size, len(view) - pos)
            self._h2.send_data(stream_id, view[pos : pos + step], end_stream=pos + step == len(view))
            pos += step
            self._flush()
        self._flush()
        await self._writer.drain()
        return stream_id

    async def _wait_status(self, stream_id: int) -> int:
        stream = self._streams[stream_id]
        while stream.status is None:
            if stream.error is not None:
                raise ConnectionClosed(stream.error)
            self._check_open()
            stream.changed.clear()
            await self._wait(stream.changed)
        return stream.status

    async def _next_chunk(self, stream_id: int) -> bytes | None:
        """The next body chunk, credited back to the server's window; None at end of stream."""
        stream = self._streams[stream_id]
        while not stream.chunks:
            if stream.error is not None:
                raise ConnectionClosed(stream.error)
            if stream.ended:
                return None
            self._check_open()  # the connection may have died while nobody was reading
            stream.changed.clear()
            await self._wait(stream.changed)
        data, flow_length = stream.chunks.popleft()
        if self._closed is None and not stream.ended:
            try:
                self._h2.acknowledge_received_data(flow_length, stream_id)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
        return data

    def _cancel_stream(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and self._closed is None:
            try:
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass

    async def _wait(self, event: asyncio.Event) -> None:
        await event.wait()
        self._check_open()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)

    # --- reading ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "server closed the connection"
        try:
            while self._closed is None:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                self._receive(data)
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        except Exception as exc:  # a protocol error from the server ends this connection
            reason = f"{type(exc).__name__}: {exc}"
        self._shut(reason)

    def _receive(self, data: bytes) -> None:
        for plaintext in self._transport.receive_data(data):
            payload = self._early.receive_data(plaintext)
            if self._early.payload is not None and self.early_payload is None:
                self.early_payload = self._early.payload
            if payload:
                for event in self._h2.receive_data(payload):
                    self._on_event(event)
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            for name, value in event.headers or []:
                if name == b":status":
                    stream.status = int(value)
                else:
                    stream.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        elif isinstance(event, h2.events.DataReceived):
            if stream is None:  # a cancelled stream: give the window back at once
                self._h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
                return
            stream.chunks.append((event.data or b"", event.flow_controlled_length or 0))
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
            self._window_open.set()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            # NO_ERROR after a complete answer only means "stop sending the request body".
            if not (stream.ended and event.error_code == h2.errors.ErrorCodes.NO_ERROR):
                stream.error = f"server reset the stream (error code {event.error_code!r})"
            self._window_open.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._shut(f"server sent GOAWAY (error code {event.error_code!r})")
        if stream is not None:
            stream.changed.set()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(self._transport.encrypt(data))

    def _shut(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        self._window_open.set()
        for stream in self._streams.values():
            stream.changed.set()


class MapStream:
    """The MapResponses of one ``POST /machine/map``, decoded; iterate with ``async for``."""

    def __init__(self, client: TSClient, map_request: Mapping[str, Any]) -> None:
        self._client = client
        self._request = dict(map_request)
        self._decoder = MapStreamDecoder(compressed=self._request.get("Compress") == "zstd")
        self._pending: deque[bytes] = deque()
        self._stream_id: int | None = None
        self.status: int | None = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        client = self._client
        if self._stream_id is None:
            self._stream_id = await client._open("POST", "/machine/map", self._request, None)
            self.status = await client._wait_status(self._stream_id)
            if self.status != 200:
                body = b""
                while (chunk := await client._next_chunk(self._stream_id)) is not None:
                    body += chunk
                await self.aclose()
                raise ControlError("POST /machine/map", self.status, body)
        while not self._pending:
            chunk = await client._next_chunk(self._stream_id)
            if chunk is None:
                await self.aclose()
                raise StopAsyncIteration
            self._pending.extend(self._decoder.receive_data(chunk))
        message: dict[str, Any] = json.loads(self._pending.popleft())
        return message

    async def aclose(self) -> None:
        """Stop reading: reset the stream if the server has not ended it."""
        if self._stream_id is not None:
            self._client._cancel_stream(self._stream_id)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _time_text(value: datetime | str | None) -> str:
    if value is None:
        return ZERO_TIME
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("expiry must be timezone-aware (Go rejects naive times)")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
