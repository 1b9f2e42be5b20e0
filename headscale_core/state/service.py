"""The state service: the one writer path for users, nodes, keys and policy.

Every mutation (registration, lite update, CLI, REST, login callback, GC) goes through here:
persist in one transaction, update the NodeStore, emit ``Change`` events to the mapper and
``Event``s to the audit hook. Handlers never write the database themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from headscale_core.config import Config, parse_duration
from headscale_core.errors import Conflict, InvalidRequest, NotFound
from headscale_core.events import REQUEST_SOURCE, Event
from headscale_core.plugins import Plugins
from headscale_core.providers import ChangeBus
from headscale_core.state import fanout, names
from headscale_core.state import secrets as keysecrets
from headscale_core.state.changes import (
    Change,
    NodeChanged,
    NodePatched,
    NodeRemoved,
    PolicyChanged,
    SelfChanged,
    UserChanged,
)
from headscale_core.state.ipalloc import IPAllocator
from headscale_core.state.model import APIKey, Node, PreAuthKey, User
from headscale_core.state.nodestore import NodeStore
from headscale_core.state.policystate import PolicyState
from headscale_core.state.registrations import Waiters
from headscale_core.storage import repository as repo
from headscale_core.storage.backend import StorageBackend

log = logging.getLogger(__name__)

ChangeListener = Callable[[list[Change]], Awaitable[None] | None]


# A registration storm presents one pre-auth key thousands of times: its row is read once per
# this many seconds, not once per node. Expiring or deleting a key here takes effect at once;
# done on another instance sharing the database, within this time.
PREAUTH_KEY_CACHE_SECONDS = 1.0
PREAUTH_KEY_CACHE_LIMIT = 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


class StateService:
    def __init__(self, config: Config, storage: StorageBackend, plugins: Plugins, context: Any = None) -> None:
        self.config = config
        self.context = context
        self.storage = storage
        self.plugins = plugins
        self.store = NodeStore()
        self.policy = PolicyState(self)
        self.waiters = Waiters()
        self._listeners: list[ChangeListener] = []
        self._alloc4 = IPAllocator(config.prefix_v4, strategy=config.prefixes.allocation) if config.prefix_v4 else None
        self._alloc6 = IPAllocator(config.prefix_v6, strategy=config.prefixes.allocation) if config.prefix_v6 else None
        self._dirty: dict[int, set[str]] = {}  # node ID -> stored fields changed since the last write
        self._flush_task: asyncio.Task[None] | None = None
        self._gc_tasks: dict[int, asyncio.Task[None]] = {}
        self.derp_map: dict[str, Any] = {"Regions": {}}
        self._write_lock = asyncio.Lock()
        # Multi-instance fan-out (state/fanout.py): what this instance published is tagged with
        # its ID so it can ignore its own messages; soft changes wait for their write-behind.
        self.instance_id = uuid.uuid4().hex
        self._bus: ChangeBus | None = None
        self._unpublished: list[Change] = []
        # prefix -> (monotonic time read, key, stored hash); and the keys whose first use this
        # process has claimed (a single-use key registers one node even when two race for it).
        self._preauth_keys: dict[str, tuple[float, PreAuthKey, str]] = {}
        self._claimed_keys: set[int] = set()
        self._preauth_read_lock = asyncio.Lock()

    # ---- lifecycle ------------------------------------------------------------------------

    async def load(self) -> None:
        async with self.storage.transaction() as s:
            users = await repo.all_users(s)
            nodes = await repo.all_nodes(s)
        self.store.load(users, nodes)
        for alloc in (self._alloc4, self._alloc6):
            if alloc is not None:
                alloc.reserve([n.ipv4 for n in nodes] + [n.ipv6 for n in nodes])
        await self.policy.load()

    async def close(self) -> None:
        """Write what is pending and stop background work; storage must not be used after."""
        tasks = [*self._gc_tasks.values(), *([self._flush_task] if self._flush_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._gc_tasks.clear()
        await self.flush()

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[Any]:
        """A write transaction, one at a time in this process. SQLite has a single writer: a
        second concurrent one would sleep in SQLite's busy handler (in steps of up to 100 ms)
        while holding up every registration queued behind it."""
        async with self._write_lock, self.storage.transaction() as s:
            yield s

    async def emit(self, *changes: Change, publish: bool = True) -> None:
        """Tell the local mapper, then (``publish``) the other instances on the change bus."""
        self.policy.note_changes(changes)
        for listener in self._listeners:
            result = listener(list(changes))
            if result is not None:
                await result
        if publish:
            await self._publish(changes)

    def attach_bus(self, bus: ChangeBus) -> None:
        """Publish committed changes on ``bus`` and apply what other instances publish there."""
        self._bus = bus
        bus.subscribe(self.apply_remote)

    async def _publish(self, changes: Iterable[Change]) -> None:
        encoded = fanout.encode(changes)
        if self._bus is None or not encoded:
            return
        try:
            await self._bus.publish({"origin": self.instance_id, "changes": encoded})
        except Exception:  # the change is committed and applied here; others resync when their bus reconnects
            log.exception("could not publish %d change(s) to other instances", len(encoded))

    async def apply_remote(self, message: Mapping[str, Any]) -> None:
        """A message from the change bus: re-read what another instance changed, then emit it here."""
        if message.get("origin") == self.instance_id:
            return
        changes = await fanout.apply(self, message)
        if changes:
            await self.emit(*changes, publish=False)

    def audit(self, kind: str, actor: str, subject: str = "", source: str = "", **details: Any) -> None:
        """Hand an event to the ``headscale_event`` hook; ``source`` defaults to the address of
        the request being served (``events.request_source``)."""
        try:
            self.plugins.emit(Event(kind=kind, actor=actor, subject=subject, source=source or REQUEST_SOURCE.get(),
                                    details=details))
        except Exception:  # an observer must never break the write path
            log.exception("event hook failed for %s", kind)

    # ---- users ----------------------------------------------------------------------------

    def user(self, ref: int | str) -> User:
        """A user by ID or name (or email)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            user = self.store.users.get(int(ref))
            if user is None:
                raise NotFound(f"user {ref} does not exist: list users with `headscale users list`")
            return user
        for user in self.store.users.values():
            if user.name == ref or (user.email and user.email == ref):
                return user
        raise NotFound(f"user {ref!r} does not exist: create it with `headscale users create {ref}`")

    def users(self) -> list[User]:
        return sorted(self.store.users.values(), key=lambda u: u.id)

    async def create_user(self, name: str, *, display_name: str = "", email: str = "", picture: str = "",
                          provider: str = "", provider_identifier: str | None = None,
                          groups: Iterable[str] = (), actor: str = "cli") -> User:
        if not name or any(c.isspace() for c in name):
            raise InvalidRequest(f"user name {name!r} is not valid: use a name without spaces")
        if provider_identifier is None and any(u.name == name and u.provider_identifier is None
                                               for u in self.store.users.values()):
            raise Conflict(f"user {name!r} already exists")
        async with self.writing() as s:
            user = await repo.insert_user(s, User(id=0, name=name, display_name=display_name, email=email,
                                                  profile_pic_url=picture, provider=provider,
                                                  provider_identifier=provider_identifier,
                                                  groups=tuple(groups)), utcnow())
        self.store.users[user.id] = user
        self.audit("user.create", actor, subject=f"user:{user.id}", name=name)
        await self.emit(UserChanged(user.id))
        return user

    async def update_user(self, user: User, actor: str = "cli", **changes: Any) -> User:
        import dataclasses

        new = dataclasses.replace(user, **changes)
        if "name" in changes:
            if not new.name or any(c.isspace() for c in new.name):
                raise InvalidRequest(f"user name {new.name!r} is not valid: use a name without spaces")
            if any(u.name == new.name and u.id != user.id and u.provider_identifier is None
                   for u in self.store.users.values()):
                raise Conflict(f"user {new.name!r} already exists")
        async with self.writing() as s:
            await repo.update_user(s, new, utcnow())
        self.store.users[user.id] = new
        self.audit("user.update", actor, subject=f"user:{user.id}", **{k: str(v) for k, v in changes.items()})
        await self.emit(UserChanged(user.id), *(NodeChanged(n.id, topology=True)
                                                for n in self.store.nodes_of_user(user.id)))
        return new

    async def delete_user(self, user: User, actor: str = "cli") -> None:
        owned = self.store.nodes_of_user(user.id)
        if owned:
            raise Conflict(f"user {user.name!r} still owns {len(owned)} node(s): delete them or move them to "
                           "another user first (`headscale nodes delete` / `headscale nodes move`)")
        async with self.writing() as s:
            await repo.delete_user(s, user.id)
        self.store.users.pop(user.id, None)
        self.audit("user.delete", actor, subject=f"user:{user.id}", name=user.name)
        await self.emit(UserChanged(user.id))

    # ---- pre-auth keys --------------------------------------------------------------------

    async def create_preauth_key(self, user: User | None, *, reusable: bool = False, ephemeral: bool = False,
                                 expiration: datetime | None = None, tags: Iterable[str] = (),
                                 description: str = "", actor: str = "cli") -> tuple[PreAuthKey, str]:
        tags = tuple(sorted(set(tags)))
        for tag in tags:
            if not tag.startswith("tag:") or len(tag) <= 4:
                raise InvalidRequest(f"tag {tag!r} must look like tag:name")
        if user is None and not tags:
            raise InvalidRequest("a pre-auth key needs a user or at least one tag (--user or --tags)")
        full, prefix, digest = keysecrets.new_key("auth")
        if expiration is None:
            expiration = utcnow() + timedelta(hours=1)
        async with self.writing() as s:
            key = await repo.insert_preauth_key(s, PreAuthKey(
                id=0, prefix=prefix, user_id=user.id if user else None, reusable=reusable, ephemeral=ephemeral,
                tags=tags, expiration=expiration, description=description), digest, utcnow())
        self.audit("preauthkey.create", actor, subject=f"preauthkey:{key.id}", user=user.name if user else "",
                   reusable=reusable, ephemeral=ephemeral, tags=list(tags))
        return key, full

    async def preauth_keys(self, user: User | None = None) -> list[PreAuthKey]:
        async with self.storage.transaction() as s:
            keys = await repo.all_preauth_keys(s)
        return [k for k in keys if user is None or k.user_id == user.id]

    async def preauth_key(self, key_id: int) -> PreAuthKey:
        async with self.storage.transaction() as s:
            key = await repo.preauth_key(s, key_id)
        if key is None:
            raise NotFound(f"pre-auth key {key_id} does not exist: list keys with `headscale preauthkeys list`")
        return key

    async def preauth_key_by_text(self, text: str) -> PreAuthKey:
        """The key a client presents, validated; errors are the client-facing reason."""
        parts = keysecrets.split_key(text.strip(), "auth")
        if parts is None:
            raise InvalidRequest("invalid pre-auth key: it is not a key issued by this server")
        prefix, secret = parts
        found = self._cached_preauth_key(prefix)
        if found is None:
            async with self._preauth_read_lock:  # the storm's other registrations wait for one read
                found = self._cached_preauth_key(prefix)
                if found is None:
                    read_at = time.monotonic()
                    async with self.storage.transaction() as s:
                        found = await repo.preauth_key_by_prefix(s, prefix)
                    if len(self._preauth_keys) >= PREAUTH_KEY_CACHE_LIMIT:
                        self._preauth_keys.clear()
                    if found is not None:
                        self._preauth_keys[prefix] = (read_at, *found)
        if found is None or not keysecrets.verify(secret, found[1]):
            raise InvalidRequest("invalid pre-auth key: it is not a key issued by this server")
        return found[0]

    def _cached_preauth_key(self, prefix: str) -> tuple[PreAuthKey, str] | None:
        cached = self._preauth_keys.get(prefix)
        if cached is None or time.monotonic() - cached[0] > PREAUTH_KEY_CACHE_SECONDS:
            return None
        return cached[1], cached[2]

    def claim_preauth_key(self, key: PreAuthKey) -> bool:
        """True for the first registration in this process to use ``key`` since it was last
        read unused: that one marks it used (``mark_preauth_key_used``); the others need not
        (reusable) or must not (single-use) go on."""
        if key.used or key.id in self._claimed_keys:
            return False
        self._claimed_keys.add(key.id)
        return True

    def release_preauth_key(self, key: PreAuthKey) -> None:
        """Undo ``claim_preauth_key`` when the registration that claimed ``key`` failed."""
        self._claimed_keys.discard(key.id)

    async def mark_preauth_key_used(self, key: PreAuthKey) -> None:
        async with self.writing() as s:
            await repo.set_preauth_key(s, key.id, used=True)
        cached = self._preauth_keys.get(key.prefix)
        if cached is not None:
            self._preauth_keys[key.prefix] = (cached[0], dataclasses.replace(cached[1], used=True), cached[2])

    def _forget_preauth_key(self, key: PreAuthKey) -> None:
        self._preauth_keys.pop(key.prefix, None)
        self._claimed_keys.discard(key.id)

    async def expire_preauth_key(self, key: PreAuthKey, actor: str = "cli") -> None:
        async with self.writing() as s:
            await repo.set_preauth_key(s, key.id, expiration=utcnow())
        self._forget_preauth_key(key)
        self.audit("preauthkey.expire", actor, subject=f"preauthkey:{key.id}")

    async def delete_preauth_key(self, key: PreAuthKey, actor: str = "cli") -> None:
        async with self.writing() as s:
            await repo.delete_preauth_key(s, key.id)
        self._forget_preauth_key(key)
        self.audit("preauthkey.delete", actor, subject=f"preauthkey:{key.id}")

    # ---- API keys -------------------------------------------------------------------------

    async def create_api_key(self, expiration: datetime | None = None, scope: str = "admin",
                             actor: str = "cli") -> tuple[APIKey, str]:
        if scope not in ("admin", "read"):
            raise InvalidRequest(f"API key scope {scope!r} must be admin or read")
        full, prefix, digest = keysecrets.new_key("api")
        async with self.writing() as s:
            key = await repo.insert_api_key(s, APIKey(id=0, prefix=prefix, scope=scope,
                                                      expiration=expiration or utcnow() + timedelta(days=90)),
                                            digest, utcnow())
        self.audit("apikey.create", actor, subject=f"apikey:{key.prefix}", scope=scope)
        return key, full

    async def api_keys(self) -> list[APIKey]:
        async with self.storage.transaction() as s:
            return await repo.all_api_keys(s)

    async def api_key(self, *, key_id: int | None = None, prefix: str | None = None) -> APIKey:
        for key in await self.api_keys():
            if key.id == key_id or (prefix and key.prefix == prefix):
                return key
        raise NotFound(f"API key {prefix or key_id} does not exist: list keys with `headscale apikeys list`")

    async def authenticate_api_key(self, text: str) -> APIKey | None:
        parts = keysecrets.split_key(text.strip(), "api")
        if parts is None:
            return None
        async with self.storage.transaction() as s:
            found = await repo.api_key_by_prefix(s, parts[0])
            if found is None or not keysecrets.verify(parts[1], found[1]):
                return None
            key = found[0]
            if key.expiration is not None and key.expiration <= utcnow():
                return None
            await repo.set_api_key(s, key.id, last_seen=utcnow())
        return key

    async def expire_api_key(self, key: APIKey, actor: str = "cli") -> None:
        async with self.writing() as s:
            await repo.set_api_key(s, key.id, expiration=utcnow())
        self.audit("apikey.expire", actor, subject=f"apikey:{key.prefix}")

    async def delete_api_key(self, key: APIKey, actor: str = "cli") -> None:
        async with self.writing() as s:
            await repo.delete_api_key(s, key.id)
        self.audit("apikey.delete", actor, subject=f"apikey:{key.prefix}")

    # ---- nodes: reads ---------------------------------------------------------------------

    def node(self, node_id: int) -> Node:
        node = self.store.nodes.get(int(node_id))
        if node is None:
            raise NotFound(f"node {node_id} does not exist: list nodes with `headscale nodes list`")
        return node

    def nodes(self, user: User | None = None) -> list[Node]:
        nodes = sorted(self.store.nodes.values(), key=lambda n: n.id)
        return [n for n in nodes if user is None or n.user_id == user.id]

    def is_online(self, node_id: int) -> bool:
        return node_id in self.store.online

    async def node_key_registered(self, node_key_hex: str) -> bool:
        """For the DERP relay's ``verify_clients``: is this node key one of ours (and valid)?"""
        key = node_key_hex if node_key_hex.startswith("nodekey:") else f"nodekey:{node_key_hex}"
        node = self.store.by_node_key(key)
        return node is not None and not node.is_expired(utcnow())

    # ---- nodes: writes --------------------------------------------------------------------

    def allocate_addresses(self) -> tuple[str | None, str | None]:
        v4 = self._alloc4.allocate() if self._alloc4 else None
        v6 = self._alloc6.allocate() if self._alloc6 else None
        return v4, v6

    def reserve_addresses(self, node: Node) -> None:
        for alloc in (self._alloc4, self._alloc6):
            if alloc is not None:
                alloc.reserve([node.ipv4, node.ipv6])

    def release_addresses(self, node: Node) -> None:
        if self._alloc4:
            self._alloc4.release(node.ipv4)
        if self._alloc6:
            self._alloc6.release(node.ipv6)

    def default_expiry(self, tagged: bool) -> datetime | None:
        seconds = parse_duration(self.config.node.expiry)
        return None if tagged or seconds <= 0 else utcnow() + timedelta(seconds=seconds)

    async def insert_node(self, node: Node, actor: str) -> Node:
        """Persist a new node (addresses and a unique name chosen by the caller)."""
        async with self.writing() as s:
            node = await repo.insert_node(s, node, utcnow())
        self.store.put(node)
        self.audit("node.register", actor, subject=f"node:{node.id}", name=node.given_name,
                   method=node.register_method)
        await self.emit(NodeChanged(node.id, topology=True))
        return node

    async def save_node(self, node: Node, *changes: Change, actor: str = "", kind: str = "") -> Node:
        """Persist a changed node now, update the snapshot and announce ``changes``."""
        async with self.writing() as s:
            node = await repo.update_node(s, node, utcnow())
        self._dirty.pop(node.id, None)
        self.store.put(node)
        if kind:
            self.audit(kind, actor, subject=f"node:{node.id}")
        await self.emit(*changes)
        return node

    async def update_soft(self, node: Node, *changes: Change) -> None:
        """Apply a frequent, low-value change (endpoints, disco key, last seen) at once in
        memory and write it behind in batches: lite updates must not wait for the disk."""
        old = self.store.nodes.get(node.id)
        dirty = self._dirty.setdefault(node.id, set())
        dirty |= repo.NODE_COLUMNS if old is None else repo.changed_node_fields(old, node)
        self.store.put(node)
        self._unpublished.extend(changes)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later())
        await self.emit(*changes, publish=False)  # published by flush(), once the row is written

    async def _flush_later(self) -> None:
        await asyncio.sleep(0.5)
        await self.flush()

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        try:
            present = [node_id for node_id in dirty if node_id in self.store.nodes]
            async with self.writing() as s:
                await repo.update_nodes(s, [self.store.nodes[node_id] for node_id in present], utcnow(),
                                        [dirty[node_id] for node_id in present])
        except BaseException as exc:
            # Keep the rows for the next flush whatever interrupted this one (an error, or
            # shutdown cancelling the write-behind task): nothing is silently dropped.
            for node_id, fields in dirty.items():
                self._dirty.setdefault(node_id, set()).update(fields)
            if not isinstance(exc, Exception):
                raise
            log.exception("could not write %d node update(s) to %s; will retry", len(dirty), self.storage.describe())
            return
        unpublished, self._unpublished = self._unpublished, []
        await self._publish(unpublished)

    async def delete_node(self, node: Node, actor: str = "cli") -> None:
        async with self.writing() as s:
            await repo.delete_node(s, node.id)
        self._dirty.pop(node.id, None)
        self.store.remove(node.id)
        self.release_addresses(node)
        self.audit("node.delete", actor, subject=f"node:{node.id}", name=node.given_name)
        await self.emit(NodeRemoved(node.id))

    async def rename_node(self, node: Node, new_name: str, actor: str = "cli") -> Node:
        problem = names.validate_given_name(new_name)
        if problem:
            raise InvalidRequest(f"cannot rename node {node.id}: {problem}")
        if any(n.given_name == new_name and n.id != node.id for n in self.store.nodes.values()):
            raise Conflict(f"cannot rename node {node.id}: another node is already called {new_name!r}")
        return await self.save_node(node.replace(given_name=new_name), NodeChanged(node.id), SelfChanged(node.id),
                                    actor=actor,
                                    kind="node.rename")

    async def expire_node(self, node: Node, when: datetime | None = None, actor: str = "cli") -> Node:
        when = when or utcnow()
        return await self.save_node(node.replace(expiry=when), NodePatched(node.id, frozenset({"KeyExpiry"})),
                                    SelfChanged(node.id), actor=actor, kind="node.expire")

    async def set_tags(self, node: Node, tags: Iterable[str], actor: str = "cli") -> Node:
        clean = tuple(sorted(set(tags)))
        for tag in clean:
            if not tag.startswith("tag:") or len(tag) <= 4:
                raise InvalidRequest(f"tag {tag!r} must look like tag:name")
        # Tagged nodes are owned by their tags; untagging returns a node to nobody, so refuse.
        if not clean and node.user_id is None:
            raise InvalidRequest(f"node {node.id} is owned by its tags: it cannot lose all of them "
                                 "(move it to a user first)")
        expiry = None if clean else node.expiry
        new = node.replace(tags=clean, user_id=None if clean else node.user_id, expiry=expiry)
        return await self.save_node(new, NodeChanged(node.id, topology=True), SelfChanged(node.id),
                                    actor=actor, kind="node.tag")

    async def move_node(self, node: Node, user: User, actor: str = "cli") -> Node:
        return await self.save_node(node.replace(user_id=user.id, tags=()), NodeChanged(node.id, topology=True),
                                    SelfChanged(node.id), actor=actor, kind="node.move")

    async def approve_routes(self, node: Node, routes: Iterable[str], actor: str = "cli") -> Node:
        import ipaddress

        clean = []
        for route in routes:
            try:
                clean.append(str(ipaddress.ip_network(route, strict=False)))
            except ValueError as exc:
                raise InvalidRequest(f"route {route!r} is not a CIDR prefix") from exc
        return await self.save_node(node.replace(approved_routes=tuple(sorted(set(clean)))),
                                    NodeChanged(node.id, topology=True), SelfChanged(node.id),
                                    actor=actor, kind="node.approve_routes")

    async def set_node_expiry(self, node: Node, when: datetime | None, actor: str = "cli") -> Node:
        """Set (or, with None, remove) a node's key expiry; ``expire_node`` is the "now" case."""
        return await self.save_node(node.replace(expiry=when), NodePatched(node.id, frozenset({"KeyExpiry"})),
                                    SelfChanged(node.id), actor=actor, kind="node.expire")

    # ---- policy and health ----------------------------------------------------------------

    async def set_policy(self, text: str, actor: str = "cli") -> None:
        """Validate, persist through the configured ``policy.mode`` source, then apply.

        A read-only source (``policy.mode: file``) raises ``PolicySourceReadOnly`` before
        anything changes; an invalid policy raises ``InvalidRequest`` before it is stored.
        """
        self.policy.check_tests(self.policy.validate(text))
        await self.policy.source().store(text)
        self.policy.apply(text)
        self.audit("policy.set", actor, subject="policy")
        await self.emit(PolicyChanged())

    async def policy_updated_at(self) -> datetime | None:
        """When the stored policy last changed (``policy.mode: database`` only; None otherwise)."""
        if self.config.policy.mode != "database":
            return None
        from sqlalchemy import select

        from headscale_core.storage.models import PolicyRow

        async with self.storage.transaction() as s:
            return await s.scalar(select(PolicyRow.updated_at).order_by(PolicyRow.id.desc()).limit(1))

    async def database_ok(self) -> bool:
        """Can the database answer a query right now (``/api/v1/health``)?"""
        from sqlalchemy import text

        try:
            async with self.storage.transaction() as s:
                await s.execute(text("SELECT 1"))
        except Exception:
            log.exception("database health check failed for %s", self.storage.describe())
            return False
        return True

    # ---- online state and ephemeral GC ----------------------------------------------------

    async def session_started(self, node: Node) -> None:
        task = self._gc_tasks.pop(node.id, None)
        if task is not None:
            task.cancel()
        was_online = node.id in self.store.online
        self.store.set_online(node.id, True)
        if not was_online:
            await self.update_soft(node.replace(last_seen=utcnow()), NodePatched(node.id, frozenset({"Online"})))

    async def session_ended(self, node_id: int) -> None:
        if node_id not in self.store.online:
            return
        self.store.set_online(node_id, False)
        node = self.store.nodes.get(node_id)
        if node is None:
            return
        await self.update_soft(node.replace(last_seen=utcnow()),
                               NodePatched(node_id, frozenset({"Online", "LastSeen"})))
        if node.ephemeral:
            self._gc_tasks[node_id] = asyncio.create_task(self._collect_ephemeral(node_id))

    async def _collect_ephemeral(self, node_id: int) -> None:
        await asyncio.sleep(self.config.ephemeral_timeout)
        self._gc_tasks.pop(node_id, None)
        node = self.store.nodes.get(node_id)
        if node is not None and node.ephemeral and node_id not in self.store.online:
            log.info("deleting ephemeral node %s (%s): inactive for %ss", node_id, node.given_name,
                     self.config.ephemeral_timeout)
            await self.delete_node(node, actor="system:ephemeral-gc")
