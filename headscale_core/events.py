"""Audit and change events handed to the ``headscale_event`` hook."""

from __future__ import annotations

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
