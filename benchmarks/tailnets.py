"""The two tailnet shapes of the benchmarks, as users, tags, policies and expected visibility.

* dense: 10 users, allow-all written as a policy, every node sees every other; the policy change
  hides user ``u9`` (10% of the nodes) from everyone else.
* sparse: 100 users of 50 nodes minus 10 shared servers tagged ``tag:server``; a node sees its
  own user's nodes and the servers (one rule per user: Headscale's global-filter path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from benchmarks.loadgen import Fleet

DENSE_USERS = 10
SPARSE_USERS = 100
SHARED_SERVERS = 10
SERVER_TAG = "tag:server"

ALLOW_ALL = json.dumps({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}, indent=1)


@dataclass(frozen=True)
class Tailnet:
    name: str
    users: list[str]
    tags: list[str]
    policy: str

    def assign(self, fleet: Fleet, keys: dict[str, str]) -> None:
        """Give each simulated node its user (or tag) and that owner's pre-auth key."""
        for node in fleet.nodes:
            if self.tags and node.index < SHARED_SERVERS:
                node.user = SERVER_TAG
            else:
                node.user = self.users[node.index % len(self.users)]
            node.auth_key = keys[node.user]


def dense_tailnet() -> Tailnet:
    return Tailnet("dense", [f"u{i}" for i in range(DENSE_USERS)], [], ALLOW_ALL)


def hidden_user_policy() -> str:
    """``u9`` sees only itself; everyone else sees everyone but ``u9``."""
    others = [f"u{i}@" for i in range(DENSE_USERS - 1)]
    return json.dumps({"acls": [
        {"action": "accept", "src": others, "dst": [f"{u}:*" for u in others]},
        {"action": "accept", "src": ["u9@"], "dst": ["u9@:*"]},
    ]}, indent=1)


def dense_visibility(fleet: Fleet) -> dict[int, set[int]]:
    ids = set(fleet.by_id())
    return {i: ids - {i} for i in ids}


def hidden_user_visibility(fleet: Fleet) -> dict[int, set[int]]:
    by_id = fleet.by_id()
    hidden = {i for i, n in by_id.items() if n.user == "u9"}
    shown = set(by_id) - hidden
    return {i: (hidden if i in hidden else shown) - {i} for i in by_id}


def sparse_tailnet() -> Tailnet:
    users = [f"u{i}" for i in range(SPARSE_USERS)]
    acls = [{"action": "accept", "src": [f"{u}@"], "dst": [f"{u}@:*", f"{SERVER_TAG}:*"]} for u in users]
    policy = {"tagOwners": {SERVER_TAG: ["u0@"]}, "acls": acls}
    return Tailnet("sparse", users, [SERVER_TAG], json.dumps(policy, indent=1))


def sparse_visibility(fleet: Fleet) -> dict[int, set[int]]:
    """Peers are visible when either side may open a connection to the other, as in both servers:
    a server sees every user's nodes, but not the other servers (no rule has a server as source)."""
    by_id = fleet.by_id()
    servers = {i for i, n in by_id.items() if n.user == SERVER_TAG}
    members: dict[str, set[int]] = {}
    for i, n in by_id.items():
        if n.user != SERVER_TAG:
            members.setdefault(n.user, set()).add(i)
    out: dict[int, set[int]] = {}
    for i, n in by_id.items():
        out[i] = (set(by_id) - servers if i in servers else members[n.user] | servers) - {i}
    return out
