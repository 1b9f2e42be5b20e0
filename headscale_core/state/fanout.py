"""Changes between server instances that share one database.

After a commit the state service publishes a compact descriptor of its ``Change`` events on
the change bus (``{"origin": id, "changes": [["n", 7, 1], ...]}``). Another instance does not
trust the descriptor's content: it re-reads the named rows, updates its NodeStore and address
pools, and emits the same changes to its own mapper. ``{"resync": true}`` (sent by a bus that
may have missed messages, e.g. after reconnecting) reloads everything and emits the difference.
DERP map changes are per instance and never published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from headscale_core.errors import InvalidRequest
from headscale_core.state.changes import (
    Change,
    NodeChanged,
    NodePatched,
    NodeRemoved,
    PolicyChanged,
    SelfChanged,
    UserChanged,
)
from headscale_core.storage import repository as repo
from headscale_core.storage.models import NodeRow, UserRow

if TYPE_CHECKING:
    from headscale_core.state.model import Node
    from headscale_core.state.service import StateService

log = logging.getLogger(__name__)


def encode(changes: Iterable[Change]) -> list[list[Any]]:
    """The publishable changes as short JSON lists."""
    out: list[list[Any]] = []
    for change in changes:
        match change:
            case NodePatched(node_id, fields):
                out.append(["p", node_id, sorted(fields)])
            case NodeChanged(node_id, topology):
                out.append(["n", node_id, int(topology)])
            case NodeRemoved(node_id):
                out.append(["r", node_id])
            case UserChanged(user_id):
                out.append(["u", user_id])
            case SelfChanged(node_id):
                out.append(["s", node_id])
            case PolicyChanged():
                out.append(["P"])
    return out


def decode(items: Sequence[Sequence[Any]]) -> list[Change]:
    changes: list[Change] = []
    for item in items:
        kind = item[0]
        if kind == "p":
            changes.append(NodePatched(int(item[1]), frozenset(item[2])))
        elif kind == "n":
            changes.append(NodeChanged(int(item[1]), topology=bool(item[2])))
        elif kind == "r":
            changes.append(NodeRemoved(int(item[1])))
        elif kind == "u":
            changes.append(UserChanged(int(item[1])))
        elif kind == "s":
            changes.append(SelfChanged(int(item[1])))
        elif kind == "P":
            changes.append(PolicyChanged())
        else:
            log.warning("ignoring an unknown change %r from another instance (newer release?)", item)
    return changes


async def apply(state: StateService, message: Mapping[str, Any]) -> list[Change]:
    """Bring the NodeStore up to date for ``message``; return the changes to emit locally."""
    if message.get("resync"):
        return await resync(state)
    changes = decode(message.get("changes") or ())
    node_ids = {c.node_id for c in changes if isinstance(c, NodePatched | NodeChanged | NodeRemoved | SelfChanged)}
    user_ids = {c.user_id for c in changes if isinstance(c, UserChanged)}
    async with state.storage.transaction() as s:
        nodes = {r.id: repo.node_from_row(r) for r in
                 (await s.scalars(select(NodeRow).where(NodeRow.id.in_(node_ids)))).all()} if node_ids else {}
        users = {r.id: repo.user_from_row(r) for r in
                 (await s.scalars(select(UserRow).where(UserRow.id.in_(user_ids)))).all()} if user_ids else {}
    for user_id in user_ids:
        if user_id in users:
            state.store.users[user_id] = users[user_id]
        else:
            state.store.users.pop(user_id, None)
    out: list[Change] = []
    for change in changes:
        if isinstance(change, PolicyChanged):
            await _reload_policy(state)
            out.append(change)
        elif isinstance(change, UserChanged):
            out.append(change)
        elif isinstance(change, NodePatched | NodeChanged | NodeRemoved | SelfChanged):
            out.extend(_apply_node(state, change, nodes.get(change.node_id)))
    return out


def _apply_node(state: StateService, change: NodePatched | NodeChanged | NodeRemoved | SelfChanged,
                row: Node | None) -> list[Change]:
    known = state.store.nodes.get(change.node_id)
    if row is None:  # deleted since (or the message was a removal): gone here too
        if known is None:
            return []
        _forget(state, known)
        return [NodeRemoved(change.node_id)]
    _remember(state, known, row)
    if known is None and not isinstance(change, NodeChanged):
        return [NodeChanged(row.id, topology=True)]  # new to us: peers need the whole node
    if isinstance(change, NodeRemoved):  # a stale removal: the row exists, so peers get the current node
        return [NodeChanged(row.id, topology=True)]
    return [change]


def _remember(state: StateService, old: Node | None, new: Node) -> None:
    if old is not None and (old.ipv4, old.ipv6) != (new.ipv4, new.ipv6):
        state.release_addresses(old)
    state.reserve_addresses(new)
    state.store.put(new)


def _forget(state: StateService, node: Node) -> None:
    state.store.remove(node.id)
    state.release_addresses(node)


async def _reload_policy(state: StateService) -> None:
    try:
        state.policy.apply(await state.policy.source().load())
    except (InvalidRequest, OSError) as exc:
        log.error("policy changed by another instance but cannot be applied here, keeping the last good one: %s", exc)


async def resync(state: StateService) -> list[Change]:
    """Reload users and nodes from the database; the differences become changes."""
    async with state.storage.transaction() as s:
        users = {u.id: u for u in await repo.all_users(s)}
        nodes = {n.id: n for n in await repo.all_nodes(s)}
    out: list[Change] = []
    for user_id in set(state.store.users) | set(users):
        if state.store.users.get(user_id) != users.get(user_id):
            if user_id in users:
                state.store.users[user_id] = users[user_id]
            else:
                state.store.users.pop(user_id, None)
            out.append(UserChanged(user_id))
    for node_id, gone in list(state.store.nodes.items()):
        if node_id not in nodes:
            _forget(state, gone)
            out.append(NodeRemoved(node_id))
    for node_id, node in nodes.items():
        known = state.store.nodes.get(node_id)
        if known != node:
            _remember(state, known, node)
            out.append(NodeChanged(node_id, topology=True))
    policy_before = state.policy.text
    await _reload_policy(state)
    if state.policy.text != policy_before:
        out.append(PolicyChanged())
    if out:
        log.info("resynchronised from %s: %d change(s)", state.storage.describe(), len(out))
    return out
