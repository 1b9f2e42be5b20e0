"""``headscale audit list`` against a running server (local socket) and offline."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from headscale_core.cli.admin_audit import since_time
from headscale_core.testing.inprocess import RunningServer

from .conftest import Cli, Result


async def test_audit_list_filters_by_kind_and_since(cli: Cli, server: RunningServer) -> None:
    async def run(*argv: str) -> Result:
        return await asyncio.to_thread(cli, server.ctx.config, *argv)

    assert (await run("users", "create", "alice")).code == 0
    assert (await run("users", "rename", "-n", "alice", "-r", "alicia")).code == 0
    for _ in range(100):  # the recorder writes a moment after the event
        r = await run("-o", "json", "audit", "list", "--since", "1h", "--kind", "user.")
        if len(json.loads(r.out)) == 2:
            break
        await asyncio.sleep(0.05)
    events = json.loads(r.out)
    assert [(e["kind"], e["actor"], e["source"]) for e in events] == [
        ("user.create", "local", "local"), ("user.update", "local", "local")]
    assert events[1]["details"] == {"name": "alicia"}

    r = await run("audit", "list", "--kind", "user.update")
    header, row = r.out.splitlines()
    assert [cell.strip() for cell in header.split(" | ")][:3] == ["Time", "Kind", "Actor"]
    assert "user.update" in row and "name=alicia" in row

    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert json.loads((await run("-o", "json", "audit", "list", "--since", later)).out) == []
    r = await run("audit", "list", "--since", "last tuesday")
    assert r.code == 1 and "duration back from now" in r.err


def test_since_accepts_a_duration_or_a_time() -> None:
    assert since_time("2026-01-02T15:04:05Z") == "2026-01-02T15:04:05Z"
    hour_ago = datetime.fromisoformat(since_time("1h").replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - hour_ago) - timedelta(hours=1)) < timedelta(seconds=5)
