"""Change events: what the state service tells the mapper after a committed mutation.

A change names what moved, not what to send: the mapper decides, per recipient, the
smallest message (patch, changed node, removal, new filter).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodePatched:
    """Fields that clients patch in place (PeersChangedPatch): endpoints, DERP, disco key,
    online state, key expiry."""

    node_id: int
    fields: frozenset[str]


@dataclass(frozen=True)
class NodeChanged:
    """The node is new or changed in a way that needs the whole node (PeersChanged).
    ``topology``: tags, user, routes or addresses changed, so the policy must be recompiled."""

    node_id: int
    topology: bool = False


@dataclass(frozen=True)
class NodeRemoved:
    node_id: int


@dataclass(frozen=True)
class PolicyChanged:
    pass


@dataclass(frozen=True)
class DERPMapChanged:
    pass


@dataclass(frozen=True)
class UserChanged:
    user_id: int


@dataclass(frozen=True)
class SelfChanged:
    """Only the node itself must hear of this (e.g. its own expiry)."""

    node_id: int


Change = NodePatched | NodeChanged | NodeRemoved | PolicyChanged | DERPMapChanged | UserChanged | SelfChanged


@dataclass
class ChangeBatch:
    """Changes coalesced over one batching window."""

    patched: dict[int, set[str]] = field(default_factory=dict)
    changed: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    self_changed: set[int] = field(default_factory=set)
    policy: bool = False
    derp: bool = False
    users: set[int] = field(default_factory=set)

    def add(self, change: Change) -> None:
        match change:
            case NodePatched(node_id, fields):
                self.patched.setdefault(node_id, set()).update(fields)
            case NodeChanged(node_id, topology):
                self.changed.add(node_id)
                self.removed.discard(node_id)
                if topology:
                    self.policy = True
            case NodeRemoved(node_id):
                self.removed.add(node_id)
                self.changed.discard(node_id)
                self.patched.pop(node_id, None)
                self.policy = True
            case PolicyChanged():
                self.policy = True
            case DERPMapChanged():
                self.derp = True
            case UserChanged(user_id):
                self.users.add(user_id)
            case SelfChanged(node_id):
                self.self_changed.add(node_id)

    def __bool__(self) -> bool:
        return bool(self.patched or self.changed or self.removed or self.self_changed or self.policy
                    or self.derp or self.users)
