"""``/api/v1/user``: list, create, rename and delete users (users are addressed by ID)."""

from __future__ import annotations

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers, actor, ok, read_body
from headscale_core.api.wire import field, parse_id, user_json
from headscale_core.errors import InvalidRequest


class UserHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/user", self.list_users, "ListUsers", "List users, optionally filtered",
                     query=("id", "name", "email"), response={"users": "User[]"}),
            Endpoint("POST", "/user", self.create_user, "CreateUser", "Create a user",
                     body={"name": "string", "displayName": "string", "email": "string", "pictureUrl": "string"},
                     response={"user": "User"}),
            Endpoint("POST", "/user/{oldId}/rename/{newName}", self.rename_user, "RenameUser", "Rename a user",
                     response={"user": "User"}),
            Endpoint("DELETE", "/user/{id}", self.delete_user, "DeleteUser",
                     "Delete a user that owns no nodes"),
        ]

    async def list_users(self, request: web.Request) -> web.Response:
        q = request.query
        wanted_id = parse_id(q.get("id"), "id", optional=True)
        users = [u for u in self.state.users()
                 if (wanted_id is None or u.id == wanted_id)
                 and (not q.get("name") or u.name == q["name"])
                 and (not q.get("email") or u.email == q["email"])]
        return ok({"users": [user_json(u) for u in users]})

    async def create_user(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        name = field(body, "name", "")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("name is required: the user's name, e.g. {\"name\": \"alice\"}")
        user = await self.state.create_user(
            name, display_name=str(field(body, "displayName", "") or ""), email=str(field(body, "email", "") or ""),
            picture=str(field(body, "pictureUrl", "") or ""), actor=actor(request))
        return ok({"user": user_json(user)})

    async def rename_user(self, request: web.Request) -> web.Response:
        user_id = parse_id(request.match_info["oldId"], "oldId")
        assert user_id is not None
        user = await self.state.update_user(self.state.user(user_id), actor=actor(request),
                                            name=request.match_info["newName"])
        return ok({"user": user_json(user)})

    async def delete_user(self, request: web.Request) -> web.Response:
        user_id = parse_id(request.match_info["id"], "id")
        assert user_id is not None
        await self.state.delete_user(self.state.user(user_id), actor=actor(request))
        return ok()
