"""``headscale db migrate --from URL --to URL`` (in the core's ``db`` group)."""

from __future__ import annotations

import argparse
import asyncio
import json

from headscale_postgres.transfer import backend_from_url, copy_tailnet


def add_db_migrate(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = subparsers.choices.get("db")
    if db is None:  # a core without the db group: offer it at the top level
        db = subparsers.add_parser("db", help="database maintenance")
        db.add_subparsers(dest="what", metavar="ACTION")
    group = next(a for a in db._actions if isinstance(a, argparse._SubParsersAction))
    p = group.add_parser(
        "migrate", help="copy a whole tailnet into an empty database (SQLite <-> PostgreSQL)",
        description="Copy users, nodes (with keys and addresses), pre-auth keys, API keys, policy and audit "
                    "log from one database to another, empty one. Stop the server first.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL",
                   help="sqlite:///var/lib/headscale/db.sqlite or postgresql://user:pass@host:5432/name")
    p.add_argument("--to", dest="target", required=True, metavar="URL", help="the empty target, same forms")
    p.set_defaults(func=cmd_db_migrate, needs_config=False)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    source = backend_from_url(args.source, must_exist=True)
    target = backend_from_url(args.target)
    report = asyncio.run(copy_tailnet(source, target))
    print(json.dumps({"source": report.source, "target": report.target, "rows": report.rows})
          if args.output else report.summary())
    return 0
