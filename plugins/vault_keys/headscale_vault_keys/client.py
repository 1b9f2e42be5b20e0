"""A logged-in hvac client and KV version 2 reads and writes, with failures as one line.

hvac is synchronous; everything here blocks and is run in a worker thread by the callers
(``asyncio.to_thread``). Every Vault failure becomes a ``VaultAccessError`` whose message says
what could not be done, why, and what to check: unreachable, TLS, sealed, login refused,
permission denied. A missing secret is not an error here: reads return None, and the caller
decides whether "nothing stored yet" is acceptable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from headscale_vault_keys.settings import VaultSection, VaultSettingsError


class VaultAccessError(Exception):
    """Vault could not be used; the message is one line for an operator."""


@dataclass(frozen=True)
class StoredSecret:
    data: dict[str, Any]
    version: int


@dataclass(frozen=True)
class DeletedSecret:
    """A path whose latest version was deleted or destroyed: never "nothing stored yet"."""

    version: int
    destroyed: bool


@contextmanager
def translated(settings: VaultSection, doing: str, login: str = "") -> Iterator[None]:
    """Turn hvac and requests failures during ``doing`` into a ``VaultAccessError``; ``login``
    is what to check when ``doing`` is a login that Vault refuses."""
    address = settings.address
    try:
        yield
    except VaultAccessError:
        raise
    except requests.exceptions.SSLError as exc:
        hint = "check vault.ca_bundle" if settings.ca_bundle else "set vault.ca_bundle to the CA that signed its certificate"
        raise VaultAccessError(f"cannot {doing}: TLS verification of {address} failed ({_root_cause(exc)}): {hint}") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise VaultAccessError(f"cannot {doing}: Vault at {address} is unreachable ({_root_cause(exc)}): "
                               "check vault.address and that Vault is running") from exc
    except hvac.exceptions.VaultDown as exc:
        raise VaultAccessError(f"cannot {doing}: Vault at {address} is sealed: unseal it "
                               "(`bao operator unseal` / `vault operator unseal`) and start again") from exc
    except hvac.exceptions.Forbidden as exc:
        if login:
            # A login has no token yet: a 403 here is the auth method refusing these credentials
            # (OpenBao's kubernetes method answers so when the TokenReview fails or the service
            # account is not bound to the role), never a token's policy.
            raise VaultAccessError(f"cannot {doing}: Vault at {address} refused the login ({_errors(exc)}): "
                                   f"{login}") from exc
        raise VaultAccessError(f"cannot {doing}: permission denied by Vault at {address}: "
                               "check the token's policy (and that it has not expired)") from exc
    except hvac.exceptions.Unauthorized as exc:
        raise VaultAccessError(f"cannot {doing}: Vault at {address} refused the login ({_errors(exc)}): "
                               "check the credentials in the vault section") from exc
    except hvac.exceptions.VaultError as exc:
        raise VaultAccessError(f"cannot {doing}: Vault at {address} answered: {_errors(exc)}") from exc


def _errors(exc: hvac.exceptions.VaultError) -> str:
    return "; ".join(str(e) for e in exc.errors or ()) if exc.errors else type(exc).__name__


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None and exc.__cause__ is None:
        exc = exc.__context__
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    # urllib3 wraps the OS error in a long repr; the last bracketed part is the readable one.
    return text.rsplit(": ", 1)[-1].rstrip(")\"'") if "Errno" in text or "SSL" in text else text


def connect(settings: VaultSection) -> hvac.Client:
    """A client logged in with the configured method (token, AppRole or Kubernetes)."""
    try:
        settings.check()
        method = settings.auth_method()
    except VaultSettingsError as exc:
        raise VaultAccessError(str(exc)) from exc
    verify: bool | str = True
    if settings.ca_bundle:
        if not Path(settings.ca_bundle).is_file():
            raise VaultAccessError(f"vault.ca_bundle {settings.ca_bundle} does not exist: point it at Vault's CA (PEM)")
        verify = settings.ca_bundle
    token = _read_token(settings) if method == "token" else ""
    client = hvac.Client(url=settings.address, token=token, verify=verify, timeout=settings.timeout,
                         namespace=settings.namespace or None)
    with translated(settings, f"log in to Vault with {method}", _LOGIN_CHECKS.get(method, "")):
        if method == "approle":
            client.auth.approle.login(role_id=settings.approle.role_id, secret_id=settings.approle.secret_id,
                                      mount_point=settings.approle.mount)
        elif method == "kubernetes":
            jwt = _read_file(settings.kubernetes.jwt_path, "vault.kubernetes.jwt_path")
            client.auth.kubernetes.login(role=settings.kubernetes.role, jwt=jwt, mount_point=settings.kubernetes.mount)
    return client


_LOGIN_CHECKS = {
    "approle": "check vault.approle.role_id and secret_id (and that the secret_id has not expired)",
    "kubernetes": "check vault.kubernetes.role (its bound service account names and namespaces) and that "
                  "the Kubernetes API accepts the token in vault.kubernetes.jwt_path",
}


def _read_token(settings: VaultSection) -> str:
    return settings.token or _read_file(settings.token_path, "vault.token_path")


def _read_file(path: str, key: str) -> str:
    try:
        text = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise VaultAccessError(f"cannot read {key} {path}: {exc.strerror}") from exc
    if not text:
        raise VaultAccessError(f"{key} {path} is empty")
    return text


def read_secret(client: hvac.Client, settings: VaultSection, mount: str, path: str,
                what: str = "") -> StoredSecret | DeletedSecret | None:
    """The latest version at ``mount``/``path``; a ``DeletedSecret`` when that version was
    deleted or destroyed; None when nothing was ever written there. ``what`` names the secret
    in error messages."""
    kv = client.secrets.kv.v2
    with translated(settings, f"read {what} ({mount}/{path})" if what else f"read {mount}/{path}"):
        try:
            answer = kv.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            return _deleted_or_absent(kv, mount, path)
    return StoredSecret(dict(answer["data"]["data"] or {}), int(answer["data"]["metadata"]["version"]))


def _deleted_or_absent(kv: Any, mount: str, path: str) -> DeletedSecret | None:
    try:
        meta = kv.read_secret_metadata(path=path, mount_point=mount)["data"]
    except hvac.exceptions.InvalidPath:
        return None
    current = meta.get("current_version") or 0
    info = (meta.get("versions") or {}).get(str(current), {})
    return DeletedSecret(int(current), bool(info.get("destroyed")))


def write_secret(client: hvac.Client, settings: VaultSection, mount: str, path: str, data: dict[str, Any],
                 *, cas: int, what: str = "") -> int | None:
    """Write a new version if the current one is ``cas`` (0: only if none exists); return the
    new version, or None when someone else wrote first (check-and-set refused)."""
    with translated(settings, f"write {what} ({mount}/{path})" if what else f"write {mount}/{path}"):
        try:
            answer = client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount, cas=cas)
        except hvac.exceptions.InvalidRequest as exc:
            if any("check-and-set" in str(e) for e in exc.errors or ()):
                return None
            raise
    return int(answer["data"]["version"])

