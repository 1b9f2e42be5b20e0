"""``serve_ts2021`` (server/h2conn) and ``TSClient`` (testing/tsclient) joined on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from headscale_core.protocol.keys import NodePublic, PrivateKey
from headscale_core.protocol.mapstream import KEEPALIVE_MESSAGE, MapMessageEncoder
from headscale_core.protocol.noise import NoiseInitiator, NoiseTransport
from headscale_core.server.h2conn import MachineRequest, ResponseStream, StreamClosed
from headscale_core.testing.tsclient import ConnectionClosed, ControlError, TSClient

BIG_SIZE = 6 << 20
BIG_BODY = bytes(i * 7 % 256 for i in range(1 << 16)) * (BIG_SIZE >> 16)
ENCODER = MapMessageEncoder()
SERVER_PUBLIC = PrivateKey(bytes(range(1, 33))).public_bytes()  # the conftest server key
ServerFactory = Callable[..., Awaitable[Any]]


class ToyControl:
    """Register echo, a 3-message map stream, a big download, and some failure modes."""

    def __init__(self) -> None:
        self.big_sent = 0
        self.closed_streams: list[str] = []
        self.requests: list[MachineRequest] = []

    async def __call__(self, request: MachineRequest, response: ResponseStream) -> None:
        self.requests.append(request)
        body: Any = json.loads(request.body) if request.body else None
        if request.path == "/machine/register":
            echo = {
                "MachineKey": str(request.machine_key),
                "Capver": request.capver,
                "Request": body,
                "TsLb": [v for k, v in request.headers if k == "ts-lb"],
                "Remote": request.remote,
            }
            await response.respond(200, json.dumps(echo).encode(), [("content-type", "application/json")])
        elif request.path == "/machine/map" and not body.get("Stream"):
            await response.respond(200)
        elif request.path == "/machine/map":
            await response.send_headers(200)
            for seq in range(3):
                await response.send_data(ENCODER.encode(json.dumps({"Seq": seq}).encode()))
            if body.get("Forever"):
                await response.send_data(KEEPALIVE_MESSAGE)
                await response.closed.wait()
                self.closed_streams.append(request.path)
        elif request.path == "/big":
            await response.send_headers(200)
            for start in range(0, BIG_SIZE, 1 << 18):
                await response.send_data(BIG_BODY[start : start + (1 << 18)])
                self.big_sent = start + (1 << 18)
            await response.end()
        elif request.path == "/boom":
            raise RuntimeError("toy handler failure")
        elif request.path == "/silent":
            return
        elif request.path == "/upload":
            await response.respond(200, str(len(request.body)).encode())
        else:
            await response.respond(404, b"no such endpoint\n")


@pytest.fixture
async def toy(ts2021_server: ServerFactory) -> tuple[ToyControl, str]:
    control = ToyControl()
    server = await ts2021_server(control, max_body=64 << 10)
    return control, server.base_url


async def test_connect_register_echo_proves_the_machine_key(toy: tuple[ToyControl, str]) -> None:
    control, url = toy
    machine = PrivateKey.generate()
    node = PrivateKey.generate().node_public()
    async with await TSClient.connect(url, machine_private=machine, capver=131) as client:
        answer = await client.register(node, auth_key="hskey-auth-x", hostinfo={"Hostname": "laptop"})
    assert answer["MachineKey"] == str(machine.machine_public())
    assert answer["Capver"] == 131
    assert answer["Remote"].startswith("127.0.0.1:")
    sent = answer["Request"]
    assert sent["NodeKey"] == str(node) and sent["Version"] == 131
    assert sent["OldNodeKey"] == str(NodePublic.zero())
    assert sent["Auth"] == {"AuthKey": "hskey-auth-x"}
    assert sent["Expiry"] == "0001-01-01T00:00:00Z"
    assert answer["TsLb"] == [str(node)]
    assert control.requests[0].header("Content-Type") == "application/json"


async def test_map_stream_yields_decoded_messages_then_ends(toy: tuple[ToyControl, str]) -> None:
    _, url = toy
    async with await TSClient.connect(url, machine_private=PrivateKey.generate()) as client:
        messages = [m async for m in client.map_stream({"Stream": True, "Compress": "zstd"})]
        await client.lite_update(NodePublic.zero(), endpoints=["192.0.2.1:41641"])
    assert messages == [{"Seq": 0}, {"Seq": 1}, {"Seq": 2}]


async def test_concurrent_streams_share_one_connection(toy: tuple[ToyControl, str]) -> None:
    control, url = toy
    node = PrivateKey.generate().node_public()
    async with await TSClient.connect(url, machine_private=PrivateKey.generate()) as client:
        async with client.map_stream({"Stream": True, "Compress": "zstd", "Forever": True}) as stream:
            first = [await anext(stream) for _ in range(4)]
            registered, (status, _), _ = await asyncio.gather(
                client.register(node), client.request("POST", "/boom", {}), client.lite_update(node)
            )
        for _ in range(50):
            if control.closed_streams:
                break
            await asyncio.sleep(0.01)
    assert first[-1] == {"KeepAlive": True}
    assert registered["Request"]["NodeKey"] == str(node)
    assert status == 500
    assert control.closed_streams == ["/machine/map"], "closing the client's stream sets closed"


async def test_multi_megabyte_response_respects_flow_control(toy: tuple[ToyControl, str]) -> None:
    control, url = toy
    async with await TSClient.connect(
        url, machine_private=PrivateKey.generate(), stream_window=1 << 16
    ) as client:
        stream_id = await client._open("GET", "/big", None, None)
        assert await client._wait_status(stream_id) == 200
        await asyncio.sleep(0.2)
        # Nothing consumed: the server may only have sent one 64 KiB window of the 6 MiB.
        assert control.big_sent <= 1 << 18
        digest, total = hashlib.sha256(), 0
        while (chunk := await client._next_chunk(stream_id)) is not None:
            digest.update(chunk)
            total += len(chunk)
    assert total == BIG_SIZE
    assert digest.digest() == hashlib.sha256(BIG_BODY).digest()


async def test_handler_errors_answer_500_without_killing_the_connection(
    toy: tuple[ToyControl, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, url = toy
    with caplog.at_level(logging.ERROR, logger="headscale_core.server.h2conn"):
        async with await TSClient.connect(url, machine_private=PrivateKey.generate()) as client:
            assert (await client.request("POST", "/boom", {}))[0] == 500
            assert (await client.request("POST", "/silent", {}))[0] == 500
            assert (await client.request("GET", "/nothing"))[0] == 404
    assert "toy handler failure" in caplog.text
    assert "returned without a response" in caplog.text


async def test_request_bodies_over_max_body_get_413(toy: tuple[ToyControl, str]) -> None:
    _, url = toy
    async with await TSClient.connect(url, machine_private=PrivateKey.generate()) as client:
        assert await client.request("POST", "/upload", "x" * 1000) == (200, b"1002")
        status, body = await client.request("POST", "/upload", "x" * (70 << 10))
        assert status == 413 and b"exceeds" in body
        assert await client.request("POST", "/upload", "y") == (200, b"3"), "connection still usable"


async def test_early_payload_reaches_the_client(ts2021_server: ServerFactory) -> None:
    challenge = {"nodeKeyChallenge": "chalpub:" + "ab" * 32}
    server = await ts2021_server(ToyControl(), early_payload=json.dumps(challenge).encode())
    async with await TSClient.connect(server.base_url, machine_private=PrivateKey.generate()) as client:
        answer = await client.register(NodePublic(b"\x01" * 32))
        assert client.early_payload == challenge
    assert answer["Capver"] == 145


async def test_non_200_map_raises_control_error(ts2021_server: ServerFactory) -> None:
    async def refuse(request: MachineRequest, response: ResponseStream) -> None:
        await response.respond(404, b"node not found\n")

    server = await ts2021_server(refuse)
    async with await TSClient.connect(server.base_url, machine_private=PrivateKey.generate()) as client:
        with pytest.raises(ControlError, match="404: node not found"):
            async for _ in client.map_stream({"Stream": True, "Compress": "zstd"}):
                pass
        with pytest.raises(ControlError, match="404"):
            await client.register(NodePublic(b"\x01" * 32))


async def test_server_side_stream_sees_connection_death(ts2021_server: ServerFactory) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def stream_forever(request: MachineRequest, response: ResponseStream) -> None:
        await response.send_headers(200)
        try:
            while True:
                await response.send_data(KEEPALIVE_MESSAGE)
                await asyncio.sleep(0.01)
        except StreamClosed:
            outcome.set_result("StreamClosed")
            raise

    server = await ts2021_server(stream_forever)
    client = await TSClient.connect(server.base_url, machine_private=PrivateKey.generate())
    stream = client.map_stream({"Stream": True, "Compress": "zstd"})
    assert await anext(stream) == {"KeepAlive": True}
    await client.close()
    assert await asyncio.wait_for(outcome, 2) == "StreamClosed"
    with pytest.raises(ConnectionClosed):
        await client.request("GET", "/x")


# --- raw HTTP/1.1 and Noise errors ---------------------------------------------------------------


async def raw_exchange(port: int, request: bytes, after: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    if after:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(51)
        writer.write(after)
        rest = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        return head + rest
    data = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    return data


def upgrade_request(
    upgrade: str | None = "tailscale-control-protocol", handshake: str | None = None
) -> bytes:
    lines = ["POST /ts2021 HTTP/1.1", "Host: test"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    lines.append("Connection: upgrade")
    if handshake is not None:
        lines.append(f"X-Tailscale-Handshake: {handshake}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def valid_handshake(machine: PrivateKey | None = None) -> tuple[str, NoiseInitiator]:
    initiator = NoiseInitiator((machine or PrivateKey.generate()).raw, SERVER_PUBLIC, 145)
    return base64.b64encode(initiator.initiation).decode(), initiator


@pytest.mark.parametrize(
    ("request_bytes", "problem"),
    [
        (upgrade_request(None, valid_handshake()[0]), b"missing next protocol"),
        (upgrade_request("h2c", valid_handshake()[0]), b"unsupported next protocol 'h2c'"),
        (upgrade_request(), b"missing X-Tailscale-Handshake"),
        (upgrade_request(handshake="not*base64"), b"not valid base64"),
    ],
)
async def test_bad_upgrade_requests_get_400_naming_the_problem(
    ts2021_server: ServerFactory, request_bytes: bytes, problem: bytes
) -> None:
    server = await ts2021_server(ToyControl())
    answer = await raw_exchange(server.port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert problem in answer


async def test_upgrade_header_is_compared_lower_cased(ts2021_server: ServerFactory) -> None:
    server = await ts2021_server(ToyControl())
    handshake, _ = valid_handshake()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request("Tailscale-Control-Protocol", handshake))
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    writer.close()
    assert answer == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n"
    )


async def test_short_initiation_gets_the_error_frame(ts2021_server: ServerFactory) -> None:
    server = await ts2021_server(ToyControl())
    _, initiator = valid_handshake()
    short = base64.b64encode(initiator.initiation[:100]).decode()
    answer = await raw_exchange(server.port, upgrade_request(handshake=short))
    assert answer.endswith(b"\r\n\r\n\x03\x00\x1fwrong handshake initiation size")


async def test_tampered_initiation_just_closes(ts2021_server: ServerFactory) -> None:
    server = await ts2021_server(ToyControl())
    _, initiator = valid_handshake()
    tampered = bytearray(initiator.initiation)
    tampered[-1] ^= 1
    answer = await raw_exchange(server.port, upgrade_request(handshake=base64.b64encode(tampered).decode()))
    assert answer.endswith(b"Connection: upgrade\r\n\r\n")


@pytest.mark.parametrize(
    ("garbage", "problem"),
    [(b"\x05\x00\x10" + bytes(16), "record type 0x05"), (b"\x04\x00\x20" + bytes(32), "does not decrypt")],
)
async def test_bad_records_close_only_that_connection_with_one_log_line(
    ts2021_server: ServerFactory, caplog: pytest.LogCaptureFixture, garbage: bytes, problem: str
) -> None:
    server = await ts2021_server(ToyControl())
    handshake, _ = valid_handshake()
    async with await TSClient.connect(server.base_url, machine_private=PrivateKey.generate()) as bystander:
        with caplog.at_level(logging.INFO, logger="headscale_core.server.h2conn"):
            answer = await raw_exchange(server.port, upgrade_request(handshake=handshake), after=garbage)
        assert answer.startswith(b"HTTP/1.1 101")
        assert (await bystander.register(NodePublic(b"\x02" * 32)))["Capver"] == 145
    lines = [r.getMessage() for r in caplog.records if problem in r.getMessage()]
    assert len(lines) == 1
    assert "127.0.0.1:" in lines[0]


async def test_bad_http2_closes_the_connection(
    ts2021_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await ts2021_server(ToyControl())
    handshake, initiator = valid_handshake()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request(handshake=handshake))
    await reader.readuntil(b"\r\n\r\n")
    transport = initiator.receive_data(await reader.readexactly(51))
    assert isinstance(transport, NoiseTransport)
    with caplog.at_level(logging.INFO, logger="headscale_core.server.h2conn"):
        writer.write(transport.encrypt(b"GET / HTTP/1.1\r\n\r\n" + bytes(30)))
        rest = await asyncio.wait_for(reader.read(), 2)
    writer.close()
    assert rest, "the server sent its SETTINGS (and a GOAWAY) before closing"
    assert any("HTTP/2 error" in r.getMessage() and "127.0.0.1:" in r.getMessage() for r in caplog.records)
