"""``headscale policy explain --src NODE --dst NODE:PORT[/proto]``: may one node reach another?

Asks the server (``GET /api/v1/policy/explain``), so the answer comes from the policy and nodes
the server is enforcing now. Exit status: 0 allowed, 1 denied, 2 the question could not be
answered (unknown node, bad port, no server), so scripts can tell a denial from a failure.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from headscale_core.cli.client import open_client
from headscale_core.cli.command import config_of, fmt
from headscale_core.cli.output import emit, error
from headscale_core.errors import HeadscaleError

ALLOWED, DENIED, FAILED = 0, 1, 2


def split_destination(text: str) -> tuple[str, str, str]:
    """``NODE:PORT[/proto]`` -> (node, port, proto); IPv6 addresses go in brackets."""
    target, _, proto = text.partition("/")
    if target.startswith("["):
        node, bracket, rest = target[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise HeadscaleError(f"--dst {text!r}: write an IPv6 address as [ADDRESS]:PORT")
        return node, rest[1:], proto
    if target.count(":") > 1:
        raise HeadscaleError(f"--dst {text!r}: write an IPv6 address as [ADDRESS]:PORT")
    node, _, port = target.partition(":")
    if not node:
        raise HeadscaleError(f"--dst {text!r}: name the destination node: NODE:PORT[/proto]")
    return node, port, proto


def describe(answer: dict[str, Any]) -> str:
    """Two lines for people: the verdict with both ends, then the deciding rule."""
    head = (f"{'allowed' if answer['allowed'] else 'denied'}: {answer['srcName']} ({answer['srcId']}) -> "
            f"{answer['dstName']} ({answer['dstId']}) port {answer['port']}/{answer['proto']}")
    if answer["ruleIndex"] is not None:
        return f"{head}\n  by {answer['ruleKind']}[{answer['ruleIndex']}]: {answer['ruleText']}"
    return f"{head}\n  {answer['reason'].partition(': ')[2] or answer['reason']}"


async def explain(args: argparse.Namespace) -> dict[str, Any]:
    node, port, proto = split_destination(args.dst)
    params = {"src": args.src, "dst": node, "port": port, "proto": proto or "tcp"}
    async with open_client(config_of(args), getattr(args, "plugins", None)) as client:
        return await client.call("GET", "/policy/explain", params=params)


def policy_explain(args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(explain(args))
    except HeadscaleError as exc:
        error(fmt(args), str(exc))
        return FAILED
    emit(fmt(args), answer, describe(answer))
    return ALLOWED if answer["allowed"] else DENIED


def register(subparsers: Any) -> None:
    """Add ``explain`` to the ``policy`` command (creating that command if nothing else has)."""
    policy = subparsers.choices.get("policy") or subparsers.add_parser("policy", help="the tailnet policy")
    # argparse has no public accessor for a parser's subcommands; reuse the action if present.
    actions = [a for a in policy._actions if isinstance(a, argparse._SubParsersAction)]
    commands = actions[0] if actions else policy.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = commands.add_parser(
        "explain", help="may node SRC reach node DST on a port, and which rule decides (exit 0 yes, 1 no)",
        description="Exit status: 0 allowed, 1 denied, 2 the question could not be answered.")
    p.add_argument("--src", required=True, metavar="NODE", help="source node: ID, name or tailnet IP")
    p.add_argument("--dst", required=True, metavar="NODE:PORT[/proto]",
                   help="destination node and port, e.g. web:443, 7:22/tcp, [fd7a:115c:a1e0::3]:53/udp, db/icmp")
    p.set_defaults(func=policy_explain)
