"""``headscale_resolve_secret``: a plugin turns references in config values into secrets, and
a reference it cannot resolve stops start-up with the key path (the vault plugin's real
resolver is tested against OpenBao in ``plugins/vault_keys/tests``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from headscale_core.config import Config, load_config
from headscale_core.errors import ConfigError
from headscale_core.hookspecs import hookimpl
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.server.app import plugin_sections


@dataclasses.dataclass(frozen=True)
class SafeSection:
    entries: dict[str, str] = dataclasses.field(default_factory=dict)


class Safe:
    """Resolves ``safe:<name>`` from a dict; an unknown name is an error."""

    secrets = {"db": "pg-password", "oidc": "client-secret"}

    @hookimpl
    def headscale_config_sections(self) -> dict[str, type]:
        return {"safe": SafeSection}

    @hookimpl
    def headscale_resolve_secret(self, reference: str, config: Config) -> str | None:
        if not reference.startswith("safe:"):
            return None
        name = reference.removeprefix("safe:")
        if name not in self.secrets:
            raise ConfigError(f"the safe holds no secret {name!r}")
        return self.secrets[name]


def load(tmp_path: Path, raw: dict[str, object]) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), **raw}))
    plugins = Plugins(make_plugin_manager(extra=[Safe()]))
    return plugins.resolve_secrets(load_config(str(path), env={}, plugin_sections=plugin_sections(plugins)))


def test_hook_headscale_resolve_secret(tmp_path: Path) -> None:
    config = load(tmp_path, {"database": {"postgres": {"pass": "safe:db", "user": "headscale"}},
                             "safe": {"entries": {"oidc_client_secret": "safe:oidc"}}})
    assert config.database.postgres.password == "pg-password"
    assert config.database.postgres.user == "headscale"  # ordinary values stay as written
    assert config.safe.entries == {"oidc_client_secret": "client-secret"}

    with pytest.raises(ConfigError) as failed:
        load(tmp_path, {"database": {"postgres": {"pass": "safe:nope"}}, "policy": {"path": "safe:gone"}})
    assert failed.value.problems == ["database.postgres.pass: the safe holds no secret 'nope'",
                                     "policy.path: the safe holds no secret 'gone'"]
