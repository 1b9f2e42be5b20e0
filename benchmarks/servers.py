"""The servers under test, each a subprocess on loopback with an equivalent config.

Ours runs as ``python -m headscale_core.cli.main serve``; Headscale is the Go binary in
``.tools/bin`` (installed with ``go install`` when missing). Both use SQLite in WAL mode, no DERP
map fetch, no log upload, and the same policy file (reloaded on SIGHUP by both). Users and
pre-auth keys are made the way an operator makes them: Headscale's CLI; for ours, the state
service on the stopped server's database (our admin CLI has no ``users``/``preauthkeys`` yet).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from headscale_core.testing.netns import free_loopback_port

REPO = Path(__file__).resolve().parent.parent
HEADSCALE_VERSION = "v0.29.2"
HEADSCALE_MODULE = "github.com/juanfont/headscale"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchServerError(RuntimeError):
    """A server did not start, or an admin command failed; carries the log tail."""


def snapshot_ours(revision: str, into: Path) -> Path:
    """Export ``headscale_core`` at ``revision`` (a commit) into ``into``: the server under test is
    the committed code, whatever is being edited in the working tree meanwhile."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", revision, "headscale_core"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def headscale_path() -> Path:
    return REPO / ".tools" / "bin" / "headscale"


def install_headscale() -> Path:
    """``go install`` Headscale into ``.tools/bin`` unless it is there already.

    ``go install module@version`` asks the proxy for the module's version list to check for
    deprecation; when that list is refused, build from the downloaded module instead.
    """
    target = headscale_path()
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise BenchServerError("Headscale is not installed and there is no `go` to build it: install Go 1.26+")
    env = {**os.environ, "GOBIN": str(target.parent), "GOFLAGS": "-buildvcs=false"}
    target.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{HEADSCALE_MODULE}/cmd/headscale@{HEADSCALE_VERSION}"
    print(f"installing Headscale: go install {spec} (a few minutes)", file=sys.stderr)
    first = subprocess.run(["go", "install", spec], env=env, capture_output=True, text=True)
    if first.returncode != 0:
        subprocess.run(["go", "mod", "download", f"{HEADSCALE_MODULE}@{HEADSCALE_VERSION}"],
                       env=env, capture_output=True, text=True, cwd="/tmp")
        modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
        source = Path(modcache) / f"{HEADSCALE_MODULE}@{HEADSCALE_VERSION}"
        second = subprocess.run(["go", "install", "./cmd/headscale"], env=env, cwd=source,
                                capture_output=True, text=True)
        if second.returncode != 0:
            raise BenchServerError(f"could not build Headscale:\n{first.stderr}\n{second.stderr}")
    return target


@dataclass
class ProcSample:
    cpu_seconds: float
    rss_kb: int
    hwm_kb: int
    system_seconds: float = 0.0  # the part of cpu_seconds spent in the kernel (stime)


def sample(pid: int) -> ProcSample:
    """utime+stime of the whole process, stime alone, and its resident set (current and peak)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    system = int(fields[12]) / CLK_TCK
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return ProcSample(cpu, rss, hwm, system)


# One static region on an unused loopback port, the same file for both servers: Headscale
# refuses to start with an empty DERP map, and neither server may fetch Tailscale's.
DERP_MAP = """regions:
  900:
    regionid: 900
    regioncode: bench
    regionname: Benchmark (unused)
    nodes:
      - name: 900a
        regionid: 900
        hostname: 127.0.0.1
        ipv4: 127.0.0.1
        stunport: -1
        derpport: 9
