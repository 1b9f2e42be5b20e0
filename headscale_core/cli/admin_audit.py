"""``headscale audit list``: read the audit log through ``GET /api/v1/audit``.

The log is append-only, so there is no command that edits or deletes entries.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from headscale_core.cli.client import ApiClient
from headscale_core.cli.command import api_command, fmt
from headscale_core.cli.output import emit, table, when
from headscale_core.config import parse_duration
from headscale_core.errors import HeadscaleError


def since_time(text: str) -> str:
    """``--since``: a duration back from now (``1h``, ``7d``) or an RFC 3339 time, as RFC 3339."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise HeadscaleError(f"--since {text!r}: give a duration back from now (30m, 1h, 7d) "
                                 "or an RFC 3339 time (2026-01-02T15:04:05Z)") from exc
        return text
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _details(details: dict[str, Any]) -> str:
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in details.items())


async def audit_list(client: ApiClient, args: argparse.Namespace) -> None:
    params = {"limit": str(args.limit)}
    if args.since:
        params["since"] = since_time(args.since)
    if args.kind:
        params["kind"] = args.kind
    events = (await client.call("GET", "/audit", params=params))["events"]
    emit(fmt(args), events, table(
        ["Time", "Kind", "Actor", "Subject", "Source", "Details"],
        [[when(e["time"]), e["kind"], e["actor"], e["subject"], e["source"], _details(e["details"])]
         for e in events]))


def register_audit(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the audit log (read only)").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = audit.add_parser("list", aliases=["ls", "show"], help="list audit events, oldest first")
    p.add_argument("-s", "--since", help="only events from this long ago (1h, 7d) or since this RFC 3339 time")
    p.add_argument("-k", "--kind", help="only events whose kind starts with this (node., login.failed)")
    p.add_argument("-l", "--limit", type=int, default=1000, help="at most this many events (default 1000)")
    p.set_defaults(func=api_command(audit_list))
