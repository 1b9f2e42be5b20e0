"""The ``postgres`` change bus: committed changes travel between instances with LISTEN/NOTIFY.

Publishing is a ``SELECT pg_notify(...)`` through the storage engine, after the change's own
commit, so a listener that re-reads the rows sees them. While the server runs, ``publish``
only queues: a publisher task sends what accumulated in as few notifications as fit, so a
registration does not wait for an extra round trip. Listening needs a connection of its
own that stays in LISTEN mode; a lifespan keeps it open, pings it, and reconnects with
backoff. Every (re)connection is followed by a ``{"resync": true}`` message to the
subscribers: notifications sent while nobody listened are lost by PostgreSQL's design, so the
state is reloaded from the database instead (including the gap between start-up's load and
the first LISTEN).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy import text

from headscale_postgres.backend import PostgresBackend
from headscale_postgres.failures import is_disconnect, root_cause

log = logging.getLogger("headscale_postgres.bus")

CHANNEL = "headscale_changes"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more: batches are split, and a single change
# set too big for one payload becomes a resync request.
MAX_PAYLOAD = 7900
PING_INTERVAL = 10.0

Subscriber = Callable[[Mapping[str, Any]], Awaitable[None]]


class PostgresChangeBus:
    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._subscribers: list[Subscriber] = []
        self._inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        self.listening = asyncio.Event()
        self._outbox: list[Mapping[str, Any]] = []
        self._outbox_ready = asyncio.Event()
        self._publisher_running = False
        self.synced = asyncio.Event()  # the first resync after start-up has been applied
        self.resyncs = 0

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    async def publish(self, change: Mapping[str, Any]) -> None:
        if not self._publisher_running:  # a CLI command outside `serve`: send now
            await self._send([change])
            return
        self._outbox.append(change)
        self._outbox_ready.set()

    async def _send(self, messages: list[Mapping[str, Any]]) -> None:
        payloads = notify_payloads(messages)
        async with self.backend.transaction() as s:
            for payload in payloads:
                await s.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})

    async def _publish_forever(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            try:
                await self._send(batch)
            except asyncio.CancelledError:  # shutdown: running() sends it (again, harmlessly) on the way out
                self._outbox[:0] = batch
                raise
            except Exception:
                log.exception("change bus: could not notify other instances of %d change set(s); they "
                              "resynchronise when their own connection to %s is re-established", len(batch),
                              self.backend.describe())

    async def aclose(self) -> None:
        self._subscribers.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Listen for the life of the server; start-up waits (briefly) until listening and in sync."""
        tasks = [asyncio.create_task(self._listen_forever(), name="postgres-listen"),
                 asyncio.create_task(self._deliver_forever(), name="postgres-deliver"),
                 asyncio.create_task(self._publish_forever(), name="postgres-publish")]
        self._publisher_running = True
        try:
            try:
                await asyncio.wait_for(self.synced.wait(), 15)
            except TimeoutError:
                log.warning("not listening on %s yet: changes made by other instances arrive once it connects",
                            self.backend.describe())
            yield
        finally:
            self._publisher_running = False
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._flush_outbox()

    async def _flush_outbox(self) -> None:
        """At shutdown, what was committed still goes out, or the loss is logged."""
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        try:
            await asyncio.wait_for(self._send(batch), 5)
        except Exception as exc:
            log.error("change bus: %d change set(s) not announced at shutdown (%s); other instances pick them "
                      "up at their next resync", len(batch), root_cause(exc))

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(**self.backend.settings.asyncpg_kwargs())
            except Exception as exc:
                if is_disconnect(exc):
                    log.warning("change bus: %s unreachable (%s); retrying in %.1f s", self.backend.describe(),
                                root_cause(exc), delay)
                else:
                    log.error("change bus: cannot LISTEN (%s); retrying in %.1f s", self.backend.explain(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                await self._session(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change bus: lost the LISTEN connection to %s (%s); reconnecting",
                            self.backend.describe(), root_cause(exc))
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)

    async def _session(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        # Whatever was committed while we were not listening is only in the tables now.
        self.resyncs += 1
        self._inbox.put_nowait({"resync": True})
        self.listening.set()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PING_INTERVAL)
                break
            await asyncio.wait_for(conn.fetchval("SELECT 1"), 5)  # a dead peer shows up here
        raise ConnectionError("the server closed the connection")

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("change bus: ignoring a notification that is not JSON: %.80r", payload)
            return
        self._inbox.put_nowait(message)

    async def _deliver_forever(self) -> None:
        """One message at a time, in order, so a resync is never overtaken by what followed it."""
        while True:
            message = await self._inbox.get()
            for callback in list(self._subscribers):
                try:
                    await callback(message)
                except Exception:
                    log.exception("change bus: applying a change from another instance failed; "
                                  "resynchronising from the database in 1 s")
                    await asyncio.sleep(1.0)
                    self._inbox.put_nowait({"resync": True})
                    break
            else:
                if message.get("resync"):
                    self.synced.set()


def notify_payloads(messages: list[Mapping[str, Any]]) -> list[str]:
    """Merge change sets of one origin into as few NOTIFY payloads as fit; a single set too big
    for one becomes a resync request."""
    out: list[str] = []
    origin: Any = None
    pending: list[Any] = []

    def dump(changes: list[Any]) -> str:
        return json.dumps({"origin": origin, "changes": changes}, separators=(",", ":"))

    for message in messages:
        if message.get("origin") != origin and pending:
            out.append(dump(pending))
            pending = []
        origin = message.get("origin")
        for change in message.get("changes") or ():
            if len(dump([*pending, change]).encode()) > MAX_PAYLOAD:
                if pending:
                    out.append(dump(pending))
                pending = [change]
                if len(dump(pending).encode()) > MAX_PAYLOAD:
                    out.append(json.dumps({"origin": origin, "resync": True}))
                    pending = []
            else:
                pending.append(change)
        if message.get("resync"):
            out.append(json.dumps({"origin": origin, "resync": True}))
    if pending:
        out.append(dump(pending))
    return out