"""


class BenchServer:
    """What every server under test offers the runner."""

    label = ""

    def __init__(self, workdir: Path, policy: str | None, cpu: int | None) -> None:
        self.workdir = workdir
        self.port = free_loopback_port()
        self.metrics_port = free_loopback_port()
        self.policy_path = workdir / "policy.hujson"
        self.policy = policy
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def version(self) -> str:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def derp_path(self) -> Path:
        return self.workdir / "derp.yaml"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.policy is not None:
            self.policy_path.write_text(self.policy)
        self.derp_path.write_text(DERP_MAP)
        (self.workdir / "config.yaml").write_text(yaml.safe_dump(self.config(), sort_keys=False))

    async def create_users_and_keys(self, users: list[str], tags: list[str]) -> dict[str, str]:
        """Pre-auth keys (reusable, 1 h) by user name, and for each tag ``"tag:x"``."""
        raise NotImplementedError

    async def launch(self, users: list[str], tags: list[str]) -> dict[str, str]:
        """Start the server with these users and tags; their pre-auth keys by name."""
        self.start()
        return await self.create_users_and_keys(users, tags)

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        cpu = self.cpu

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         stdin=subprocess.DEVNULL, preexec_fn=pin, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None:
                raise BenchServerError(f"{self.label} exited {self.proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchServerError(f"{self.label} did not answer /health in {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def set_policy(self, text: str) -> None:
        """Replace the policy file and tell the server to reload it (SIGHUP, for both)."""
        self.policy_path.write_text(text)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def sample(self) -> ProcSample:
        return sample(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class OursServer(BenchServer):
    label = "ours"

    def __init__(self, workdir: Path, policy: str | None, cpu: int | None, batch_delay: str = "10ms",
                 source: Path | None = None) -> None:
        super().__init__(workdir, policy, cpu)
        self.batch_delay = batch_delay
        self.source = source

    def version(self) -> str:
        from headscale_core import __version__

        return f"headscale-core {__version__}"

    def config(self) -> dict[str, Any]:
        d = self.workdir
        return {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{self.port}",
            "metrics_listen_addr": f"127.0.0.1:{self.metrics_port}",
            "noise": {"private_key_path": str(d / "noise.key")},
            "database": {"type": "sqlite", "sqlite": {"path": str(d / "db.sqlite"), "write_ahead_log": True}},
            "derp": {"urls": [], "paths": [str(self.derp_path)], "server": {"enabled": False}},
            "dns": {"magic_dns": True, "base_domain": "tailnet.test", "override_local_dns": False},
            "unix_socket": str(d / "headscale.sock"),
            "policy": {"mode": "file", "path": str(self.policy_path) if self.policy is not None else ""},
            "logtail": {"enabled": False},
            "log": {"level": "warn"},
            "tuning": {"batch_change_delay": self.batch_delay},
        }

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "headscale_core.cli.main", "-c", str(self.workdir / "config.yaml"), "serve"]

    async def launch(self, users: list[str], tags: list[str]) -> dict[str, str]:
        keys = await self.create_users_and_keys(users, tags)
        self.start()
        return keys

    def env(self) -> dict[str, str]:
        """Import the server from the snapshot under test when there is one."""
        if self.source is None:
            return dict(os.environ)
        return {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.source), str(REPO)])}

    async def create_users_and_keys(self, users: list[str], tags: list[str]) -> dict[str, str]:
        assert self.proc is None, "ours is seeded while stopped"
        self.write_config()
        argv = [sys.executable, "-m", "benchmarks.seed_ours", str(self.workdir / "config.yaml"),
                json.dumps({"users": users, "tags": tags})]
        result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, env=self.env(),
                                         cwd=REPO, timeout=120)
        if result.returncode != 0:
            raise BenchServerError(f"seeding our server failed:\n{result.stderr[-2000:]}")
        keys: dict[str, str] = json.loads(result.stdout)
        return keys


class HeadscaleServer(BenchServer):
    label = "headscale"

    def __init__(self, workdir: Path, policy: str | None, cpu: int | None, *, tuned: bool = False) -> None:
        super().__init__(workdir, policy, cpu)
        self.tuned = tuned
        self.grpc_port = free_loopback_port()
        if tuned:
            self.label = "headscale_tuned"

    def version(self) -> str:
        out = subprocess.run([str(headscale_path()), "version"], capture_output=True, text=True).stdout
        reported = out.strip().splitlines()[0] if out.strip() else "nothing"
        return f"Headscale {HEADSCALE_VERSION} (built from the module; `headscale version` says {reported!r})"

    def config(self) -> dict[str, Any]:
        d = self.workdir
        config: dict[str, Any] = {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{self.port}",
            "metrics_listen_addr": f"127.0.0.1:{self.metrics_port}",
            "grpc_listen_addr": f"127.0.0.1:{self.grpc_port}",
            "grpc_allow_insecure": False,
            "noise": {"private_key_path": str(d / "noise_private.key")},
            "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"},
            "database": {"type": "sqlite", "sqlite": {"path": str(d / "db.sqlite"), "write_ahead_log": True}},
            "derp": {"server": {"enabled": False}, "urls": [], "paths": [str(self.derp_path)],
                     "auto_update_enabled": False},
            "disable_check_updates": True,
            "dns": {"magic_dns": True, "base_domain": "tailnet.test", "override_local_dns": False},
            "unix_socket": str(d / "headscale.sock"),
            "unix_socket_permission": "0770",
            "logtail": {"enabled": False},
            "log": {"level": "warn"},
            "policy": {"mode": "file", "path": str(self.policy_path) if self.policy is not None else ""},
        }
        if self.tuned:
            config["tuning"] = {"batch_change_delay": "10ms", "node_store_batch_timeout": "10ms"}
        return config

    def argv(self) -> list[str]:
        return [str(headscale_path()), "-c", str(self.workdir / "config.yaml"), "serve"]

    def cli_json(self, *args: str) -> Any:
        argv = [str(headscale_path()), "-c", str(self.workdir / "config.yaml"), *args, "-o", "json"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise BenchServerError(f"`headscale {' '.join(args)}` exited {result.returncode}: {result.stderr}")
        return json.loads(result.stdout)

    async def create_users_and_keys(self, users: list[str], tags: list[str]) -> dict[str, str]:
        assert self.proc is not None, "Headscale is seeded through its CLI while running"
        keys: dict[str, str] = {}
        for name in users:
            user = await asyncio.to_thread(self.cli_json, "users", "create", name)
            key = await asyncio.to_thread(self.cli_json, "preauthkeys", "create", "--user", str(user["id"]),
                                          "--reusable", "--expiration", "1h")
            keys[name] = key["key"]
        for tag in tags:
            key = await asyncio.to_thread(self.cli_json, "preauthkeys", "create", "--tags", tag,
                                          "--reusable", "--expiration", "1h")
            keys[tag] = key["key"]
        return keys
