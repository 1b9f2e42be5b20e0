"""Parsing and validation of the `ssh` and `sshTests` sections."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .model import PolicyError, located
from .ssh import is_localpart
from .validate import AliasContext, check_alias

if TYPE_CHECKING:
    from .parse import SSHRule

MAX_CHECK_PERIOD = 168 * 3600.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """A Go `time.Duration` string (`12h`, `1h30m`, `-1m`) in seconds."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def format_go_duration(seconds: float) -> str:
    """Seconds the way Go prints a Duration (`168h0m1s`, `-1m0s`)."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    secs_text = f"{secs:g}s"
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{secs_text}"
    if minutes:
        return f"{sign}{int(minutes)}m{secs_text}"
    return f"{sign}{secs_text}"


def parse_ssh_rules(entries: Sequence[dict[str, Any]], ctx: AliasContext) -> list[SSHRule]:
    from .parse import SSHRule, strings

    rules = []
    for index, entry in enumerate(entries):
        where = f"ssh[{index}]"
        action = str(entry.get("action") or "").strip()
        if not action:
            raise PolicyError("action must be specified", location=f"{where}.action")
        if action not in ("accept", "check"):
            raise PolicyError(f'"{action}" is not a valid action', location=f"{where}.action")
        # Tailscale ignores blanks around names: " root" is root, " accept" is accept.
        users = [u.strip() for u in strings(entry, "users", where)]
        if not users:
            raise PolicyError("users must be specified", location=f"{where}.users")
        for j, user in enumerate(users):
            with located(f"{where}.users[{j}]"):
                check_ssh_user(user, ctx)
        srcs = tuple(s.strip() for s in strings(entry, "src", where))
        dsts = tuple(strings(entry, "dst", where))
        for j, src in enumerate(srcs):
            with located(f"{where}.src[{j}]"):
                check_alias(src, "src", ctx)
                if src.removeprefix("user:").startswith("*@"):
                    check_domain(src.removeprefix("user:")[2:], ctx, prefix="[ssh] ")
        for j, dst in enumerate(dsts):
            with located(f"{where}.dst[{j}]"):
                if dst in ctx.hosts:
                    raise PolicyError(f'invalid dst "{dst}"')
                check_alias(dst, "dst", ctx)
        accept_env = strings(entry, "acceptEnv", where)
        for j, env in enumerate(accept_env):
            if not env:
                raise PolicyError("acceptEnv values cannot be empty", location=f"{where}.acceptEnv[{j}]")
        with located(f"{where}.checkPeriod"):
            period = _check_period(entry)
        rules.append(SSHRule(index, action, srcs, dsts, tuple(users), period, tuple(accept_env)))
    return rules


def check_ssh_user(user: str, ctx: AliasContext) -> None:
    if user in ("", "*"):
        raise PolicyError(f'user "{user}" is not valid')
    if is_localpart(user):
        check_domain(user.removeprefix("localpart:*@"), ctx)


def check_domain(domain: str, ctx: AliasContext, prefix: str = "") -> None:
    """`*@domain` expressions must name a domain of this tailnet (and never a wildcard)."""
    known = ctx.tailnet_domains
    if "*" in domain or (known is not None and domain not in known):
        raise PolicyError(f"{prefix}{domain} is not associated with this Tailnet and cannot be used in "
                          "user:*@<domain> expressions")


def _check_period(entry: dict[str, Any]) -> float | None:
    text = entry.get("checkPeriod")
    if text in (None, ""):
        return None
    if text == "always":
        return 0.0
    try:
        seconds = parse_go_duration(str(text))
    except ValueError:
        # Go's time.ParseDuration wording, which the service passes on.
        raise PolicyError(f'time: invalid duration "{text}"') from None
    if seconds < 0:
        raise PolicyError(f"checkPeriod {format_go_duration(seconds)} must be a positive duration")
    if seconds > MAX_CHECK_PERIOD:
        raise PolicyError(f"checkPeriod {format_go_duration(seconds)} is above the max (168h)")
    return seconds


def parse_ssh_tests(tests: Sequence[dict[str, Any]], ctx: AliasContext) -> None:
    from .parse import strings

    for index, test in enumerate(tests):
        where = f"sshTests[{index}]"
        for j, dst in enumerate(strings(test, "dst", where)):
            if dst.startswith("tag:") and dst not in ctx.tag_owners:
                raise PolicyError(f'SSH tests dst contains unknown tag "{dst}"', location=f"{where}.dst[{j}]")
            if dst.startswith("autogroup:internet") or (_is_ip(dst) and "/" in dst):
                raise PolicyError(f'SSH tests dst contains disallowed element "{dst}"', location=f"{where}.dst[{j}]")
        for key in ("accept", "deny", "check"):
            for j, user in enumerate(strings(test, key, where)):
                if user == "*":
                    raise PolicyError(f'user "{user}" is not valid', location=f"{where}.{key}[{j}]")


def _is_ip(text: str) -> bool:
    from .ipset import parse_network

    try:
        parse_network(text)
    except ValueError:
        return False
    return True
