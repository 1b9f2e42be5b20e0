"""Plumbing shared by the admin commands: run one coroutine against the API, report errors.

``api_command(fn)`` turns ``async fn(client, args)`` into the ``func(args) -> int`` argparse
calls. The global options come from ``cli.main``: ``args.cfg`` (the loaded config, else
``-c``), ``args.plugins``, ``args.output`` and ``args.force``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from headscale_core.cli.client import ApiClient, open_client
from headscale_core.cli.output import confirm, error
from headscale_core.config import Config, load_config, parse_duration
from headscale_core.errors import HeadscaleError

ApiCommand = Callable[[ApiClient, argparse.Namespace], Awaitable[None]]


class NotConfirmed(HeadscaleError):
    """The person (or the missing terminal) did not confirm a destructive command."""


def fmt(args: argparse.Namespace) -> str:
    return str(getattr(args, "output", "") or "")


def config_of(args: argparse.Namespace) -> Config:
    config = getattr(args, "cfg", None)
    return config if config is not None else load_config(getattr(args, "config", None))


def api_command(fn: ApiCommand) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            config = config_of(args)
            asyncio.run(_with_client(fn, config, args))
        except HeadscaleError as exc:
            return error(fmt(args), str(exc))
        return 0

    run.__doc__ = fn.__doc__
    return run


async def _with_client(fn: ApiCommand, config: Config, args: argparse.Namespace) -> None:
    async with open_client(config, getattr(args, "plugins", None)) as client:
        await fn(client, args)


def require_confirmation(args: argparse.Namespace, question: str) -> None:
    if not confirm(question, bool(getattr(args, "force", False))):
        raise NotConfirmed(f"not confirmed, nothing changed: {question.rstrip('?')} (pass --force to skip the prompt)")


def expiration_from(duration: str) -> str:
    """An RFC 3339 time ``duration`` (Prometheus style: 30m, 24h, 90d) from now."""
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise HeadscaleError(str(exc)) from exc
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_list(values: list[str] | None) -> list[str]:
    """``-t a,b -t c`` -> ``[a, b, c]`` (cobra's string-slice flags)."""
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


async def resolve_user_id(client: ApiClient, ref: str) -> str:
    """A user ID from an ID or a name (names are looked up, IDs passed through)."""
    if ref.isdigit():
        return ref
    users: list[dict[str, Any]] = (await client.call("GET", "/user", params={"name": ref}))["users"]
    if not users:
        raise HeadscaleError(f"user {ref!r} does not exist: list users with `headscale users list`")
    return str(users[0]["id"])
