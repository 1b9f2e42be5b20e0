"""Create users and reusable pre-auth keys in our server's database while it is stopped.

Run in a subprocess by ``benchmarks.servers.OursServer`` so that the server code comes from the
snapshot under test (``PYTHONPATH``), not from the working tree:
``python -m benchmarks.seed_ours CONFIG '{"users": [...], "tags": [...]}'``; prints the keys as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from headscale_core.config import load_config
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.server.app import close_core, open_core, plugin_sections


async def seed(config_path: str, users: list[str], tags: list[str]) -> dict[str, str]:
    plugins = Plugins(make_plugin_manager())
    config = load_config(config_path, env={}, plugin_sections=plugin_sections(plugins))
    ctx = await open_core(config)
    keys: dict[str, str] = {}
    try:
        for name in users:
            user = await ctx.state.create_user(name)
            keys[name] = (await ctx.state.create_preauth_key(user, reusable=True))[1]
        for tag in tags:
            keys[tag] = (await ctx.state.create_preauth_key(None, reusable=True, tags=[tag]))[1]
    finally:
        await close_core(ctx)
    return keys


def main() -> None:
    spec = json.loads(sys.argv[2])
    print(json.dumps(asyncio.run(seed(sys.argv[1], spec["users"], spec["tags"]))))


if __name__ == "__main__":
    main()
