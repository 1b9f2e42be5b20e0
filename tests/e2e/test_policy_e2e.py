"""The tailnet policy enforced by official clients: TCP gets through exactly where the
policy allows, and a policy change reaches connected nodes without reconnecting them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headscale_core.testing.inprocess import loopback_control, running
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import TailscaleNode

pytestmark = pytest.mark.e2e

GUIDE_POLICY = {
    "groups": {"group:admin": ["alice@"], "group:dev": ["bob@"], "group:ops": ["carol@"]},
    "tagOwners": {"tag:server": ["group:admin"], "tag:database": ["group:admin"], "tag:ci": ["group:ops"]},
    "acls": [
        {"action": "accept", "src": ["group:admin"], "dst": ["*:*"]},
        {"action": "accept", "src": ["group:dev"], "dst": ["tag:server:80,443,8080"]},
        {"action": "accept", "src": ["group:ops"], "dst": ["tag:server:22", "tag:database:5432"]},
        {"action": "accept", "src": ["tag:server", "tag:ci"], "dst": ["tag:database:5432"]},
    ],
}


@contextlib.asynccontextmanager
async def listeners(ports: list[int]) -> AsyncIterator[None]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(answer, "127.0.0.1", port) for port in ports]
    try:
        yield
    finally:
        for server in servers:
            server.close()


async def reaches(node: TailscaleNode, ip: str, port: int) -> bool:
    try:
        reader, writer = await node.dial(ip, port, timeout=4)
        data = await asyncio.wait_for(reader.read(2), 4)
        writer.close()
        return data == b"ok"
    except (ConnectionError, TimeoutError, OSError):
        return False


async def test_guide_policy_allows_exactly_what_it_says(tmp_path: Path,
                                                        tailscale_node_factory: NodeFactory) -> None:
    overrides = loopback_control(policy={"mode": "database"})
    async with running(tmp_path / "control", **overrides) as control:
        state = control.state
        await state.set_policy(json.dumps(GUIDE_POLICY))
        users = {name: await state.create_user(name) for name in ("alice", "bob", "carol")}
        keys = {name: (await state.create_preauth_key(user, reusable=True))[1] for name, user in users.items()}
        keys["server"] = (await state.create_preauth_key(None, tags=["tag:server"]))[1]
        keys["db"] = (await state.create_preauth_key(None, tags=["tag:database"]))[1]
        owners = {"admin": "alice", "dev": "bob", "ops": "carol", "server": "server", "db": "db"}
        nodes: dict[str, TailscaleNode] = {}
        for host, owner in owners.items():
            node = await tailscale_node_factory(host)
            await node.up(control.url, auth_key=keys[owner], hostname=host)
            nodes[host] = node
        ips = {host: await node.ip() for host, node in nodes.items()}
        # every node that may talk to another must see it before dialling
        await nodes["dev"].wait_for(lambda s: len(s.get("Peer") or {}) >= 2, 20, "dev sees admin and server")

        async with listeners([8080, 5432, 2222]):
            expect = [
                ("dev", "server", 8080, True), ("dev", "db", 5432, False), ("dev", "server", 2222, False),
                ("admin", "db", 5432, True), ("server", "db", 5432, True), ("ops", "db", 5432, True),
                ("ops", "server", 8080, False),
            ]
            for src, dst, port, allowed in expect:
                assert await reaches(nodes[src], ips[dst], port) == allowed, f"{src} -> {dst}:{port}"

            # a policy change: dev may now reach the database, on its existing map stream
            sessions_before = dict(control.ctx.extras["mapper"].sessions)
            changed = dict(GUIDE_POLICY, acls=[*GUIDE_POLICY["acls"],
                                               {"action": "accept", "src": ["group:dev"], "dst": ["tag:database:5432"]}])
            await state.set_policy(json.dumps(changed))
            await nodes["dev"].wait_for(
                lambda s: any(p.get("HostName") == "db" for p in (s.get("Peer") or {}).values()), 10,
                "dev sees the database after the policy change")
            deadline = asyncio.get_running_loop().time() + 10
            while not await reaches(nodes["dev"], ips["db"], 5432):
                assert asyncio.get_running_loop().time() < deadline, "policy change did not open dev -> db"
                await asyncio.sleep(0.5)
            assert control.ctx.extras["mapper"].sessions == sessions_before, "nodes were made to reconnect"
