"""The running server answers the WebSocket variant of /ts2021 with the real machine
handler: a pre-auth-key registration over WebSocket + Noise + HTTP/2."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import h2.config
import h2.connection
import h2.events

from headscale_core.protocol.keys import PrivateKey, parse_machine_public
from headscale_core.protocol.noise import NoiseInitiator
from headscale_core.testing.inprocess import running


async def test_register_over_websocket_against_the_server(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("ws")
        _, key = await srv.state.create_preauth_key(user)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.url}/key?v=130") as resp:
                server_public = parse_machine_public((await resp.json())["publicKey"])
            machine, node = PrivateKey.generate(), PrivateKey.generate()
            initiator = NoiseInitiator(machine.raw, server_public.raw, 130)
            params = {"X-Tailscale-Handshake": base64.b64encode(initiator.initiation).decode()}
            async with http.ws_connect(f"{srv.url}/ts2021", protocols=("tailscale-control-protocol",),
                                       params=params) as ws:
                transport = None
                while transport is None:
                    transport = initiator.receive_data(await ws.receive_bytes())
                conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                conn.initiate_connection()
                body = json.dumps({"Version": 130, "NodeKey": str(node.node_public()),
                                   "Auth": {"AuthKey": key}, "Hostinfo": {"Hostname": "browser"}}).encode()
                conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "x"),
                                      (":path", "/machine/register")])
                conn.send_data(1, body, end_stream=True)
                await ws.send_bytes(transport.encrypt(conn.data_to_send()))
                pending, answer, done = initiator.unused_data, b"", False
                while not done:
                    for plaintext in transport.receive_data(pending or await ws.receive_bytes()):
                        for event in conn.receive_data(plaintext):
                            if isinstance(event, h2.events.DataReceived):
                                answer += event.data
                            elif isinstance(event, h2.events.StreamEnded):
                                done = True
                    pending = b""
                    await ws.send_bytes(transport.encrypt(conn.data_to_send()))
        assert json.loads(answer)["MachineAuthorized"] is True
        assert srv.state.store.by_node_key(str(node.node_public())).given_name == "browser"
