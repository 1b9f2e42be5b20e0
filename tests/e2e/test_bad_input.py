"""Misbehaving clients get the protocol's error answer and cost nobody else anything:
real clients stay connected and keep talking while garbage arrives."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from headscale_core.protocol.keys import PrivateKey
from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tsclient import ControlError, TSClient

pytestmark = pytest.mark.e2e


async def raw_exchange(url: str, request: bytes, then: bytes = b"", read: int = 4096) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request + then)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(read), 5)
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        writer.close()


def upgrade(handshake: str | None, protocol: str = "tailscale-control-protocol") -> bytes:
    lines = ["POST /ts2021 HTTP/1.1", "Host: x", f"Upgrade: {protocol}", "Connection: upgrade"]
    if handshake is not None:
        lines.append(f"X-Tailscale-Handshake: {handshake}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_garbage_from_one_client_does_not_disturb_real_clients(control: RunningServer,
                                                                     tailscale_node_factory: NodeFactory) -> None:
    user = await control.state.create_user("alice")
    _, key = await control.state.create_preauth_key(user, reusable=True)
    nodes = []
    for name in ("a", "b"):
        node = await tailscale_node_factory(name)
        await node.up(control.url, auth_key=key, hostname=name)
        nodes.append(node)
    ip_b = await nodes[1].ip()
    assert "pong" in await nodes[0].ping(ip_b, timeout=15)

    url = control.url
    # no handshake header, bad base64, wrong protocol: 400 with the reason
    assert b"400" in (await raw_exchange(url, upgrade(None))).split(b"\r\n")[0]
    assert b"400" in (await raw_exchange(url, upgrade("%%%not-base64"))).split(b"\r\n")[0]
    assert b"400" in (await raw_exchange(url, upgrade("AAAA", protocol="h2c"))).split(b"\r\n")[0]
    # truncated handshake: Noise error frame with Go's message
    answer = await raw_exchange(url, upgrade(base64.b64encode(os.urandom(50)).decode()))
    assert b"101" in answer and b"wrong handshake initiation size" in answer
    # right size, garbage content: the connection is closed without an answer past the 101
    answer = await raw_exchange(url, upgrade(base64.b64encode(b"\x00\x82\x01\x00\x60" + os.urandom(96)).decode()))
    assert b"Noise" not in answer
    # a garbage request line and an endless header
    assert b"400" in (await raw_exchange(url, b"\x16\x03\x01garbage\r\n\r\n")).split(b"\r\n")[0]
    assert b"431" in await raw_exchange(url, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000)

    # a proper Noise client sending bad JSON, unknown keys and a foreign node key
    client = await TSClient.connect(url, machine_private=PrivateKey.generate())
    status, body = await client.request("POST", "/machine/register", b"{not json")
    assert status == 400 and b"invalid JSON" in body
    answer = await client.register(PrivateKey.generate().node_public(), auth_key="hskey-auth-aaaaaaaaaaaa-nope")
    assert answer["Error"].startswith("invalid pre-auth key")
    victim = control.state.nodes()[0]
    stolen = await client.register(victim.node_key)
    assert stolen["Error"] == "node exists with a different machine key"
    with pytest.raises(ControlError) as info:
        async for _ in client.map_stream({"Version": 130, "NodeKey": victim.node_key, "Stream": True,
                                          "Compress": "zstd"}):
            break
    assert info.value.status == 404
    status, body = await client.request("POST", "/machine/map", json.dumps({"Version": 130}).encode())
    assert status == 404
    await client.close()

    # the real clients never noticed
    for node in nodes:
        status = await node.status()
        assert status["BackendState"] == "Running"
    assert "pong" in await nodes[0].ping(ip_b, timeout=15)
    assert "pong" in await nodes[1].ping(await nodes[0].ip(), timeout=15)
