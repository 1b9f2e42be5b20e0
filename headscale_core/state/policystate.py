"""The policy as the rest of the server reads it: compiled once per policy/topology version.

Holds the current policy text and its compiled form. The mapper asks it, per recipient, for
visible peers, the packet filter, AllowedIPs and the SSH policy. Without a policy every node
sees every other and the filter allows all (Headscale's and Tailscale's default); that path
skips the compiler entirely.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from headscale_core.errors import InvalidRequest
from headscale_core.policy import (
    CompiledPolicy,
    PolicyError,
    PolicyNode,
    PolicyUser,
    compile_policy,
    parse_policy,
)
from headscale_core.policy.tests import run_policy_tests
from headscale_core.state.changes import Change, NodeChanged, NodePatched, NodeRemoved, UserChanged
from headscale_core.state.model import Node

if TYPE_CHECKING:
    from headscale_core.state.service import StateService

log = logging.getLogger(__name__)

HISTORY = 16  # compiles remembered for stale_since
ALLOW_ALL: list[dict[str, Any]] = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]
EXIT_ROUTES = frozenset({"0.0.0.0/0", "::/0"})


def policy_node(node: Node, online: bool) -> PolicyNode:
    return PolicyNode(
        id=node.id, stable_id=str(node.id), hostname=node.given_name, ipv4=node.ipv4, ipv6=node.ipv6,
        user_id=node.user_id, tags=node.tags, advertised_routes=node.announced_routes,
        approved_routes=node.approved_routes, online=online,
    )


class PolicyState:
    def __init__(self, state: StateService) -> None:
        self.state = state
        self.text: str | None = None
        self._policy: Any = None
        self._compiled: CompiledPolicy | None = None
        self._stale = True
        self._dirty: dict[int, None] = {}  # nodes whose topology changed since the last compile
        self._primaries: dict[str, int] | None = None
        self.version = 0
        # (version, nodes whose answers may have changed in it; None: all), newest last
        self._history: list[tuple[int, frozenset[int] | None]] = []

    async def load(self) -> None:
        """Read the configured source at start-up; a bad policy stops start-up with its error."""
        source = self.source()
        text = await source.load()
        if text is not None and text.strip():
            try:
                self._policy = parse_policy(text)
            except PolicyError as exc:
                raise InvalidRequest(f"the policy from policy.mode {self.state.config.policy.mode!r} is "
                                     f"invalid: {exc.describe()}") from exc
            self.text = text
        self._stale = True

    def source(self) -> Any:
        factory = self.state.plugins.choose("headscale_policy_sources", "policy.mode",
                                            self.state.config.policy.mode, "")
        return factory(self.state.context)

    def validate(self, text: str) -> Any:
        try:
            return parse_policy(text)
        except PolicyError as exc:
            raise InvalidRequest(exc.describe()) from exc

    def apply(self, text: str | None, *, reload: bool = False) -> None:
        """Switch to a validated policy whose own ``tests`` pass (None: allow all).

        On a ``reload`` an empty file is refused rather than read as "allow all": an editor
        that truncates before writing must not open the tailnet for a moment.
        """
        if reload and text is not None and not text.strip():
            raise InvalidRequest("the policy file is empty: keeping the last good policy "
                                 "(remove policy.path to allow all traffic)")
        policy = self.validate(text) if text and text.strip() else None
        if policy is not None:
            self.check_tests(policy)
        self._policy = policy
        self.text = text if policy is not None else None
        self._stale = True
        self._bump(None)

    def check_tests(self, policy: Any) -> None:
        """Refuse a policy whose own ``tests``/``sshTests`` fail on the current tailnet, as
        Tailscale does."""
        if not (getattr(policy, "tests", None) or getattr(policy, "ssh_tests", None)):
            return
        store = self.state.store
        users = [PolicyUser(id=u.id, name=u.name, email=u.email, groups=u.groups) for u in store.users.values()]
        nodes = [policy_node(n, n.id in store.online) for n in store.nodes.values()]
        failures = run_policy_tests(policy, users, nodes)
        if failures:
            raise InvalidRequest("the policy's own tests fail: " + "; ".join(failures))

    def note_changes(self, changes: Iterable[Change]) -> None:
        """Joined or changed nodes are recompiled incrementally on next use; a removal or a user
        change (names and groups are in aliases) recompiles everything."""
        for change in changes:
            if isinstance(change, NodeChanged | NodeRemoved) or (
                    isinstance(change, NodePatched) and "Online" in change.fields):
                self._primaries = None
            if isinstance(change, NodeRemoved | UserChanged):
                self._stale = True
            elif isinstance(change, NodeChanged) and change.topology:
                self._dirty[change.node_id] = None

    @property
    def allow_all(self) -> bool:
        return self._policy is None

    def compiled(self) -> CompiledPolicy | None:
        if self._policy is None:
            return None
        store = self.state.store
        dirty, self._dirty = self._dirty, {}
        if dirty and not self._stale and self._compiled is not None:
            if all(nid in store.nodes for nid in dirty):
                changed = [policy_node(store.nodes[nid], nid in store.online) for nid in dirty]
                self._compiled = self._compiled.with_nodes_changed(changed)
                self._bump(self._compiled.stale_nodes)
            else:
                self._stale = True
        if self._stale or self._compiled is None:
            users = [PolicyUser(id=u.id, name=u.name, email=u.email, groups=u.groups) for u in store.users.values()]
            nodes = [policy_node(n, n.id in store.online) for n in store.nodes.values()]
            self._compiled = compile_policy(self._policy, users, nodes)
            self._stale = False
            self._bump(None)
        return self._compiled

    def _bump(self, stale: frozenset[int] | None) -> None:
        self.version += 1
        self._history = [*self._history[-(HISTORY - 1):], (self.version, stale)]

    def stale_since(self, version: int) -> frozenset[int] | None:
        """Nodes whose peers, filter or SSH policy may have changed since ``version`` (None: any
        node's), for a reader that last looked at that version."""
        out: set[int] = set()
        for seen, stale in reversed(self._history):
            if seen <= version:
                return frozenset(out)
            if stale is None:
                return None
            out |= stale
        return None if version < self.version else frozenset()

    # ---- per-recipient views ---------------------------------------------------------------

    def visible_peers(self, node_id: int) -> Iterable[int]:
        compiled = self.compiled()
        if compiled is None:
            return (nid for nid in self.state.store.nodes if nid != node_id)
        return compiled.visible_peers(node_id)

    def visible_peers_set(self, node_id: int) -> AbstractSet[int]:
        """``visible_peers`` as a set the compiled policy shares (the same object while the
        node's peers cannot have changed): do not modify."""
        compiled = self.compiled()
        if compiled is None:
            return frozenset(self.state.store.nodes) - {node_id}
        return compiled.visible_peers(node_id)

    def packet_filter(self, node_id: int) -> list[dict[str, Any]]:
        compiled = self.compiled()
        return ALLOW_ALL if compiled is None else compiled.packet_filter(node_id)

    def ssh_policy(self, node_id: int) -> dict[str, Any] | None:
        compiled = self.compiled()
        return None if compiled is None else compiled.ssh_policy(node_id)

    def peer_allowed_ips(self, viewer_id: int, peer: Node) -> list[str]:
        compiled = self.compiled()
        if compiled is not None:
            return compiled.peer_allowed_ips(viewer_id, peer.id)
        if not peer.approved_routes:
            return peer.addresses
        return peer.addresses + self.routes_in_use(peer)

    def uniform_peer_ips(self, peer: Node) -> list[str] | None:
        """The peer's AllowedIPs when every viewer sees the same (it serves no routes and no
        attribute hides addresses), else None. Valid for the current ``version``."""
        compiled = self.compiled()
        if compiled is not None:
            return compiled.uniform_allowed_ips(peer.id)
        return None if peer.approved_routes else peer.addresses

    def primary_routes(self, peer: Node) -> list[str]:
        compiled = self.compiled()
        if compiled is not None:
            return compiled.primary_routes(peer.id)
        if not peer.approved_routes:
            return []
        return [r for r in self.routes_in_use(peer) if r not in EXIT_ROUTES and self._is_primary(peer, r)]

    def routes_in_use(self, node: Node) -> list[str]:
        """Approved routes the node also announces (an approval alone routes nothing)."""
        announced = {_norm(r) for r in node.announced_routes}
        return sorted(r for r in (_norm(r) for r in node.approved_routes) if r in announced)

    def _is_primary(self, node: Node, route: str) -> bool:
        """HA subnet routers: the lowest online node ID serving the prefix is its primary."""
        if self._primaries is None:
            store = self.state.store
            best: dict[str, tuple[bool, int]] = {}
            for n in store.nodes.values():
                for r in self.routes_in_use(n):
                    rank = (n.id not in store.online, n.id)
                    if r not in best or rank < best[r]:
                        best[r] = rank
            self._primaries = {r: rank[1] for r, rank in best.items()}
        return self._primaries.get(route) == node.id


def _norm(route: str) -> str:
    try:
        return str(ipaddress.ip_network(route, strict=False))
    except ValueError:
        return route
