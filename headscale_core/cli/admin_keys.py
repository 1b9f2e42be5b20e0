"""``headscale preauthkeys …`` and ``headscale apikeys …``.

``create`` prints only the key in the default output, which setup scripts capture.
"""

from __future__ import annotations

import argparse
from typing import Any

from headscale_core.cli.client import ApiClient
from headscale_core.cli.command import (
    api_command,
    expiration_from,
    fmt,
    require_confirmation,
    resolve_user_id,
    split_list,
)
from headscale_core.cli.output import emit, table, when
from headscale_core.errors import HeadscaleError


async def preauthkeys_list(client: ApiClient, args: argparse.Namespace) -> None:
    keys = (await client.call("GET", "/preauthkey"))["preAuthKeys"]
    emit(fmt(args), keys, table(
        ["ID", "Key/Prefix", "Reusable", "Ephemeral", "Used", "Expiration", "Created", "Owner"],
        [[k["id"], k["key"], k["reusable"], k["ephemeral"], k["used"], when(k["expiration"]), when(k["createdAt"]),
          k["user"]["name"] if k["user"] else ",".join(k["aclTags"])] for k in keys]))


async def preauthkeys_create(client: ApiClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"reusable": args.reusable, "ephemeral": args.ephemeral,
                            "expiration": expiration_from(args.expiration), "aclTags": split_list(args.tags)}
    if args.user:
        body["user"] = await resolve_user_id(client, args.user)
    key = (await client.call("POST", "/preauthkey", body=body))["preAuthKey"]
    emit(fmt(args), key, key["key"])


async def preauthkeys_expire(client: ApiClient, args: argparse.Namespace) -> None:
    require_confirmation(args, f"Do you want to expire pre-auth key {args.id}?")
    emit(fmt(args), await client.call("POST", "/preauthkey/expire", body={"id": args.id}), "Key expired")


async def preauthkeys_delete(client: ApiClient, args: argparse.Namespace) -> None:
    require_confirmation(args, f"Do you want to delete pre-auth key {args.id}?")
    emit(fmt(args), await client.call("DELETE", "/preauthkey", params={"id": args.id}), "Key deleted")


async def apikeys_list(client: ApiClient, args: argparse.Namespace) -> None:
    keys = (await client.call("GET", "/apikey"))["apiKeys"]
    emit(fmt(args), keys, table(
        ["ID", "Prefix", "Scope", "Expiration", "Created", "Last seen"],
        [[k["id"], k["prefix"], k.get("scope", ""), when(k["expiration"]), when(k["createdAt"]),
          when(k["lastSeen"])] for k in keys]))


async def apikeys_create(client: ApiClient, args: argparse.Namespace) -> None:
    body = {"expiration": expiration_from(args.expiration), "scope": args.scope}
    full = (await client.call("POST", "/apikey", body=body))["apiKey"]
    emit(fmt(args), full, full)


def _which(args: argparse.Namespace) -> dict[str, str]:
    if bool(args.prefix) == bool(args.id):
        raise HeadscaleError("name the API key with exactly one of --prefix or --id (see `headscale apikeys list`)")
    return {"prefix": args.prefix} if args.prefix else {"id": args.id}


async def apikeys_expire(client: ApiClient, args: argparse.Namespace) -> None:
    which = _which(args)
    require_confirmation(args, f"Do you want to expire API key {args.prefix or args.id}?")
    emit(fmt(args), await client.call("POST", "/apikey/expire", body=which), "Key expired")


async def apikeys_delete(client: ApiClient, args: argparse.Namespace) -> None:
    which = _which(args)
    require_confirmation(args, f"Do you want to delete API key {args.prefix or args.id}?")
    path = f"/apikey/{which['prefix']}" if "prefix" in which else "/apikey/-"
    params = {"id": which["id"]} if "id" in which else None
    emit(fmt(args), await client.call("DELETE", path, params=params), "Key deleted")


def register_preauthkeys(sub: Any) -> None:
    pre = sub.add_parser("preauthkeys", aliases=["preauthkey", "authkey", "pre"],
                         help="keys that register nodes without a login").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = pre.add_parser("list", aliases=["ls", "show"], help="list pre-auth keys")
    p.set_defaults(func=api_command(preauthkeys_list))
    p = pre.add_parser("create", aliases=["c", "new"], help="create a pre-auth key (prints the key)")
    p.add_argument("-u", "--user", help="owner (ID or name); omit for a tag-only key")
    p.add_argument("--reusable", action="store_true", help="may register more than one node")
    p.add_argument("--ephemeral", action="store_true", help="nodes are deleted when they go offline")
    p.add_argument("-e", "--expiration", default="1h", help="lifetime, e.g. 30m, 24h, 90d (default 1h)")
    p.add_argument("--tags", action="append", default=[], help="tag:a,tag:b for the nodes it registers")
    p.set_defaults(func=api_command(preauthkeys_create))
    for names, fn, text in ((["expire", "revoke", "exp", "e"], preauthkeys_expire, "expire a pre-auth key"),
                            (["delete", "del", "rm", "d"], preauthkeys_delete, "delete a pre-auth key")):
        p = pre.add_parser(names[0], aliases=names[1:], help=text)
        p.add_argument("-i", "--id", required=True, help="key ID (see list)")
        p.set_defaults(func=api_command(fn))


def register_apikeys(sub: Any) -> None:
    api = sub.add_parser("apikeys", aliases=["apikey", "api"], help="keys for the REST API").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = api.add_parser("list", aliases=["ls", "show"], help="list API keys")
    p.set_defaults(func=api_command(apikeys_list))
    p = api.add_parser("create", aliases=["c", "new"], help="create an API key (prints the key)")
    p.add_argument("-e", "--expiration", default="90d", help="lifetime, e.g. 30d, 1y (default 90d)")
    p.add_argument("--scope", choices=["admin", "read"], default="admin", help="read keys may only GET")
    p.set_defaults(func=api_command(apikeys_create))
    for names, fn, text in ((["expire", "revoke", "exp", "e"], apikeys_expire, "expire an API key"),
                            (["delete", "remove", "del"], apikeys_delete, "delete an API key")):
        p = api.add_parser(names[0], aliases=names[1:], help=text)
        p.add_argument("-p", "--prefix", help="key prefix (see list)")
        p.add_argument("-i", "--id", help="key ID (see list)")
        p.set_defaults(func=api_command(fn))
