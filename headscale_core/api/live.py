"""``GET /api/v1/events``: live tailnet changes as server-sent events, so a UI need not poll.

One ``LiveEvents`` hub per server listens to the state service (``on_change``: nodes added,
changed, removed, online and offline; users; policy, including what other instances change) and
to the ``headscale_event`` hook (key, registration and login activity, which no ``Change``
carries). Each subscriber has a bounded queue: a client that does not read fast enough is
disconnected rather than buffered for; it reconnects, gets ``ready`` and refetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers
from headscale_core.events import Event
from headscale_core.hookspecs import hookimpl
from headscale_core.state.changes import (
    Change,
    NodeChanged,
    NodePatched,
    NodeRemoved,
    PolicyChanged,
    UserChanged,
)

if TYPE_CHECKING:
    import pluggy

    from headscale_core.server.context import ServerContext
    from headscale_core.state.service import StateService

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256
KEEPALIVE_SECONDS = 15.0
# Audit kinds forwarded from the event hook: the ones no state Change reports.
FORWARDED_KINDS = ("preauthkey.", "apikey.", "registration.", "login.")


def sse_frame(seq: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscriber:
    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(limit)
        self.gone = asyncio.Event()  # dropped for falling behind, or the server is stopping
        self.dropped = False

    def offer(self, frame: bytes) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped = True
            self.gone.set()


class LiveEvents:
    """The fan-out behind ``/api/v1/events``; get the server's one with ``live_events(ctx)``."""

    def __init__(self, state: StateService, queue_limit: int = QUEUE_LIMIT) -> None:
        self.state = state
        self.plugin_manager: pluggy.PluginManager | None = None
        self.queue_limit = queue_limit
        self.subscribers: set[Subscriber] = set()
        self.known_nodes = set(state.store.nodes)
        self.known_users = set(state.store.users)
        self.seq = 0
        state.on_change(self.on_change)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self.queue_limit)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def close(self, _app: object = None) -> None:
        """End every stream and stop observing the event hook (server shutdown): open streams
        would otherwise hold the shutdown up."""
        for subscriber in self.subscribers:
            subscriber.gone.set()
        if self.plugin_manager is not None and self.plugin_manager.is_registered(self):
            self.plugin_manager.unregister(self)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        if not self.subscribers:
            return
        frame = sse_frame(self.seq, kind, {"kind": kind, "time": _now(), **data})
        for subscriber in list(self.subscribers):
            subscriber.offer(frame)
            if subscriber.dropped:
                log.warning("live events: a client fell %d events behind; disconnecting it", self.queue_limit)
                self.subscribers.discard(subscriber)

    @hookimpl
    def headscale_event(self, event: Event) -> None:
        if event.kind.startswith(FORWARDED_KINDS):
            self.publish(event.kind, {"actor": event.actor, "subject": event.subject, "source": event.source,
                                      "details": event.details})

    def on_change(self, changes: list[Change]) -> None:
        if not self.subscribers:
            # Nobody is watching (the usual case): keep only what tells "added" from "changed"
            # later; describing every change cost a storm two JSON round trips per node.
            self._note(changes)
            return
        described = [self._describe(change) for change in changes]
        for kind, data in dict.fromkeys(d for d in described if d is not None):
            self.publish(kind, json.loads(data))

    def _note(self, changes: list[Change]) -> None:
        """What ``_describe`` records of ``changes`` about known nodes and users, without the rest."""
        store = self.state.store
        for change in changes:
            match change:
                case NodeChanged(node_id) if node_id in store.nodes:
                    self.known_nodes.add(node_id)
                case NodeRemoved(node_id):
                    self.known_nodes.discard(node_id)
                case UserChanged(user_id):
                    if user_id in store.users:
                        self.known_users.add(user_id)
                    else:
                        self.known_users.discard(user_id)

    def _describe(self, change: Change) -> tuple[str, str] | None:
        """(event kind, JSON data) for a change a UI shows, else None; JSON so duplicates fold."""
        store = self.state.store
        match change:
            case NodeChanged(node_id) if node_id in store.nodes:
                kind = "node.changed" if node_id in self.known_nodes else "node.added"
                self.known_nodes.add(node_id)
                return kind, json.dumps({"node": self._node(node_id)})
            case NodePatched(node_id, fields) if node_id in store.nodes:
                if "Online" in fields:
                    kind = "node.online" if node_id in store.online else "node.offline"
                    return kind, json.dumps({"node": self._node(node_id)})
                if "KeyExpiry" in fields:
                    return "node.changed", json.dumps({"node": self._node(node_id)})
            case NodeRemoved(node_id):
                self.known_nodes.discard(node_id)
                return "node.removed", json.dumps({"node": {"id": str(node_id)}})
            case UserChanged(user_id):
                user = store.users.get(user_id)
                if user is None:
                    self.known_users.discard(user_id)
                    return "user.removed", json.dumps({"user": {"id": str(user_id)}})
                kind = "user.changed" if user_id in self.known_users else "user.added"
                self.known_users.add(user_id)
                return kind, json.dumps({"user": {"id": str(user_id), "name": user.name}})
            case PolicyChanged():
                return "policy.changed", "{}"
        return None

    def _node(self, node_id: int) -> dict[str, Any]:
        node = self.state.store.nodes[node_id]
        return {"id": str(node_id), "givenName": node.given_name, "online": node_id in self.state.store.online,
                "user": str(node.user_id) if node.user_id is not None else None, "tags": list(node.tags)}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def live_events(ctx: ServerContext) -> LiveEvents:
    """The server's hub, made on first use (the main API app and the local socket share it)."""
    hub: LiveEvents | None = ctx.extras.get("live_events")
    if hub is None:
        hub = ctx.extras["live_events"] = LiveEvents(ctx.state)
        hub.plugin_manager = ctx.plugins.pm
        ctx.plugins.pm.register(hub)
    return hub


class LiveHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/events", self.stream, "StreamEvents",
                     "Server-sent events: ready, node.added/changed/removed/online/offline, "
                     "user.added/changed/removed, policy.changed, and preauthkey./apikey./registration./login. "
                     "activity; a client that falls behind is disconnected and should reconnect and refetch",
                     media_type="text/event-stream"),
        ]

    async def stream(self, request: web.Request) -> web.StreamResponse:
        hub = live_events(self.ctx)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        subscriber = hub.subscribe()
        pump = asyncio.ensure_future(self._pump(response, subscriber, hub))
        gone = asyncio.ensure_future(subscriber.gone.wait())
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub.unsubscribe(subscriber)
            gone.cancel()
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
                await self._end(request, response, subscriber.dropped)
        return response

    async def _end(self, request: web.Request, response: web.StreamResponse, dropped: bool) -> None:
        """End the stream: cleanly when the server stops, by closing the connection for a client
        that was dropped (its writes may be stuck on a socket it does not read)."""
        if not dropped:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                await asyncio.wait_for(response.write_eof(), 1.0)
                return
        if request.transport is not None:
            request.transport.close()

    async def _pump(self, response: web.StreamResponse, subscriber: Subscriber, hub: LiveEvents) -> None:
        try:
            await response.write(b"retry: 3000\n" + sse_frame(hub.seq, "ready", {"kind": "ready", "time": _now()}))
            while not subscriber.gone.is_set():
                # Not wait_for: on Python 3.11 it can swallow a cancel that races a finished get.
                getter = asyncio.ensure_future(subscriber.queue.get())
                try:
                    done, _ = await asyncio.wait({getter}, timeout=KEEPALIVE_SECONDS)
                finally:
                    getter.cancel()
                # proxies close idle streams; a keep-alive also finds clients that are gone
                await response.write(getter.result() if done else b": keep-alive\n\n")
        except (ConnectionError, RuntimeError):  # the client went away (RuntimeError: transport closed)
            return
