"""DERP over WebSocket through the aiohttp route, next to raw-upgrade clients."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from headscale_derp.connection import DerpConnection, Role, ServerInfoReceived
from headscale_derp.frames import RecvPacket, SendPacket
from headscale_derp.handshake import generate_private_key, public_key
from headscale_derp.testing import RunningRelay
from headscale_derp.websocket import derp_http_route


async def test_websocket_client_exchanges_packets_with_a_raw_client(derp: RunningRelay) -> None:
    app = web.Application()
    app.add_routes([derp_http_route(lambda: derp.relay)])
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    raw = await derp.client()
    private = generate_private_key()
    conn = DerpConnection(Role.CLIENT, private)
    try:
        async with aiohttp.ClientSession() as http:
            plain = await http.get(server.make_url("/derp"))
            assert plain.status == 426 and await plain.text() == "DERP requires connection upgrade"
            async with http.ws_connect(server.make_url("/derp"), protocols=("derp",)) as ws:
                assert ws.protocol == "derp"
                events: list[object] = []
                while not any(isinstance(e, ServerInfoReceived) for e in events):
                    message = await ws.receive_bytes(timeout=5)
                    # Split every message in two to check the stream is reassembled.
                    events += conn.receive_data(message[:3]) + conn.receive_data(message[3:])
                    if out := conn.data_to_send():
                        await ws.send_bytes(out[:7])
                        await ws.send_bytes(out[7:])
                raw.send_packet(public_key(private), b"to websocket")
                got: list[object] = []
                while not got:
                    got = [
                        e
                        for e in conn.receive_data(await ws.receive_bytes(timeout=5))
                        if isinstance(e, RecvPacket)
                    ]
                assert got == [RecvPacket(raw.public_key, b"to websocket")]
                conn.send(SendPacket(raw.public_key, b"from websocket"))
                await ws.send_bytes(conn.data_to_send())
                assert await raw.recv_packet() == (public_key(private), b"from websocket")
                await ws.send_str("text is not allowed")
                closing = await ws.receive(timeout=5)
                assert closing.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                )
    finally:
        await server.close()
