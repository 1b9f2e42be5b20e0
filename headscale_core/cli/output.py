"""How admin commands print: a table or a line for people, JSON/YAML for scripts.

``-o json`` is tab-indented, ``json-line`` one line, ``yaml`` block style; all use the API's
JSON shape (camelCase, string IDs, RFC 3339 times), as Headscale 0.30 does. Errors go to
stderr as ``Error: …`` or, in a machine format, as ``{"error": "…"}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import yaml


def machine(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent="\t")
    if fmt == "json-line":
        return json.dumps(data, separators=(",", ":"))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n")


def emit(fmt: str, data: Any, human: str) -> None:
    """Print ``data`` in a machine format, or ``human`` for people."""
    print(machine(data, fmt) if fmt else human)


def error(fmt: str, message: str) -> int:
    if fmt:
        print(machine({"error": message}, fmt), file=sys.stderr)
    else:
        print(f"Error: {message}", file=sys.stderr)
    return 1


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def when(text: str | None) -> str:
    """An API timestamp as people read it (UTC, to the second); empty for unset."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def is_past(text: str | None) -> bool:
    if not text:
        return False
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) <= datetime.now(UTC)
    except ValueError:
        return False


def confirm(question: str, force: bool) -> bool:
    """Ask ``question [y/n]`` on stderr; without a terminal the answer is no."""
    if force:
        return True
    if not sys.stdin.isatty():
        print(f"{question} [y/n] no terminal to ask on: pass --force to confirm", file=sys.stderr)
        return False
    print(f"{question} [y/n] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes", "sure")
