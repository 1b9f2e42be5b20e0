"""Built-in audit log: events from the ``headscale_event`` hook into the append-only
``audit_events`` table, and optionally as JSON lines to ``audit.path``.

The hook must not block, so events are queued and written by a lifespan task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from headscale_core.events import Event
from headscale_core.hookspecs import hookimpl
from headscale_core.server.context import ServerContext
from headscale_core.storage import repository as repo

log = logging.getLogger(__name__)


STOP: Any = object()


class AuditRecorder:
    """Registered as a plugin for the life of the server; queues what the hook receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(10000)

    @hookimpl
    def headscale_event(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error("audit queue full: dropping %s by %s", event.kind, event.actor)


async def write_events(ctx: ServerContext, events: list[Event]) -> None:
    async with ctx.state.writing() as s:
        for event in events:
            await repo.append_audit(s, event)
    if ctx.config.audit.path:
        lines = "".join(json.dumps({"time": e.time.isoformat(), "kind": e.kind, "actor": e.actor,
                                    "subject": e.subject, "source": e.source, "details": e.details},
                                   default=str) + "\n" for e in events)
        path = ctx.config.path(ctx.config.audit.path)
        await asyncio.to_thread(_append, path, lines)


def _append(path: object, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:  # type: ignore[call-overload]
        f.write(text)


@contextlib.asynccontextmanager
async def recording(ctx: ServerContext) -> AsyncIterator[None]:
    recorder = AuditRecorder()
    ctx.plugins.pm.register(recorder, name="headscale-audit-recorder")

    async def drain() -> None:
        stopping = False
        while not stopping:
            events = [await recorder.queue.get()]
            while not recorder.queue.empty():
                events.append(recorder.queue.get_nowait())
            stopping = STOP in events
            events = [e for e in events if e is not STOP]
            if not events:
                continue
            try:
                await write_events(ctx, events)
            except Exception:
                log.exception("could not write %d audit event(s)", len(events))

    task = asyncio.create_task(drain())
    try:
        yield
    finally:
        ctx.plugins.pm.unregister(recorder)
        # Let the batch being written finish (cancelling it mid-transaction would leave a
        # connection checked out), then write what is still queued.
        await recorder.queue.put(STOP)
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            log.error("audit writer did not finish within 10 s at shutdown")


@hookimpl(trylast=True)
def headscale_lifespans(ctx: ServerContext) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
    return [lambda: recording(ctx)]
