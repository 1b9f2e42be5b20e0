"""Run our server the way a user does: `headscale -c config.yaml serve` in a subprocess.

End-to-end tests talk to it over real HTTP and drive it through the real CLI, so a restart, a
SIGKILL or a config mistake behave exactly as they would in production. The config is written to
a temp directory from `base_config()`, merged with the test's overrides.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from headscale_core.testing.netns import free_loopback_port


class ServerError(RuntimeError):
    """The server did not start or a CLI call failed; the message carries the log tail."""


def base_config(workdir: Path, port: int, metrics_port: int) -> dict[str, Any]:
    """A loopback-only config: sqlite in `workdir`, no DERP, no log upload, allow-all policy."""
    return {
        "data_dir": str(workdir),  # anything else the server keeps stays in the test's directory
        "server_url": f"http://127.0.0.1:{port}",
        "listen_addr": f"127.0.0.1:{port}",
        "metrics_listen_addr": f"127.0.0.1:{metrics_port}",
        "noise": {"private_key_path": str(workdir / "noise.key")},
        "database": {"type": "sqlite", "sqlite": {"path": str(workdir / "db.sqlite")}},
        "derp": {"urls": [], "paths": [], "server": {"enabled": False}},
        "dns": {"magic_dns": True, "base_domain": "tailnet.test", "override_local_dns": False},
        "unix_socket": str(workdir / "headscale.sock"),
        "policy": {"mode": "file", "path": ""},
        "logtail": {"enabled": False},
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied recursively (nested dicts merge, anything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def headscale_binary() -> Path:
    """The `headscale` console script of the running venv (installed by `scripts/setup`)."""
    beside = Path(sys.executable).parent / "headscale"
    found = beside if beside.exists() else shutil.which("headscale")
    if not found:
        raise ServerError("the `headscale` command is not installed: run `scripts/setup`")
    return Path(found)


class ServerProcess:
    """Our server in a subprocess, with its config, database and log in `workdir`."""

    def __init__(self, workdir: Path, overrides: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.port = free_loopback_port()
        self.metrics_port = free_loopback_port()
        self.config = merge(base_config(workdir, self.port, self.metrics_port), overrides or {})
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return str(self.config["server_url"])

    def start(self, timeout: float = 20.0) -> None:
        """Write the config, start `headscale serve` and wait until `GET /health` answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        argv = [str(headscale_binary()), "-c", str(self.config_path), "serve"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._proc.poll() is not None:
                raise ServerError(f"`headscale serve` exited {self._proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise ServerError(
                    f"GET {self.url}/health did not answer 200 within {timeout} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (a clean shutdown); SIGKILL if it takes longer than `timeout`."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def kill9(self) -> None:
        """SIGKILL: a crash, with no chance to flush anything."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        """Stop cleanly and start again on the same ports, config and database."""
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cli(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `headscale -c CONFIG ARGS` as an operator would; raise `ServerError` when `check` fails."""
        argv = [str(headscale_binary()), "-c", str(self.config_path), *args]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise ServerError(
                f"`headscale {' '.join(args)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def cli_json(self, *args: str, timeout: float = 30.0) -> Any:
        """`headscale -c CONFIG -o json ARGS`, parsed."""
        return json.loads(self.cli("-o", "json", *args, timeout=timeout).stdout)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return f"(no log at {self.log_path})"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(tail)} lines)\n" + "\n".join(tail)
