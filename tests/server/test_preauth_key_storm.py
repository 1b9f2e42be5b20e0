"""Registration storms and pre-auth keys: one reusable key presented by many nodes at once is
read from the database about once a second and marked used once; a single-use key registers
exactly one node even when several race for it; expiring or deleting a key takes effect at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from headscale_core.state import service
from headscale_core.storage import repository as repo
from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import SimNode as Machine
from headscale_core.testing.tsclient import ControlError


async def _register_all(url: str, key: str, count: int) -> list[dict[str, Any]]:
    machines = [Machine(url, f"m{i}") for i in range(count)]
    await asyncio.gather(*(m.connect() for m in machines))
    try:
        return list(await asyncio.gather(*(m.client.register(m.node.node_public(), auth_key=key,
                                                            hostinfo={"Hostname": m.name}) for m in machines)))
    finally:
        await asyncio.gather(*(m.client.close() for m in machines))


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(repo, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(repo, name, counted)
    return calls


async def test_a_storm_reads_its_reusable_key_once_and_marks_it_used_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PREAUTH_KEY_CACHE_SECONDS", 60.0)
    reads = _count_calls(monkeypatch, "preauth_key_by_prefix")
    writes = _count_calls(monkeypatch, "set_preauth_key")
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("alice")
        key_row, key = await srv.state.create_preauth_key(user, reusable=True)
        answers = await _register_all(srv.url, key, 12)
        assert all(a.get("MachineAuthorized") is True for a in answers), answers
        assert len(srv.state.store.nodes) == 12
        assert len(reads) == 1 and len(writes) == 1, (reads, writes)
        assert (await srv.state.preauth_key(key_row.id)).used is True


async def test_a_single_use_key_registers_one_node_however_many_race_for_it(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("alice")
        _, key = await srv.state.create_preauth_key(user, reusable=False)
        answers = await _register_all(srv.url, key, 6)
        ok = [a for a in answers if a.get("MachineAuthorized")]
        refused = [a for a in answers if a.get("Error")]
        assert len(ok) == 1 and len(refused) == 5, answers
        assert all("already used" in a["Error"] for a in refused)
        assert len(srv.state.store.nodes) == 1


async def test_expiring_or_deleting_a_cached_key_takes_effect_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PREAUTH_KEY_CACHE_SECONDS", 60.0)
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("alice")
        expiring, key1 = await srv.state.create_preauth_key(user, reusable=True)
        deleted, key2 = await srv.state.create_preauth_key(user, reusable=True)
        assert all(a.get("MachineAuthorized") for a in await _register_all(srv.url, key1, 1))
        assert all(a.get("MachineAuthorized") for a in await _register_all(srv.url, key2, 1))
        await srv.state.expire_preauth_key(expiring)
        await srv.state.delete_preauth_key(deleted)
        [late1] = await _register_all(srv.url, key1, 1)
        [late2] = await _register_all(srv.url, key2, 1)
        assert "expired" in late1["Error"], late1
        assert "invalid pre-auth key" in late2["Error"], late2


async def test_a_single_use_key_stays_usable_when_its_registration_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("alice")
        _, key = await srv.state.create_preauth_key(user, reusable=False)
        real = srv.state.insert_node
        failures = [RuntimeError("disk full")]

        async def failing_once(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real(*args, **kwargs)

        monkeypatch.setattr(srv.state, "insert_node", failing_once)
        machine = Machine(srv.url, "first")
        await machine.connect()
        with pytest.raises(ControlError):  # the registration failed on the server
            await machine.client.register(machine.node.node_public(), auth_key=key)
        await machine.client.close()
        [again] = await _register_all(srv.url, key, 1)
        assert again.get("MachineAuthorized") is True, again
