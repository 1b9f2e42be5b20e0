"""The same scripted admin session against a server's unix socket, a remote server with an
API key, and no server at all (offline core): same output, same effects."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from api.conftest import serving, write_config

from headscale_core.config import Config
from headscale_core.testing.inprocess import RunningServer

from .conftest import Cli, Result

Run = Callable[..., Awaitable[Result]]


async def scripted_session(run: Run) -> None:
    r = await run("users", "create", "alice", "-e", "alice@example.org")
    assert (r.code, r.out.strip()) == (0, "User created"), r
    r = await run("users", "create", "alice")
    assert r.code == 1 and r.err.strip() == "Error: user 'alice' already exists" and r.out == ""
    r = await run("-o", "json", "users", "create", "alice")
    assert r.code == 1 and json.loads(r.err) == {"error": "user 'alice' already exists"}
    users = json.loads((await run("-o", "json", "users", "list")).out)
    assert [(u["id"], u["name"], u["email"]) for u in users] == [("1", "alice", "alice@example.org")]

    r = await run("preauthkeys", "create", "-u", "alice", "--reusable", "-e", "2h")
    assert r.code == 0 and re.fullmatch(r"hskey-auth-[0-9a-f]{12}-\S+\n", r.out), r
    r = await run("pre", "new", "--tags", "tag:ci,tag:build")
    assert r.code == 0 and r.out.startswith("hskey-auth-")
    keys = json.loads((await run("-o", "json-line", "authkey", "ls")).out)
    assert [(k["id"], k["user"] and k["user"]["name"], k["aclTags"], k["reusable"]) for k in keys] == [
        ("1", "alice", [], True), ("2", None, ["tag:build", "tag:ci"], False)]
    assert (await run("preauthkeys", "create", "-u", "nobody")).code == 1
    assert (await run("preauthkeys", "create", "-u", "alice", "-e", "soon")).code == 1
    assert len(json.loads((await run("-o", "json", "preauthkeys", "list")).out)) == 2

    r = await run("users", "mv", "-n", "alice", "-r", "carol")
    assert (r.code, r.out.strip()) == (0, "User renamed")
    table = (await run("users", "list")).out.splitlines()
    assert table[0].split(" | ")[:3] == ["ID", "Name", "Username"] and "carol" in table[1]

    api_key = (await run("apikeys", "create", "--expiration", "30d")).out.strip()
    assert re.fullmatch(r"hskey-api-[0-9a-f]{12}-\S+", api_key)
    listed = yaml.safe_load((await run("-o", "yaml", "apikeys", "list")).out)
    assert f"hskey-api-{api_key.split('-')[2]}-***" in [k["prefix"] for k in listed]

    # no terminal and no --force: refused, nothing changed
    r = await run("preauthkeys", "expire", "-i", "1")
    assert r.code == 1 and "--force" in r.err
    assert not _expired(json.loads((await run("-o", "json", "pre", "list")).out)[0])
    assert (await run("--force", "preauthkeys", "revoke", "-i", "1")).code == 0
    assert _expired(json.loads((await run("-o", "json", "pre", "list")).out)[0])
    assert (await run("--force", "preauthkeys", "rm", "-i", "2")).code == 0
    assert (await run("--force", "preauthkeys", "delete", "-i", "2")).code == 1

    r = await run("--force", "nodes", "delete", "-i", "99")
    assert r.code == 1 and "node 99 does not exist" in r.err
    assert json.loads((await run("-o", "json", "nodes", "list")).out) == []
    r = await run("--force", "users", "destroy", "-n", "carol")
    assert (r.code, r.out.strip()) == (0, "User destroyed"), r
    assert json.loads((await run("-o", "json", "users", "list")).out) == []
    assert (await run("health")).code == 0


def _expired(key: dict[str, str]) -> bool:
    from datetime import UTC, datetime

    return datetime.fromisoformat(key["expiration"].replace("Z", "+00:00")) <= datetime.now(UTC)


def runner(cli: Cli, config: Config) -> Run:
    async def run(*argv: str) -> Result:
        # The CLI runs its own event loop, as it does in a terminal.
        return await asyncio.to_thread(cli, config, *argv)

    return run


async def test_local_socket(cli: Cli, server: RunningServer, events: object) -> None:
    await scripted_session(runner(cli, server.ctx.config))
    assert set(events.actors("user.create")) == {"local"}  # type: ignore[attr-defined]


async def test_remote_with_api_key(cli: Cli, server: RunningServer, tmp_path: Path, short_dir: Path) -> None:
    _, key = await server.state.create_api_key(actor="test")
    remote = write_config(tmp_path / "client", short_dir / "absent.sock", cli={"address": server.url, "api_key": key})
    await scripted_session(runner(cli, remote))
    assert [u.name for u in server.state.users()] == []  # the session ran against this server

    _, reader = await server.state.create_api_key(scope="read", actor="test")
    read_only = write_config(tmp_path / "reader", short_dir / "absent.sock",
                             cli={"address": server.url, "api_key": reader})
    r = await runner(cli, read_only)("users", "create", "bob")
    assert r.code == 1 and "scope read" in r.err
    r = await runner(cli, read_only)("-o", "json", "users", "list")
    assert (r.code, json.loads(r.out)) == (0, [])
    wrong = write_config(tmp_path / "wrong", short_dir / "absent.sock",
                         cli={"address": server.url, "api_key": "hskey-api-000000000000-x"})
    r = await runner(cli, wrong)("users", "list")
    assert r.code == 1 and "refused the API key" in r.err


async def test_offline_core(cli: Cli, tmp_path: Path, short_dir: Path) -> None:
    config = write_config(tmp_path, short_dir / "not-running.sock")
    await scripted_session(runner(cli, config))
    # the offline session wrote to the same database a server then serves
    await runner(cli, config)("users", "create", "dave")
    async with serving(config) as srv:
        assert [u.name for u in srv.state.users()] == ["dave"]


async def test_policy_commands(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    run = runner(cli, server.ctx.config)
    good = tmp_path / "good.hujson"
    good.write_text('{\n  // everyone\n  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],\n}\n')
    bad = tmp_path / "bad.hujson"
    bad.write_text('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}')
    assert (await run("policy", "check", "-f", str(good))).code == 0
    r = await run("acl", "validate", "-f", str(bad))
    assert r.code == 1 and r.err.startswith(f"Error: policy file {bad} is invalid")
    assert (await run("policy", "check", "-f", str(tmp_path / "missing"))).code == 1

    assert (await run("policy", "set", "-f", str(bad))).code == 1
    assert (await run("policy", "get")).out.strip() == ""
    assert (await run("policy", "set", "-f", str(good))).out.strip() == "Policy updated."
    assert (await run("policy", "get")).out == good.read_text()
    assert json.loads((await run("-o", "json", "policy", "get")).out)["updatedAt"].endswith("Z")
