"""``/api/v1/audit``: read the append-only audit log (``audit_events``).

Events come from the ``headscale_event`` hook through the built-in recorder
(``builtin/audit.py``), which writes them a moment after they happen. The log is only ever
read here: no route edits or deletes an entry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers, ok
from headscale_core.api.wire import parse_time, timestamp
from headscale_core.errors import InvalidRequest
from headscale_core.events import Event
from headscale_core.storage import repository as repo

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000


def audit_event_json(event: Event) -> dict[str, Any]:
    return {"time": timestamp(event.time), "kind": event.kind, "actor": event.actor, "subject": event.subject,
            "source": event.source, "details": event.details}


def parse_limit(text: str | None) -> int:
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {text!r}")
    return int(text)


class AuditHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/audit", self.list_events, "ListAuditEvents",
                     "Audit events, oldest first: those at or after ?since= (RFC 3339) whose kind starts with "
                     f"?kind=, at most ?limit= (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})",
                     query=("since", "kind", "limit"), response={"events": "AuditEvent[]"}),
        ]

    async def list_events(self, request: web.Request) -> web.Response:
        query = request.query
        since: datetime | None = parse_time(query.get("since"), "since")
        limit = parse_limit(query.get("limit"))
        async with self.state.storage.transaction() as s:
            events = await repo.audit_events(s, since=since, kind=query.get("kind") or None, limit=limit)
        return ok({"events": [audit_event_json(e) for e in events]})
