"""The relay and STUN responder as official clients see them (issue "Built-in DERP relay and STUN").

Every test here runs real ``tailscaled`` v1.102.3 against an in-process server, inside a
loopback-only network namespace (``scripts/test``): netcheck finds our region through our
STUN responder; ``verify_clients`` admits registered nodes and refuses other keys; two
meshed relays of one region carry traffic between clients homed on different relays; the
Prometheus registry counts what was relayed; and clients that verify the relay's
certificate relay over TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from headscale_derp import plugin
from headscale_derp.client import DerpClient
from headscale_derp.frames import DISCO_MAGIC, PeerGone, PeerGoneReason
from headscale_derp.handshake import generate_private_key, public_key
from headscale_derp.testing import self_signed_certificate, trusting
from prometheus_client.parser import text_string_to_metric_families

from headscale_core.state.model import Node
from headscale_core.testing.inprocess import loopback_control, merge, running
from headscale_core.testing.netns import free_loopback_port
from headscale_core.testing.tailscale import TailscaleNode, wait_until

if TYPE_CHECKING:  # importing it at run time would defeat pytest's assertion rewriting of the plugin
    from headscale_core.testing.pytest_plugin import NodeFactory

pytestmark = pytest.mark.e2e

ALWAYS_DERP = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: WireGuard packets inside DERP frames


def relay_config(region_id: int, code: str, **extra: Any) -> dict[str, Any]:
    """``loopback_control`` with the embedded relay as the only region, under ``region_id``."""
    region = {"derp": {"server": {"region_id": region_id, "region_code": code, "region_name": code}}}
    return loopback_control(**merge(region, extra))


# --- 1. netcheck -------------------------------------------------------------------------------


async def test_netcheck_reports_our_region_with_a_stun_result_and_latency(
    tmp_path: Path, tailscale_node_factory: NodeFactory
) -> None:
    async with running(tmp_path / "control", **relay_config(903, "nc")) as control:
        node = await join(control, tailscale_node_factory, "nc1")
        registry = control.ctx.registry
        answered = registry.get_sample_value("stun_requests_total", {"disposition": "success"}) or 0.0
        result = await node.cli("netcheck", "--format=json")
        report = json.loads(result.stdout)  # the CLI's own netcheck, with the DERP map of tailscaled
        assert report["UDP"] is True, report
        assert report["IPv4"] is True, report
        assert report["PreferredDERP"] == 903
        assert set(report["RegionLatency"]) == {"903"}, "the DERP map holds only our region"
        assert report["RegionLatency"]["903"] > 0  # nanoseconds (Go's time.Duration)
        assert report["RegionV4Latency"]["903"] > 0
        host, _, port = report["GlobalV4"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0, "the XOR-MAPPED-ADDRESS our responder sent"
        after = registry.get_sample_value("stun_requests_total", {"disposition": "success"})
        assert after is not None and after > answered, "the CLI's STUN requests reached our responder"
        assert registry.get_sample_value("stun_requests_total", {"disposition": "not_stun"}) == 0
        # tailscaled's own netcheck reaches the server as Hostinfo.NetInfo.
        stored = control.state.nodes()[0]

        async def net_info_reported() -> bool:
            nonlocal stored
            stored = control.state.node(stored.id)
            net_info = (stored.host_info or {}).get("NetInfo") or {}
            return net_info.get("PreferredDERP") == 903 and "903-v4" in (net_info.get("DERPLatency") or {})

        await wait_until(net_info_reported, 20, "NetInfo with region 903 and its v4 latency")
        assert stored.host_info["NetInfo"]["WorkingUDP"] is True


# --- 2. verify_clients -------------------------------------------------------------------------


async def test_verify_clients_relays_for_registered_nodes_and_refuses_other_keys(
    tmp_path: Path, tailscale_node_factory: NodeFactory
) -> None:
    config = relay_config(904, "vc", derp={"server": {"verify_clients": True}})
    async with running(tmp_path / "control", **config) as control:
        one = await join(control, tailscale_node_factory, "vc1", env=ALWAYS_DERP)
        two = await join(control, tailscale_node_factory, "vc2", env=ALWAYS_DERP)
        await wait_for_relay_path(one, "vc")
        out = await one.ping(await two.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(vc)" in out
        relay = plugin.service(control.ctx).relay
        assert relay is not None
        stats = relay.stats
        assert stats.rejected == 0
        assert relay.gauges().current_connections == 2

        url = f"{control.url}/derp"
        stranger = generate_private_key()
        with pytest.raises(ConnectionResetError, match="during the DERP handshake"):
            await DerpClient.connect(url, stranger)
        assert stats.rejected == 1

        # The same kind of client is admitted once its key belongs to a node of this server...
        member_private = generate_private_key()
        member = await insert_node(control, "vc-member", public_key(member_private))
        client = await DerpClient.connect(url, member_private)
        nobody = os.urandom(32)
        client.send_packet(nobody, DISCO_MAGIC + bytes(60))
        gone = await next_peer_gone(client)
        assert gone == PeerGone(nobody, PeerGoneReason.NOT_HERE)
        await client.close()
        assert stats.rejected == 1
        # ... and refused again once that node is deleted.
        await control.state.delete_node(control.state.node(member.id))
        with pytest.raises(ConnectionResetError, match="during the DERP handshake"):
            await DerpClient.connect(url, member_private)
        assert stats.rejected == 2
        # The real clients were not disturbed.
        out = await two.ping(await one.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(vc)" in out


# --- 3. a mesh of two relays -------------------------------------------------------------------


class PairedBus:
    """Change fan-out between two in-process instances on one SQLite file (what the postgres
    plugin does with LISTEN/NOTIFY): what one publishes, the other's subscribers get."""

    def __init__(self) -> None:
        self.partner: PairedBus | None = None
        self.subscribers: list[Any] = []

    @classmethod
    def pair(cls) -> tuple[PairedBus, PairedBus]:
        first, second = cls(), cls()
        first.partner, second.partner = second, first
        return first, second

    async def publish(self, change: Any) -> None:
        assert self.partner is not None
        for callback in list(self.partner.subscribers):
            await callback(change)

    def subscribe(self, callback: Any) -> None:
        self.subscribers.append(callback)

    async def aclose(self) -> None:
        self.subscribers.clear()


