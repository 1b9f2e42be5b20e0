"""``headscale keys``: move file keys into Vault, rotate a key.

``migrate`` copies the very same key bytes, so clients that pinned the server's Noise key
keep working; the files are removed only after Vault gave the keys back. ``rotate`` works on
whichever store ``keys.store`` selects. The DERP relay key is safe to rotate; the Noise key
is the server's identity and needs ``--force``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from headscale_core.builtin.file_keys import read_key_file
from headscale_core.config import Config
from headscale_core.errors import InvalidRequest
from headscale_core.protocol.keys import public_from_private
from headscale_core.providers import KeyStoreError

ROTATABLE = ("derp", "noise")


def register_keys_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser("keys", help="private key custody (plugin headscale-vault-keys)")
    actions = keys.add_subparsers(dest="what", metavar="ACTION")
    p = actions.add_parser("migrate", help="move the key files into Vault (the same keys: clients keep working)")
    p.add_argument("--to", required=True, choices=["vault"], help="destination store")
    p.add_argument("--keep-files", action="store_true", help="leave the key files in place after copying")
    p.set_defaults(func=cmd_keys_migrate)
    p = actions.add_parser("rotate", help="replace a private key in the configured store")
    p.add_argument("name", choices=ROTATABLE, help="derp: the relay key; noise: the server's identity")
    # SUPPRESS: without --force here, the global `headscale --force` must not be overwritten.
    p.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="rotate the noise key although every client must re-handshake")
    p.set_defaults(func=cmd_keys_rotate)


def key_files(config: Config) -> dict[str, Path]:
    """The file store's key paths (``noise.private_key_path``, ``derp.server.private_key_path``)."""
    return {"noise": config.path(config.noise.private_key_path),
            "derp": config.path(config.derp.server.private_key_path)}


def cmd_keys_migrate(args: argparse.Namespace) -> int:
    config: Config = args.cfg
    files = {name: path for name, path in key_files(config).items() if path.is_file()}
    if "noise" not in files:
        raise InvalidRequest(f"no noise key file at {key_files(config)['noise']}: nothing to migrate "
                             "(check noise.private_key_path and data_dir)")
    from headscale_vault_keys.store import vault_key_store

    store = vault_key_store(config)

    async def run() -> None:
        for name, path in files.items():
            raw = read_key_file(path, name)
            added = await store.import_key(name, raw)
            if await vault_key_store(config).load_or_create(name) != raw:  # read back through a fresh store
                raise KeyStoreError(f"the {name} key read back from Vault differs from {path}: files kept")
            where = store.settings.location(name)
            print(f"{name}: {'copied' if added else 'already in Vault'} {path} -> {where} "
                  f"(public key {public_from_private(raw).hex()})")
        await store.aclose()

    asyncio.run(run())
    for name, path in files.items():
        if args.keep_files:
            print(f"{name}: kept {path}; delete it once the server runs with keys.store: vault")
        else:
            path.unlink()
            print(f"{name}: removed {path}")
    if config.keys.store != "vault":
        print(f"now set keys.store: vault in {config.source or 'the config file'} and restart the server")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    config: Config = args.cfg
    if args.name == "noise" and not getattr(args, "force", False):
        raise InvalidRequest("rotating the noise key changes the server's identity: every client has pinned the "
                             "current key and must re-handshake with the new one (clients that cannot refetch it "
                             "stay offline until they log in again); pass --force to rotate anyway")
    store = args.plugins.choose("headscale_key_stores", "keys.store", config.keys.store, "")(config)

    async def run() -> bytes:
        try:
            return bytes(await store.rotate(args.name))
        finally:
            await store.aclose()

    raw = asyncio.run(run())
    print(f"{args.name} key rotated in the {config.keys.store} store; new public key {public_from_private(raw).hex()}")
    advice = ("clients reconnect to the relay by themselves" if args.name == "derp"
              else "every client must re-handshake")
    print(f"restart the server to use it ({advice})", file=sys.stderr)
    return 0
