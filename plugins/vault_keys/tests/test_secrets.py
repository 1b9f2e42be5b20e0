"""``vault:<mount>/<path>#<field>`` config values, resolved at start-up from a real OpenBao."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from headscale_vault_keys.secrets import SecretReference, parse_reference
from headscale_vault_keys.testing import DevVault

from headscale_core.cli.main import main
from headscale_core.errors import ConfigError
from headscale_core.testing.inprocess import running
from headscale_core.testing.inprocess import test_config as make_test_config

DB_PASS = "vault:secret/headscale/db#password"


def test_parse_reference() -> None:
    assert parse_reference("hunter2") is None
    assert parse_reference("vault:kv/team/db#pass") == SecretReference("kv", "team/db", "pass")
    with pytest.raises(ConfigError, match=r"'vault:secret/db' is not a Vault reference: write vault:<mount>/<path>#<field>"):
        parse_reference("vault:secret/db")


def test_database_password_comes_from_vault(tmp_path: Path, vault: DevVault) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret(path="headscale/db", secret={"password": "s3cret"})
    config = make_test_config(tmp_path, vault=vault.section(), database={"postgres": {"pass": DB_PASS}})
    assert config.database.postgres.password == "s3cret"
    assert DB_PASS in Path(str(config.source)).read_text() and "s3cret" not in Path(str(config.source)).read_text()


def test_references_work_with_approle_and_a_restricted_policy(tmp_path: Path, vault: DevVault) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret(path="headscale/oidc", secret={"client_secret": "oidc-s3cret"})
    role_id, secret_id = vault.approle("oidc", 'path "secret/data/headscale/oidc" { capabilities = ["read"] }')
    section = vault.section(token="", approle={"role_id": role_id, "secret_id": secret_id})
    config = make_test_config(tmp_path, vault=section,
                              database={"postgres": {"pass": "vault:secret/headscale/oidc#client_secret"}})
    assert config.database.postgres.password == "oidc-s3cret"


@pytest.mark.parametrize(("stored", "reference", "reason"), [
    (None, DB_PASS, r"vault:secret/headscale/db#password: no secret at secret/headscale/db in Vault at .*: "
                    r"create it \(`bao kv put secret/headscale/db password=...`\)"),
    ({"user": "x", "pass": "topsecret-value"}, DB_PASS, r"the secret has no field 'password' \(its fields: pass, user\)"),
    ({"password": "topsecret-value"}, "vault:secret/headscale/db", r"is not a Vault reference"),
])
def test_unresolvable_references_fail_with_the_key_path(
    tmp_path: Path, vault: DevVault, stored: dict[str, str] | None, reference: str, reason: str
) -> None:
    if stored is not None:
        vault.client().secrets.kv.v2.create_or_update_secret(path="headscale/db", secret=stored)
    with pytest.raises(ConfigError) as failed:
        make_test_config(tmp_path, vault=vault.section(), database={"postgres": {"pass": reference}})
    (problem,) = failed.value.problems
    assert problem.startswith("database.postgres.pass: ")
    assert re.search(reason, problem), problem
    assert "topsecret-value" not in problem  # stored values are never shown


def test_sealed_vault_fails_configtest_with_the_key_path(tmp_path: Path, vault: DevVault,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret(path="headscale/db", secret={"password": "s3cret"})
    config = make_test_config(tmp_path, vault=vault.section(), database={"postgres": {"pass": DB_PASS}})
    assert main(["-c", str(config.source), "configtest"]) == 0
    vault.seal()
    assert main(["-c", str(config.source), "configtest"]) == 1
    err = capsys.readouterr().err
    assert "database.postgres.pass: cannot read vault:secret/headscale/db#password (secret/headscale/db): " \
           "Vault at" in err and "is sealed" in err


async def test_a_server_starts_with_a_referenced_secret(tmp_path: Path, vault: DevVault) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret(path="headscale/derp", secret={"mesh": "ab" * 32})
    async with running(tmp_path, vault=vault.section(),
                       derp={"server": {"enabled": False, "mesh_key": "vault:secret/headscale/derp#mesh"}}) as server:
        assert server.ctx.config.derp.server.mesh_key == "ab" * 32
