"""Built-in key custody: private keys in 0600 files (``keys.store: file``).

The file format is Headscale's (``privkey:<64 hex>``), so an existing Headscale key file can
be reused and clients keep working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from headscale_core.config import Config
from headscale_core.hookspecs import hookimpl
from headscale_core.protocol.keys import generate_private
from headscale_core.providers import KeyStore, KeyStoreError

PREFIX = "privkey:"


class FileKeyStore:
    def __init__(self, paths: Mapping[str, Path]) -> None:
        self.paths = dict(paths)

    def _path(self, name: str) -> Path:
        if name not in self.paths:
            raise KeyStoreError(f"file key store has no path for key {name!r}")
        return self.paths[name]

    async def load_or_create(self, name: str) -> bytes:
        path = self._path(name)
        if path.exists():
            return read_key_file(path, name)
        return write_key_file(path, generate_private())

    async def rotate(self, name: str) -> bytes:
        return write_key_file(self._path(name), generate_private())

    async def aclose(self) -> None:
        return None


def read_key_file(path: Path, name: str) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyStoreError(f"cannot read the {name} private key {path}: {exc.strerror}: fix its permissions "
                            "(never delete it: clients are bound to it)") from exc
    hexpart = text.removeprefix(PREFIX)
    try:
        raw = bytes.fromhex(hexpart)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise KeyStoreError(f"{path} does not hold a {name} private key (expected 'privkey:' and 64 hex digits): "
                            "restore the original file")
    return raw


def write_key_file(path: Path, raw: bytes) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(PREFIX + raw.hex() + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise KeyStoreError(f"cannot write private key {path}: {exc.strerror}: check the directory is writable") from exc
    return raw


def file_key_store(config: Config) -> KeyStore:
    return FileKeyStore({
        "noise": config.path(config.noise.private_key_path),
        "derp": config.path(config.derp.server.private_key_path),
    })


@hookimpl(trylast=True)
def headscale_key_stores() -> Mapping[str, Callable[[Config], KeyStore]]:
    return {"file": file_key_store}
