"""With no server running, the CLI works on the database directly and its changes are
audited like the server's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def headscale(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "headscale"
    return subprocess.run([str(exe), "-c", str(config), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


def test_offline_changes_are_audited(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path), "server_url": "http://127.0.0.1:9", "listen_addr": "127.0.0.1:0",
        "metrics_listen_addr": "", "unix_socket": str(tmp_path / "none.sock"),
        "derp": {"urls": [], "server": {"enabled": False}}, "dns": {"base_domain": "tailnet.test"},
        "audit": {"path": "audit.jsonl"}}))
    created = headscale(config, "users", "create", "offline-user")
    assert created.returncode == 0, created.stderr
    listed = headscale(config, "audit", "list", "--since", "1h", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    kinds = [e["kind"] for e in json.loads(listed.stdout)]
    assert "user.create" in kinds
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "user.create" and e["actor"] == "local" for e in lines)
    assert not (tmp_path / "noise_private.key").exists(), "the offline CLI must not create server keys"
