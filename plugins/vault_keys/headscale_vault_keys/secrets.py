"""``vault:<mount>/<path>#<field>`` references as config values, resolved at start-up.

The core asks every plugin about every text value of the configuration
(``headscale_resolve_secret``); this module answers for values starting with ``vault:``,
reading the field from a KV version 2 secret with the ``vault`` section's login. A value that
starts with ``vault:`` but cannot be resolved fails start-up with the reason; it is never
passed on as a literal password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from headscale_core.errors import ConfigError
from headscale_vault_keys.client import DeletedSecret, VaultAccessError, connect, read_secret
from headscale_vault_keys.settings import SCHEME, VaultSection

_REFERENCE = re.compile(r"vault:(?P<mount>[^/#\s]+)/(?P<path>[^#\s]+)#(?P<field>[^\s#]+)")


@dataclass(frozen=True)
class SecretReference:
    mount: str
    path: str
    field: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.mount}/{self.path}#{self.field}"


def parse_reference(text: str) -> SecretReference | None:
    """The reference in ``text``, or None when ``text`` is an ordinary value."""
    if not text.startswith(SCHEME):
        return None
    match = _REFERENCE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a Vault reference: write vault:<mount>/<path>#<field>, "
                          "e.g. vault:secret/headscale/oidc#client_secret")
    return SecretReference(match["mount"], match["path"].strip("/"), match["field"])


def resolve_reference(reference: SecretReference, settings: VaultSection) -> str:
    """The field's value; ``ConfigError`` saying why when there is none."""
    try:
        found = read_secret(connect(settings), settings, reference.mount, reference.path, str(reference))
    except VaultAccessError as exc:
        raise ConfigError(str(exc)) from exc
    if found is None:
        raise ConfigError(f"{reference}: no secret at {reference.mount}/{reference.path} in Vault at "
                          f"{settings.address}: create it (`bao kv put {reference.mount}/{reference.path} "
                          f"{reference.field}=...`) or fix the reference")
    if isinstance(found, DeletedSecret):
        raise ConfigError(f"{reference}: the latest version ({found.version}) of {reference.mount}/{reference.path} "
                          "was deleted: undelete it or write a new version")
    if reference.field not in found.data:
        fields = ", ".join(sorted(found.data)) or "none"
        raise ConfigError(f"{reference}: the secret has no field {reference.field!r} (its fields: {fields})")
    value = found.data[reference.field]
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ConfigError(f"{reference}: the field holds a {type(value).__name__}, not text")
    return str(value)
