"""Test support: a relay behind the standalone HTTP front end on 127.0.0.1, and helpers.

Used by this plugin's tests and benchmarks; other plugins can use it to get a live relay.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from headscale_derp.client import DerpClient
from headscale_derp.handshake import generate_private_key
from headscale_derp.http import DerpUpgradeHandler, StandaloneServer, VerifyNodeKey, serve_standalone
from headscale_derp.relay import Relay


@dataclass
class RunningRelay:
    relay: Relay
    server: StandaloneServer
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/derp"

    async def client(self, key: bytes | None = None, **kwargs: object) -> DerpClient:
        return await DerpClient.connect(self.url, key or generate_private_key(), **kwargs)  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def start_relay(verify: VerifyNodeKey | None = None, **relay_kwargs: object) -> RunningRelay:
    registry = CollectorRegistry()
    relay = Relay(generate_private_key(), registry=registry, **relay_kwargs)  # type: ignore[arg-type]
    server = await serve_standalone("127.0.0.1", 0, DerpUpgradeHandler(relay), verify=verify)
    return RunningRelay(relay, server, registry)


async def stop_relay(running: RunningRelay) -> None:
    running.relay.close_all()
    running.server.close()
    await running.server.wait_closed()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` is true, polling every 10 ms; TimeoutError after ``within`` s.

    Polling is deliberate: the checks read relay state and metrics that have no event.
    """
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write ``relay.crt`` and ``relay.key`` (PEM) for ``host`` into ``directory``.

    The certificate is its own CA (clients trust it through ``SSL_CERT_FILE`` or
    :func:`trusting`) and carries ``host`` as an IP SAN when it is an address, as Go's
    verifier needs for a DERP node whose HostName is an IP. Valid from yesterday to tomorrow.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt_name = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "relay.crt", directory / "relay.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def trusting(cert_path: Path) -> ssl.SSLContext:
    """A client TLS context that trusts exactly the certificate at ``cert_path``."""
    # With a cafile, create_default_context loads only that file, not the system roots.
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert_path))
