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


async def expiry_pass(ctx: ServerContext, announced: set[int]) -> None:
    """Tell peers (and the node) about keys that expired since the last pass."""
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
    async with ctx.state.writing() as s:
        await repo.delete_registrations_before(s, now)


@contextlib.asynccontextmanager
async def _clock(ctx: ServerContext, interval: float = 5.0) -> AsyncIterator[None]:
    announced = {n.id for n in ctx.state.store.nodes.values() if n.is_expired(datetime.now(UTC))}

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await expiry_pass(ctx, announced)
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
