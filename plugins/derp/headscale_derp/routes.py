"""aiohttp routes for the main listener: probes, captive-portal check, admission webhook.

They share their response builders with the standalone front end (``http.py``) so both
listeners answer byte-for-byte alike.
"""

from __future__ import annotations

from aiohttp import web

from headscale_derp.http import (
    MAX_BODY,
    Response,
    VerifyNodeKey,
    generate_204_response,
    probe_response,
    verify_response,
)


def _to_aiohttp(response: Response) -> web.Response:
    return web.Response(status=response.status, headers=dict(response.headers), body=response.body or None)


async def probe(request: web.Request) -> web.Response:
    return _to_aiohttp(probe_response(request.method))


async def generate_204(request: web.Request) -> web.Response:
    return _to_aiohttp(generate_204_response(request.headers.get("X-Tailscale-Challenge", "")))


def probe_routes() -> list[web.RouteDef]:
    """``/derp/probe``, ``/derp/latency-check`` (any method; non-GET/HEAD get 405) and
    ``/generate_204``."""
    return [
        web.route("*", "/derp/probe", probe),
        web.route("*", "/derp/latency-check", probe),
        web.get("/generate_204", generate_204),
    ]


def verify_route(verify: VerifyNodeKey) -> web.RouteDef:
    """``POST /verify``: derper's ``-verify-client-url`` admission webhook."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY + 1)
        return _to_aiohttp(await verify_response(body, verify))

    return web.post("/verify", handler)
