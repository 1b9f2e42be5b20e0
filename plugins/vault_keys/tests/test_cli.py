"""``headscale keys migrate --to vault`` and ``headscale keys rotate`` through the real CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import yaml
from headscale_vault_keys.store import vault_key_store
from headscale_vault_keys.testing import DevVault

from headscale_core.builtin.file_keys import write_key_file
from headscale_core.cli.main import main
from headscale_core.config import Config
from headscale_core.protocol.keys import generate_private, public_from_private
from headscale_core.testing.inprocess import running
from headscale_core.testing.inprocess import test_config as make_test_config


def file_keys(data_dir: Path) -> tuple[bytes, bytes]:
    noise = write_key_file(data_dir / "noise_private.key", generate_private())
    derp = write_key_file(data_dir / "derp_server_private.key", generate_private())
    return noise, derp


def vault_keys(config: Config, name: str) -> bytes:
    return asyncio.run(vault_key_store(config).load_or_create(name))


async def served_machine_key(data_dir: Path, vault: DevVault) -> str:
    async with (running(data_dir, keys={"store": "vault"}, vault=vault.section()) as server,
                aiohttp.ClientSession() as http, http.get(f"{server.url}/key?v=130") as response):
        return str((await response.json())["publicKey"])


def test_migrate_moves_the_same_keys_into_vault(tmp_path: Path, vault: DevVault,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    noise, derp = file_keys(tmp_path)
    config = make_test_config(tmp_path, vault=vault.section())  # still keys.store: file
    assert main(["-c", str(config.source), "keys", "migrate", "--to", "vault"]) == 0
    out = capsys.readouterr().out
    assert f"noise: copied {tmp_path / 'noise_private.key'} -> secret/headscale/keys/noise" in out
    assert "now set keys.store: vault" in out
    assert not (tmp_path / "noise_private.key").exists() and not (tmp_path / "derp_server_private.key").exists()
    assert vault_keys(config, "noise") == noise and vault_keys(config, "derp") == derp

    raw = yaml.safe_load(Path(str(config.source)).read_text())
    raw["keys"] = {"store": "vault"}
    Path(str(config.source)).write_text(yaml.safe_dump(raw))
    # Clients pinned this machine key; the server now serves it from Vault.
    assert asyncio.run(served_machine_key(tmp_path, vault)) == "mkey:" + public_from_private(noise).hex()
    assert not (tmp_path / "noise_private.key").exists()


def test_migrate_refuses_to_replace_a_different_key(tmp_path: Path, vault: DevVault,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = make_test_config(tmp_path / "other", vault=vault.section())
    in_vault = vault_keys(config, "noise")
    file_keys(tmp_path)
    config = make_test_config(tmp_path, vault=vault.section())
    assert main(["-c", str(config.source), "keys", "migrate", "--to", "vault", "--keep-files"]) == 1
    assert "Vault already holds a different noise private key at secret/headscale/keys/noise: refusing" \
        in capsys.readouterr().err
    assert (tmp_path / "noise_private.key").exists()
    assert vault_keys(config, "noise") == in_vault


def test_rotate_derp(tmp_path: Path, vault: DevVault, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_test_config(tmp_path, keys={"store": "vault"}, vault=vault.section())
    noise, derp = vault_keys(config, "noise"), vault_keys(config, "derp")
    assert main(["-c", str(config.source), "keys", "rotate", "derp"]) == 0
    new = vault_keys(config, "derp")
    assert new != derp and vault_keys(config, "noise") == noise
    assert f"new public key {public_from_private(new).hex()}" in capsys.readouterr().out


def test_rotate_noise_needs_force(tmp_path: Path, vault: DevVault, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_test_config(tmp_path, keys={"store": "vault"}, vault=vault.section())
    noise = vault_keys(config, "noise")
    assert main(["-c", str(config.source), "keys", "rotate", "noise"]) == 1
    assert "every client has pinned the current key and must re-handshake" in capsys.readouterr().err
    assert vault_keys(config, "noise") == noise
    assert main(["-c", str(config.source), "keys", "rotate", "noise", "--force"]) == 0
    assert vault_keys(config, "noise") != noise


def test_rotate_works_with_the_file_store_too(tmp_path: Path) -> None:
    _, derp = file_keys(tmp_path)
    config = make_test_config(tmp_path)
    assert main(["-c", str(config.source), "keys", "rotate", "derp"]) == 0
    assert (tmp_path / "derp_server_private.key").read_text().strip() != "privkey:" + derp.hex()
