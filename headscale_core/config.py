"""Loading ``config.yaml``: file + ``HEADSCALE_*`` environment + ``${VAR}`` expansion.

The result is a frozen ``Config``. Every problem is collected with its key path, so
``headscale configtest`` can list them all at once instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from headscale_core.configschema import RootConfig
from headscale_core.errors import ConfigError

SEARCH_PATHS = ("/etc/headscale/config.yaml", "~/.headscale/config.yaml", "./config.yaml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
LOG_LEVELS = ("panic", "fatal", "error", "warn", "info", "debug", "trace")


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Prometheus-style duration (``90s``, ``1h30m``, ``90d``); ``0`` is zero."""
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{text!r} is not a duration: write it like 30s, 15m, 3h or 90d")
    return total


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated configuration: Headscale's keys in ``root``, plugin sections by name."""

    root: RootConfig
    sections: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("root", "sections", "source"):
            raise AttributeError(name)
        if hasattr(self.root, name):
            return getattr(self.root, name)
        if name in self.sections:
            return self.sections[name]
        raise AttributeError(f"config has no section {name!r}")

    def path(self, value: str) -> Path:
        """A configured path; relative ones live under ``data_dir``."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else Path(self.root.data_dir).expanduser() / p

    @property
    def prefix_v4(self) -> ipaddress.IPv4Network | None:
        return _pick_prefix(self.root, 4)  # type: ignore[return-value]

    @property
    def prefix_v6(self) -> ipaddress.IPv6Network | None:
        return _pick_prefix(self.root, 6)  # type: ignore[return-value]

    @property
    def ephemeral_timeout(self) -> float:
        legacy = self.root.ephemeral_node_inactivity_timeout
        return parse_duration(legacy or self.root.node.ephemeral.inactivity_timeout)

    def duration(self, value: str) -> float:
        return parse_duration(value)


def _pick_prefix(root: RootConfig, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    for text in root.ip_prefixes:
        net = ipaddress.ip_network(text, strict=False)
        if net.version == version:
            return net
    text = root.prefixes.v4 if version == 4 else root.prefixes.v6
    return ipaddress.ip_network(text, strict=False) if text else None


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("HEADSCALE_CONFIG"):
        return Path(env["HEADSCALE_CONFIG"])
    for candidate in SEARCH_PATHS:
        p = Path(os.path.expanduser(candidate))
        if p.is_file():
            return p
    return None


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    plugin_sections: Mapping[str, type] | None = None,
) -> Config:
    """Load, expand, override and validate; raise ``ConfigError`` listing every problem."""
    env = os.environ if env is None else env
    plugin_sections = dict(plugin_sections or {})
    file = find_config_file(path, env)
    raw: Any = {}
    if file is not None:
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}: check the path or pass -c FILE") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {file}: the top level must be a mapping of keys, not {type(raw).__name__}")
    problems: list[str] = []
    raw = _expand(raw, "", env, problems)
    _apply_env(raw, RootConfig, ("HEADSCALE",), env, problems)
    for name, cls in plugin_sections.items():
        section_raw = raw.setdefault(name, {}) if isinstance(raw.get(name, {}), dict) else raw[name]
        if isinstance(section_raw, dict):
            _apply_env(section_raw, cls, ("HEADSCALE", name.upper()), env, problems)
    sections: dict[str, Any] = {}
    for name, cls in plugin_sections.items():
        sections[name] = _build(cls, raw.pop(name, None) or {}, name, problems)
    root = _build(RootConfig, raw, "", problems)
    if isinstance(root, RootConfig):
        problems.extend(validate(root))
    if problems:
        where = f" in {file}" if file else ""
        raise ConfigError(f"{len(problems)} problem(s){where}: " + "; ".join(problems), problems)
    return Config(root=root, sections=sections, source=str(file) if file else None)


def resolve_secrets(config: Config, resolve: Callable[[str], str | None]) -> Config:
    """Replace every text value that ``resolve`` recognises as a secret reference.

    ``resolve`` returns the secret, None for an ordinary value, or raises ``ConfigError`` with
    the reason; every failure is collected with its key path and raised together.
    """
    problems: list[str] = []
    root = _resolve(config.root, "", resolve, problems)
    sections = {name: _resolve(value, name, resolve, problems) for name, value in config.sections.items()}
    if problems:
        where = f" in {config.source}" if config.source else ""
        raise ConfigError(f"{len(problems)} unresolvable secret reference(s){where}: " + "; ".join(problems), problems)
    return dataclasses.replace(config, root=root, sections=sections)


def _resolve(value: Any, keypath: str, resolve: Callable[[str], str | None], problems: list[str]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = _resolve(old, _join(keypath, _yaml_key(f)), resolve, problems)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, dict):
        return {k: _resolve(v, _join(keypath, str(k)), resolve, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{keypath}[{i}]", resolve, problems) for i, v in enumerate(value)]
    if isinstance(value, str) and value:
        try:
            answer = resolve(value)
        except ConfigError as exc:
            problems.append(f"{keypath}: {exc}")
            return value
        return value if answer is None else answer
    return value


def _expand(value: Any, keypath: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, _join(keypath, str(k)), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{keypath}[{i}]", env, problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            problems.append(f"{keypath}: environment variable {m.group(1)} is not set (used as ${{{m.group(1)}}})")
            return ""

        return _VAR.sub(sub, value)
    return value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _yaml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply_env(raw: dict[str, Any], cls: type, prefix: tuple[str, ...], env: Mapping[str, str], problems: list[str]) -> None:
    """Apply ``HEADSCALE_<SECTION>_<KEY>`` overrides; names come from the schema, so keys
    containing underscores (``write_ahead_log``) are never ambiguous."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("removed"):
            continue
        key = _yaml_key(f)
        name = "_".join((*prefix, key.upper()))
        ftype = hints[f.name]
        if dataclasses.is_dataclass(ftype):
            sub = raw.get(key)
            if sub is None:
                sub = {}
            if isinstance(sub, dict):
                _apply_env(sub, ftype, (*prefix, key.upper()), env, problems)  # type: ignore[arg-type]
                if sub:
                    raw[key] = sub
            continue
        if name in env:
            text = env[name]
            if ftype is str:
                raw[key] = text
            else:
                try:
                    raw[key] = yaml.safe_load(text)
                except yaml.YAMLError:
                    problems.append(f"{name}: cannot parse {text!r}")


