"""The CLI without a running server: the same core ``serve`` builds, minus its listeners.

``offline_socket`` opens storage and the state service with ``server.app.open_core`` and
serves the trusted ``/api/v1`` application on a private unix socket for the length of one
command, so offline commands run the very handlers a server would.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from headscale_core.api import make_local_app
from headscale_core.config import Config


@contextlib.asynccontextmanager
async def offline_socket(config: Config, plugins: Any = None) -> AsyncIterator[Path]:
    from headscale_core.builtin.audit import recording
    from headscale_core.server.app import close_core, open_core

    # No client is served here, so the server's private keys are not needed (nor fetched
    # from a key store that may be remote); changes are audited like the server's own.
    ctx = await open_core(config, plugins=plugins, load_keys=False)
    workdir = Path(tempfile.mkdtemp(prefix="headscale-cli-"))
    runner = web.AppRunner(make_local_app(ctx), access_log=None, handle_signals=False)
    try:
        async with recording(ctx):
            await runner.setup()
            path = workdir / "api.sock"
            await web.UnixSite(runner, str(path)).start()
            yield path
            await runner.cleanup()
    finally:
        await runner.cleanup()
        await close_core(ctx)
        shutil.rmtree(workdir, ignore_errors=True)
