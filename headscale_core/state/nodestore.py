"""The NodeStore: the in-memory snapshot of users and nodes that every read is served from.

Only the state service writes it, after the database commit; the mapper and handlers read it
without touching the database.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from headscale_core.state.model import Node, User


class NodeStore:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.users: dict[int, User] = {}
        self._by_node_key: dict[str, int] = {}
        self._by_machine_key: dict[str, int] = {}
        self._given_names: dict[str, int] = {}  # name -> how many nodes have it (one, unless imported so)
        self.online: set[int] = set()
        self.version = 0
        # node ID -> ``version`` when the node last changed (replaced, online state): a cache of
        # anything built from a group of nodes is current while none of them moved past it.
        self.touched: dict[int, int] = {}

    def load(self, users: Iterable[User], nodes: Iterable[Node]) -> None:
        for user in users:
            self.users[user.id] = user
        for node in nodes:
            self.put(node)

    def put(self, node: Node) -> None:
        old = self.nodes.get(node.id)
        if old is not None:
            self._by_node_key.pop(old.node_key, None)
            self._by_machine_key.pop(old.machine_key, None)
            self._forget_name(old.given_name)
        self.nodes[node.id] = node
        self._by_node_key[node.node_key] = node.id
        self._by_machine_key[node.machine_key] = node.id
        self._given_names[node.given_name] = self._given_names.get(node.given_name, 0) + 1
        self.version += 1
        self.touched[node.id] = self.version

    def remove(self, node_id: int) -> Node | None:
        node = self.nodes.pop(node_id, None)
        if node is not None:
            self._by_node_key.pop(node.node_key, None)
            self._by_machine_key.pop(node.machine_key, None)
            self._forget_name(node.given_name)
            self.online.discard(node_id)
            self.touched.pop(node_id, None)
            self.version += 1
        return node

    def set_online(self, node_id: int, online: bool) -> None:
        if online == (node_id in self.online):
            return
        if online:
            self.online.add(node_id)
        else:
            self.online.discard(node_id)
        self.version += 1
        if node_id in self.touched:
            self.touched[node_id] = self.version

    def by_node_key(self, node_key: str) -> Node | None:
        node_id = self._by_node_key.get(node_key)
        return self.nodes.get(node_id) if node_id is not None else None

    def by_machine_key(self, machine_key: str) -> Node | None:
        node_id = self._by_machine_key.get(machine_key)
        return self.nodes.get(node_id) if node_id is not None else None

    def given_names(self) -> Container[str]:
        """The names nodes have, for ``in`` tests: kept up to date, not rebuilt per call (a
        registration storm asked once per node, O(nodes) each time)."""
        return self._given_names.keys()

    def _forget_name(self, name: str) -> None:
        left = self._given_names.get(name, 0) - 1
        if left > 0:
            self._given_names[name] = left
        else:
            self._given_names.pop(name, None)

    def nodes_of_user(self, user_id: int) -> list[Node]:
        return [n for n in self.nodes.values() if n.user_id == user_id]