async def test_two_meshed_relays_of_one_region_carry_ping_and_tcp_between_their_clients(
    tmp_path: Path, tailscale_node_factory: NodeFactory
) -> None:
    """Server instances A and B share one database; each embeds a relay of region 950 and
    meshes with the other. A client of A has A as its region-950 node, a client of B has B,
    so every packet between them crosses the mesh link (ForwardPacket)."""
    port_a, port_b = free_loopback_port(), free_loopback_port()
    mesh_key = os.urandom(32).hex()
    shared = {
        "database": {"sqlite": {"path": str(tmp_path / "shared.sqlite")}},
        "policy": {"mode": "database"},
    }

    def member(port: int, other: int) -> dict[str, Any]:
        server = {"region_id": 950, "region_code": "mesh", "region_name": "Meshed relays",
                  "mesh_key": mesh_key, "mesh_with": [f"http://127.0.0.1:{other}/derp"]}  # fmt: skip
        listen = {"server_url": f"http://127.0.0.1:{port}", "listen_addr": f"127.0.0.1:{port}"}
        return loopback_control(**merge(shared, {**listen, "derp": {"server": server}}))

    async with (
        running(tmp_path / "a", **member(port_a, port_b)) as a,
        running(tmp_path / "b", **member(port_b, port_a)) as b,
    ):
        bus_a, bus_b = PairedBus.pair()
        a.state.attach_bus(bus_a)
        b.state.attach_bus(bus_b)
        relay_a, relay_b = plugin.service(a.ctx).relay, plugin.service(b.ctx).relay
        assert relay_a is not None and relay_b is not None
        for ctx in (a.ctx, b.ctx):
            (node,) = ctx.state.derp_map["Regions"][950]["Nodes"]
            assert node["DERPPort"] == (port_a if ctx is a.ctx else port_b), "each server lists itself"
        on_a = await join(a, tailscale_node_factory, "on-a", env=ALWAYS_DERP)
        on_b = await join(b, tailscale_node_factory, "on-b", env=ALWAYS_DERP)
        await wait_for_relay_path(on_a, "mesh")
        await wait_for_relay_path(on_b, "mesh")
        key_a, key_b = await node_key(on_a), await node_key(on_b)
        await wait_until(
            async_check(lambda: key_b in relay_a.forwarders and key_a in relay_b.forwarders),
            10,
            "each relay learns the other relay's client through the mesh",
        )
        assert key_a in local_keys(relay_a) and key_a not in local_keys(relay_b)
        assert key_b in local_keys(relay_b) and key_b not in local_keys(relay_a)

        out = await on_a.ping(await on_b.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(mesh)" in out
        out = await on_b.ping(await on_a.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(mesh)" in out
        forwarded_a = relay_a.stats.packets_forwarded_out
        assert forwarded_a > 0 and relay_b.stats.packets_forwarded_out > 0

        await echo_transfer(on_a, on_b)
        assert relay_a.stats.packets_forwarded_out > forwarded_a
        # Through the mesh, both ways: at least a mebibyte each way crossed as ForwardPacket.
        assert relay_b.stats.bytes_sent >= len(PAYLOAD) and relay_a.stats.bytes_sent >= len(PAYLOAD)
        assert relay_a.stats.packets_forwarded_in > 0 and relay_b.stats.packets_forwarded_in > 0


# --- 4. Prometheus -----------------------------------------------------------------------------


async def test_metrics_endpoint_counts_relayed_connections_bytes_packets_and_drops(
    tmp_path: Path, tailscale_node_factory: NodeFactory
) -> None:
    metrics_port = free_loopback_port()
    config = relay_config(905, "pm", metrics_listen_addr=f"127.0.0.1:{metrics_port}")
    async with running(tmp_path / "control", **config) as control:
        one = await join(control, tailscale_node_factory, "pm1", env=ALWAYS_DERP)
        two = await join(control, tailscale_node_factory, "pm2", env=ALWAYS_DERP)
        await wait_for_relay_path(one, "pm")
        await echo_transfer(one, two)
        # A registered DERP client sends disco to a key nobody holds: dropped as unknown_dest.
        # (Compared with a scrape taken just before, as the real clients' start-up may drop
        # a disco packet too, sent before the peer's DERP connection was up.)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        member_private = generate_private_key()
        await insert_node(control, "pm-member", public_key(member_private))
        client = await DerpClient.connect(f"{control.url}/derp", member_private)
        before = await scrape(url)
        client.send_packet(os.urandom(32), DISCO_MAGIC + bytes(60))
        await next_peer_gone(client)

        scraped = await scrape(url)
        assert scraped[("derp_current_connections", ())] == 3
        assert scraped[("derp_current_home_connections", ())] == 2
        assert scraped[("derp_accepts_total", ())] >= 3
        assert scraped[("derp_rejected_clients_total", ())] == 0
        assert scraped[("derp_bytes_received_total", ())] >= 2 * len(PAYLOAD)  # there and back
        assert scraped[("derp_bytes_sent_total", ())] >= 2 * len(PAYLOAD)
        assert scraped[("derp_packets_sent_total", ())] >= 2 * len(PAYLOAD) // 65536
        assert scraped[("derp_packets_received_kind_total", (("kind", "disco"),))] > 0
        assert scraped[("derp_packets_received_kind_total", (("kind", "other"),))] > 0
        unknown = (("kind", "disco"), ("reason", "unknown_dest"))
        for name, step in (
            ("derp_packets_dropped_total", 1),
            ("derp_bytes_dropped_total", len(DISCO_MAGIC) + 60),
        ):
            assert scraped[(name, unknown)] - before[(name, unknown)] == step
        assert scraped[("derp_peer_gone_not_here_frames_total", ())] >= 1
        not_here = ("derp_peer_gone_not_here_frames_total", ())
        assert scraped[not_here] - before[not_here] == 1
        for reason in ("queue_tail", "write_error", "dup_client", "unknown_dest_on_fwd"):
            for kind in ("disco", "other"):
                assert scraped[("derp_packets_dropped_total", (("kind", kind), ("reason", reason)))] == 0

        # When a client leaves, its peer (which received from it) is told so.
        await client.close()
        await two.stop()
        relay = plugin.service(control.ctx).relay
        assert relay is not None
        await wait_until(async_check(lambda: relay.gauges().current_connections == 1), 10, "two gone")
        scraped = await scrape(url)
        assert scraped[("derp_current_connections", ())] == 1
        assert scraped[("derp_peer_gone_disconnected_frames_total", ())] >= 1


# --- 5. TLS on the main listener ---------------------------------------------------------------


async def test_real_clients_relay_over_tls_with_the_configured_certificate(
    tmp_path: Path, tailscale_node_factory: NodeFactory
) -> None:
    """Control and DERP on one TLS listener; the clients verify the self-signed certificate
    (``SSL_CERT_FILE``), and ``TS_DEBUG_USE_DERP_HTTP`` is off, so DERP runs over TLS."""
    cert, key = self_signed_certificate(tmp_path / "tls")
    port = free_loopback_port()
    config = relay_config(906, "tls", server_url=f"https://127.0.0.1:{port}", listen_addr=f"127.0.0.1:{port}",
                          tls_cert_path=str(cert), tls_key_path=str(key))  # fmt: skip
    async with running(tmp_path / "control", **config) as control:
        (node,) = control.state.derp_map["Regions"][906]["Nodes"]
        assert (node["HostName"], node["DERPPort"]) == ("127.0.0.1", port)
        env = {**ALWAYS_DERP, "TS_DEBUG_USE_DERP_HTTP": "", "SSL_CERT_FILE": str(cert)}
        url = f"https://127.0.0.1:{port}"
        one = await join(control, tailscale_node_factory, "tls1", env=env, url=url)
        two = await join(control, tailscale_node_factory, "tls2", env=env, url=url)
        await wait_for_relay_path(one, "tls")
        out = await one.ping(await two.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(tls)" in out
        await echo_transfer(one, two)
        relay = plugin.service(control.ctx).relay
        assert relay is not None and relay.stats.bytes_sent >= 2 * len(PAYLOAD)
        # Our own client over TLS, trusting only that certificate, with a registered key.
        member_private = generate_private_key()
        await insert_node(control, "tls-member", public_key(member_private))
        client = await DerpClient.connect(f"{url}/derp", member_private, ssl=trusting(cert))
        assert client.server_key == relay.public_key
        await client.close()


# --- helpers -----------------------------------------------------------------------------------


async def join(
    control: Any, factory: NodeFactory, name: str, *, env: dict[str, str] | None = None, url: str = ""
) -> TailscaleNode:
    """A started tailscaled, logged in to ``control`` with a pre-auth key, Running."""
    users = {user.name: user for user in control.state.users()}
    user = users.get("relay") or await control.state.create_user("relay")
    _, auth_key = await control.state.create_preauth_key(user)
    node = await factory(name, env=env or {})
    await node.up(url or control.url, auth_key=auth_key, hostname=name)
    await node.wait_running(30)
    return node


async def wait_for_relay_path(node: TailscaleNode, region_code: str, peers: int = 1) -> None:
    """Until ``node`` sees ``peers`` peers, each with ``region_code`` as its home relay."""

    async def ready() -> bool:
        found = (await node.status()).get("Peer") or {}
        return len(found) == peers and all(peer.get("Relay") == region_code for peer in found.values())

    await wait_until(ready, 30, f"{node.name} sees {peers} peer(s) homed on DERP({region_code})")


async def node_key(node: TailscaleNode) -> bytes:
    text = (await node.status())["Self"]["PublicKey"]
    return bytes.fromhex(text.removeprefix("nodekey:"))


def local_keys(relay: Any) -> set[bytes]:
    return {session.key for session in relay._sessions if not session.is_mesh}


def async_check(check: Any) -> Any:
    async def wrapped() -> bool:
        return bool(check())

    return wrapped


async def insert_node(control: Any, name: str, key: bytes) -> Node:
    """A node of this server whose node key is ``key`` (so ``verify_clients`` admits it)."""
    users = {user.name: user for user in control.state.users()}
    user = users.get("relay") or await control.state.create_user("relay")
    v4, v6 = control.state.allocate_addresses()
    node = Node(id=0, machine_key="mkey:" + os.urandom(32).hex(), node_key="nodekey:" + key.hex(),
                disco_key="", given_name=name, hostname=name, user_id=user.id, ipv4=v4, ipv6=v6)  # fmt: skip
    return await control.state.insert_node(node, actor="test")  # type: ignore[no-any-return]


async def next_peer_gone(client: DerpClient) -> PeerGone:
    while True:
        event = await asyncio.wait_for(client.recv(), 5)
        if isinstance(event, PeerGone):
            return event


async def echo_transfer(sender: TailscaleNode, echoer: TailscaleNode) -> None:
    """1 MiB to an echo service reached through ``echoer``'s tailnet address, and back."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await sender.dial(await echoer.ip(), port)
        sending = asyncio.create_task(_send(writer, PAYLOAD))
        received = await asyncio.wait_for(reader.readexactly(len(PAYLOAD)), 60)
        await sending
        writer.close()
        assert received == PAYLOAD
    finally:
        server.close()


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
