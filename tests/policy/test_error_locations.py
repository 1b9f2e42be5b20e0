"""A rejected policy names the rule and field at fault next to Tailscale's own message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from headscale_core.policy import PolicyError, parse_policy

TAGS = {"tag:server": ["odin@example.com"]}


def rejection(**sections: Any) -> PolicyError:
    with pytest.raises(PolicyError) as err:
        parse_policy(json.dumps({"tagOwners": TAGS, **sections}))
    return err.value


def accept(src: list[str], dst: list[str], **extra: Any) -> dict[str, Any]:
    return {"action": "accept", "src": src, "dst": dst, **extra}


def grant(src: list[str], dst: list[str], **extra: Any) -> dict[str, Any]:
    return {"src": src, "dst": dst, **extra}


def ssh(**fields: Any) -> dict[str, Any]:
    return {"action": "accept", "src": ["*"], "dst": ["tag:server"], "users": ["root"], **fields}


@pytest.mark.parametrize(("sections", "location", "message"), [
    ({"acls": [accept(["*"], ["*:*"]), accept(["*"], ["*:*"], action="deny")]},
     "acls[1].action", 'action="deny" is not supported'),
    ({"acls": [accept(["*"], ["*:*"]), accept(["*"], ["*:*"]), accept(["*"], ["*:*"]),
               accept(["*"], ["tag:server:22", "tag:nope:22"])]},
     "acls[3].dst[1]", 'dst=tag not found: "tag:nope"'),
    ({"acls": [accept(["*", "group:missing"], ["*:*"])]}, "acls[0].src[1]", 'src=group not found: "group:missing"'),
    ({"acls": [accept(["*"], ["tag:server:ssh"])]}, "acls[0].dst[0]",
     'dst="tag:server:ssh": port range "ssh": invalid first integer'),
    ({"acls": [accept(["*"], ["*:*"], proto="bogus")]}, "acls[0].proto", "acls[0].proto: unknown protocol 'bogus'"),
    ({"acls": [accept(["odin@example.com", "tag:server"], ["autogroup:self:*"])]}, "acls[0].src[1]",
     "autogroup:self can only be used with users, groups, or supported autogroups"),
    ({"acls": [accept(["autogroup:self"], ["*:*"])]}, "acls[0].src[0]",
     '"autogroup:self" not valid on the src side of a rule'),
    ({"grants": [grant(["*"], ["*"], ip=["*"]), grant(["*"], ["*"], ip=[])]}, "grants[1]",
     "ip and app can not both be empty"),
    ({"grants": [grant(["*"], ["*"], ip=["22", "tcp:0"])]}, "grants[0].ip[1]",
     "port range \"0\": first port must be >0, or use '*' for wildcard"),
    ({"grants": [grant(["*"], ["autogroup:internet"], app={"example.com/cap/x": [{}]})]}, "grants[0].app",
     "cannot use app grants with autogroup:internet"),
    ({"grants": [grant(["*"], ["*"], app={"tailscale.com/cap/funnel": [{}]})]},
     'grants[0].app["tailscale.com/cap/funnel"]', "capability name must not be in the tailscale.com domain"),
    ({"grants": [grant(["*"], ["*", "0.0.0.0/0"], ip=["*"])]}, "grants[0].dst[1]",
     'dst "0.0.0.0/0": to allow all IP addresses, use "*" or "autogroup:internet"'),
    ({"grants": [grant(["*"], ["10.0.0.0/8"], ip=["*"], via=["tag:server", "tag:gone"])]}, "grants[0].via[1]",
     'tag "tag:gone" not found'),
    ({"ssh": [ssh(), ssh(), ssh(users=[])]}, "ssh[2].users", "users must be specified"),
    ({"ssh": [ssh(users=["root", "*"])]}, "ssh[0].users[1]", 'user "*" is not valid'),
    ({"ssh": [ssh(action="")]}, "ssh[0].action", "action must be specified"),
    ({"ssh": [ssh(checkPeriod="200h")]}, "ssh[0].checkPeriod", "checkPeriod 200h0m0s is above the max (168h)"),
    ({"ssh": [ssh(acceptEnv=["GIT_*", ""])]}, "ssh[0].acceptEnv[1]", "acceptEnv values cannot be empty"),
    ({"tagOwners": {"tag:server": [], "tag:9lives": []}}, 'tagOwners["tag:9lives"]',
     "tagOwners[\"tag:9lives\"]: tag names must start with a letter, after 'tag:'"),
    ({"groups": {"group:a": ["group:b"], "group:b": []}}, 'groups["group:a"]',
     'groups["group:a"]: "group:b": group members cannot be recursive'),
    ({"nodeAttrs": [{"target": ["*"], "attr": ["funnel"]}, {"target": ["*", "tag:gone"], "attr": ["funnel"]}]},
     "nodeAttrs[1].target[1]", 'tag not found: "tag:gone"'),
    ({"sshTests": [{"src": "odin@example.com", "dst": ["tag:gone"], "accept": ["root"]}]}, "sshTests[0].dst[0]",
     'SSH tests dst contains unknown tag "tag:gone"'),
])
def test_rejections_keep_tailscales_message_and_add_the_location(
        sections: dict[str, Any], location: str, message: str) -> None:
    err = rejection(**sections)
    assert (err.location, err.message) == (location, message)


def test_describe_shows_location_then_message() -> None:
    err = rejection(acls=[accept(["*"], ["*:*"]), accept(["*"], ["tag:nope:22"])])
    assert err.describe() == str(err) == 'acls[1].dst[0]: dst=tag not found: "tag:nope"'


def test_describe_does_not_repeat_a_location_the_message_starts_with() -> None:
    err = rejection(groups={"group:a": ["group:b"], "group:b": []})
    assert str(err) == 'groups["group:a"]: "group:b": group members cannot be recursive'


def test_a_document_level_error_has_no_location() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("[1, 2]")
    assert err.value.location == "" and str(err.value) == "policy must be a JSON object"


@pytest.mark.parametrize(("sections", "text"), [
    # Checked here rather than failing later while the policy is compiled for the nodes.
    ({"hosts": {"db": "10.0.0.7", "web": "not-an-ip"}}, 'hosts["web"]: "not-an-ip" is not an IP address or prefix'),
    ({"autoApprovers": {"routes": {"10.0.0.0/33": ["tag:server"]}}},
     'autoApprovers.routes["10.0.0.0/33"]: "10.0.0.0/33" is not an IP prefix'),
    ({"ssh": [ssh(checkPeriod="soon")]}, 'ssh[0].checkPeriod: time: invalid duration "soon"'),
    # Wrong JSON shapes are named instead of being read one character at a time.
    ({"acls": [accept("*", ["*:*"])]}, "acls[0].src: must be a list of strings, not a string"),
    ({"acls": ["accept"]}, "acls[0]: must be a JSON object, not a string"),
    ({"grants": [grant(["*"], ["*"], ip=[22])]}, "grants[0].ip[0]: must be a string, not a number"),
    ({"hosts": ["db"]}, "hosts: must be a JSON object, not a list"),
])
def test_problems_tailscale_has_no_wording_for_are_located_too(sections: dict[str, Any], text: str) -> None:
    assert str(rejection(**sections)) == text
