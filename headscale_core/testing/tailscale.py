"""Drive the official tailscaled and tailscale CLI against our server in end-to-end tests.

A `TailscaleNode` is one real client: its own tailscaled (userspace networking, own state
directory and socket, SOCKS5 and HTTP proxies on loopback) driven through the real `tailscale`
CLI. The binaries come from `scripts/setup` (`.tools/bin`, or `.tools/<version>/bin` for the older
client of the version matrix). A node refuses to start outside a loopback-only network
namespace (docs/testing.md, rule 1).
"""

# The `timeout` parameters are part of what is driven (`tailscale up --timeout`, ping timeouts)
# and of the error messages, so they stay parameters rather than `asyncio.timeout` blocks.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from headscale_core.testing.netns import free_loopback_port, isolation_problems, require_isolated_netns

DEFAULT_VERSION = "v1.102.3"
OLD_VERSION = "v1.90.9"

# docs/testing.md, rule 1: no logs, no portmapper, no main control, and a network that the
# client believes is up although only loopback exists.
CLIENT_ENV = {
    "TS_NO_LOGS_NO_SUPPORT": "true",
    "TS_LOG_TARGET": "http://127.0.0.1:9",
    "TS_ASSUME_NETWORK_UP_FOR_TEST": "1",
    "TS_DISABLE_PORTMAPPER": "1",
    "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
    "TS_DEBUG_USE_DERP_HTTP": "1",
}
# A proxy from the outer environment would carry control traffic somewhere else.
_DROPPED_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")

_LOGIN_URL = re.compile(rb"https?://\S+")


class TailscaleError(RuntimeError):
    """A tailscale CLI call or the daemon failed; the message carries its output and log tail."""


class MissingBinaryError(FileNotFoundError):
    """The tailscaled/tailscale binary is not built yet."""


