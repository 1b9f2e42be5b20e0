"""The storage conformance suite: what every ``StorageBackend`` must do, run by each backend
against itself (SQLite in the core's tests, PostgreSQL in its plugin).

Subclass ``StorageConformance`` in a test module and provide a ``backend_factory`` fixture: a
callable returning a new, unopened backend for one database that is empty at the start of the
test (every call in a test must reach the same database). A backend with ``backup()`` also
overrides ``backup_reader``, so the suite can open the copy::

    class TestSqlite(StorageConformance):
        @pytest.fixture
        def backend_factory(self, tmp_path):
            return lambda: SqliteBackend(tmp_path / "db.sqlite")

Everything goes through ``headscale_core.storage.repository`` and plain SQLAlchemy, so the
suite knows nothing of any one database.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from headscale_core.errors import StorageError
from headscale_core.events import Event
from headscale_core.state.model import APIKey, Node, PreAuthKey, User
from headscale_core.storage import migrate
from headscale_core.storage import repository as repo
from headscale_core.storage.backend import StorageBackend
from headscale_core.storage.models import NodeRow, RegistrationRow

BackendFactory = Callable[[], StorageBackend]

TABLES = {"users", "nodes", "pre_auth_keys", "api_keys", "policies", "registrations", "audit_events"}
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def a_node(n: int, user_id: int | None, **changes: Any) -> Node:
    """A node whose keys, name and addresses are unique by ``n``."""
    node = Node(
        id=0, machine_key=f"mkey:{n:064x}", node_key=f"nodekey:{n:064x}", disco_key=f"discokey:{n:064x}",
        given_name=f"node-{n}", hostname=f"Node {n}", user_id=user_id, endpoints=(f"192.0.2.{n}:41641",),
        host_info={"Hostname": f"node-{n}", "OS": "linux", "RoutableIPs": ["10.0.0.0/24"]},
        ipv4=f"100.64.0.{n}", ipv6=f"fd7a:115c:a1e0::{n:x}", register_method="authkey", tags=(),
        ephemeral=False, last_seen=T0, expiry=T0 + timedelta(days=90), approved_routes=("10.0.0.0/24",),
        capver=130,
    )
    return node.replace(**changes)


def stored_fields(obj: Any, *ignore: str) -> dict[str, Any]:
    """A domain object's fields without those the database assigns."""
    return {k: v for k, v in dataclasses.asdict(obj).items() if k not in {"id", "created_at", "updated_at", *ignore}}


def assert_utc(value: datetime | None) -> None:
    assert value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0), value


