"""Audit and change events handed to the ``headscale_event`` hook."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something an operator may want to audit.

    ``kind`` is dotted (``node.register``, ``user.create``, ``login.failed``, ``policy.set``);
    ``actor`` says who did it (``cli``, ``api:<key prefix>``, ``node:<id>``, ``system``);
    ``source`` is the remote address when there is one.
    """

    kind: str
    actor: str
    subject: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


REQUEST_SOURCE: ContextVar[str] = ContextVar("headscale_request_source", default="")
"""The remote address of the request being served (REST API call, ts2021 registration).

A context variable rather than a parameter of every state method: an event raised anywhere
below a request handler (a node created by an approval, a key expired by a delete) names the
address the request came from without each layer passing it on."""


@contextlib.contextmanager
def request_source(address: str) -> Iterator[None]:
    """Events emitted inside this block without an explicit ``source`` get ``address``."""
    token = REQUEST_SOURCE.set(address)
    try:
        yield
    finally:
        REQUEST_SOURCE.reset(token)
