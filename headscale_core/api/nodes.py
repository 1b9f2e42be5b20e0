"""``/api/v1/node`` and ``/api/v1/auth``: nodes, and pending interactive registrations.

A registration ID is the last path segment of the ``AuthURL`` a client printed
(``https://hs.example.com/register/<id>``); ``node/register`` is the pre-0.29 spelling of
``auth/register``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers, actor, ok, query_and_body, read_body
from headscale_core.api.wire import (
    field,
    node_json,
    parse_bool,
    parse_id,
    parse_routes,
    parse_strings,
    parse_time,
    preauth_key_json,
)
from headscale_core.errors import InvalidRequest
from headscale_core.state.model import Node, User


class NodeHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        node_out = {"node": "Node"}
        return [
            Endpoint("GET", "/node", self.list_nodes, "ListNodes", "List nodes (one user's with ?user=)",
                     query=("user",), response={"nodes": "Node[]"}),
            Endpoint("GET", "/node/{nodeId}", self.get_node, "GetNode", "Get a node", response=node_out),
            Endpoint("DELETE", "/node/{nodeId}", self.delete_node, "DeleteNode", "Delete a node"),
            Endpoint("POST", "/node/register", self.register_node, "RegisterNode",
                     "Approve a pending registration for a user (deprecated: use /auth/register)",
                     query=("user", "key"), response=node_out),
            Endpoint("POST", "/node/{nodeId}/expire", self.expire_node, "ExpireNode",
                     "Expire a node now, at ?expiry=, or never (?disableExpiry=true)",
                     query=("expiry", "disableExpiry"),
                     body={"expiry": "date-time", "disableExpiry": "boolean"}, response=node_out),
            Endpoint("POST", "/node/{nodeId}/rename/{newName}", self.rename_node, "RenameNode",
                     "Change a node's given name", response=node_out),
            Endpoint("POST", "/node/{nodeId}/tags", self.set_tags, "SetTags",
                     "Replace a node's tags (a tagged node belongs to its tags)",
                     body={"tags": "string[]"}, response=node_out),
            Endpoint("POST", "/node/{nodeId}/approve_routes", self.approve_routes, "SetApprovedRoutes",
                     "Replace a node's approved routes", body={"routes": "string[]"}, response=node_out),
            Endpoint("POST", "/node/{nodeId}/user", self.move_node, "MoveNode",
                     "Give a node to another user (removes its tags)", body={"user": "string"},
                     response=node_out),
            Endpoint("POST", "/auth/register", self.auth_register, "AuthRegister",
                     "Complete a pending registration for a user", body={"user": "string", "authId": "string"},
                     response=node_out),
            Endpoint("POST", "/auth/approve", self.auth_approve, "AuthApprove",
                     "Approve a pending re-authentication of a known machine", body={"authId": "string"}),
            Endpoint("POST", "/auth/reject", self.auth_reject, "AuthReject",
                     "Reject a pending registration", body={"authId": "string"}),
        ]

    # ---- helpers ----------------------------------------------------------------------------

    def _node(self, request: web.Request) -> Node:
        node_id = parse_id(request.match_info["nodeId"], "nodeId")
        assert node_id is not None
        return self.state.node(node_id)

    def _user(self, ref: Any, what: str = "user") -> User:
        if ref is None or ref == "" or isinstance(ref, bool) or not isinstance(ref, int | str):
            raise InvalidRequest(f"{what} is required: a user ID or name")
        return self.state.user(ref)

    async def _node_json(self, node: Node, keys: dict[int, Any] | None = None) -> dict[str, Any]:
        state = self.state
        if keys is None:
            keys = {k.id: k for k in await state.preauth_keys()} if node.auth_key_id else {}
        key = keys.get(node.auth_key_id) if node.auth_key_id is not None else None
        owner = state.store.users.get(node.user_id) if node.user_id is not None else None
        key_json = None
        if key is not None:
            key_owner = state.store.users.get(key.user_id) if key.user_id is not None else None
            key_json = preauth_key_json(key, key_owner)
        return node_json(node, user=owner, online=state.is_online(node.id),
                         subnet_routes=state.policy.primary_routes(node), preauth_key=key_json)

    async def _answer(self, node: Node) -> web.Response:
        return ok({"node": await self._node_json(node)})

    # ---- nodes ------------------------------------------------------------------------------

    async def list_nodes(self, request: web.Request) -> web.Response:
        ref = request.query.get("user")
        nodes = self.state.nodes(self.state.user(ref) if ref else None)
        keys = {k.id: k for k in await self.state.preauth_keys()} if any(n.auth_key_id for n in nodes) else {}
        return ok({"nodes": [await self._node_json(n, keys) for n in nodes]})

    async def get_node(self, request: web.Request) -> web.Response:
        return await self._answer(self._node(request))

    async def delete_node(self, request: web.Request) -> web.Response:
        await self.state.delete_node(self._node(request), actor=actor(request))
        return ok()

    async def register_node(self, request: web.Request) -> web.Response:
        args = await query_and_body(request)
        return await self._register(request, field(args, "user"), field(args, "key"), "key")

    async def _register(self, request: web.Request, user_ref: Any, reg_id: Any, what: str) -> web.Response:
        if not isinstance(reg_id, str) or not reg_id:
            raise InvalidRequest(f"{what} is required: the ID at the end of the AuthURL the client printed")
        user = self._user(user_ref)
        node = await self.registrar.approve(reg_id.rstrip("/").rsplit("/", 1)[-1], user, method="cli",
                                            actor=actor(request))
        return await self._answer(node)

    async def expire_node(self, request: web.Request) -> web.Response:
        node = self._node(request)
        args = await query_and_body(request)
        if parse_bool(field(args, "disableExpiry"), "disableExpiry"):
            node = await self.state.set_node_expiry(node, None, actor=actor(request))
        else:
            when = parse_time(field(args, "expiry"), "expiry")
            node = await self.state.expire_node(node, when, actor=actor(request))
        return await self._answer(node)

    async def rename_node(self, request: web.Request) -> web.Response:
        node = await self.state.rename_node(self._node(request), request.match_info["newName"],
                                            actor=actor(request))
        return await self._answer(node)

    async def set_tags(self, request: web.Request) -> web.Response:
        node = self._node(request)
        tags = parse_strings(field(await read_body(request), "tags"), "tags")
        return await self._answer(await self.state.set_tags(node, tags, actor=actor(request)))

    async def approve_routes(self, request: web.Request) -> web.Response:
        node = self._node(request)
        routes = parse_routes(field(await read_body(request), "routes"))
        return await self._answer(await self.state.approve_routes(node, routes, actor=actor(request)))

    async def move_node(self, request: web.Request) -> web.Response:
        node = self._node(request)
        user = self._user(field(await query_and_body(request), "user"))
        return await self._answer(await self.state.move_node(node, user, actor=actor(request)))

    # ---- pending registrations --------------------------------------------------------------

    async def auth_register(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        return await self._register(request, field(body, "user"), field(body, "authId"), "authId")

    def _auth_id(self, body: dict[str, Any]) -> str:
        auth_id = field(body, "authId")
        if not isinstance(auth_id, str) or not auth_id:
            raise InvalidRequest("authId is required: the ID at the end of the AuthURL the client printed")
        return auth_id.rstrip("/").rsplit("/", 1)[-1]

    async def auth_approve(self, request: web.Request) -> web.Response:
        auth_id = self._auth_id(await read_body(request))
        pending = await self.registrar.pending(auth_id)
        known = self.state.store.by_machine_key(pending.machine_key)
        owner = self.state.store.users.get(known.user_id) if known and known.user_id is not None else None
        if owner is None:
            raise InvalidRequest(f"registration {auth_id} is from a machine with no user-owned node: "
                           f"register it to a user with `headscale auth register --auth-id {auth_id} -u USER`")
        await self.registrar.approve(auth_id, owner, method="cli", actor=actor(request))
        return ok()

    async def auth_reject(self, request: web.Request) -> web.Response:
        auth_id = self._auth_id(await read_body(request))
        await self.registrar.reject(auth_id, actor=actor(request))
        return ok()
