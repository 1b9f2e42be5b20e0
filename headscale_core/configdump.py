"""``headscale configdump``: the complete default configuration as commented YAML."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from headscale_core.configschema import RootConfig


def dump_defaults(plugin_sections: Mapping[str, type] | None = None) -> str:
    lines = ["# headscale-core configuration. Every key can also be set as HEADSCALE_<SECTION>_<KEY>,",
             "# and any value may use ${VAR} to read an environment variable (secrets).", ""]
    _dump(RootConfig, 0, lines)
    for name, cls in (plugin_sections or {}).items():
        lines.append(f"# Plugin section {name!r}.")
        lines.append(f"{name}:")
        _dump(cls, 1, lines)
    return "\n".join(lines) + "\n"


def _dump(cls: type, depth: int, lines: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    pad = "  " * depth
    instance = cls()
    for f in dataclasses.fields(cls):
        if f.metadata.get("removed"):
            continue
        key = f.metadata.get("key", f.name)
        text = f.metadata.get("doc", "")
        if text:
            lines.append(f"{pad}# {text}")
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{pad}{key}:")
            _dump(hints[f.name], depth + 1, lines)
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
        if depth == 0:
            lines.append("")


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").removesuffix("...").strip()
