"""Relay mesh: several relays sharing a mesh key reach each other's clients (reference §4.8).

For every other member this relay keeps one outbound DERP client, authenticated with the
relay's own key plus the mesh key, that sends WatchConns. The member answers with PeerPresent
for each key connected there and keeps the stream live; each announced key gets this link as
a forwarder in the local ``Relay``. A packet for such a key leaves as ForwardPacket on the
link and is delivered there locally, never re-forwarded. When a link drops, everything it
announced is forgotten and it redials every ``retry_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from headscale_derp.client import DerpClient
from headscale_derp.frames import FrameType, PeerGone, PeerPresent, RemoteProtocolError, WatchConns
from headscale_derp.handshake import ClientInfo
from headscale_derp.relay import Relay

log = logging.getLogger("headscale_derp.mesh")

# Above this many unsent bytes on a link, forwarded packets are dropped rather than buffered.
MAX_LINK_BUFFER = 4 << 20


def mesh_url(member: str) -> str:
    """``host[:port]`` means ``https://host[:port]/derp`` as in derper's ``-mesh-with``."""
    return member if "://" in member else f"https://{member}/derp"


class MeshLink:
    """The outbound watch connection to one mesh member; a ``Forwarder`` for its keys."""

    def __init__(
        self,
        relay: Relay,
        url: str,
        *,
        retry_interval: float = 5.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.relay = relay
        self.url = mesh_url(url)
        self.retry_interval = retry_interval
        self.ssl = ssl
        self.present: set[bytes] = set()
        self.connected = asyncio.Event()
        self._client: DerpClient | None = None

    def forward(self, src: bytes, dst: bytes, packet: bytes) -> None:
        client = self._client
        if client is None or client.writer.transport.get_write_buffer_size() > MAX_LINK_BUFFER:
            self.relay.stats.drop("write_error", False, len(packet))
            return
        client.conn.send_raw(FrameType.FORWARD_PACKET, src, dst, packet)
        client.writer.write(client.conn.data_to_send())

    async def run(self) -> None:
        """Keep the link up until cancelled; returns early if the URL is this relay itself."""
        info = ClientInfo(mesh_key=self.relay.mesh_key)
        while True:
            try:
                client = await DerpClient.connect(
                    self.url, self.relay.private_key, client_info=info, ssl=self.ssl
                )
            except (OSError, TimeoutError, RemoteProtocolError, asyncio.IncompleteReadError) as exc:
                log.info(
                    "mesh %s: cannot connect (%s); retrying in %.0f s", self.url, exc, self.retry_interval
                )
                await asyncio.sleep(self.retry_interval)
                continue
            if client.server_key == self.relay.public_key:
                log.info("mesh %s: this is ourselves; not meshing with it", self.url)
                await client.close()
                return
            try:
                await self._watch(client)
            except (OSError, RemoteProtocolError) as exc:
                log.info("mesh %s: link lost (%s); retrying in %.0f s", self.url, exc, self.retry_interval)
            finally:
                self._client = None
                self.connected.clear()
                self._forget_all()
                await client.close()
            await asyncio.sleep(self.retry_interval)

    async def _watch(self, client: DerpClient) -> None:
        client.send(WatchConns())
        self._client = client
        self.connected.set()
        log.info("mesh %s: connected to relay %s", self.url, client.server_key.hex()[:16])
        relay = self.relay
        while True:
            for event in await client.recv_batch():
                if isinstance(event, PeerPresent):
                    if event.peer != relay.public_key:
                        self.present.add(event.peer)
                        relay.add_forwarder(event.peer, self)
                elif isinstance(event, PeerGone):
                    self.present.discard(event.peer)
                    relay.remove_forwarder(event.peer, self)

    def _forget_all(self) -> None:
        for key in self.present:
            self.relay.remove_forwarder(key, self)
        self.present.clear()


@asynccontextmanager
async def mesh_links(
    relay: Relay,
    members: Sequence[str],
    *,
    retry_interval: float = 5.0,
    ssl: ssl_module.SSLContext | None = None,
) -> AsyncIterator[list[MeshLink]]:
    """Run a link to every member for the duration of the context."""
    if members and not relay.mesh_key:
        raise ValueError(
            "derp.server.mesh_with needs derp.server.mesh_key (64 hex characters) on every member"
        )
    links = [MeshLink(relay, member, retry_interval=retry_interval, ssl=ssl) for member in members]
    tasks = [asyncio.create_task(link.run(), name=f"derp-mesh {link.url}") for link in links]
    try:
        yield links
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
