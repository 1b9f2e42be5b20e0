"""Guides write `headscale node list` and `headscale user create`: the singular aliases work;
and an API key records when it was last used."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from headscale_core.testing.inprocess import running

from .test_cli_offline_audit import headscale


def test_singular_aliases_as_written_in_guides(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path), "server_url": "http://127.0.0.1:9", "listen_addr": "127.0.0.1:0",
        "metrics_listen_addr": "", "unix_socket": str(tmp_path / "none.sock"),
        "derp": {"urls": [], "server": {"enabled": False}}, "dns": {"base_domain": "tailnet.test"}}))
    assert headscale(config, "user", "create", "dana").returncode == 0
    users = json.loads(headscale(config, "user", "list", "-o", "json").stdout)
    assert [u["name"] for u in users] == ["dana"]
    listed = headscale(config, "node", "list", "-o", "json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    key = headscale(config, "preauthkey", "create", "--user", "dana").stdout.strip()
    assert key.startswith("hskey-auth-")


async def test_api_key_last_seen_is_recorded_on_use(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key, secret = await srv.state.create_api_key()
        assert key.last_seen is None
        assert await srv.state.authenticate_api_key(secret) is not None
        (stored,) = await srv.state.api_keys()
        assert stored.last_seen is not None
        assert await srv.state.authenticate_api_key(secret[:-1] + "x") is None
