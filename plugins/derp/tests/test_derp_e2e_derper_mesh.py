"""Real clients across a mixed mesh: our embedded relay and Tailscale's ``derper`` v1.102.3
as the two nodes of one region.

Server instances A and B share one SQLite file (changes fan out through a paired bus). A
embeds our relay for region 950 on its TLS listener; B lists ``derper`` as region 950 and
runs no relay. The two relays mesh with one key: derper dials ``https://A/derp`` (it trusts
the test's certificate through ``SSL_CERT_FILE``), our relay dials derper over HTTP. derper
admits clients through B's ``/verify``. A client of A and a client of B, both forced onto
DERP, ping each other and move a mebibyte over TCP: every packet crosses the mesh link.
Runs only in a loopback-only network namespace (``scripts/test``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from headscale_derp import plugin
from headscale_derp.testing import self_signed_certificate

from headscale_core.testing.inprocess import loopback_control, merge, running
from headscale_core.testing.netns import free_loopback_port
from headscale_core.testing.tailscale import TailscaleNode, wait_until

if TYPE_CHECKING:  # importing it at run time would defeat pytest's assertion rewriting of the plugin
    from headscale_core.testing.pytest_plugin import NodeFactory

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
DERPER = os.environ.get("DERPER_BIN") or shutil.which("derper") or str(REPO / ".tools/bin/derper")
REGION = 950
PAYLOAD = bytes(range(256)) * 4096


class Derper:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""


@pytest.fixture
async def derper_factory(tmp_path: Path) -> AsyncIterator[Any]:
    if not os.access(DERPER, os.X_OK):
        pytest.fail(
            f"Tailscale derper not found at {DERPER}: build it with "
            "`go install tailscale.com/cmd/derper@v1.102.3` (scripts/setup) or set DERPER_BIN"
        )
    started: list[Derper] = []

    async def start(port: int, *args: str, env: dict[str, str]) -> Derper:
        log = tmp_path / f"derper-{port}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                DERPER, "-a", f"127.0.0.1:{port}", "-c", str(tmp_path / f"derper-{port}.json"),
                "-http-port", "-1", "-stun=false", *args,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
                env={**os.environ, "HOME": str(tmp_path), **env},
            )  # fmt: skip
        derper = Derper(process, port, log)
        started.append(derper)

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_until(listening, 10, f"derper listening on 127.0.0.1:{port}")
        return derper

    yield start
    for derper in started:
        if derper.process.returncode is None:
            derper.process.terminate()
            await derper.process.wait()


class PairedBus:
    """What one instance publishes, the other's subscribers get (LISTEN/NOTIFY in memory)."""

    def __init__(self) -> None:
        self.partner: PairedBus | None = None
        self.subscribers: list[Any] = []

    async def publish(self, change: Any) -> None:
        assert self.partner is not None
        for callback in list(self.partner.subscribers):
            await callback(change)

    def subscribe(self, callback: Any) -> None:
        self.subscribers.append(callback)

    async def aclose(self) -> None:
        self.subscribers.clear()


