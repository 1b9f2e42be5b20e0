"""Plain-HTTP pages outside Noise: ``/key``, ``/health``, ``/version``, ``/register/<id>``."""

from __future__ import annotations

import html
import json

from aiohttp import web

from headscale_core import __version__
from headscale_core.errors import NotFound
from headscale_core.protocol.keys import public_from_private
from headscale_core.server.context import ServerContext

ZERO_MKEY = "mkey:" + "0" * 64


def web_routes(ctx: ServerContext, noise_private: bytes) -> list[web.RouteDef]:
    public = "mkey:" + public_from_private(noise_private).hex()
    key_body = json.dumps({"legacyPublicKey": ZERO_MKEY, "publicKey": public})

    async def key(request: web.Request) -> web.Response:
        version = request.query.get("v", "")
        if not version.isdigit():
            return web.Response(status=400, text="missing or invalid capability version (?v=N)")
        if int(version) < 39:
            return web.Response(status=400, text="this server only speaks the Noise (ts2021) protocol: update the client")
        return web.Response(text=key_body, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        try:
            async with ctx.state.storage.transaction() as s:
                from sqlalchemy import text

                await s.execute(text("SELECT 1"))
        except Exception as exc:
            return web.json_response({"status": "fail", "error": f"database: {exc}"}, status=503)
        return web.json_response({"status": "pass"})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": __version__, "implementation": "headscale-core"})

    async def register_page(request: web.Request) -> web.Response:
        reg_id = request.match_info["reg_id"]
        registrar = ctx.extras["registrar"]
        try:
            pending = await registrar.pending(reg_id)
        except NotFound as exc:
            return web.Response(status=404, text=str(exc))
        providers = [p for group in ctx.plugins.hook.headscale_auth_providers(ctx=ctx) for p in group]
        logins = "".join(
            f'<li><a href="{html.escape(url)}">{html.escape(p.title)}</a></li>'
            for p in providers if (url := p.login_url(reg_id))
        )
        command = f"headscale nodes register --user USERNAME --key {reg_id}"
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Register {html.escape(pending.hostname)}</title>
<style>body{{font-family:sans-serif;max-width:42em;margin:3em auto}}pre{{background:#eee;padding:1em}}</style></head>
<body><h1>Machine registration</h1>
<p>The machine <b>{html.escape(pending.hostname or pending.node_key)}</b> asks to join this tailnet.</p>
{f"<p>Log in with:</p><ul>{logins}</ul>" if logins else ""}
<p>An administrator can approve it with:</p><pre>{html.escape(command)}</pre>
</body></html>"""
        return web.Response(text=page, content_type="text/html")

    return [
        web.get("/key", key),
        web.get("/health", health),
        web.get("/version", version),
        web.get("/register/{reg_id}", register_page),
    ]
