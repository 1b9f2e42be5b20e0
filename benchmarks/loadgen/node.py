"""One simulated node: identity, a ts2021 connection, registration, the streaming map poll.

The poll does what tailscaled does with the stream (decompress, apply to a peer table), but it
only timestamps and queues each frame; the fleet's applier decodes and applies it. That keeps
arrival times honest when a thousand 250 KB initial maps land at once, since decoding one costs
milliseconds and would otherwise delay every other node's reader.

A frame's arrival time is when its bytes reached the node's socket: the kernel's receive
timestamp (``SO_TIMESTAMPNS``), not when this one-core load generator got round to reading
that socket among a thousand others. A real node has a CPU of its own; without the timestamp a
fan-out's last recipient would be timed by the load generator's backlog, not the server.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmarks.loadgen.peertable import PeerTable
from headscale_core.protocol.keys import PrivateKey
from headscale_core.protocol.mapstream import MapStreamDecoder
from headscale_core.testing.tsclient import CURRENT_CAPVER, ControlError, TSClient

# tailscaled restarts a map poll that has been silent this long (control/controlclient/direct.go).
WATCHDOG_SECONDS = 120.0
REDIAL_BACKOFF_SECONDS = 1.0


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: a receive timestamp with each read
_TIMESPEC = struct.Struct("@qq")
READ_SIZE = 1 << 18
# One buffer for every node's reads (they happen one at a time): recvmsg() would allocate, and
# at this size mmap and unmap, READ_SIZE bytes per read before trimming them to what came.
_READ_BUFFER = bytearray(READ_SIZE)
_READ_VIEW = memoryview(_READ_BUFFER)
_READ_BUFFERS = [_READ_BUFFER]
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)

_WINDOW_UPDATE = b"\x00\x00\x04\x08\x00"  # length 4, type WINDOW_UPDATE, no flags
# Bytes of bypassed DATA credited back to the server per WINDOW_UPDATE (stream and connection).
_CREDIT_EVERY = 1 << 18


class CountingClient(TSClient):
    """A TSClient that counts the Noise ciphertext bytes it receives (the wire cost per node)
    and reads map streams without h2's per-frame machinery.

    The client's cost per message is not what the benchmark measures, yet a thousand simulated
    nodes share one core: through h2 (frame objects, events, a task switch per chunk) a small
    patch cost ~100 us here, enough to dominate a change's time to its last peer. Once a map
    stream has its 200, its plain DATA frames (no flags) are cut out of the decrypted bytes and
    handed to the stream's sink at once; every other frame, in order, still goes through h2, and
    the bypassed bytes are credited back to the server's windows with WINDOW_UPDATEs of our own.
    """

    bytes_received = 0
    # perf_counter time at which the bytes being handled reached this node's socket
    arrived_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sinks: dict[int, Callable[[bytes], None]] = {}
        self._frames = bytearray()
        self._uncredited: dict[int, int] = {}
        self._credit_due = False  # some stream has _CREDIT_EVERY bytes uncredited
        self._lost: asyncio.Future[None] | None = None

    def _start(self, leftover: bytes) -> None:
        """Read through a reader of our own instead of the StreamReader and a reader task:
        received bytes are handled in the read callback, with no task switch per read (~10 us
        each here, for every one of a thousand nodes' frames on one core), and carry the
        kernel's receive timestamp (``arrived_at``)."""
        self._flush()
        self.arrived_at = time.perf_counter()
        if leftover:
            self._receive(leftover)
        transport = self._writer.transport
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        protocol = _DirectProtocol(self, self._lost)
        transport.set_protocol(protocol)
        if SimNode.stamp_arrivals:
            protocol.stamped = _StampedReader.attach(protocol, transport, loop)

    def _flush(self) -> None:
        if self._h2._data_to_send:  # nothing queued in h2 after most reads: skip its copy
            super()._flush()

    async def close(self) -> None:
        self._goodbye()
        self._writer.transport.close()
        if self._lost is not None:
            await asyncio.gather(self._lost, return_exceptions=True)

    def _receive(self, data: bytes) -> None:
        self.bytes_received += len(data)
        # Every byte goes through the splitter from the first, so what h2 is given is always
        # whole frames: a frame h2 held half of when a sink appeared would misalign the cut.
        early = self._early
        for plaintext in self._transport.receive_data(data):
            if not early.done:
                plaintext = early.receive_data(plaintext)
                if early.payload is not None and self.early_payload is None:
                    self.early_payload = early.payload
            if plaintext:
                self._split(plaintext)
        if self._credit_due:
            self._credit()
        if self._h2._data_to_send:
            super()._flush()

    def _split(self, payload: bytes) -> None:
        """Hand plain DATA frames of sink streams to their sinks; the rest, in order, to h2."""
        buf = self._frames
        if not buf and len(payload) >= 9 and payload[3] == 0 and payload[4] == 0:
            # The common record of a map stream: exactly one plain DATA frame, nothing pending.
            length = int.from_bytes(payload[:3], "big")
            if len(payload) == 9 + length:
                stream_id = int.from_bytes(payload[5:9], "big") & 0x7FFFFFFF
                sink = self._sinks.get(stream_id)
                if sink is not None:
                    sink(payload[9:])
                    self._count_uncredited(stream_id, length)
                    return
        buf += payload
        pos, end, to_h2 = 0, len(buf), 0
        while end - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if end - pos < 9 + length:
                break
            sink = None
            if buf[pos + 3] == 0 and buf[pos + 4] == 0:
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                sink = self._sinks.get(stream_id)
            if sink is not None:
                if to_h2 < pos:
                    self._to_h2(bytes(buf[to_h2:pos]))
                sink(bytes(buf[pos + 9 : pos + 9 + length]))
                self._count_uncredited(stream_id, length)
                to_h2 = pos + 9 + length
            pos += 9 + length
        if to_h2 < pos:
            self._to_h2(bytes(buf[to_h2:pos]))
        del buf[:pos]

    def _to_h2(self, frames: bytes) -> None:
        for event in self._h2.receive_data(frames):
            self._on_event(event)

    def _count_uncredited(self, stream_id: int, length: int) -> None:
        count = self._uncredited.get(stream_id, 0) + length
        self._uncredited[stream_id] = count
        if count >= _CREDIT_EVERY:
            self._credit_due = True

    def _credit(self) -> None:
        self._credit_due = False
        for stream_id, count in self._uncredited.items():
            if count >= _CREDIT_EVERY:
                self._uncredited[stream_id] = 0
                increment = count.to_bytes(4, "big")
                update = (_WINDOW_UPDATE + stream_id.to_bytes(4, "big") + increment
                          + _WINDOW_UPDATE + bytes(4) + increment)
                if not self._writer.is_closing():
                    self._writer.write(self._transport.encrypt(self._h2.data_to_send() + update))

    async def raw_map_poll(self, request: dict[str, Any], on_frame: Callable[[float, bytes], None]) -> None:
        """``POST /machine/map`` and hand every still-compressed message to ``on_frame`` with
        its arrival time; returns when the server ends the stream."""
        stream_id = await self._open("POST", "/machine/map", request, None)
        status = await self._wait_status(stream_id)
        if status != 200:
            body = b""
            while (chunk := await self._next_chunk(stream_id)) is not None:
                body += chunk
            raise ControlError("POST /machine/map", status, body)
        decoder = MapStreamDecoder(compressed=False)

        def sink(chunk: bytes) -> None:
            arrived = self.arrived_at
            for frame in decoder.receive_data(chunk):
                on_frame(arrived, frame)

        # What h2 already holds goes first; no await until the sink is in place, so nothing
        # can overtake it.
        stream = self._streams[stream_id]
        while stream.chunks:
            chunk, flow_length = stream.chunks.popleft()
            self._h2.acknowledge_received_data(flow_length, stream_id)
            sink(chunk)
        self._sinks[stream_id] = sink
        try:
            while (chunk := await self._next_chunk(stream_id)) is not None:
                sink(chunk)  # frames with flags (the last one, END_STREAM) still come via h2
        finally:
            self._sinks.pop(stream_id, None)
            self._uncredited.pop(stream_id, None)
            self._cancel_stream(stream_id)


class _DirectProtocol(asyncio.Protocol):
    """Hands a ``CountingClient`` what its connection receives, as it arrives."""

    def __init__(self, client: CountingClient, lost: asyncio.Future[None]) -> None:
        self._client = client
        self._lost = lost
        self.stamped: _StampedReader | None = None

    def data_received(self, data: bytes) -> None:
        client = self._client
        if client._closed is not None:
            return
        if self.stamped is None:
            client.arrived_at = time.perf_counter()
        try:
            client._receive(data)
        except Exception as exc:  # a protocol error from the server ends this connection
            client._shut(f"{type(exc).__name__}: {exc}")
            client._writer.transport.close()

    def eof_received(self) -> bool:
        self._client._shut("server closed the connection")
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stamped is not None:
            self.stamped.close()
            self.stamped = None
        self._client._shut(f"connection lost: {exc}" if exc else "server closed the connection")
        if not self._lost.done():
            self._lost.set_result(None)


class _StampedReader:
    """Reads a connection's socket with ``recvmsg`` in place of its (paused) transport, so that
    each read comes with the kernel's receive timestamp; writes still go through the transport.

    The socket is a duplicate of the transport's descriptor: the transport keeps the original
    for writing and closing, and the duplicate is closed with it (``connection_lost``)."""

    def __init__(self, protocol: _DirectProtocol, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._protocol = protocol
        self._sock = sock
        self._loop = loop
        self._fd = sock.fileno()
        loop.add_reader(self._fd, self._readable)

    @classmethod
    def attach(cls, protocol: _DirectProtocol, transport: asyncio.BaseTransport,
               loop: asyncio.AbstractEventLoop) -> _StampedReader | None:
        """Take over reading ``transport``'s socket; None (the transport goes on reading, and
        arrival is when the bytes are read) where the socket or the option is not available."""
        raw = transport.get_extra_info("socket")
        pause_reading = getattr(transport, "pause_reading", None)  # uvloop's is no ReadTransport
        if raw is None or pause_reading is None:
            return None
        try:
            sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:
            return None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            reader = cls(protocol, sock, loop)
        except (OSError, RuntimeError):
            sock.close()
            return None
        pause_reading()
        return reader

    def _readable(self) -> None:
        try:
            size, ancillary, _, _ = self._sock.recvmsg_into(_READ_BUFFERS, _ANCILLARY_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(f"connection lost: {exc}")
            return
        if not size:
            self._end("server closed the connection")
            return
        data = bytes(_READ_VIEW[:size])
        client = self._protocol._client
        now = time.perf_counter()
        arrived = now
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
                # the same instant on the perf_counter clock (the kernel stamps wall-clock time)
                arrived = now - max(0.0, time.time() - (seconds + nanoseconds * 1e-9))
        client.arrived_at = arrived
        self._protocol.data_received(data)

    def _end(self, reason: str) -> None:
        client = self._protocol._client
        client._shut(reason)
        client._writer.transport.close()  # connection_lost closes this reader

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self._sock.close()


def linux_hostinfo(name: str, rng: random.Random) -> dict[str, Any]:
    """A Hostinfo shaped like a real Linux tailscaled's (performance.md §3)."""
    return {
        "IPNVersion": "1.92.3-t0123456789abcdef0-g0123456789abcdef0",
        "BackendLogID": rng.randbytes(32).hex(),
        "OS": "linux",
        "OSVersion": "Debian 13.1 (trixie); kernel=6.12.48+deb13-amd64",
        "Distro": "debian",
        "DistroVersion": "13.1",
        "DistroCodeName": "trixie",
        "Desktop": False,
        "Hostname": name,
        "Machine": "x86_64",
        "GoArch": "amd64",
        "GoArchVar": "v1",
        "GoVersion": "go1.25.5",
        "Services": [
            {"Proto": "tcp", "Port": 22, "Description": "sshd"},
            {"Proto": "peerapi4", "Port": 41641},
            {"Proto": "peerapi6", "Port": 41641},
        ],
        "NetInfo": {
            "MappingVariesByDestIP": False,
            "WorkingIPv6": False,
            "OSHasIPv6": True,
            "WorkingUDP": True,
            "WorkingICMPv4": False,
            "UPnP": False, "PMP": False, "PCP": False,
            "PreferredDERP": 0,
            "LinkType": "wired",
            "DERPLatency": {},
            "FirewallMode": "nft-default",
        },
        "Userspace": False,
        "UserspaceRouter": False,
        "AppConnector": False,
    }


@dataclass
class SimNode:
    """A node of the simulated fleet; the fleet drives it, the scenarios read its results."""

    # Read each node's socket with its kernel receive timestamps (two descriptors per node):
    # the runner turns it off when the open-file limit cannot hold that.
    stamp_arrivals: ClassVar[bool] = True

    index: int
    name: str
    machine_private: bytes
    node_key: str
    disco_key: str
    hostinfo: dict[str, Any]
    endpoints: list[str]
    user: str = ""  # a user name or, for a tagged node, its tag
    auth_key: str = ""
    node_id: int | None = None
    client: CountingClient | None = None
    table: PeerTable = field(default_factory=PeerTable)
    pending: deque[tuple[float, bytes]] = field(default_factory=deque)
    queued: bool = False
    seen: dict[str, float] = field(default_factory=dict)  # watch name -> arrival at the socket
    seen_read: dict[str, float] = field(default_factory=dict)  # watch name -> when it was read
    dialed_at: float = 0.0
    first_map_at: float | None = None
    messages: int = 0
    keepalives: int = 0
    bytes_closed: int = 0  # bytes of connections already closed
    poll: asyncio.Task[None] | None = None
    error: str | None = None
    registered: bool = False
    wrong_self: int = 0  # messages whose Node (self) was another node's
    restarts: int = 0  # map streams that ended or went silent and were redialled
    url: str = ""
    server_public: Any = None

    @classmethod
    def generate(cls, index: int, rng: random.Random, prefix: str = "sim") -> SimNode:
        name = f"{prefix}{index:05d}"
        return cls(
            index=index,
            name=name,
            machine_private=PrivateKey.generate().raw,
            node_key=str(PrivateKey.generate().node_public()),
            disco_key=str(PrivateKey.generate().disco_public()),
            hostinfo=linux_hostinfo(name, rng),
            endpoints=[f"198.18.{index >> 8 & 255}.{index & 255}:41641", f"10.0.{index >> 8 & 255}.{index & 255}:41641"],
        )

    @property
    def bytes_received(self) -> int:
        return self.bytes_closed + (self.client.bytes_received if self.client else 0)

    def map_request(self) -> dict[str, Any]:
        return {
            "Version": CURRENT_CAPVER,
            "NodeKey": self.node_key,
            "DiscoKey": self.disco_key,
            "Endpoints": list(self.endpoints),
            "Hostinfo": self.hostinfo,
            "Stream": True,
            "Compress": "zstd",
            "KeepAlive": True,
        }

    async def dial(self, url: str, server_public: Any) -> None:
        self.dialed_at = time.perf_counter()
        self.first_map_at = None
        client = await CountingClient.connect(url, machine_private=self.machine_private,
                                              server_public=server_public)
        assert isinstance(client, CountingClient)
        self.client = client
        self.url, self.server_public = url, server_public

    async def register(self) -> None:
        assert self.client is not None
        answer = await self.client.register(self.node_key, self.auth_key, self.hostinfo)
        if not answer.get("MachineAuthorized"):
            raise ControlError("POST /machine/register (not authorized)", 200, repr(answer).encode())
        self.registered = True

    def start_poll(self, on_frame: Callable[[SimNode, float, bytes], None]) -> None:
        """Poll the map in a task that, like tailscaled, redials after the stream ends or stays
        silent for ``WATCHDOG_SECONDS`` (counted in ``restarts``)."""
        assert self.client is not None
        loop = asyncio.get_running_loop()

        async def run() -> None:
            while True:
                assert self.client is not None
                try:
                    async with asyncio.timeout(WATCHDOG_SECONDS) as watchdog:
                        # Moving the deadline costs a timer each time; a frame moves it only once
                        # it is under 3/4 of the watchdog away, which still leaves the longest
                        # keep-alive gap (59 s) well inside it.
                        deadline = [loop.time() + WATCHDOG_SECONDS]

                        def got(at: float, frame: bytes, deadline: list[float] = deadline) -> None:
                            now = loop.time()
                            if deadline[0] - now < WATCHDOG_SECONDS * 0.75:
                                deadline[0] = now + WATCHDOG_SECONDS
                                watchdog.reschedule(deadline[0])
                            on_frame(self, at, frame)

                        await self.client.raw_map_poll(self.map_request(), got)
                    self.error = "server ended the map stream"
                except TimeoutError:
                    self.error = f"no map message for {WATCHDOG_SECONDS} s"
                except Exception as exc:
                    self.error = f"{type(exc).__name__}: {exc}"
                self.restarts += 1
                await asyncio.sleep(REDIAL_BACKOFF_SECONDS * random.uniform(1, 2))
                old, self.client = self.client, None
                if old is not None:
                    self.bytes_closed += old.bytes_received
                    await old.close()
                while self.client is None:
                    try:
                        client = await CountingClient.connect(self.url, machine_private=self.machine_private,
                                                              server_public=self.server_public)
                    except Exception as exc:
                        self.error = f"redial failed: {type(exc).__name__}: {exc}"
                        await asyncio.sleep(REDIAL_BACKOFF_SECONDS)
                        continue
                    assert isinstance(client, CountingClient)
                    self.client = client

        self.poll = loop.create_task(run())

    async def lite_update(self) -> None:
        assert self.client is not None
        await self.client.lite_update(self.node_key, disco_key=self.disco_key, endpoints=list(self.endpoints),
                                      hostinfo=self.hostinfo)

    async def disconnect(self) -> None:
        """Drop the connection as a crashed or restarted client would."""
        if self.poll is not None:
            self.poll.cancel()
            await asyncio.gather(self.poll, return_exceptions=True)
            self.poll = None
        if self.client is not None:
            self.bytes_closed += self.client.bytes_received
            client, self.client = self.client, None
            await client.close()
