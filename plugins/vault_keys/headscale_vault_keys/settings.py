"""The ``vault`` config section: where Vault is, how to log in, where the keys live.

The core validates the YAML into these frozen dataclasses (``HEADSCALE_VAULT_TOKEN`` and the
like override single keys). Checks that span fields live in ``check()``, called when a
connection is actually needed, so a server that uses neither the store nor references never
trips over an empty section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headscale_core.configschema import doc

# Secret references in the config: vault:<mount>/<path>#<field>.
SCHEME = "vault:"

K8S_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class VaultSettingsError(ValueError):
    """The ``vault`` section cannot be used as written; the message names the key and the fix."""


@dataclass(frozen=True)
class AppRoleSection:
    role_id: str = doc("AppRole role_id; setting it selects AppRole login.", "")
    secret_id: str = doc("AppRole secret_id; use ${VAULT_SECRET_ID} to keep it out of the file.", "")
    mount: str = doc("Mount point of the AppRole auth method.", "approle")


@dataclass(frozen=True)
class KubernetesSection:
    role: str = doc("Vault role for the pod's service account; setting it selects Kubernetes login.", "")
    jwt_path: str = doc("The service account token file.", K8S_JWT_PATH)
    mount: str = doc("Mount point of the Kubernetes auth method.", "kubernetes")


@dataclass(frozen=True)
class VaultSection:
    address: str = doc("Vault or OpenBao URL, e.g. https://vault.example.com:8200.", "")
    token: str = doc("A Vault token; use ${VAULT_TOKEN} to keep it out of the file.", "")
    token_path: str = doc("A file holding the Vault token (read at start-up).", "")
    approle: AppRoleSection = doc("AppRole login (role_id and secret_id).", factory=AppRoleSection)
    kubernetes: KubernetesSection = doc("Kubernetes service account login.", factory=KubernetesSection)
    ca_bundle: str = doc("PEM file of the CA that signed Vault's TLS certificate (empty: system CAs).", "")
    namespace: str = doc("Vault Enterprise / OpenBao namespace (empty: the root namespace).", "")
    mount: str = doc("Mount point of the KV version 2 secrets engine holding the keys.", "secret")
    path: str = doc("Path under the mount; each key is stored at <path>/<name> (noise, derp).", "headscale/keys")
    timeout: int = doc("Seconds to wait for Vault on each request.", 10)
    marker_path: str = doc("Local record of which keys this server created (public keys only, no secrets).",
                           "vault-keys.json")

    def auth_method(self) -> str:
        """``token``, ``approle`` or ``kubernetes``: exactly one must be configured."""
        chosen = [name for name, on in (("token", bool(self.token or self.token_path)),
                                         ("approle", bool(self.approle.role_id)),
                                         ("kubernetes", bool(self.kubernetes.role))) if on]
        if not chosen:
            raise VaultSettingsError("vault: no login configured: set vault.token (or vault.token_path), "
                                     "vault.approle.role_id and secret_id, or vault.kubernetes.role")
        if len(chosen) > 1:
            raise VaultSettingsError(f"vault: several logins configured ({', '.join(chosen)}): keep one")
        return chosen[0]

    def check(self) -> None:
        if not self.address.startswith(("http://", "https://")):
            shown = repr(self.address) if self.address else "empty"
            raise VaultSettingsError(f"vault.address is {shown}: set it to Vault's URL, e.g. https://vault.example.com:8200")
        if self.token and self.token_path:
            raise VaultSettingsError("vault.token and vault.token_path are both set: keep one")
        if self.approle.role_id and not self.approle.secret_id:
            raise VaultSettingsError("vault.approle.secret_id is empty: AppRole login needs both role_id and secret_id")
        if not self.mount.strip("/") or not self.path.strip("/"):
            raise VaultSettingsError("vault.mount and vault.path must not be empty (defaults: secret, headscale/keys)")
        if self.timeout <= 0:
            raise VaultSettingsError(f"vault.timeout is {self.timeout}: it must be a positive number of seconds")
        self.auth_method()

    def location(self, name: str) -> str:
        """Where key ``name`` lives, as ``bao kv get`` spells it (with the namespace, if any)."""
        where = f"{self.mount.strip('/')}/{self.path.strip('/')}/{name}"
        return f"{where} (namespace {self.namespace})" if self.namespace else where


def settings_from(config: Any) -> VaultSection:
    """The validated ``vault`` section, or the defaults when the section is absent."""
    section = getattr(config, "sections", {}).get("vault")
    return section if isinstance(section, VaultSection) else VaultSection()
