"""``headscale nodes …`` and ``headscale auth …``: nodes and pending registrations."""

from __future__ import annotations

import argparse
from typing import Any

from headscale_core.cli.client import ApiClient
from headscale_core.cli.command import api_command, fmt, require_confirmation, resolve_user_id, split_list
from headscale_core.cli.output import emit, is_past, table, when


def _node_rows(nodes: list[dict[str, Any]]) -> str:
    return table(
        ["ID", "Hostname", "Name", "User", "Tags", "IP addresses", "Ephemeral", "Last seen", "Expiration",
         "Connected", "Expired"],
        [[n["id"], n["name"], n["givenName"], n["user"]["name"] if n.get("user") else "", ",".join(n["tags"]),
          ", ".join(n["ipAddresses"]), bool(n.get("preAuthKey") and n["preAuthKey"]["ephemeral"]),
          when(n["lastSeen"]), when(n["expiry"]), "online" if n["online"] else "offline", is_past(n["expiry"])]
         for n in nodes])


async def nodes_list(client: ApiClient, args: argparse.Namespace) -> None:
    params = {"user": args.user} if args.user else None
    nodes = (await client.call("GET", "/node", params=params))["nodes"]
    emit(fmt(args), nodes, _node_rows(nodes))


async def nodes_list_routes(client: ApiClient, args: argparse.Namespace) -> None:
    if args.identifier:
        nodes = [(await client.call("GET", f"/node/{args.identifier}"))["node"]]
    else:
        nodes = [n for n in (await client.call("GET", "/node"))["nodes"]
                 if n["approvedRoutes"] or n["availableRoutes"]]
    emit(fmt(args), nodes, table(
        ["ID", "Hostname", "Approved", "Available", "Serving (Primary)"],
        [[n["id"], n["givenName"], ", ".join(n["approvedRoutes"]), ", ".join(n["availableRoutes"]),
          ", ".join(n["subnetRoutes"])] for n in nodes]))


async def nodes_register(client: ApiClient, args: argparse.Namespace) -> None:
    node = (await client.call("POST", "/node/register", params={"user": args.user, "key": args.key}))["node"]
    emit(fmt(args), node, f"Node {node['givenName']} registered")


async def nodes_expire(client: ApiClient, args: argparse.Namespace) -> None:
    params: dict[str, str] = {}
    if args.disable:
        params["disableExpiry"] = "true"
    elif args.expiry:
        params["expiry"] = args.expiry
    else:
        require_confirmation(args, f"Do you want to expire node {args.identifier} now?")
    node = (await client.call("POST", f"/node/{args.identifier}/expire", params=params))["node"]
    human = (f"Node {node['givenName']} will not expire" if node["expiry"] is None
             else f"Node {node['givenName']} expires at {when(node['expiry'])}")
    emit(fmt(args), node, human)


async def nodes_rename(client: ApiClient, args: argparse.Namespace) -> None:
    node = (await client.call("POST", f"/node/{args.identifier}/rename/{args.new_name}"))["node"]
    emit(fmt(args), node, "Node renamed")


async def nodes_delete(client: ApiClient, args: argparse.Namespace) -> None:
    node = (await client.call("GET", f"/node/{args.identifier}"))["node"]
    require_confirmation(args, f"Do you want to delete node {node['givenName']} ({node['id']})?")
    await client.call("DELETE", f"/node/{args.identifier}")
    emit(fmt(args), {}, "Node deleted")


async def nodes_tag(client: ApiClient, args: argparse.Namespace) -> None:
    body = {"tags": split_list(args.tags)}
    node = (await client.call("POST", f"/node/{args.identifier}/tags", body=body))["node"]
    emit(fmt(args), node, "Node updated")


async def nodes_approve_routes(client: ApiClient, args: argparse.Namespace) -> None:
    body = {"routes": split_list(args.routes)}
    node = (await client.call("POST", f"/node/{args.identifier}/approve_routes", body=body))["node"]
    emit(fmt(args), node, "Node updated")


