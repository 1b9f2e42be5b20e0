"""The standalone front end and the aiohttp routes answer the reference §10 HTTP vectors."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from headscale_derp.routes import probe_routes, verify_route
from headscale_derp.testing import RunningRelay

KNOWN = bytes(range(32))


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def _get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_standalone_probes_and_upgrade_errors(derp: RunningRelay) -> None:
    port = derp.port
    latency = await _exchange(port, _get("/derp/latency-check"))
    assert latency.startswith(b"HTTP/1.1 200 ") and b"Access-Control-Allow-Origin: *" in latency
    assert (await _exchange(port, _get("/derp/probe", method="HEAD"))).startswith(b"HTTP/1.1 200 ")
    refused = await _exchange(port, _get("/derp/probe", method="POST"))
    assert refused.startswith(b"HTTP/1.1 405 ") and refused.endswith(b"bogus probe method")
    no_upgrade = await _exchange(port, _get("/derp"))
    assert no_upgrade.startswith(b"HTTP/1.1 426 ") and no_upgrade.endswith(
        b"DERP requires connection upgrade"
    )
    challenge = await _exchange(port, _get("/generate_204", "X-Tailscale-Challenge: ts_127.0.0.1"))
    assert challenge.startswith(b"HTTP/1.1 204 ")
    assert b"X-Tailscale-Response: response ts_127.0.0.1\r\n" in challenge
    for bad in ("a" * 65, "ts_a b"):
        answer = await _exchange(port, _get("/generate_204", f"X-Tailscale-Challenge: {bad}"))
        assert answer.startswith(b"HTTP/1.1 204 ") and b"X-Tailscale-Response" not in answer
    assert (await _exchange(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_upgrade_response_is_byte_exact(derp: RunningRelay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", derp.port)
    writer.write(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n"
        b"Derp-Public-Key: " + derp.relay.public_key.hex().encode() + b"\r\n\r\n"
    )
    server_key = await asyncio.wait_for(reader.readexactly(45), 5)
    assert server_key[:13].hex() == "010000002844455250f09f9491"
    assert server_key[13:] == derp.relay.public_key
    writer.close()


async def _is_known(key: bytes) -> bool:
    return key == KNOWN


@pytest.fixture
async def aiohttp_client() -> TestClient:  # type: ignore[misc]
    app = web.Application()
    app.add_routes([*probe_routes(), verify_route(_is_known)])
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    yield client
    await client.close()


async def test_aiohttp_routes_match_the_standalone_answers(aiohttp_client: TestClient) -> None:
    response = await aiohttp_client.get("/derp/latency-check")
    assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
    assert (await aiohttp_client.head("/derp/probe")).status == 200
    bogus = await aiohttp_client.post("/derp/probe")
    assert bogus.status == 405 and await bogus.text() == "bogus probe method"
    ok = await aiohttp_client.get("/generate_204", headers={"X-Tailscale-Challenge": "ts_127.0.0.1"})
    assert ok.status == 204 and ok.headers["X-Tailscale-Response"] == "response ts_127.0.0.1"
    bad = await aiohttp_client.get("/generate_204", headers={"X-Tailscale-Challenge": "a" * 65})
    assert bad.status == 204 and "X-Tailscale-Response" not in bad.headers


@pytest.mark.parametrize(
    ("body", "status", "allow"),
    [
        ({"NodePublic": "nodekey:" + KNOWN.hex(), "Source": "192.0.2.1"}, 200, True),
        ({"NodePublic": "nodekey:" + "ff" * 32, "Source": "192.0.2.1"}, 200, False),
        ({"NodePublic": "nodekey:abc"}, 400, None),
        ({"Source": "192.0.2.1"}, 400, None),
    ],
)
async def test_verify_webhook(
    aiohttp_client: TestClient, body: dict[str, str], status: int, allow: bool
) -> None:
    response = await aiohttp_client.post("/verify", data=json.dumps(body))
    assert response.status == status
    if allow is not None:
        assert await response.json() == {"Allow": allow}


async def test_verify_webhook_rejects_large_bodies(aiohttp_client: TestClient) -> None:
    response = await aiohttp_client.post("/verify", data=b"{" + b" " * 5000 + b"}")
    assert response.status == 413


async def test_standalone_verify_webhook(relays) -> None:  # type: ignore[no-untyped-def]
    running = await relays(verify=_is_known)
    body = json.dumps({"NodePublic": "nodekey:" + KNOWN.hex(), "Source": "127.0.0.1"}).encode()
    request = _get("/verify", f"Content-Length: {len(body)}", method="POST") + body
    answer = await _exchange(running.port, request)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"Allow": true}')
