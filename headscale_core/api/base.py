"""What every ``/api/v1`` handler shares: the endpoint table entry, the request body, the actor.

Handlers are methods of small classes bound to a ``ServerContext``; each class lists its
``Endpoint``s, from which both the aiohttp routes and the OpenAPI document are built, so the
two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from headscale_core.errors import InvalidRequest

if TYPE_CHECKING:
    from headscale_core.server.context import ServerContext
    from headscale_core.state.auth import Registrar
    from headscale_core.state.service import StateService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACTOR = web.RequestKey("headscale_api_actor", str)
"""Who is calling, set by the auth middleware: ``api:<key prefix>`` or ``local``."""


@dataclass(frozen=True)
class Endpoint:
    """One REST operation: route, handler and what the OpenAPI document says about it."""

    method: str
    path: str  # relative to /api/v1, with {param} placeholders
    handler: Handler
    operation_id: str
    summary: str
    query: tuple[str, ...] = ()
    body: dict[str, str] = field(default_factory=dict)  # field name -> OpenAPI type or $ref name
    response: dict[str, str] = field(default_factory=dict)
    public: bool = False  # served without an API key (the OpenAPI document)
    media_type: str = "application/json"  # of the 200 response (text/event-stream for a stream)


def ok(payload: dict[str, Any] | None = None) -> web.Response:
    """Success is always 200 with a JSON object (``{}`` when there is nothing to say)."""
    return web.json_response(payload or {})


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object in the request, ``{}`` without one; anything else is a 400."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


async def query_and_body(request: web.Request) -> dict[str, Any]:
    """Body fields with query parameters as fallbacks (body-less POSTs put them in the query)."""
    merged: dict[str, Any] = dict(request.query)
    merged.update(await read_body(request))
    return merged


def actor(request: web.Request) -> str:
    return request.get(ACTOR, "local")


class Handlers:
    """Base of the handler classes: access to the state service and the registrar."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    @property
    def state(self) -> StateService:
        return self.ctx.state  # type: ignore[no-any-return]

    @property
    def registrar(self) -> Registrar:
        registrar = self.ctx.extras.get("registrar")
        if registrar is None:
            from headscale_core.state.auth import Registrar

            registrar = self.ctx.extras["registrar"] = Registrar(self.ctx.state)
        return registrar  # type: ignore[no-any-return]

    def endpoints(self) -> list[Endpoint]:
        raise NotImplementedError