class StorageConformance:
    """Inherit in a ``Test…`` class and provide ``backend_factory``; see the module docstring."""

    @pytest.fixture
    def backup_reader(self) -> Callable[[str], StorageBackend] | None:
        """Override to return ``destination -> backend`` for backends whose ``backup()`` works."""
        return None

    @pytest.fixture
    def backup_destination(self, tmp_path: Path) -> str:
        return str(tmp_path / "backup-copy")

    @pytest_asyncio.fixture
    async def backend(self, backend_factory: BackendFactory) -> AsyncIterator[StorageBackend]:
        backend = backend_factory()
        await backend.open()
        try:
            yield backend
        finally:
            await backend.close()

    async def a_user(self, backend: StorageBackend, name: str = "alice", **fields: Any) -> User:
        async with backend.transaction() as s:
            return await repo.insert_user(s, User(id=0, name=name, **fields), T0)

    # ---- schema ------------------------------------------------------------------------------

    async def test_migrations_bring_an_empty_database_to_head(self, backend: StorageBackend) -> None:
        async with backend.engine.connect() as conn:
            assert await conn.run_sync(migrate.current_revision) == migrate.head_revision()
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert tables >= TABLES

    async def test_reopening_at_head_changes_nothing(self, backend: StorageBackend,
                                                     backend_factory: BackendFactory) -> None:
        await self.a_user(backend)
        await backend.close()
        again = backend_factory()
        await again.open(migrate_schema=False)
        try:
            async with again.transaction() as s:
                assert [u.name for u in await repo.all_users(s)] == ["alice"]
        finally:
            await again.close()

    async def test_an_unmigrated_database_is_refused_without_migrate(self, backend_factory: BackendFactory) -> None:
        backend = backend_factory()
        with pytest.raises(StorageError, match="run `headscale db upgrade`"):
            await backend.open(migrate_schema=False)

    async def test_a_schema_from_a_newer_release_is_refused(self, backend: StorageBackend,
                                                            backend_factory: BackendFactory) -> None:
        async with backend.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00d_from_the_future'"))
        await backend.close()
        for migrate_schema in (True, False):
            newer = backend_factory()
            with pytest.raises(StorageError, match="revision f00d_from_the_future, which this release of "
                                                   "headscale-core does not know: it was written by a newer release"):
                await newer.open(migrate_schema=migrate_schema)
        check = backend_factory()
        check._engine = check.create_engine()  # read the version row without open()'s migration step
        try:
            async with check.engine.connect() as conn:
                assert await conn.run_sync(migrate.current_revision) == "f00d_from_the_future"
        finally:
            await check.close()

    # ---- round trips -------------------------------------------------------------------------

    async def test_users_round_trip(self, backend: StorageBackend) -> None:
        alice = await self.a_user(backend, "alice", display_name="Alice A.", email="alice@example.com",
                                  provider="oidc", provider_identifier="https://idp/alice",
                                  profile_pic_url="https://idp/alice.png", groups=("eng", "ops"))
        async with backend.transaction() as s:
            (stored,) = await repo.all_users(s)
        assert stored == alice and alice.id > 0
        assert_utc(stored.created_at)
        async with backend.transaction() as s:
            await repo.update_user(s, alice.__class__(**{**dataclasses.asdict(alice), "display_name": "Al",
                                                         "groups": ("eng",)}), T0 + timedelta(hours=1))
        async with backend.transaction() as s:
            (stored,) = await repo.all_users(s)
            assert (stored.display_name, stored.groups) == ("Al", ("eng",))
            await repo.delete_user(s, alice.id)
        async with backend.transaction() as s:
            assert await repo.all_users(s) == []

    async def test_nodes_round_trip(self, backend: StorageBackend) -> None:
        alice = await self.a_user(backend)
        node = a_node(1, alice.id, host_info={"Hostname": "n", "NetInfo": {"PreferredDERP": 999}, "Services": []})
        async with backend.transaction() as s:
            inserted = await repo.insert_node(s, node, T0)
        async with backend.transaction() as s:
            (stored,) = await repo.all_nodes(s)
        assert stored_fields(stored) == stored_fields(node)
        assert stored.host_info == node.host_info and stored.id == inserted.id
        for when in (stored.created_at, stored.updated_at, stored.last_seen, stored.expiry):
            assert_utc(when)

        later = T0 + timedelta(minutes=5)
        changed = stored.replace(tags=("tag:server",), user_id=None, approved_routes=(), endpoints=(),
                                 expiry=None, given_name="renamed")
        async with backend.transaction() as s:
            await repo.update_node(s, changed, later)
            await repo.update_nodes_seen(s, [(stored.id, later), (stored.id + 1000, later)])
        async with backend.transaction() as s:
            (stored,) = await repo.all_nodes(s)
        assert stored_fields(stored, "last_seen") == stored_fields(changed, "last_seen")
        assert stored.last_seen == later and stored.updated_at == later
        async with backend.transaction() as s:
            await repo.delete_node(s, stored.id)
        async with backend.transaction() as s:
            assert await repo.all_nodes(s) == []

    async def test_pre_auth_keys_round_trip(self, backend: StorageBackend) -> None:
        alice = await self.a_user(backend)
        key = PreAuthKey(id=0, prefix="hskey-auth-abc", user_id=alice.id, reusable=True, ephemeral=True,
                         tags=("tag:ci",), expiration=T0 + timedelta(days=1), description="CI runners")
        async with backend.transaction() as s:
            inserted = await repo.insert_preauth_key(s, key, "hash-of-secret", T0)
        async with backend.transaction() as s:
            found = await repo.preauth_key_by_prefix(s, "hskey-auth-abc")
            assert found is not None and found[1] == "hash-of-secret"
            assert stored_fields(found[0]) == stored_fields(key)
            assert await repo.preauth_key_by_prefix(s, "hskey-auth-nope") is None
            await repo.set_preauth_key(s, inserted.id, used=True, revoked=True)
        async with backend.transaction() as s:
            (stored,) = await repo.all_preauth_keys(s)
            assert (stored.used, stored.revoked) == (True, True) and await repo.preauth_key(s, stored.id) == stored
            assert_utc(stored.expiration)
            await repo.delete_preauth_key(s, stored.id)
        async with backend.transaction() as s:
            assert await repo.all_preauth_keys(s) == []

    async def test_api_keys_round_trip(self, backend: StorageBackend) -> None:
        key = APIKey(id=0, prefix="hskey-api-xyz", scope="read", expiration=T0 + timedelta(days=90))
        async with backend.transaction() as s:
            inserted = await repo.insert_api_key(s, key, "api-hash", T0)
        async with backend.transaction() as s:
            found = await repo.api_key_by_prefix(s, "hskey-api-xyz")
            assert found is not None and found == (inserted, "api-hash")
            assert stored_fields(found[0]) == stored_fields(key)
            await repo.set_api_key(s, inserted.id, last_seen=T0 + timedelta(seconds=1))
        async with backend.transaction() as s:
            (stored,) = await repo.all_api_keys(s)
            assert stored.last_seen == T0 + timedelta(seconds=1)
            await repo.delete_api_key(s, stored.id)
        async with backend.transaction() as s:
            assert await repo.all_api_keys(s) == []

    async def test_policy_latest_wins(self, backend: StorageBackend) -> None:
        async with backend.transaction() as s:
            assert await repo.latest_policy(s) is None
            await repo.store_policy(s, '{"acls": []}', T0)
        policy = '// comment\n{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
        async with backend.transaction() as s:
            await repo.store_policy(s, policy, T0 + timedelta(seconds=1))
        async with backend.transaction() as s:
            assert await repo.latest_policy(s) == policy

    async def test_registrations_round_trip_and_expire(self, backend: StorageBackend) -> None:
        async with backend.transaction() as s:
            for reg_id, expires in (("old", T0 - timedelta(seconds=1)), ("new", T0 + timedelta(minutes=15))):
                await repo.insert_registration(s, RegistrationRow(
                    id=reg_id, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64,
                    host_info={"Hostname": "laptop", "OS": "macOS"}, ephemeral=True, expiry=None,
                    status="pending", created_at=T0 - timedelta(minutes=1), expires_at=expires))
        async with backend.transaction() as s:
            await repo.delete_registrations_before(s, T0)
        async with backend.transaction() as s:
            assert await repo.registration(s, "old") is None
            row = await repo.registration(s, "new")
            assert row is not None
            assert (row.host_info, row.ephemeral, row.status, row.old_node_key) == (
                {"Hostname": "laptop", "OS": "macOS"}, True, "pending", "")
            assert row.expires_at == T0 + timedelta(minutes=15)
            assert_utc(row.created_at)

    async def test_audit_round_trip_and_filters(self, backend: StorageBackend) -> None:
        events = [Event(kind="user.create", actor="cli", subject="user:1", details={"name": "alice"}, time=T0),
                  Event(kind="node.register", actor="node:1", subject="node:1", source="192.0.2.1",
                        details={"method": "authkey", "tags": ["tag:a"]}, time=T0 + timedelta(seconds=1)),
                  Event(kind="user.delete", actor="api:abc", subject="user:1", time=T0 + timedelta(seconds=2))]
        async with backend.transaction() as s:
            for event in events:
                await repo.append_audit(s, event)
        async with backend.transaction() as s:
            assert await repo.audit_events(s) == events
            assert await repo.audit_events(s, kind="user.") == [events[0], events[2]]
            assert await repo.audit_events(s, since=T0 + timedelta(seconds=1)) == events[1:]
            assert await repo.audit_events(s, limit=1) == events[:1]

    # ---- constraints -------------------------------------------------------------------------

    async def test_local_user_names_are_unique(self, backend: StorageBackend) -> None:
        await self.a_user(backend, "alice")
        with pytest.raises(IntegrityError):
            await self.a_user(backend, "alice")
        # users of a login provider are told apart by their subject, not their name
        await self.a_user(backend, "alice", provider="oidc", provider_identifier="https://idp/1")
        await self.a_user(backend, "alice", provider="oidc", provider_identifier="https://idp/2")
        with pytest.raises(IntegrityError):
            await self.a_user(backend, "bob", provider="oidc", provider_identifier="https://idp/1")

    @pytest.mark.parametrize("column", ["node_key", "machine_key", "given_name", "ipv4", "ipv6"])
    async def test_node_identity_columns_are_unique(self, backend: StorageBackend, column: str) -> None:
        alice = await self.a_user(backend)
        first = a_node(1, alice.id)
        async with backend.transaction() as s:
            await repo.insert_node(s, first, T0)
        clash = a_node(2, alice.id, **{column: getattr(first, column)})
        with pytest.raises(IntegrityError):
            async with backend.transaction() as s:
                await repo.insert_node(s, clash, T0)
        async with backend.transaction() as s:
            assert [n.given_name for n in await repo.all_nodes(s)] == ["node-1"], "the failed insert left nothing"

    async def test_nodes_without_addresses_do_not_clash(self, backend: StorageBackend) -> None:
        async with backend.transaction() as s:
            for n in (1, 2):
                await repo.insert_node(s, a_node(n, None, ipv4=None, ipv6=None, tags=("tag:x",)), T0)
        async with backend.transaction() as s:
            assert len(await repo.all_nodes(s)) == 2

    # ---- referential rules -------------------------------------------------------------------

    async def test_deleting_a_user_deletes_its_nodes_and_orphans_its_keys(self, backend: StorageBackend) -> None:
        alice, bob = await self.a_user(backend, "alice"), await self.a_user(backend, "bob")
        async with backend.transaction() as s:
            key = await repo.insert_preauth_key(s, PreAuthKey(id=0, prefix="hskey-auth-1", user_id=alice.id), "h", T0)
            await repo.insert_node(s, a_node(1, alice.id, auth_key_id=key.id), T0)
            await repo.insert_node(s, a_node(2, bob.id, auth_key_id=key.id), T0)
            await repo.insert_registration(s, RegistrationRow(
                id="reg", machine_key="mkey:" + "3" * 64, node_key="nodekey:" + "3" * 64, status="approved",
                user_id=alice.id, created_at=T0, expires_at=T0 + timedelta(minutes=15)))
        async with backend.transaction() as s:
            await repo.delete_user(s, alice.id)
        async with backend.transaction() as s:
            assert [n.given_name for n in await repo.all_nodes(s)] == ["node-2"]
            (orphan,) = await repo.all_preauth_keys(s)
            assert orphan.id == key.id and orphan.user_id is None
            assert await repo.registration(s, "reg") is None
            await repo.delete_preauth_key(s, key.id)
        async with backend.transaction() as s:
            (node,) = await repo.all_nodes(s)
            assert node.auth_key_id is None, "deleting a pre-auth key keeps the nodes it registered"

    async def test_a_node_cannot_point_at_a_missing_user(self, backend: StorageBackend) -> None:
        with pytest.raises(IntegrityError):
            async with backend.transaction() as s:
                await repo.insert_node(s, a_node(1, 4242), T0)

    # ---- time --------------------------------------------------------------------------------

    async def test_timestamps_come_back_as_the_same_instant_in_utc(self, backend: StorageBackend) -> None:
        plus_two = datetime(2026, 3, 1, 14, 0, 0, 500, tzinfo=timezone(timedelta(hours=2)))
        alice = await self.a_user(backend)
        async with backend.transaction() as s:
            await repo.insert_node(s, a_node(1, alice.id, last_seen=plus_two, expiry=plus_two), plus_two)
        async with backend.transaction() as s:
            (node,) = await repo.all_nodes(s)
            raw = await s.scalar(select(NodeRow.expiry))
        for value in (node.last_seen, node.expiry, node.created_at, raw):
            assert_utc(value)
            assert value == plus_two

    async def test_a_naive_timestamp_is_refused(self, backend: StorageBackend) -> None:
        with pytest.raises(StatementError, match="naive datetime"):
            async with backend.transaction() as s:
                await repo.insert_user(s, User(id=0, name="alice"), datetime(2026, 1, 1))  # noqa: DTZ001

    # ---- backup ------------------------------------------------------------------------------

    async def test_backup_is_consistent_under_concurrent_writes(
        self, backend: StorageBackend, backup_reader: Callable[[str], StorageBackend] | None,
        backup_destination: str,
    ) -> None:
        if backup_reader is None:
            pytest.skip(f"{backend.name} has no built-in backup (backup_reader not provided)")
        stop, reached = asyncio.Event(), asyncio.Event()
        written, target = 0, 20

        async def writer() -> None:
            # each transaction adds a user and its audit event: a consistent copy has as many of each
            nonlocal written
            while not stop.is_set():
                async with backend.transaction() as s:
                    user = await repo.insert_user(s, User(id=0, name=f"user-{written}"), T0)
                    await repo.append_audit(s, Event(kind="user.create", actor="test", subject=f"user:{user.id}"))
                written += 1
                if written >= target:
                    reached.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        try:
            await asyncio.wait_for(reached.wait(), 30)
            await backend.backup(backup_destination)
            reached.clear()
            target = written + 20  # writes go on after the backup
            await asyncio.wait_for(reached.wait(), 30)
        finally:
            stop.set()
            await task
        copy = backup_reader(backup_destination)
        await copy.open(migrate_schema=False)
        try:
            async with copy.transaction() as s:
                users = await repo.all_users(s)
                events = await repo.audit_events(s, kind="user.create", limit=1_000_000)
        finally:
            await copy.close()
        assert 20 <= len(users) < written
        assert sorted(e.subject for e in events) == sorted(f"user:{u.id}" for u in users)
        assert [u.name for u in users] == [f"user-{i}" for i in range(len(users))], "a prefix of the writes"
