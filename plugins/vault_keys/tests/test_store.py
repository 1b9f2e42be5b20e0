"""``keys.store: vault`` against a real OpenBao dev server: the keys live in KV v2, are read
back at the next start, never touch the local disk, and every login method and transport
option reaches them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
from headscale_vault_keys.store import vault_key_store
from headscale_vault_keys.testing import DevVault

from headscale_core.config import Config
from headscale_core.protocol.keys import public_from_private
from headscale_core.providers import KeyStoreError
from headscale_core.testing.inprocess import test_config as make_test_config

READ_WRITE_KEYS = """
path "secret/data/headscale/keys/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/headscale/keys/*" { capabilities = ["read"] }
"""


def vault_config(data_dir: Path, vault: DevVault, **section: Any) -> Config:
    return make_test_config(data_dir, keys={"store": "vault"}, vault=vault.section(**section))


def files_containing(directory: Path, secret: bytes) -> list[Path]:
    needles = (secret.hex().encode(), secret)
    return [p for p in directory.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


async def test_keys_are_created_in_vault_and_read_back_at_the_next_start(tmp_path: Path, vault: DevVault) -> None:
    config = vault_config(tmp_path / "data", vault)
    first = vault_key_store(config)
    noise, derp = await first.load_or_create("noise"), await first.load_or_create("derp")
    await first.aclose()
    assert len(noise) == 32 and noise != derp

    stored = vault.client().secrets.kv.v2.read_secret_version(
        path="headscale/keys/noise", mount_point="secret", raise_on_deleted_version=True)["data"]["data"]
    assert stored["private_key"] == "privkey:" + noise.hex()
    assert stored["public_key"] == public_from_private(noise).hex()

    again = vault_key_store(config)
    assert await again.load_or_create("noise") == noise
    assert await again.load_or_create("derp") == derp
    assert files_containing(tmp_path / "data", noise) == [] and files_containing(tmp_path / "data", derp) == []
    assert not (tmp_path / "data" / "noise_private.key").exists()


async def test_keys_are_cached_once_read(tmp_path: Path, vault: DevVault) -> None:
    store = vault_key_store(vault_config(tmp_path / "data", vault))
    noise = await store.load_or_create("noise")
    vault.stop()
    assert await store.load_or_create("noise") == noise


async def test_rotate_writes_a_new_version(tmp_path: Path, vault: DevVault) -> None:
    config = vault_config(tmp_path / "data", vault)
    store = vault_key_store(config)
    old = await store.load_or_create("derp")
    new = await store.rotate("derp")
    assert new != old
    assert await vault_key_store(config).load_or_create("derp") == new
    meta = vault.client().secrets.kv.v2.read_secret_metadata(path="headscale/keys/derp", mount_point="secret")
    assert meta["data"]["current_version"] == 2


async def test_custom_mount_and_path(tmp_path: Path, vault: DevVault) -> None:
    vault.client().sys.enable_secrets_engine("kv", path="infra", options={"version": "2"})
    store = vault_key_store(vault_config(tmp_path / "data", vault, mount="infra", path="tailnet/prod"))
    noise = await store.load_or_create("noise")
    stored = vault.client().secrets.kv.v2.read_secret_version(
        path="tailnet/prod/noise", mount_point="infra", raise_on_deleted_version=True)["data"]["data"]
    assert stored["private_key"] == "privkey:" + noise.hex()


async def test_approle_login(tmp_path: Path, vault: DevVault) -> None:
    role_id, secret_id = vault.approle("headscale", READ_WRITE_KEYS)
    section = {"token": "", "approle": {"role_id": role_id, "secret_id": secret_id}}
    store = vault_key_store(vault_config(tmp_path / "data", vault, **section))
    noise = await store.load_or_create("noise")
    assert await vault_key_store(vault_config(tmp_path / "data", vault, **section)).load_or_create("noise") == noise


async def test_approle_with_a_wrong_secret_id_is_refused(tmp_path: Path, vault: DevVault) -> None:
    role_id, _ = vault.approle("headscale", READ_WRITE_KEYS)
    section = {"token": "", "approle": {"role_id": role_id, "secret_id": "00000000-0000-0000-0000-000000000000"}}
    with pytest.raises(KeyStoreError, match="log in to Vault with approle"):
        await vault_key_store(vault_config(tmp_path / "data", vault, **section)).load_or_create("noise")


async def test_token_from_a_file_with_a_restricted_policy(tmp_path: Path, vault: DevVault) -> None:
    token_file = tmp_path / "vault-token"
    token_file.write_text(vault.token_with_policy("headscale", READ_WRITE_KEYS) + "\n")
    store = vault_key_store(vault_config(tmp_path / "data", vault, token="", token_path=str(token_file)))
    assert len(await store.load_or_create("noise")) == 32


async def test_namespace(tmp_path: Path, vault: DevVault) -> None:
    root = vault.client()
    root.sys.create_namespace(path="tailnet")
    vault.client(namespace="tailnet").sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    store = vault_key_store(vault_config(tmp_path / "data", vault, namespace="tailnet"))
    noise = await store.load_or_create("noise")
    in_namespace = vault.client(namespace="tailnet").secrets.kv.v2.read_secret_version(
        path="headscale/keys/noise", mount_point="secret", raise_on_deleted_version=True)
    assert in_namespace["data"]["data"]["private_key"] == "privkey:" + noise.hex()
    with pytest.raises(hvac.exceptions.InvalidPath):  # the root namespace holds nothing
        root.secrets.kv.v2.read_secret_version(path="headscale/keys/noise", mount_point="secret",
                                               raise_on_deleted_version=True)


async def test_tls_with_the_ca_bundle(tmp_path: Path, tls_vault: DevVault) -> None:
    assert tls_vault.address.startswith("https://")
    store = vault_key_store(vault_config(tmp_path / "data", tls_vault))
    assert len(await store.load_or_create("noise")) == 32


async def test_tls_without_the_ca_bundle_says_so(tmp_path: Path, tls_vault: DevVault) -> None:
    store = vault_key_store(vault_config(tmp_path / "data", tls_vault, ca_bundle=""))
    with pytest.raises(KeyStoreError, match=r"TLS verification of https://127\.0\.0\.1:\d+ failed .*set vault\.ca_bundle"):
        await store.load_or_create("noise")
