"""Run the relay on its own: ``python -m headscale_derp --listen 127.0.0.1:3340``.

For benchmarks and mesh experiments outside the server; it serves plain HTTP (``/derp``,
probes, ``/generate_204``) and optionally STUN. The private key is random per run unless
``--key-file`` names a file holding 64 hex characters.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from pathlib import Path

from headscale_derp.handshake import generate_private_key
from headscale_derp.http import DerpUpgradeHandler, serve_standalone
from headscale_derp.mesh import mesh_links
from headscale_derp.relay import Relay
from headscale_derp.stun import split_host_port, stun_listener


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m headscale_derp", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:3340", help="HTTP listen address (host:port)")
    parser.add_argument("--stun", default="", help="STUN listen address (host:port); empty disables")
    parser.add_argument(
        "--key-file", type=Path, help="file with the relay's private key as 64 hex characters"
    )
    parser.add_argument("--mesh-key", default="", help="64 hex characters shared by the mesh members")
    parser.add_argument("--mesh-with", default="", help="comma-separated URLs of other mesh members")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    key = bytes.fromhex(args.key_file.read_text().strip()) if args.key_file else generate_private_key()
    relay = Relay(key, mesh_key=args.mesh_key)
    host, port = split_host_port(args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        if args.stun:
            await stack.enter_async_context(stun_listener(args.stun, relay.stun_stats))
        members = [m for m in args.mesh_with.split(",") if m]
        await stack.enter_async_context(mesh_links(relay, members))
        server = await serve_standalone(host, port, DerpUpgradeHandler(relay))
        print(f"derp relay nodekey:{relay.public_key.hex()} listening on {host}:{server.port}", flush=True)
        await stop.wait()
        server.close()
        relay.close_all()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
