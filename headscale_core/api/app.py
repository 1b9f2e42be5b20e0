"""The ``/api/v1`` aiohttp application: routes, API-key authentication, gRPC-style errors.

``make_api_app(ctx, trusted_local=False)`` is the sub-application to mount with
``app.add_subapp("/api/v1", ...)`` on the main listener; its routes are relative (``/user``).
``make_local_app(ctx)`` is a whole application for the admin unix socket: the same
sub-application with ``trusted_local=True`` mounted at ``/api/v1``, so the CLI uses one set
of paths everywhere. On a trusted app requests need no key and act as ``local``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from headscale_core import __version__
from headscale_core.api.audit import AuditHandlers
from headscale_core.api.base import ACTOR, Endpoint, Handler, Handlers, ok
from headscale_core.api.explain import ExplainHandlers
from headscale_core.api.keys import KeyHandlers
from headscale_core.api.live import LiveHandlers, live_events
from headscale_core.api.nodes import NodeHandlers
from headscale_core.api.openapi import openapi_document
from headscale_core.api.policy import PolicyHandlers
from headscale_core.api.users import UserHandlers
from headscale_core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, StorageError
from headscale_core.events import request_source
from headscale_core.metrics import Metrics
from headscale_core.providers import PolicySourceReadOnly
from headscale_core.state.secrets import split_key

if TYPE_CHECKING:
    from headscale_core.server.context import ServerContext

log = logging.getLogger(__name__)

TRUSTED_LOCAL = web.AppKey("headscale_api_trusted_local", bool)
"""Set on an API app served on the local admin socket: no API key needed."""

# exception -> (HTTP status, gRPC code), as grpc-gateway maps them
ERRORS: tuple[tuple[type[Exception], int, int], ...] = (
    (NotFound, 404, 5),
    (InvalidRequest, 400, 3),
    (Conflict, 409, 6),
    (PermissionDenied, 403, 7),
    (PolicySourceReadOnly, 400, 9),
    (StorageError, 503, 14),
)


def error_response(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "details": []}, status=status)


def unauthorized() -> web.Response:
    return web.Response(status=401, text="Unauthorized", content_type="text/plain")


class _OpenAPI(Handlers):
    def __init__(self, ctx: ServerContext, table: list[Endpoint]) -> None:
        super().__init__(ctx)
        self.table = table

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("GET", "/openapi.json", self.document, "OpenAPI", "This document", public=True)]

    async def document(self, request: web.Request) -> web.Response:
        return ok(openapi_document(self.table + self.endpoints(), __version__))


def api_endpoints(ctx: ServerContext) -> list[Endpoint]:
    """Every ``/api/v1`` operation, bound to ``ctx``; paths are relative to ``/api/v1``."""
    table: list[Endpoint] = []
    for cls in (UserHandlers, NodeHandlers, KeyHandlers, PolicyHandlers, ExplainHandlers, AuditHandlers,
                LiveHandlers):
        table += cls(ctx).endpoints()
    return table + _OpenAPI(ctx, table).endpoints()


def api_routes(ctx: ServerContext) -> list[web.RouteDef]:
    """The routes alone, without authentication: only mount them through ``make_api_app``."""
    return [web.route(ep.method, ep.path, ep.handler) for ep in api_endpoints(ctx)]


def make_api_app(ctx: ServerContext, *, trusted_local: bool) -> web.Application:
    endpoints = api_endpoints(ctx)
    public = {ep.handler for ep in endpoints if ep.public}

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error_response(404, 5, "Not Found")
        except web.HTTPMethodNotAllowed:
            return error_response(501, 12, "Method Not Allowed")
        except web.HTTPException:
            raise
        except Exception as exc:
            for kind, status, code in ERRORS:
                if isinstance(exc, kind):
                    return error_response(status, code, str(exc))
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, 13, f"internal error ({type(exc).__name__}): see the server log")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.app.get(TRUSTED_LOCAL, False):
            request[ACTOR] = "local"
            with request_source("local"):
                return await handler(request)
        if request.match_info.handler in public:
            return await handler(request)
        with request_source(request.remote or ""):
            return await _with_key(request, handler)

    async def _with_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized()
        key = await ctx.state.authenticate_api_key(token)
        if key is None:
            # A key was presented and refused: someone holds a wrong, expired or guessed key.
            parts = split_key(token.strip(), "api")
            ctx.state.audit("login.failed", "api", subject=f"apikey:{parts[0] if parts else '(malformed)'}",
                            reason="API key unknown, expired or wrong", path=request.path)
            return unauthorized()
        request[ACTOR] = f"api:{key.prefix}"
        if key.scope == "read" and request.method not in ("GET", "HEAD"):
            ctx.state.audit("access.denied", f"api:{key.prefix}", subject=f"apikey:{key.prefix}",
                            reason="read-scope key used for a write", method=request.method, path=request.path)
            return error_response(403, 7, f"API key {key.prefix} has scope read: it may only read (GET); "
                                  "create an admin key with `headscale apikeys create --scope admin`")
        return await handler(request)

    metrics: Metrics | None = ctx.extras.get("metrics")

    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status, streamed = 500, False
        try:
            response = await handler(request)
            status, streamed = response.status, not isinstance(response, web.Response)
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if metrics is not None:
                # The route template, not the path: node IDs must not become label values.
                resource = request.match_info.route.resource
                metrics.api_request(request.method, resource.canonical if resource else "unmatched", status,
                                    None if streamed else time.perf_counter() - started)

    app = web.Application(middlewares=[measure, errors, authenticate])
    app.on_shutdown.append(live_events(ctx).close)
    app[TRUSTED_LOCAL] = trusted_local
    app.add_routes([web.route(ep.method, ep.path, ep.handler) for ep in endpoints])
    return app


def make_local_app(ctx: ServerContext) -> web.Application:
    """The admin unix socket's application: ``/api/v1`` without API keys."""
    app = web.Application()
    app.add_subapp("/api/v1", make_api_app(ctx, trusted_local=True))
    return app
