"""Relay throughput: our Python relay next to Tailscale's derper, in one run.

    .venv/bin/python benchmarks/derp_relay.py [--seconds 3] [--pairs 2]

Each relay runs in its own process on 127.0.0.1. Client pairs (this process, one asyncio
loop) push packets through it with a bounded window of packets in flight per pair, so
neither relay's 32-packet queues overflow and the numbers measure relaying, not dropping.
CPU per relayed MB comes from the relay process's utime+stime in /proc/<pid>/stat.
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from headscale_derp.client import DerpClient
from headscale_derp.handshake import generate_private_key

REPO = Path(__file__).resolve().parents[1]
WINDOW = 24  # packets in flight per pair; below the relays' queue depth of 32
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    relay: str
    size: int
    packets: int
    lost: int
    seconds: float
    cpu_seconds: float

    def row(self) -> str:
        mb = self.packets * self.size / 1e6
        cpu_per_mb = self.cpu_seconds / mb * 1000 if mb else float("nan")
        return (
            f"{self.relay:<22} {self.size:>6} {self.packets / self.seconds:>11,.0f} {mb / self.seconds:>9.1f} "
            f"{cpu_per_mb:>12.2f} {self.cpu_seconds / self.seconds * 100:>6.0f}% {self.lost:>6}"
        )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)


async def start_ours(port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "headscale_derp", "--listen", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def start_derper(binary: str, port: int, tmp: str, maxprocs: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "HOME": tmp}
    if maxprocs:
        env["GOMAXPROCS"] = maxprocs
    return await asyncio.create_subprocess_exec(
        binary, "-a", f"127.0.0.1:{port}", "-c", f"{tmp}/derper-{port}.json", "-stun=false", "-http-port", "-1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env,
    )  # fmt: skip


async def pump(url: str, size: int, seconds: float) -> tuple[int, int]:
    """One sender/receiver pair; returns (packets received, packets lost)."""
    sender = await DerpClient.connect(url, generate_private_key())
    receiver = await DerpClient.connect(url, generate_private_key())
    payload = os.urandom(size)
    sent = received = lost_before = 0
    room = asyncio.Event()
    room.set()
    deadline = time.monotonic() + seconds

    async def receive() -> None:
        nonlocal received
        while True:
            for _event in await receiver.recv_batch():
                received += 1
            if sent - received < WINDOW // 2:
                room.set()

    task = asyncio.create_task(receive())
    try:
        while time.monotonic() < deadline:
            while sent - received < WINDOW:
                sender.send_packet(receiver.public_key, payload)
                sent += 1
            room.clear()
            await sender.drain()
            try:
                await asyncio.wait_for(room.wait(), 1.0)
            except TimeoutError:
                lost_before += sent - received  # packets were dropped: count them and carry on
                received = sent
        settle = time.monotonic() + 1.0  # let the packets in flight arrive before counting losses
        while received < sent and time.monotonic() < settle:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await sender.close()
        await receiver.close()
    return received, lost_before + max(0, sent - received)


async def measure(name: str, url: str, pid: int, size: int, seconds: float, pairs: int) -> Result:
    await pump(url, size, 0.3)  # warm up
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    results = await asyncio.gather(*(pump(url, size, seconds) for _ in range(pairs)))
    elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    return Result(name, size, sum(r[0] for r in results), sum(r[1] for r in results), elapsed, cpu)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--sizes", default="1400,200")
    parser.add_argument("--derper", default=os.environ.get("DERPER_BIN") or shutil.which("derper")
                        or str(REPO / ".tools/bin/derper"))  # fmt: skip
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        relays: list[tuple[str, asyncio.subprocess.Process, int]] = []
        port = free_port()
        relays.append(("python (this plugin)", await start_ours(port), port))
        if os.access(args.derper, os.X_OK):
            for maxprocs in ("1", ""):
                port = free_port()
                label = f"derper GOMAXPROCS={maxprocs or os.cpu_count()}"
                relays.append((label, await start_derper(args.derper, port, tmp, maxprocs), port))
        else:
            print(f"derper not found at {args.derper}: measuring only our relay", file=sys.stderr)
        try:
            for _, _, port in relays:
                await wait_listening(port)
            print(
                f"{args.pairs} pair(s), window {WINDOW}, {args.seconds:.0f} s per cell, {os.cpu_count()} CPUs"
            )
            print(
                f"{'relay':<22} {'bytes':>6} {'packets/s':>11} {'MB/s':>9} {'CPU ms/MB':>12} {'CPU':>7} {'lost':>6}"
            )
            for size in sizes:
                for name, process, port in relays:
                    url = f"http://127.0.0.1:{port}/derp"
                    print(
                        (await measure(name, url, process.pid, size, args.seconds, args.pairs)).row(),
                        flush=True,
                    )
        finally:
            for _, process, _ in relays:
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    asyncio.run(main())
