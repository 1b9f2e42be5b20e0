"""The admin command tree (``users``, ``nodes``, ``preauthkeys``, ``apikeys``, ``auth``,
``policy``, ``acl``, ``audit``, ``health``) with Headscale's names and aliases.

Every command is a client of ``/api/v1`` (``cli.client``): remote, over the local socket, or
offline against an in-process core. ``cli.main`` calls ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from headscale_core.cli.admin_audit import register_audit
from headscale_core.cli.admin_keys import register_apikeys, register_preauthkeys
from headscale_core.cli.admin_nodes import register_auth, register_nodes
from headscale_core.cli.client import ApiClient
from headscale_core.cli.command import api_command, fmt, require_confirmation
from headscale_core.cli.output import emit, error, table, when
from headscale_core.errors import HeadscaleError
from headscale_core.policy import PolicyError, parse_policy


async def _user_id(client: ApiClient, args: argparse.Namespace) -> dict[str, Any]:
    """The user named by ``-i`` or ``-n``."""
    if bool(args.identifier) == bool(args.name):
        raise HeadscaleError("name the user with exactly one of --identifier or --name")
    params = {"id": args.identifier} if args.identifier else {"name": args.name}
    users = (await client.call("GET", "/user", params=params))["users"]
    if not users:
        raise HeadscaleError(f"user {args.identifier or args.name} does not exist: "
                             "list users with `headscale users list`")
    return users[0]  # type: ignore[no-any-return]


async def users_create(client: ApiClient, args: argparse.Namespace) -> None:
    body = {"name": args.name, "displayName": args.display_name or "", "email": args.email or "",
            "pictureUrl": args.picture_url or ""}
    user = (await client.call("POST", "/user", body=body))["user"]
    emit(fmt(args), user, "User created")


async def users_list(client: ApiClient, args: argparse.Namespace) -> None:
    params = {k: v for k, v in (("id", args.identifier), ("name", args.name), ("email", args.email)) if v}
    users = (await client.call("GET", "/user", params=params))["users"]
    emit(fmt(args), users, table(
        ["ID", "Name", "Username", "Email", "Created"],
        [[u["id"], u["displayName"], u["name"], u["email"], when(u["createdAt"])] for u in users]))


async def users_rename(client: ApiClient, args: argparse.Namespace) -> None:
    user = await _user_id(client, args)
    renamed = (await client.call("POST", f"/user/{user['id']}/rename/{args.new_name}"))["user"]
    emit(fmt(args), renamed, "User renamed")


async def users_destroy(client: ApiClient, args: argparse.Namespace) -> None:
    user = await _user_id(client, args)
    require_confirmation(args, f"Do you want to remove the user {user['name']!r} ({user['id']}) "
                               "and any associated pre-auth keys?")
    emit(fmt(args), await client.call("DELETE", f"/user/{user['id']}"), "User destroyed")


async def policy_get(client: ApiClient, args: argparse.Namespace) -> None:
    answer = await client.call("GET", "/policy")
    emit(fmt(args), answer, answer["policy"].rstrip("\n"))


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise HeadscaleError(f"cannot read policy file {path}: {exc.strerror}") from exc


async def policy_set(client: ApiClient, args: argparse.Namespace) -> None:
    answer = await client.call("PUT", "/policy", body={"policy": _read(args.file)})
    emit(fmt(args), answer, "Policy updated.")


def policy_check(args: argparse.Namespace) -> int:
    """Parse the file here, without a server: exit 1 with the problem if it is not valid."""
    try:
        parse_policy(_read(args.file))
    except PolicyError as exc:
        return error(fmt(args), f"policy file {args.file} is invalid: {exc.describe()}")
    except HeadscaleError as exc:
        return error(fmt(args), str(exc))
    emit(fmt(args), {"valid": True}, "Policy is valid")
    return 0


async def health(client: ApiClient, args: argparse.Namespace) -> None:
    emit(fmt(args), await client.call("GET", "/health"), "The server is healthy")


def register_users(sub: Any) -> None:
    users = sub.add_parser("users", aliases=["user"], help="manage users").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = users.add_parser("create", aliases=["c", "new"], help="create a user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-d", "--display-name")
    p.add_argument("-e", "--email")
    p.add_argument("-p", "--picture-url")
    p.set_defaults(func=api_command(users_create))
    p = users.add_parser("list", aliases=["ls", "show"], help="list users")
    p.add_argument("-i", "--identifier", help="only the user with this ID")
    p.add_argument("-n", "--name", help="only the user with this name")
    p.add_argument("-e", "--email", help="only the user with this email")
    p.set_defaults(func=api_command(users_list))
    for names, fn, text in ((["rename", "mv"], users_rename, "rename a user"),
                            (["destroy", "delete"], users_destroy, "delete a user (it must own no nodes)")):
        p = users.add_parser(names[0], aliases=names[1:], help=text)
        p.add_argument("-i", "--identifier", help="user ID")
        p.add_argument("-n", "--name", help="user name")
        if fn is users_rename:
            p.add_argument("-r", "--new-name", required=True)
        p.set_defaults(func=api_command(fn))


def register_policy(sub: Any) -> None:
    policy = sub.add_parser("policy", help="the tailnet policy").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = policy.add_parser("get", aliases=["show", "view", "fetch"], help="print the current policy")
    p.set_defaults(func=api_command(policy_get))
    p = policy.add_parser("set", aliases=["put", "update"], help="replace the policy (policy.mode: database)")
    p.add_argument("-f", "--file", required=True, help="HuJSON policy file")
    p.set_defaults(func=api_command(policy_set))
    p = policy.add_parser("check", help="validate a policy file without a server")
    p.add_argument("-f", "--file", required=True, help="HuJSON policy file")
    p.set_defaults(func=policy_check, needs_config=False)
    acl = sub.add_parser("acl", help="older name of `policy check`").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = acl.add_parser("validate", help="validate a policy file without a server")
    p.add_argument("-f", "--file", required=True, help="HuJSON policy file")
    p.set_defaults(func=policy_check, needs_config=False)


def register(subparsers: Any) -> None:
    """Add the admin commands to ``headscale``'s subparsers (each sets ``func(args) -> int``)."""
    register_users(subparsers)
    register_nodes(subparsers)
    register_preauthkeys(subparsers)
    register_apikeys(subparsers)
    register_auth(subparsers)
    register_policy(subparsers)
    register_audit(subparsers)
    p = subparsers.add_parser("health", help="exit 0 if the server and its database answer, else 1")
    p.set_defaults(func=api_command(health))