def _build(cls: type, raw: Any, keypath: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{keypath or 'config'}: expected a mapping of keys, got {_describe(raw)}")
        return cls()
    hints = _hints(cls)
    fields = {_yaml_key(f): f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = _join(keypath, str(key))
        f = fields.get(str(key))
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f": did you mean {_join(keypath, close[0])!r}?" if close else ": remove it (see `headscale configdump`)"
            problems.append(f"{path}: unknown key{hint}")
            continue
        if f.metadata.get("removed"):
            if value is not None:
                problems.append(f"{path}: this key was removed ({f.metadata['removed']})")
            continue
        values[f.name] = _convert(hints[f.name], value, path, problems)
    return cls(**values)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, dict | list) else type(value).__name__


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, problems)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, path, problems)  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: expected true or false, got {_describe(value)}")
        return False
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{path}: expected a whole number, got {_describe(value)}")
        return 0
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return ""
        problems.append(f"{path}: expected text, got {_describe(value)}")
        return ""
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_describe(value)}")
            return []
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_describe(value)}")
            return {}
        _, item = typing.get_args(tp)
        return {str(k): _convert(item, v, _join(path, str(k)), problems) for k, v in value.items()}
    return value


def validate(root: RootConfig) -> list[str]:
    """Checks that span fields or need parsing; each problem names its key path."""
    problems = []
    if not root.server_url.startswith(("http://", "https://")):
        problems.append(f"server_url: {root.server_url!r} must start with http:// or https://")
    for key in ("listen_addr", "metrics_listen_addr"):
        value = getattr(root, key)
        if value and ":" not in value:
            problems.append(f"{key}: {value!r} must be host:port (e.g. 127.0.0.1:8080)")
    for key, text, version in (("prefixes.v4", root.prefixes.v4, 4), ("prefixes.v6", root.prefixes.v6, 6)):
        if not text:
            continue
        try:
            if ipaddress.ip_network(text, strict=False).version != version:
                problems.append(f"{key}: {text!r} is not an IPv{version} range")
        except ValueError:
            problems.append(f"{key}: {text!r} is not a CIDR range (e.g. 100.64.0.0/10)")
    for i, text in enumerate(root.ip_prefixes):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(f"ip_prefixes[{i}]: {text!r} is not a CIDR range")
    if not root.prefixes.v4 and not root.prefixes.v6 and not root.ip_prefixes:
        problems.append("prefixes: set at least one of prefixes.v4 and prefixes.v6")
    if root.prefixes.allocation not in ("sequential", "random"):
        problems.append(f"prefixes.allocation: {root.prefixes.allocation!r} must be sequential or random")
    durations = {
        "node.expiry": root.node.expiry,
        "node.ephemeral.inactivity_timeout": root.node.ephemeral.inactivity_timeout,
        "derp.update_frequency": root.derp.update_frequency,
        "tuning.batch_change_delay": root.tuning.batch_change_delay,
        "tuning.register_cache_expiration": root.tuning.register_cache_expiration,
        "tuning.keepalive_interval": root.tuning.keepalive_interval,
        "tuning.gc_freeze_interval": root.tuning.gc_freeze_interval,
        "tuning.gc_sweep_interval": root.tuning.gc_sweep_interval,
        "cli.timeout": root.cli.timeout,
    }
    if root.ephemeral_node_inactivity_timeout:
        durations["ephemeral_node_inactivity_timeout"] = root.ephemeral_node_inactivity_timeout
    for key, text in durations.items():
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            continue
        if key.endswith("inactivity_timeout") and seconds <= 65:
            problems.append(f"{key}: {text!r} is too short: it must be more than 65s (clients reconnect within a minute)")
    try:
        freeze, sweep = parse_duration(root.tuning.gc_freeze_interval), parse_duration(root.tuning.gc_sweep_interval)
        if freeze and sweep and sweep < freeze:
            problems.append(f"tuning.gc_sweep_interval: {root.tuning.gc_sweep_interval!r} must not be shorter than "
                            f"tuning.gc_freeze_interval ({root.tuning.gc_freeze_interval!r})")
    except ValueError:
        pass  # named above
    if root.log.level not in LOG_LEVELS:
        problems.append(f"log.level: {root.log.level!r} must be one of {', '.join(LOG_LEVELS)}")
    if root.log.format not in ("text", "json"):
        problems.append(f"log.format: {root.log.format!r} must be text or json")
    if root.tuning.event_loop not in ("uvloop", "asyncio"):
        problems.append(f"tuning.event_loop: {root.tuning.event_loop!r} must be uvloop or asyncio")
    if root.dns.magic_dns and not root.dns.base_domain:
        problems.append("dns.base_domain: must be set when dns.magic_dns is true (e.g. tailnet.example.com)")
    host = root.server_url.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    base = root.dns.base_domain
    if base and (host == base or host.endswith("." + base)):
        problems.append(f"dns.base_domain: {base!r} must not contain server_url's host {host!r}: pick another domain")
    if root.dns.override_local_dns and not root.dns.nameservers.global_:
        problems.append("dns.override_local_dns: needs dns.nameservers.global to list at least one resolver")
    if root.dns.extra_records and root.dns.extra_records_path:
        problems.append("dns.extra_records_path: cannot be used together with dns.extra_records")
    if bool(root.tls_cert_path) != bool(root.tls_key_path):
        problems.append("tls_cert_path/tls_key_path: set both or neither")
    if root.tls_letsencrypt_hostname:
        problems.append("tls_letsencrypt_hostname: automatic certificates are not built in: set tls_cert_path and tls_key_path, or terminate TLS in a proxy")
    try:
        int(root.unix_socket_permission, 8)
    except ValueError:
        problems.append(f"unix_socket_permission: {root.unix_socket_permission!r} must be an octal mode like 0770")
    return problems
