"""``/api/v1/preauthkey`` and ``/api/v1/apikey``: keys that register nodes and keys that call this API.

Secrets are shown once, in the create response; listings show ``hskey-<kind>-<prefix>-***``.
Keys are addressed by ID (0.28+) and, for older clients, by prefix or by the key text.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers, actor, ok, query_and_body, read_body
from headscale_core.api.wire import (
    api_key_json,
    field,
    key_prefix,
    parse_bool,
    parse_id,
    parse_strings,
    parse_time,
    preauth_key_json,
)
from headscale_core.errors import InvalidRequest, NotFound
from headscale_core.state.model import APIKey, PreAuthKey, User


class KeyHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/preauthkey", self.list_preauth_keys, "ListPreAuthKeys",
                     "List pre-auth keys (all, or one user's with ?user=)", query=("user",),
                     response={"preAuthKeys": "PreAuthKey[]"}),
            Endpoint("POST", "/preauthkey", self.create_preauth_key, "CreatePreAuthKey",
                     "Create a pre-auth key for a user, or a tag-only key (no user, aclTags set)",
                     body={"user": "string", "reusable": "boolean", "ephemeral": "boolean",
                           "expiration": "date-time", "aclTags": "string[]"},
                     response={"preAuthKey": "PreAuthKey"}),
            Endpoint("POST", "/preauthkey/expire", self.expire_preauth_key, "ExpirePreAuthKey",
                     "Expire a pre-auth key by id (or by the older {user, key})",
                     body={"id": "string", "user": "string", "key": "string"}),
            Endpoint("DELETE", "/preauthkey", self.delete_preauth_key, "DeletePreAuthKey",
                     "Delete a pre-auth key", query=("id",)),
            Endpoint("GET", "/apikey", self.list_api_keys, "ListApiKeys", "List API keys",
                     response={"apiKeys": "ApiKey[]"}),
            Endpoint("POST", "/apikey", self.create_api_key, "CreateApiKey",
                     "Create an API key; the response holds the only copy of the secret",
                     body={"expiration": "date-time", "scope": "string"}, response={"apiKey": "string"}),
            Endpoint("POST", "/apikey/expire", self.expire_api_key, "ExpireApiKey",
                     "Expire an API key by prefix or id", body={"prefix": "string", "id": "string"}),
            Endpoint("DELETE", "/apikey/{prefix}", self.delete_api_key, "DeleteApiKey",
                     "Delete an API key by prefix (or by ?id=)", query=("id",)),
        ]

    # ---- pre-auth keys --------------------------------------------------------------------

    def _owner(self, ref: Any) -> User | None:
        """The user a request names by ID or (older clients) by name; unset means none."""
        if ref is None or ref in ("", 0, "0"):
            return None
        if isinstance(ref, bool) or not isinstance(ref, int | str):
            raise InvalidRequest(f"user must be a user ID or name, not {ref!r}")
        return self.state.user(ref)

    def _preauth_json(self, key: PreAuthKey, full: str | None = None) -> dict[str, Any]:
        owner = self.state.store.users.get(key.user_id) if key.user_id is not None else None
        return preauth_key_json(key, owner, full)

    async def list_preauth_keys(self, request: web.Request) -> web.Response:
        owner = self._owner(request.query.get("user"))
        keys = await self.state.preauth_keys(owner)
        return ok({"preAuthKeys": [self._preauth_json(k) for k in keys]})

    async def create_preauth_key(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        owner = self._owner(field(body, "user"))
        key, full = await self.state.create_preauth_key(
            owner,
            reusable=parse_bool(field(body, "reusable"), "reusable"),
            ephemeral=parse_bool(field(body, "ephemeral"), "ephemeral"),
            expiration=parse_time(field(body, "expiration"), "expiration"),
            tags=parse_strings(field(body, "aclTags"), "aclTags"),
            actor=actor(request))
        return ok({"preAuthKey": self._preauth_json(key, full)})

    async def _find_preauth_key(self, args: dict[str, Any]) -> PreAuthKey:
        key_id = parse_id(field(args, "id"), "id", optional=True)
        if key_id is not None:
            return await self.state.preauth_key(key_id)
        text = field(args, "key")
        if not isinstance(text, str) or not text:
            raise InvalidRequest("id is required: the pre-auth key's ID from `headscale preauthkeys list`")
        prefix = key_prefix(text, "auth")
        for key in await self.state.preauth_keys():
            if key.prefix == prefix:
                return key
        raise NotFound(f"pre-auth key {text!r} does not exist: list keys with `headscale preauthkeys list`")

    async def expire_preauth_key(self, request: web.Request) -> web.Response:
        key = await self._find_preauth_key(await read_body(request))
        await self.state.expire_preauth_key(key, actor=actor(request))
        return ok()

    async def delete_preauth_key(self, request: web.Request) -> web.Response:
        key = await self._find_preauth_key(await query_and_body(request))
        await self.state.delete_preauth_key(key, actor=actor(request))
        return ok()

    # ---- API keys -------------------------------------------------------------------------

    async def list_api_keys(self, request: web.Request) -> web.Response:
        return ok({"apiKeys": [api_key_json(k) for k in await self.state.api_keys()]})

    async def create_api_key(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        scope = field(body, "scope") or "admin"
        if not isinstance(scope, str):
            raise InvalidRequest(f"scope must be admin or read, not {scope!r}")
        _, full = await self.state.create_api_key(parse_time(field(body, "expiration"), "expiration"),
                                                  scope=scope, actor=actor(request))
        return ok({"apiKey": full})

    async def _find_api_key(self, args: dict[str, Any], prefix: str = "") -> APIKey:
        key_id = parse_id(field(args, "id"), "id", optional=True)
        if key_id is not None:
            return await self.state.api_key(key_id=key_id)
        prefix = prefix or field(args, "prefix") or ""
        if not isinstance(prefix, str) or not prefix:
            raise InvalidRequest("prefix or id is required: see `headscale apikeys list`")
        return await self.state.api_key(prefix=key_prefix(prefix, "api"))

    async def expire_api_key(self, request: web.Request) -> web.Response:
        key = await self._find_api_key(await read_body(request))
        await self.state.expire_api_key(key, actor=actor(request))
        return ok()

    async def delete_api_key(self, request: web.Request) -> web.Response:
        key = await self._find_api_key(await query_and_body(request), request.match_info["prefix"])
        await self.state.delete_api_key(key, actor=actor(request))
        return ok()