async def nodes_move(client: ApiClient, args: argparse.Namespace) -> None:
    user_id = await resolve_user_id(client, args.user)
    node = (await client.call("POST", f"/node/{args.identifier}/user", body={"user": user_id}))["node"]
    emit(fmt(args), node, f"Node moved to user {node['user']['name']}")


async def auth_register(client: ApiClient, args: argparse.Namespace) -> None:
    node = (await client.call("POST", "/auth/register", body={"authId": args.auth_id, "user": args.user}))["node"]
    emit(fmt(args), node, f"Node {node['givenName']} registered")


async def auth_approve(client: ApiClient, args: argparse.Namespace) -> None:
    emit(fmt(args), await client.call("POST", "/auth/approve", body={"authId": args.auth_id}),
         "Registration approved")


async def auth_reject(client: ApiClient, args: argparse.Namespace) -> None:
    emit(fmt(args), await client.call("POST", "/auth/reject", body={"authId": args.auth_id}),
         "Registration rejected")


def _id(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--identifier", required=True, help="node ID")


def register_nodes(sub: Any) -> None:
    nodes = sub.add_parser("nodes", aliases=["node"], help="manage nodes").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = nodes.add_parser("list", aliases=["ls", "show"], help="list nodes")
    p.add_argument("-u", "--user", help="only this user's nodes (ID or name)")
    p.set_defaults(func=api_command(nodes_list))
    p = nodes.add_parser("list-routes", aliases=["lsr", "routes"], help="list routes nodes announce and may use")
    p.add_argument("-i", "--identifier", help="node ID")
    p.set_defaults(func=api_command(nodes_list_routes))
    p = nodes.add_parser("register", help="register a pending node (deprecated: use auth register)")
    p.add_argument("-u", "--user", required=True, help="user ID or name")
    p.add_argument("-k", "--key", required=True, help="registration ID from the AuthURL")
    p.set_defaults(func=api_command(nodes_register))
    p = nodes.add_parser("expire", aliases=["logout", "exp", "e"], help="expire a node's key")
    _id(p)
    p.add_argument("-e", "--expiry", help="when, as RFC 3339 (default: now)")
    p.add_argument("-d", "--disable", action="store_true", help="never expire")
    p.set_defaults(func=api_command(nodes_expire))
    p = nodes.add_parser("rename", help="change a node's name")
    _id(p)
    p.add_argument("new_name", metavar="NEW_NAME")
    p.set_defaults(func=api_command(nodes_rename))
    p = nodes.add_parser("delete", aliases=["del"], help="delete a node")
    _id(p)
    p.set_defaults(func=api_command(nodes_delete))
    p = nodes.add_parser("tag", aliases=["tags", "t"], help="replace a node's tags")
    _id(p)
    p.add_argument("-t", "--tags", action="append", default=[], help="tag:a,tag:b (repeatable; none clears)")
    p.set_defaults(func=api_command(nodes_tag))
    p = nodes.add_parser("approve-routes", help="replace a node's approved routes")
    _id(p)
    p.add_argument("-r", "--routes", action="append", default=[], help="CIDR[,CIDR] (\"\" clears)")
    p.set_defaults(func=api_command(nodes_approve_routes))
    p = nodes.add_parser("move", help="give a node to another user")
    _id(p)
    p.add_argument("-u", "--user", required=True, help="user ID or name")
    p.set_defaults(func=api_command(nodes_move))


def register_auth(sub: Any) -> None:
    auth = sub.add_parser("auth", help="pending interactive registrations").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = auth.add_parser("register", help="register a pending node to a user")
    p.add_argument("--auth-id", required=True, help="the ID at the end of the AuthURL")
    p.add_argument("-u", "--user", required=True, help="user ID or name")
    p.set_defaults(func=api_command(auth_register))
    for name, fn, text in (("approve", auth_approve, "approve a pending re-authentication"),
                           ("reject", auth_reject, "reject a pending registration")):
        p = auth.add_parser(name, help=text)
        p.add_argument("--auth-id", required=True, help="the ID at the end of the AuthURL")
        p.set_defaults(func=api_command(fn))
