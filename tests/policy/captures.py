"""Loading Tailscale policy captures and turning them into engine inputs and expectations.

The captures live outside the repository (see the shared testdata README); this module only
reads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headscale_core.policy import PolicyNode, PolicyUser

REPO_ROOT = Path(__file__).resolve().parents[2]
CAPTURES_DIR = Path(
    os.environ.get("POLICY_CAPTURES_DIR", REPO_ROOT / "../shared/testdata/tailscale-policy-captures")
)


@dataclass
class Capture:
    path: Path
    data: dict[str, Any]
    users: list[PolicyUser]
    nodes: dict[str, PolicyNode]  # by capture node name

    @property
    def category(self) -> str:
        return self.path.parent.name

    @property
    def policy_text(self) -> str:
        policy = self.data["input"]["full_policy"]
        return policy if isinstance(policy, str) else json.dumps(policy)

    @property
    def rejected_with(self) -> str | None:
        if self.data["input"].get("api_response_code", 200) == 200:
            return None
        return str(self.data["input"]["api_response_body"]["message"])

    @property
    def tailnet_domains(self) -> list[str]:
        """The tailnet is named after its owner's login; its domain is the tailnet's own."""
        return [str(self.data.get("tailnet", "")).rpartition("@")[2]]

    @property
    def node_captures(self) -> dict[str, dict[str, Any]]:
        return self.data.get("captures") or {}


def capture_files() -> list[Path]:
    return sorted(CAPTURES_DIR.glob("*/*.hujson"))


def load_capture(path: Path) -> Capture:
    data = _load(path)
    topology = data["topology"]
    owner = data.get("tailnet", "")  # the tailnet is named after its owner's login
    users = [PolicyUser(u["id"], u["name"], u.get("email", ""),
                        roles=("owner",) if u.get("email") and u.get("email") == owner else ())
             for u in topology["users"]]
    by_name = {u.name: u.id for u in users}
    captures = data.get("captures") or {}

    def created(name: str) -> str:
        self_node = ((captures.get(name) or {}).get("netmap") or {}).get("SelfNode") or {}
        return str(self_node.get("Created", "")) + name

    nodes = {}
    for index, name in enumerate(sorted(topology["nodes"], key=created), start=1):
        raw = topology["nodes"][name]
        nodes[name] = PolicyNode(
            id=index,
            stable_id=f"n{name}",
            hostname=raw.get("hostname", name),
            ipv4=raw.get("ipv4"),
            ipv6=raw.get("ipv6"),
            user_id=by_name.get(raw["user"]) if raw.get("user") else None,
            tags=tuple(raw.get("tags") or ()),
            advertised_routes=tuple(raw.get("routable_ips") or ()),
            approved_routes=tuple(raw.get("approved_routes") or ()),
        )
    return Capture(path, data, users, nodes)


def _load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    # The comment header is plain `//` lines; the body is strict JSON, which json parses far
    # faster than json5.
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    return json.loads(body)


def normalise_filter(rules: list[dict[str, Any]] | None) -> list[str]:
    """FilterRules as sorted canonical JSON: Tailscale's order of rules and entries carries no meaning."""
    out = []
    for rule in rules or []:
        norm: dict[str, Any] = {"SrcIPs": sorted(rule.get("SrcIPs") or [])}
        if rule.get("DstPorts"):
            norm["DstPorts"] = sorted(
                rule["DstPorts"], key=lambda d: (d["IP"], d["Ports"]["First"], d["Ports"]["Last"])
            )
        if rule.get("IPProto"):
            norm["IPProto"] = sorted(rule["IPProto"])
        if rule.get("CapGrant"):
            norm["CapGrant"] = sorted(
                ({"Dsts": sorted(g.get("Dsts") or []), "CapMap": g.get("CapMap")} for g in rule["CapGrant"]),
                key=lambda g: json.dumps(g, sort_keys=True),
            )
        out.append(json.dumps(norm, sort_keys=True))
    return sorted(out)


def captured_peers(netmap: dict[str, Any]) -> dict[str, list[str]]:
    """Visible peers by host name, with their AllowedIPs (order-free)."""
    return {p["Name"].split(".")[0]: sorted(p.get("AllowedIPs") or []) for p in netmap.get("Peers") or []}


def normalise_ssh(policy: dict[str, Any] | None) -> list[str]:
    """SSH rules in order (first match wins), principals and env order-free."""
    out = []
    for rule in (policy or {}).get("rules") or []:
        norm = dict(rule)
        norm["principals"] = sorted(json.dumps(p, sort_keys=True) for p in rule.get("principals") or [])
        if norm.get("acceptEnv") is not None:
            norm["acceptEnv"] = sorted(norm["acceptEnv"])
        out.append(json.dumps(norm, sort_keys=True))
    return out


# Capabilities the service puts on every node whatever the policy says (account roles, feature
# switches); the engine's CapMap is the policy's part only.
SERVICE_CAPS = frozenset({
    "https://tailscale.com/cap/file-sharing", "https://tailscale.com/cap/ssh",
    "https://tailscale.com/cap/tailnet-lock", "probe-udp-lifetime", "ssh-behavior-v1", "ssh-env-vars",
    "store-appc-routes", "tailnet-display-name", "https://tailscale.com/cap/is-owner",
    "https://tailscale.com/cap/is-admin", "default-auto-update",
})


def captured_capmap(netmap: dict[str, Any]) -> dict[str, list[Any]] | None:
    """The policy's part of the node's own CapMap (null values read as empty), if captured."""
    cap_map = (netmap.get("SelfNode") or {}).get("CapMap")
    if cap_map is None:
        return None
    return {name: list(values or []) for name, values in cap_map.items() if name not in SERVICE_CAPS}
