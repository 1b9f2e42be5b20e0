"""One simulated node: identity, a ts2021 connection, registration, the streaming map poll.

The poll does what tailscaled does with the stream (decompress, apply to a peer table), but it
only timestamps and queues each frame; the fleet's applier decodes and applies it. That keeps
arrival times honest when a thousand 250 KB initial maps land at once, since decoding one costs
milliseconds and would otherwise delay every other node's reader.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.loadgen.peertable import PeerTable
from headscale_core.protocol.keys import PrivateKey
from headscale_core.protocol.mapstream import MapStreamDecoder
from headscale_core.testing.tsclient import CURRENT_CAPVER, ControlError, TSClient

# tailscaled restarts a map poll that has been silent this long (control/controlclient/direct.go).
WATCHDOG_SECONDS = 120.0
REDIAL_BACKOFF_SECONDS = 1.0


class CountingClient(TSClient):
    """A TSClient that counts the Noise ciphertext bytes it receives (the wire cost per node)."""

    bytes_received = 0

    def _receive(self, data: bytes) -> None:
        self.bytes_received += len(data)
        super()._receive(data)

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
        try:
            while (chunk := await self._next_chunk(stream_id)) is not None:
                arrived = time.perf_counter()
                for frame in decoder.receive_data(chunk):
                    on_frame(arrived, frame)
        finally:
            self._cancel_stream(stream_id)


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
    seen: dict[str, float] = field(default_factory=dict)
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
                        def got(at: float, frame: bytes) -> None:
                            watchdog.reschedule(loop.time() + WATCHDOG_SECONDS)
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