def tools_dir() -> Path:
    """Where `scripts/setup` puts Go-built binaries (override with HEADSCALE_TOOLS_DIR)."""
    override = os.environ.get("HEADSCALE_TOOLS_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / ".tools"


def tailscale_binary(name: str, version: str = DEFAULT_VERSION) -> Path:
    """Path of `tailscaled` or `tailscale` at `version`; raises `MissingBinaryError` if absent."""
    bin_dir = tools_dir() / "bin" if version == DEFAULT_VERSION else tools_dir() / version / "bin"
    path = bin_dir / name
    if not os.access(path, os.X_OK):
        raise MissingBinaryError(
            f"{name} {version} not found at {path}: run `scripts/setup` (it needs Go ≥1.26) to build it"
        )
    return path


class TailscaleNode:
    """One official tailscaled plus the `tailscale` CLI, in a directory of its own.

    All waiting is async so that an in-process server in the same event loop keeps serving.
    `wrap` prefixes the daemon's argv (e.g. `NetnsLab.command(host)` to run it in a lab host);
    its SOCKS5/HTTP proxies then listen in that host's namespace, so `dial()` works only without it.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        *,
        version: str = DEFAULT_VERSION,
        port: int = 0,
        env: dict[str, str] | None = None,
        wrap: Sequence[str] = (),
        isolation_check: Callable[[], list[str]] = isolation_problems,
    ) -> None:
        self.name = name
        self.version = version
        self.workdir = workdir
        self.port = port
        self.socket = workdir / "tailscaled.sock"
        self.log_path = workdir / "tailscaled.log"
        self.cli_log_path = workdir / "cli.log"
        self.socks5_port = 0
        self.http_proxy_port = 0
        self._extra_env = env or {}
        self._wrap = list(wrap)
        self._isolation_check = isolation_check
        self._daemon: subprocess.Popen[bytes] | None = None
        self._up_procs: list[asyncio.subprocess.Process] = []  # from up_nowait, ended by stop()

    # --- process lifecycle ----------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.upper() not in _DROPPED_ENV}
        home, logs = self.workdir / "home", self.workdir / "logs"
        home.mkdir(parents=True, exist_ok=True)
        logs.mkdir(exist_ok=True)
        # Without TS_LOGS_DIR, tailscaled keeps its log ID in /var/lib/tailscale, outside the test.
        return env | CLIENT_ENV | {"HOME": str(home), "TS_LOGS_DIR": str(logs)} | self._extra_env

    async def start(self, timeout: float = 20.0) -> None:
        """Start tailscaled and wait until its local API answers."""
        require_isolated_netns(self._isolation_check)
        daemon = tailscale_binary("tailscaled", self.version)
        tailscale_binary("tailscale", self.version)  # fail now, not at the first CLI call
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socks5_port, self.http_proxy_port = free_loopback_port(), free_loopback_port()
        argv = [
            *self._wrap,
            str(daemon),
            "--tun=userspace-networking",
            f"--statedir={self.workdir / 'state'}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--socks5-server=127.0.0.1:{self.socks5_port}",
            f"--outbound-http-proxy-listen=127.0.0.1:{self.http_proxy_port}",
            "--no-logs-no-support",
        ]
        self._daemon = self._spawn_logged(argv)
        await self.wait_for(lambda status: status.get("BackendState") is not None, timeout, "daemon up")

    def _spawn_logged(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )

    def kill(self) -> None:
        """SIGKILL the daemon (a crash, as far as our server can tell)."""
        if self._daemon and self._daemon.poll() is None:
            self._daemon.kill()
            self._daemon.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon with SIGTERM, then SIGKILL if it does not exit within `timeout`."""
        for proc in self._up_procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        self._up_procs.clear()
        if not self._daemon or self._daemon.poll() is not None:
            return
        self._daemon.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self._daemon.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon log and of the CLI calls, for failure messages."""
        parts = []
        for path in (self.log_path, self.cli_log_path):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # --- the tailscale CLI ----------------------------------------------------------------------

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [str(tailscale_binary("tailscale", self.version)), f"--socket={self.socket}", *args]

    async def cli(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `tailscale --socket=... ARGS`; raise `TailscaleError` on failure when `check`."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
        result = subprocess.CompletedProcess(
            ["tailscale", *args],
            proc.returncode if proc.returncode is not None else -9,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )
        self._log_cli(result)
        if check and result.returncode != 0:
            raise TailscaleError(
                f"[{self.name}] `tailscale {' '.join(args)}` exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
        return result

    def _log_cli(self, result: subprocess.CompletedProcess[str]) -> None:
        with open(self.cli_log_path, "a") as log:
            log.write(f"$ {' '.join(result.args)}  -> {result.returncode}\n{result.stdout}{result.stderr}")

    def _up_args(
        self,
        login_server: str,
        auth_key: str | None,
        hostname: str | None,
        extra_args: Sequence[str],
        timeout: float | None,
    ) -> list[str]:
        args = [
            "up",
            f"--login-server={login_server}",
            f"--hostname={hostname or self.name}",
            "--accept-dns=false",
            "--reset",
        ]
        if timeout is not None:
            args.append(f"--timeout={timeout:g}s")
        if auth_key is not None:
            args.append(f"--auth-key={auth_key}")
        return [*args, *extra_args]

    async def up(
        self,
        login_server: str,
        auth_key: str | None = None,
        *,
        hostname: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """`tailscale up` and wait for it to finish (it returns once the node is Running)."""
        args = self._up_args(login_server, auth_key, hostname, extra_args, timeout)
        return await self.cli(*args, timeout=timeout + 10)

    async def up_nowait(
        self,
        login_server: str,
        auth_key: str | None = None,
        *,
        hostname: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> asyncio.subprocess.Process:
        """Start `tailscale up` and return the process; its stdout (stderr merged) is a pipe.

        For interactive login read the URL with `read_login_url(proc)`.
        """
        args = self._up_args(login_server, auth_key, hostname, extra_args, timeout)
        proc = await asyncio.create_subprocess_exec(
            *self._argv(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self._up_procs.append(proc)
        return proc

    @staticmethod
    async def read_login_url(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> str:
        """The first URL `tailscale up` prints (the interactive login link)."""
        assert proc.stdout is not None
        seen = b""
        async with asyncio.timeout(timeout):
            while line := await proc.stdout.readline():
                seen += line
                if match := _LOGIN_URL.search(line):
                    return match.group().decode()
        raise TailscaleError(f"`tailscale up` printed no login URL:\n{seen.decode(errors='replace')}")

    async def status(self) -> dict[str, Any]:
        """`tailscale status --json`, parsed."""
        result = await self.cli("status", "--json", check=False)
        try:
            status: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise TailscaleError(f"[{self.name}] status --json gave no JSON: {result.stderr}") from exc
        return status

    async def ip(self, family: int = 4) -> str:
        """The node's Tailscale address (`tailscale ip -4`/`-6`)."""
        return (await self.cli("ip", f"-{family}")).stdout.strip()

    async def ping(
        self, target: str, timeout: float = 10.0, *, count: int = 10, extra_args: Sequence[str] = ()
    ) -> str:
        """`tailscale ping`; returns its output, raises `TailscaleError` if no pong came back."""
        args = ["ping", f"--c={count}", f"--timeout={timeout:g}s", *extra_args, target]
        return (await self.cli(*args, timeout=timeout * count + 10)).stdout

    async def logout(self) -> None:
        await self.cli("logout")

    async def down(self) -> None:
        await self.cli("down")

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0, what: str = "condition"
    ) -> dict[str, Any]:
        """Poll `status --json` until `predicate(status)` holds; return that status."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "no status yet"
        while time.monotonic() < deadline:
            if self._daemon is not None and self._daemon.poll() is not None:
                raise TailscaleError(
                    f"[{self.name}] tailscaled exited {self._daemon.returncode}\n{self.log_tail()}"
                )
            try:
                status = await self.status()
            except TailscaleError as exc:
                last = str(exc)
            else:
                if predicate(status):
                    return status
                last = status
            await asyncio.sleep(0.1)
        shown = json.dumps(last, indent=1)[:3000] if isinstance(last, dict) else last
        raise TimeoutError(
            f"[{self.name}] {what} not reached in {timeout} s; last status: {shown}\n{self.log_tail()}"
        )

    async def wait_running(self, timeout: float = 30.0) -> dict[str, Any]:
        return await self.wait_for(
            lambda s: s.get("BackendState") == "Running", timeout, "BackendState Running"
        )

    # --- traffic through the node's proxies -----------------------------------------------------

    async def dial(
        self, host: str, port: int, timeout: float = 10.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a TCP stream to `host:port` on the tailnet through the node's SOCKS5 server."""
        return await asyncio.wait_for(socks5_connect(("127.0.0.1", self.socks5_port), host, port), timeout)

    @property
    def http_proxy(self) -> str:
        """URL of the node's outbound HTTP proxy (pass as `proxy=` to aiohttp)."""
        return f"http://127.0.0.1:{self.http_proxy_port}"


async def socks5_connect(
    proxy: tuple[str, int], host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A minimal SOCKS5 CONNECT (RFC 1928, no authentication); raises ConnectionError on refusal."""
    reader, writer = await asyncio.open_connection(*proxy)
    try:
        writer.write(b"\x05\x01\x00")
        if await reader.readexactly(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 proxy refused the no-authentication method")
        try:
            address = ipaddress.ip_address(host)
            target = (b"\x01" if address.version == 4 else b"\x04") + address.packed
        except ValueError:
            target = b"\x03" + bytes([len(host)]) + host.encode()
        writer.write(b"\x05\x01\x00" + target + struct.pack("!H", port))
        _version, reply, _, kind = await reader.readexactly(4)
        if reply != 0:
            raise ConnectionError(f"SOCKS5 CONNECT to {host}:{port} failed with reply code {reply}")
        skip = {1: 4, 4: 16}.get(kind) or (await reader.readexactly(1))[0]
        await reader.readexactly(skip + 2)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Await `check()` every 0.1 s until it returns True; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.1)
