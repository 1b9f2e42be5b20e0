"""``keys.store: vault``: the server's private keys in a KV version 2 secrets engine.

Each key is one secret at ``<mount>/<path>/<name>`` with the field ``private_key`` in
Headscale's file format (``privkey:<64 hex>``), so ``bao kv get -field=private_key`` gives a
valid key file in an emergency. Keys are read once at start-up and kept in memory: a Vault
outage while the server runs changes nothing.

Creating a key is only right on a first start. A missing secret could also be a wrong
``vault.path``, a deleted secret or a different Vault; a new key would then cut off every
client. So the store keeps a marker (``vault.marker_path``, public keys only) of the keys it
has created or read, refuses to start when one of them is missing from Vault, and refuses
when Vault still remembers a deleted version. Creation uses check-and-set, so two servers
starting together agree on one key.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headscale_core.builtin.file_keys import PREFIX
from headscale_core.protocol.keys import generate_private, public_from_private
from headscale_core.providers import KeyStoreError
from headscale_vault_keys.client import (
    DeletedSecret,
    StoredSecret,
    VaultAccessError,
    connect,
    read_secret,
    write_secret,
)
from headscale_vault_keys.settings import VaultSection, settings_from

FIELD = "private_key"


@dataclass(frozen=True)
class StoredKey:
    raw: bytes
    version: int


class VaultKeyStore:
    """A ``KeyStore`` (see ``headscale_core.providers``) backed by Vault or OpenBao."""

    def __init__(self, settings: VaultSection, marker: Path) -> None:
        self.settings = settings
        self.marker = KeyMarker(marker, settings)
        self._cache: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    async def load_or_create(self, name: str) -> bytes:
        async with self._lock:
            if name not in self._cache:
                self._cache[name] = await asyncio.to_thread(self._load_or_create, name)
            return self._cache[name]

    async def rotate(self, name: str) -> bytes:
        async with self._lock:
            self._cache[name] = await asyncio.to_thread(self._store, name, generate_private(), replace=True)
            return self._cache[name]

    async def import_key(self, name: str, raw: bytes) -> bool:
        """Store an existing key (``headscale keys migrate``); False if Vault already holds
        exactly this key. Refuses to replace a different key."""
        async with self._lock:
            return await asyncio.to_thread(self._import, name, raw)

    async def aclose(self) -> None:
        self._cache.clear()

    def _load_or_create(self, name: str) -> bytes:
        client = self._connect()
        found = self._read(client, name)
        if isinstance(found, StoredKey):
            self.marker.record(name, found.raw)
            return found.raw
        if isinstance(found, DeletedSecret):
            state = "destroyed" if found.destroyed else "deleted"
            fix = ("restore it from a backup" if found.destroyed
                   else f"undelete it (`bao kv undelete -versions={found.version} {self._kv_path(name)}`)")
            raise KeyStoreError(f"the {name} private key at {self.settings.location(name)} was {state} in Vault "
                                f"(version {found.version}): {fix}; a new key would cut off every client")
        since = self.marker.since(name)
        if since:
            raise KeyStoreError(f"the {name} private key is missing from Vault at {self.settings.location(name)} "
                                f"although this server has used it since {since} (marker {self.marker.path}): "
                                "check vault.address, vault.namespace, vault.mount and vault.path, or restore the "
                                "secret; a new key would cut off every client")
        return self._store(name, generate_private(), replace=False, client=client)

    def _store(self, name: str, raw: bytes, *, replace: bool, client: Any = None) -> bytes:
        client = client or self._connect()
        cas = 0
        if replace:
            current = self._read(client, name)
            cas = current.version if current is not None else 0
        version = self._write(client, name, raw, cas)
        if version is None:
            if replace:
                raise KeyStoreError(f"the {name} private key at {self.settings.location(name)} changed while it "
                                    "was being rotated: run the command again")
            # Another server created the key between our read and write: use theirs.
            found = self._read(client, name)
            if not isinstance(found, StoredKey):
                raise KeyStoreError(f"the {name} private key at {self.settings.location(name)} was written "
                                    "by someone else and cannot be read back: check Vault")
            raw = found.raw
        self.marker.record(name, raw, created=True)
        return raw

    def _import(self, name: str, raw: bytes) -> bool:
        client = self._connect()
        found = self._read(client, name)
        if isinstance(found, StoredKey):
            if found.raw != raw:
                raise KeyStoreError(f"Vault already holds a different {name} private key at "
                                    f"{self.settings.location(name)}: refusing to replace it; if it is unused, "
                                    f"delete it (`bao kv metadata delete {self._kv_path(name)}`) and run again")
            self.marker.record(name, raw, created=True)
            return False
        cas = found.version if isinstance(found, DeletedSecret) else 0
        if self._write(client, name, raw, cas) is None:
            raise KeyStoreError(f"the {name} private key at {self.settings.location(name)} was written by "
                                "someone else during the migration: check it and run again")
        self.marker.record(name, raw, created=True)
        return True

    def _connect(self) -> Any:
        try:
            return connect(self.settings)
        except VaultAccessError as exc:
            raise KeyStoreError(str(exc)) from exc

    def _kv_path(self, name: str) -> str:
        return f"{self.settings.mount.strip('/')}/{self.settings.path.strip('/')}/{name}"

    def _secret_path(self, name: str) -> str:
        return f"{self.settings.path.strip('/')}/{name}"

    def _read(self, client: Any, name: str) -> StoredKey | DeletedSecret | None:
        """The stored key, a deleted one, or None when nothing was ever stored."""
        try:
            found = read_secret(client, self.settings, self.settings.mount.strip("/"), self._secret_path(name),
                                f"the {name} private key")
        except VaultAccessError as exc:
            raise KeyStoreError(str(exc)) from exc
        if not isinstance(found, StoredSecret):
            return found
        text = str(found.data.get(FIELD, "")).strip()
        try:
            raw = bytes.fromhex(text.removeprefix(PREFIX))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise KeyStoreError(f"{self.settings.location(name)} does not hold a {name} private key in its "
                                f"{FIELD!r} field (expected 'privkey:' and 64 hex digits): restore the secret")
        return StoredKey(raw, found.version)

    def _write(self, client: Any, name: str, raw: bytes, cas: int) -> int | None:
        data = {FIELD: PREFIX + raw.hex(), "public_key": public_from_private(raw).hex()}
        try:
            return write_secret(client, self.settings, self.settings.mount.strip("/"), self._secret_path(name),
                                data, cas=cas, what=f"the {name} private key")
        except VaultAccessError as exc:
            raise KeyStoreError(str(exc)) from exc


def vault_key_store(config: Any) -> VaultKeyStore:
    """The ``vault`` key store factory (``headscale_key_stores``)."""
    settings = settings_from(config)
    return VaultKeyStore(settings, config.path(settings.marker_path))


class KeyMarker:
    """The local record of which keys this server keeps in Vault (no secrets in it)."""

    def __init__(self, path: Path, settings: VaultSection) -> None:
        self.path = path
        self.settings = settings

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"cannot read the key marker {self.path} ({exc}): restore or remove it") from exc
        return data if isinstance(data, dict) else {}

    def since(self, name: str) -> str:
        """When this server first stored or read key ``name``, or "" when it never did."""
        entry = self._load().get("keys", {}).get(name)
        return str(entry.get("since", "")) if isinstance(entry, dict) else ""

    def record(self, name: str, raw: bytes, *, created: bool = False) -> None:
        data = self._load()
        keys = data.setdefault("keys", {})
        public = public_from_private(raw).hex()
        entry = keys.get(name) if isinstance(keys.get(name), dict) else {}
        if not created and entry.get("public_key") == public:
            return
        since = datetime.now(UTC).isoformat(timespec="seconds") if created or "since" not in entry else entry["since"]
        keys[name] = {"public_key": public, "since": since, "location": self.settings.location(name),
                      "address": self.settings.address}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise KeyStoreError(f"cannot write the key marker {self.path}: {exc.strerror}: "
                                "check that data_dir is writable") from exc
