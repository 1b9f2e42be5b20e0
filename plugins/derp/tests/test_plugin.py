"""The plugin's hooks against the core's real config loader, key store and plugin manager."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from headscale_derp import plugin, stun
from headscale_derp.client import DerpClient, UpgradeRefused
from headscale_derp.handshake import generate_private_key, public_key
from headscale_derp.http import serve_standalone
from headscale_derp.settings import DerpSettingsError, settings_from
from prometheus_client import CollectorRegistry

from headscale_core.builtin.file_keys import FileKeyStore
from headscale_core.config import load_config
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.server.context import ServerContext


class RegisteredKeys:
    """Stands in for the state service's one method the relay uses."""

    def __init__(self, *keys: bytes) -> None:
        self.keys = {k.hex() for k in keys}

    async def node_key_registered(self, node_key_hex: str) -> bool:
        return node_key_hex in self.keys


def _context(tmp_path: Path, derp_yaml: str, state: Any = None) -> ServerContext:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        f"server_url: https://derp.example.com:8443\ndata_dir: {tmp_path}\nderp:\n  server:\n{derp_yaml}"
    )
    config = load_config(str(config_file), env={})
    keys = FileKeyStore({"derp": tmp_path / "derp.key", "noise": tmp_path / "noise.key"})
    pm = make_plugin_manager()
    return ServerContext(
        config=config, plugins=Plugins(pm), keys=keys, registry=CollectorRegistry(), state=state
    )


ENABLED = """    enabled: true
    region_id: 901
    region_code: py
    region_name: Python relay
    stun_listen_addr: 127.0.0.1:0
    ipv4: 192.0.2.10
"""


def test_plugin_is_registered_through_its_entry_point() -> None:
    pm = make_plugin_manager()
    assert pm.get_plugin("derp") is plugin


async def test_embedded_region_follows_config(tmp_path: Path) -> None:
    ctx = _context(tmp_path, ENABLED)
    (provider,) = ctx.plugins.hook.headscale_derp_map_providers(ctx=ctx)[0]
    contribution = await provider.fetch()
    assert contribution.regions == {
        901: {
            "RegionID": 901,
            "RegionCode": "py",
            "RegionName": "Python relay",
            "Nodes": [
                {"Name": "901", "RegionID": 901, "HostName": "derp.example.com", "STUNPort": 0,
                 "DERPPort": 8443, "IPv4": "192.0.2.10"}
            ],
        }
    }  # fmt: skip
    assert contribution.priority > 0


@pytest.mark.parametrize(
    "derp_yaml",
    ["    enabled: false\n", "    enabled: true\n    automatically_add_embedded_derp_region: false\n"],
)
def test_no_region_when_disabled_or_not_automatic(tmp_path: Path, derp_yaml: str) -> None:
    ctx = _context(tmp_path, derp_yaml)
    assert plugin.headscale_derp_map_providers(ctx) == []


def test_disabled_relay_mounts_only_the_verify_webhook(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "    enabled: false\n")
    assert plugin.headscale_connection_upgrades(ctx) == {}
    assert plugin.headscale_lifespans(ctx) == []
    assert [r.path for r in plugin.headscale_routes(ctx)] == ["/verify"]  # type: ignore[attr-defined]


def test_bad_mesh_key_is_reported_with_its_key_path(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "    enabled: true\n    mesh_key: short\n")
    with pytest.raises(DerpSettingsError, match="derp.server.mesh_key must be 64"):
        settings_from(ctx.config)


async def test_lifespan_serves_relay_stun_and_verify_clients(tmp_path: Path) -> None:
    member_priv = generate_private_key()
    ctx = _context(tmp_path, ENABLED, state=RegisteredKeys(public_key(member_priv)))
    handler = plugin.headscale_connection_upgrades(ctx)["/derp"]
    (lifespan,) = plugin.headscale_lifespans(ctx)
    server = await serve_standalone("127.0.0.1", 0, handler)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/derp"
    try:
        with pytest.raises(UpgradeRefused, match="503"):  # until the lifespan has loaded the key
            await DerpClient.connect(url, member_priv)
        async with lifespan():
            relay = plugin.service(ctx).relay
            assert relay is not None
            assert relay.private_key == await ctx.keys.load_or_create("derp")
            member = await DerpClient.connect(url, member_priv)
            assert member.server_key == relay.public_key
            with pytest.raises(ConnectionError, match="during the DERP handshake"):
                await DerpClient.connect(url, generate_private_key())
            member.send_packet(member.public_key, b"loop")
            assert await asyncio.wait_for(member.recv_packet(), 5) == (member.public_key, b"loop")
            assert ctx.registry.get_sample_value("derp_rejected_clients_total") == 1
            stun_protocol = plugin.service(ctx).stun
            assert stun_protocol is not None and stun_protocol.transport is not None
            await _stun_roundtrip(stun_protocol.transport.get_extra_info("sockname")[1])
            await member.close()
        assert ctx.registry.get_sample_value("derp_accepts_total") is None  # unregistered at shutdown
    finally:
        server.close()


async def _stun_roundtrip(port: int) -> None:
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        txid = os.urandom(12)
        transport.sendto(stun.binding_request(txid), ("127.0.0.1", port))
        answer = await asyncio.wait_for(answers.get(), 2)
        assert stun.parse_binding_response(answer)[0] == txid  # type: ignore[index]
    finally:
        transport.close()
