"""Two relays sharing a mesh key deliver packets between clients connected to different ones."""

from __future__ import annotations

import asyncio
import os

from headscale_derp.frames import PeerGone, PeerGoneReason
from headscale_derp.mesh import mesh_links
from headscale_derp.testing import eventually


async def test_two_relay_mesh_forwards_both_ways_and_reports_peer_gone(relays) -> None:  # type: ignore[no-untyped-def]
    mesh_key = os.urandom(32).hex()
    one = await relays(mesh_key=mesh_key)
    two = await relays(mesh_key=mesh_key)
    async with (
        mesh_links(one.relay, [two.url], retry_interval=0.1) as links_one,
        mesh_links(two.relay, [one.url, one.url.replace(str(one.port), str(two.port))], retry_interval=0.1),
    ):
        a = await one.client()
        b = await two.client()
        await eventually(
            lambda: b.public_key in one.relay.forwarders and a.public_key in two.relay.forwarders
        )
        a.send_packet(b.public_key, b"over the mesh")
        assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"over the mesh")
        big = os.urandom(65536)
        b.send_packet(a.public_key, big)
        assert await asyncio.wait_for(a.recv_packet(), 5) == (b.public_key, big)
        assert one.metric("derp_packets_forwarded_out_total") == 1
        assert one.metric("derp_packets_forwarded_in_total") == 1
        assert len(links_one[0].present) >= 1
        await b.close()
        event = await asyncio.wait_for(a.recv(), 5)
        assert event == PeerGone(b.public_key, PeerGoneReason.DISCONNECTED)
        await eventually(lambda: b.public_key not in one.relay.forwarders)


async def test_mesh_link_recovers_after_member_restart(relays) -> None:  # type: ignore[no-untyped-def]
    mesh_key = os.urandom(32).hex()
    one = await relays(mesh_key=mesh_key)
    two = await relays(mesh_key=mesh_key)
    async with mesh_links(one.relay, [two.url], retry_interval=0.1) as (link,):
        b = await two.client()
        await eventually(lambda: b.public_key in one.relay.forwarders)
        two.relay.close_all()  # the member drops every connection, the mesh link included
        await eventually(lambda: link.connected.is_set() and b.public_key not in one.relay.forwarders)
        b2 = await two.client()
        await eventually(lambda: b2.public_key in one.relay.forwarders)
