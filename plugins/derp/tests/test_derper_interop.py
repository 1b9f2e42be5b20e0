"""Interop with Tailscale's ``derper`` (v1.102.3 in ``.tools/bin``): the same client scenario
against derper and against our relay, STUN, the admission webhook, and a mixed mesh."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from headscale_derp import stun
from headscale_derp.client import DerpClient
from headscale_derp.frames import DISCO_MAGIC, PeerGone, PeerGoneReason, Ping, Pong
from headscale_derp.handshake import generate_private_key, public_key
from headscale_derp.http import DerpUpgradeHandler, serve_standalone
from headscale_derp.mesh import mesh_links
from headscale_derp.testing import RunningRelay, eventually

REPO = Path(__file__).resolve().parents[3]
DERPER = os.environ.get("DERPER_BIN") or shutil.which("derper") or str(REPO / ".tools/bin/derper")

pytestmark = pytest.mark.skipif(
    not os.access(DERPER, os.X_OK),
    reason=f"Tailscale derper binary not found at {DERPER}: build it with "
    "`go install tailscale.com/cmd/derper@v1.102.3` or set DERPER_BIN",
)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Derper:
    def __init__(self, process: asyncio.subprocess.Process, port: int, stun_port: int) -> None:
        self.process, self.port, self.stun_port = process, port, stun_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/derp"


async def start_derper(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Derper:
    port, stun_port = free_port(), free_port(socket.SOCK_DGRAM)
    log = (tmp / f"derper-{port}.log").open("wb")  # noqa: ASYNC230, SIM115 - handed to the child
    process = await asyncio.create_subprocess_exec(
        DERPER, "-a", f"127.0.0.1:{port}", "-c", str(tmp / f"derper-{port}.json"),
        "-stun-port", str(stun_port), "-http-port", "-1", *args,
        stdout=subprocess.DEVNULL, stderr=log,
        env={**os.environ, "HOME": str(tmp), **(env or {})},
    )  # fmt: skip
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
    return Derper(process, port, stun_port)


@pytest.fixture
async def derpers(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Derper] = []

    async def factory(*args: str, env: dict[str, str] | None = None) -> Derper:
        derper = await start_derper(tmp_path, *args, env=env)
        started.append(derper)
        return derper

    yield factory
    for derper in started:
        derper.process.terminate()
        await derper.process.wait()


async def scenario(url: str) -> list[object]:
    """What two clients observe: packets both ways, ping, NotHere, PeerGone."""
    a = await DerpClient.connect(url, generate_private_key())
    b = await DerpClient.connect(url, generate_private_key())
    seen: list[object] = []
    big = bytes(range(256)) * 256
    a.send_packet(b.public_key, b"hello")
    a.send_packet(b.public_key, big)
    seen.append(await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"hello"))
    seen.append(await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, big))
    a.send(Ping(b"pingpong"))
    seen.append(await _next(a, Pong))
    nobody = os.urandom(32)
    a.send_packet(nobody, DISCO_MAGIC + bytes(60))
    gone = await _next(a, PeerGone)
    seen.append((gone.peer == nobody, gone.reason))
    b.send_packet(a.public_key, b"reply")
    seen.append(await asyncio.wait_for(a.recv_packet(), 5) == (b.public_key, b"reply"))
    await b.close()
    gone = await _next(a, PeerGone)
    seen.append((gone.peer == b.public_key, gone.reason))
    await a.close()
    return seen


async def _next(client: DerpClient, kind: type) -> Any:
    while True:
        event = await asyncio.wait_for(client.recv(), 5)
        if isinstance(event, kind):
            return event


async def test_same_observations_against_derper_and_our_relay(derp: RunningRelay, derpers) -> None:  # type: ignore[no-untyped-def]
    derper = await derpers("-stun=false")
    theirs = await scenario(derper.url)
    ours = await scenario(derp.url)
    expected = [True, True, Pong(b"pingpong"), (True, PeerGoneReason.NOT_HERE), True,
                (True, PeerGoneReason.DISCONNECTED)]  # fmt: skip
    assert theirs == expected
    assert ours == theirs


async def test_derper_answers_our_stun_request_and_we_parse_it(derpers) -> None:  # type: ignore[no-untyped-def]
    derper = await derpers()
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    try:
        txid = os.urandom(12)
        for _ in range(20):  # the UDP listener may come up after the TCP one
            transport.sendto(stun.binding_request(txid), ("127.0.0.1", derper.stun_port))
            try:
                answer = await asyncio.wait_for(answers.get(), 0.25)
                break
            except TimeoutError:
                continue
        mine = transport.get_extra_info("sockname")
        assert stun.parse_binding_response(answer) == (txid, "127.0.0.1", mine[1])
        assert answer == stun.binding_response(txid, "127.0.0.1", mine[1])
    finally:
        transport.close()


async def test_derper_admits_through_our_verify_webhook(relays, derpers) -> None:  # type: ignore[no-untyped-def]
    member_priv = generate_private_key()
    member = public_key(member_priv)

    async def is_member(key: bytes) -> bool:
        return key == member

    ours = await relays(verify=is_member)
    derper = await derpers(
        "-stun=false",
        f"-verify-client-url=http://127.0.0.1:{ours.port}/verify",
        "-verify-client-url-fail-open=false",
    )
    client = await DerpClient.connect(derper.url, member_priv)
    client.send_packet(member, b"admitted")
    assert await asyncio.wait_for(client.recv_packet(), 5) == (member, b"admitted")
    with pytest.raises(ConnectionError, match="during the DERP handshake"):
        await DerpClient.connect(derper.url, generate_private_key())


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "relay.crt", tmp / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_our_relay_and_derper_in_one_mesh(derp: RunningRelay, derpers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mesh_key = os.urandom(32).hex()
    relay = derp.relay
    relay.mesh_key = mesh_key
    # derper dials mesh members over HTTPS, so our side listens with TLS too.
    cert_path, key_path = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    tls_server = await serve_standalone("127.0.0.1", 0, DerpUpgradeHandler(relay), ssl=tls)
    tls_port = tls_server.port
    (tmp_path / "mesh.key").write_text(mesh_key + "\n")
    derper = await derpers(
        "-stun=false", "-mesh-psk-file", str(tmp_path / "mesh.key"), "-mesh-with", f"127.0.0.1:{tls_port}",
        env={"SSL_CERT_FILE": str(cert_path)},
    )  # fmt: skip
    try:
        async with mesh_links(relay, [derper.url], retry_interval=0.2):
            on_ours = await derp.client()
            on_derper = await DerpClient.connect(derper.url, generate_private_key())
            await eventually(lambda: on_derper.public_key in relay.forwarders, within=10)
            # derper learns about our client through its own watch connection to us.
            await eventually(lambda: any(s.is_mesh and s.watching for s in relay._sessions), within=10)
            on_ours.send_packet(on_derper.public_key, b"ours to derper")
            assert await asyncio.wait_for(on_derper.recv_packet(), 5) == (
                on_ours.public_key,
                b"ours to derper",
            )
            on_derper.send_packet(on_ours.public_key, b"derper to ours")
            assert await asyncio.wait_for(on_ours.recv_packet(), 5) == (
                on_derper.public_key,
                b"derper to ours",
            )
            await on_derper.close()
            gone = await _next(on_ours, PeerGone)
            assert gone == PeerGone(on_derper.public_key, PeerGoneReason.DISCONNECTED)
    finally:
        tls_server.close()
