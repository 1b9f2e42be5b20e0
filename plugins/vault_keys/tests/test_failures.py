"""When Vault cannot give a key back, the server refuses to start with one clear line, and
never makes a new key; once running, a Vault outage changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import hvac.exceptions
import pytest
from headscale_vault_keys.store import vault_key_store
from headscale_vault_keys.testing import DevVault

from headscale_core.config import Config
from headscale_core.protocol.keys import public_from_private
from headscale_core.providers import KeyStoreError
from headscale_core.testing.inprocess import running
from headscale_core.testing.inprocess import test_config as make_test_config
from headscale_core.testing.netns import free_loopback_port


def vault_config(data_dir: Path, vault: DevVault, **section: object) -> Config:
    return make_test_config(data_dir, keys={"store": "vault"}, vault=vault.section(**section))


async def first_start(data_dir: Path, vault: DevVault) -> bytes:
    store = vault_key_store(vault_config(data_dir, vault))
    noise = await store.load_or_create("noise")
    await store.aclose()
    return noise


async def test_unreachable(tmp_path: Path, vault: DevVault) -> None:
    section = {"address": f"http://127.0.0.1:{free_loopback_port()}"}
    store = vault_key_store(vault_config(tmp_path, vault, **section))
    with pytest.raises(KeyStoreError, match=r"^cannot read the noise private key \(secret/headscale/keys/noise\): "
                       r"Vault at http://127\.0\.0\.1:\d+ is unreachable \(.*refused.*\): check vault\.address"):
        await store.load_or_create("noise")


async def test_sealed(tmp_path: Path, vault: DevVault) -> None:
    await first_start(tmp_path, vault)
    vault.seal()
    with pytest.raises(KeyStoreError, match=r"Vault at http://127\.0\.0\.1:\d+ is sealed: unseal it"):
        await vault_key_store(vault_config(tmp_path, vault)).load_or_create("noise")


async def test_permission_denied(tmp_path: Path, vault: DevVault) -> None:
    await first_start(tmp_path, vault)
    token = vault.token_with_policy("elsewhere", 'path "secret/data/other/*" { capabilities = ["read"] }')
    with pytest.raises(KeyStoreError, match=r"cannot read the noise private key \(secret/headscale/keys/noise\): permission denied "
                       r"by Vault at .*: check the token's policy"):
        await vault_key_store(vault_config(tmp_path, vault, token=token)).load_or_create("noise")


async def test_missing_secret_after_first_start_is_refused_not_recreated(tmp_path: Path, vault: DevVault) -> None:
    await first_start(tmp_path, vault)
    vault.bao("kv", "metadata", "delete", "secret/headscale/keys/noise")
    with pytest.raises(KeyStoreError, match=r"the noise private key is missing from Vault at secret/headscale/keys/noise "
                       r"although this server has used it since .* \(marker .*vault-keys\.json\): check vault\.address"):
        await vault_key_store(vault_config(tmp_path, vault)).load_or_create("noise")
    with pytest.raises(hvac.exceptions.InvalidPath):  # and no new key was written
        vault.client().secrets.kv.v2.read_secret_metadata(path="headscale/keys/noise", mount_point="secret")


async def test_a_changed_path_is_refused_not_recreated(tmp_path: Path, vault: DevVault) -> None:
    await first_start(tmp_path, vault)
    with pytest.raises(KeyStoreError, match="missing from Vault at secret/headscale/other/noise"):
        await vault_key_store(vault_config(tmp_path, vault, path="headscale/other")).load_or_create("noise")


async def test_deleted_version_is_refused_even_without_a_marker(tmp_path: Path, vault: DevVault) -> None:
    await first_start(tmp_path / "one", vault)
    vault.bao("kv", "delete", "secret/headscale/keys/noise")
    with pytest.raises(KeyStoreError, match=r"was deleted in Vault \(version 1\): undelete it "
                       r"\(`bao kv undelete -versions=1 secret/headscale/keys/noise`\)"):
        await vault_key_store(vault_config(tmp_path / "fresh", vault)).load_or_create("noise")


async def test_a_new_data_dir_reads_the_existing_key(tmp_path: Path, vault: DevVault) -> None:
    noise = await first_start(tmp_path / "one", vault)
    assert await vault_key_store(vault_config(tmp_path / "two", vault)).load_or_create("noise") == noise


async def test_a_running_server_survives_a_vault_outage(tmp_path: Path, vault: DevVault) -> None:
    async with running(tmp_path, keys={"store": "vault"}, vault=vault.section()) as server:
        noise = await server.ctx.keys.load_or_create("noise")
        vault.stop()
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/key?v=130") as response:
            answer = await response.json()
        assert answer["publicKey"] == "mkey:" + public_from_private(noise).hex()


def test_serve_refuses_to_start_with_one_line(tmp_path: Path, vault: DevVault) -> None:
    config = vault_config(tmp_path, vault)
    vault.seal()
    result = subprocess.run([sys.executable, "-m", "headscale_core.cli.main", "-c", str(config.source), "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "is sealed: unseal it" in errors[0], result.stderr
    assert not (tmp_path / "noise_private.key").exists()
