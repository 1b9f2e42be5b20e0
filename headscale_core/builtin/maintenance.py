"""Built-in background work: node expiry notices and cleanup of stale registrations.

Ephemeral-node collection is driven by the state service itself (it knows when a stream
ends); this lifespan covers what only the clock triggers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from headscale_core.hookspecs import hookimpl
from headscale_core.server.context import ServerContext
from headscale_core.state.changes import NodePatched, SelfChanged
from headscale_core.storage import repository as repo

log = logging.getLogger(__name__)


async def expiry_pass(ctx: ServerContext, announced: set[int], *, cleanup: bool = True) -> None:
    """Tell peers (and the node) about keys that expired since the last pass; with
    ``cleanup``, also delete registration requests that have expired."""
    now = datetime.now(UTC)
    changes = []
    for node in list(ctx.state.store.nodes.values()):
        if node.is_expired(now) and node.id not in announced:
            announced.add(node.id)
            changes += [NodePatched(node.id, frozenset({"KeyExpiry"})), SelfChanged(node.id)]
        elif not node.is_expired(now):
            announced.discard(node.id)
    if changes:
        # Every instance runs this pass on its own clock: telling the others would only repeat it.
        await ctx.state.emit(*changes, publish=False)
    if cleanup:
        async with ctx.state.writing() as s:
            await repo.delete_registrations_before(s, now)


@contextlib.asynccontextmanager
async def _clock(ctx: ServerContext, interval: float = 5.0, cleanup_every: int = 12) -> AsyncIterator[None]:
    """Expiry notices every ``interval``; the database cleanup (a write transaction) only every
    ``cleanup_every`` passes: registration requests live for minutes, and an idle server's
    every transaction is CPU."""
    announced = {n.id for n in ctx.state.store.nodes.values() if n.is_expired(datetime.now(UTC))}

    async def loop() -> None:
        passes = 0
        while True:
            await asyncio.sleep(interval)
            passes += 1
            try:
                await expiry_pass(ctx, announced, cleanup=passes % cleanup_every == 0)
            except Exception:
                log.exception("expiry pass failed; retrying in %ss", interval)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()


@hookimpl(trylast=True)
def headscale_lifespans(ctx: ServerContext) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
    return [lambda: _clock(ctx)]