async def test_clients_of_our_relay_and_of_derper_talk_across_the_mesh(
    tmp_path: Path, tailscale_node_factory: NodeFactory, derper_factory: Any
) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    port_a, port_b, derper_port = free_loopback_port(), free_loopback_port(), free_loopback_port()
    mesh_key = os.urandom(32).hex()
    (tmp_path / "mesh.key").write_text(mesh_key + "\n")
    derper_region = {"Regions": {str(REGION): {
        "RegionID": REGION, "RegionCode": "mix", "RegionName": "Ours and derper",
        "Nodes": [{"Name": "derper", "RegionID": REGION, "HostName": "127.0.0.1", "IPv4": "127.0.0.1",
                   "DERPPort": derper_port, "STUNPort": -1}]}}}  # fmt: skip
    (tmp_path / "derper-region.json").write_text(json.dumps(derper_region))
    shared = {
        "database": {"sqlite": {"path": str(tmp_path / "shared.sqlite")}},
        "policy": {"mode": "database"},
    }
    config_a = loopback_control(**merge(shared, {
        "server_url": f"https://127.0.0.1:{port_a}", "listen_addr": f"127.0.0.1:{port_a}",
        "tls_cert_path": str(cert), "tls_key_path": str(key),
        "derp": {"server": {"region_id": REGION, "region_code": "mix", "region_name": "Ours and derper",
                            "mesh_key": mesh_key, "mesh_with": [f"http://127.0.0.1:{derper_port}/derp"]}},
    }))  # fmt: skip
    config_b = loopback_control(**merge(shared, {
        "server_url": f"http://127.0.0.1:{port_b}", "listen_addr": f"127.0.0.1:{port_b}",
        "derp": {"paths": [str(tmp_path / "derper-region.json")], "server": {"enabled": False}},
    }))  # fmt: skip
    async with running(tmp_path / "a", **config_a) as a, running(tmp_path / "b", **config_b) as b:
        bus_a, bus_b = PairedBus(), PairedBus()
        bus_a.partner, bus_b.partner = bus_b, bus_a
        a.state.attach_bus(bus_a)
        b.state.attach_bus(bus_b)
        assert a.state.derp_map["Regions"][REGION]["Nodes"][0]["DERPPort"] == port_a
        assert b.state.derp_map["Regions"][REGION]["Nodes"][0]["DERPPort"] == derper_port
        derper = await derper_factory(
            derper_port,
            "-mesh-psk-file", str(tmp_path / "mesh.key"), "-mesh-with", f"127.0.0.1:{port_a}",
            f"-verify-client-url=http://127.0.0.1:{port_b}/verify", "-verify-client-url-fail-open=false",
            env={"SSL_CERT_FILE": str(cert)},
        )  # fmt: skip
        relay = plugin.service(a.ctx).relay
        assert relay is not None

        async def derper_watches_us() -> bool:  # derper's link to us: TLS, mesh key, WatchConns
            return any(session.is_mesh and session.watching for session in relay._sessions)

        await wait_until(derper_watches_us, 20, f"derper meshed with our relay\n{derper.log_tail()}")

        user = await a.state.create_user("mix")
        _, auth_a = await a.state.create_preauth_key(user)
        _, auth_b = await a.state.create_preauth_key(user)
        always_derp = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
        ours = await tailscale_node_factory(
            "ours", env={**always_derp, "TS_DEBUG_USE_DERP_HTTP": "", "SSL_CERT_FILE": str(cert)}
        )
        await ours.up(a.url.replace("http://", "https://"), auth_key=auth_a, hostname="ours")
        theirs = await tailscale_node_factory("theirs", env=always_derp)
        await theirs.up(b.url, auth_key=auth_b, hostname="theirs")
        for node in (ours, theirs):
            await wait_for_peer_on_derp(node, "mix")
        key_theirs = await node_key(theirs)
        await wait_until(
            lambda: _true(key_theirs in relay.forwarders),
            10,
            f"derper announces its client\n{derper.log_tail()}",
        )

        out = await ours.ping(await theirs.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(mix)" in out
        out = await theirs.ping(await ours.ip(), timeout=15, count=3, extra_args=("--until-direct=false",))
        assert "via DERP(mix)" in out
        await echo_transfer(ours, theirs)
        # Our client's packets left through the mesh link; derper's came in as ForwardPacket.
        assert relay.stats.packets_forwarded_out > 0
        assert relay.stats.packets_forwarded_in > 0
        assert relay.stats.bytes_sent >= len(PAYLOAD)
        assert relay.stats.rejected == 0


async def _true(value: bool) -> bool:
    return value


async def wait_for_peer_on_derp(node: TailscaleNode, region_code: str) -> None:
    async def ready() -> bool:
        peers = (await node.status()).get("Peer") or {}
        return len(peers) == 1 and all(peer.get("Relay") == region_code for peer in peers.values())

    await wait_until(ready, 30, f"{node.name} sees its peer homed on DERP({region_code})")


async def node_key(node: TailscaleNode) -> bytes:
    return bytes.fromhex((await node.status())["Self"]["PublicKey"].removeprefix("nodekey:"))


async def echo_transfer(sender: TailscaleNode, echoer: TailscaleNode) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        reader, writer = await sender.dial(await echoer.ip(), server.sockets[0].getsockname()[1])

        async def send() -> None:
            writer.write(PAYLOAD)
            await writer.drain()

        sending = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.readexactly(len(PAYLOAD)), 60)
        await sending
        writer.close()
        assert received == PAYLOAD
    finally:
        server.close()
