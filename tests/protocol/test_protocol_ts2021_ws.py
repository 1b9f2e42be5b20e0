"""The WebSocket variant of /ts2021 (``server/h2conn_ws``), driven by aiohttp's client and h2."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import aiohttp
import h2.config
import h2.connection
import h2.events
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from headscale_core.protocol.keys import PrivateKey
from headscale_core.protocol.noise import NoiseInitiator
from headscale_core.server.h2conn import MachineRequest, ResponseStream
from headscale_core.server.h2conn_ws import serve_ts2021_websocket

SERVER = PrivateKey(bytes(range(2, 34)))


async def echo(request: MachineRequest, response: ResponseStream) -> None:
    answer = {"MachineKey": str(request.machine_key), "Path": request.path, "Body": json.loads(request.body)}
    await response.respond(200, json.dumps(answer).encode())


@pytest.fixture
async def ws_url() -> AsyncIterator[str]:
    async def route(request: web.Request) -> web.StreamResponse:
        return await serve_ts2021_websocket(request, private_key=SERVER.raw, handler=echo)

    app = web.Application()
    app.router.add_get("/ts2021", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/ts2021"
    await runner.cleanup()


async def test_register_over_websocket(ws_url: str) -> None:
    machine = PrivateKey.generate()
    initiator = NoiseInitiator(machine.raw, SERVER.public_bytes(), 145)
    params = {"X-Tailscale-Handshake": base64.b64encode(initiator.initiation).decode()}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, protocols=("tailscale-control-protocol",), params=params) as ws:
            transport = None
            while transport is None:
                transport = initiator.receive_data(await ws.receive_bytes())
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            body = json.dumps({"NodeKey": "nodekey:" + "11" * 32}).encode()
            conn.send_headers(
                1,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", "x"),
                    (":path", "/machine/register"),
                ],
            )
            conn.send_data(1, body, end_stream=True)
            await ws.send_bytes(transport.encrypt(conn.data_to_send()))
            pending, status, answer, done = initiator.unused_data, None, b"", False
            while not done:
                for plaintext in transport.receive_data(pending or await ws.receive_bytes()):
                    for event in conn.receive_data(plaintext):
                        if isinstance(event, h2.events.ResponseReceived):
                            status = dict(event.headers)[b":status"]
                        elif isinstance(event, h2.events.DataReceived):
                            answer += event.data
                        elif isinstance(event, h2.events.StreamEnded):
                            done = True
                pending = b""
                await ws.send_bytes(transport.encrypt(conn.data_to_send()))
    assert status == b"200"
    assert json.loads(answer) == {
        "MachineKey": str(machine.machine_public()),
        "Path": "/machine/register",
        "Body": {"NodeKey": "nodekey:" + "11" * 32},
    }


async def test_websocket_without_the_subprotocol_is_closed_as_policy_violation(ws_url: str) -> None:
    initiator = NoiseInitiator(PrivateKey.generate().raw, SERVER.public_bytes(), 145)
    params = {"X-Tailscale-Handshake": base64.b64encode(initiator.initiation).decode()}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, params=params) as ws:
            message = await ws.receive()
    assert message.type == WSMsgType.CLOSE
    assert message.data == WSCloseCode.POLICY_VIOLATION


async def test_websocket_with_short_initiation_gets_the_error_frame(ws_url: str) -> None:
    initiator = NoiseInitiator(PrivateKey.generate().raw, SERVER.public_bytes(), 145)
    params = {"X-Tailscale-Handshake": base64.b64encode(initiator.initiation[:99]).decode()}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, protocols=("tailscale-control-protocol",), params=params) as ws:
            frame = await ws.receive_bytes()
            closing = await ws.receive()
    assert frame == b"\x03\x00\x1fwrong handshake initiation size"
    assert closing.type == WSMsgType.CLOSE
