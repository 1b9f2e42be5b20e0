"""Policy sources with `headscale serve` in a subprocess, driven by the real CLI: SIGHUP reloads
a file policy; `policy set`/`get` round-trip a database policy and refuse a bad one."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from headscale_core.testing.pytest_plugin import ServerFactory
from headscale_core.testing.serverproc import ServerProcess

GOOD = '{\n  // admins\n  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:22"]}],\n}\n'
# Same length as GOOD, so only the text differs when the file is swapped with its old mtime.
OTHER = GOOD.replace(":22", ":80")
BAD = '{"tagOwners": {"tag:a": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:a:22", "tag:b:22"]}]}'


def current_policy(server: ServerProcess) -> str:
    return server.cli("policy", "get").stdout


def wait_for_policy(server: ServerProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while current_policy(server) != text + "\n":
        if time.monotonic() > deadline:
            raise AssertionError(f"the server still serves {current_policy(server)!r}\n{server.log_tail()}")
        time.sleep(0.2)


def test_sighup_reloads_a_file_policy_the_watcher_cannot_see_change(
        headscale_server_factory: ServerFactory, tmp_path: Path) -> None:
    policy = tmp_path / "policy.hujson"
    policy.write_text(GOOD)
    server = headscale_server_factory({"policy": {"mode": "file", "path": str(policy)}})
    assert current_policy(server) == GOOD.rstrip("\n") + "\n"
    # Same size and modification time: the file watcher sees no change; only SIGHUP says so.
    stamp = policy.stat()
    policy.write_text(OTHER)
    os.utime(policy, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    time.sleep(2.5)  # more than two poll intervals
    assert current_policy(server) == GOOD.rstrip("\n") + "\n"
    assert server._proc is not None  # ServerProcess has no public signal method
    server._proc.send_signal(signal.SIGHUP)
    wait_for_policy(server, OTHER.rstrip("\n"))
    assert server.running
    assert "policy reloaded from file" in server.log_path.read_text()


def test_database_policy_round_trips_and_a_rejected_one_is_neither_applied_nor_stored(
        headscale_server_factory: ServerFactory, tmp_path: Path) -> None:
    server = headscale_server_factory({"policy": {"mode": "database"}})
    good, bad = tmp_path / "good.hujson", tmp_path / "bad.hujson"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert server.cli("policy", "set", "-f", str(good)).stdout == "Policy updated.\n"
    assert current_policy(server) == GOOD.rstrip("\n") + "\n"
    assert server.cli_json("policy", "get")["policy"] == GOOD

    refused = server.cli("policy", "set", "-f", str(bad), check=False)
    assert refused.returncode == 1
    assert refused.stderr == 'Error: acls[0].dst[1]: dst=tag not found: "tag:b"\n'
    assert server.cli_json("policy", "get")["policy"] == GOOD
    with sqlite3.connect(server.workdir / "db.sqlite") as db:
        assert [row[0] for row in db.execute("SELECT data FROM policies")] == [GOOD]
    server.restart()
    assert server.cli_json("policy", "get")["policy"] == GOOD
