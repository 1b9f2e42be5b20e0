"""DERP over TLS on the core's main listener (``tls_cert_path``/``tls_key_path``), with a
self-signed certificate made by the test. Only our asyncio client and loopback: no
Tailscale client, so no namespace needed (the real clients over TLS are in
``test_derp_e2e_official_clients.py``)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from headscale_derp import plugin
from headscale_derp.client import DerpClient
from headscale_derp.handshake import generate_private_key
from headscale_derp.testing import self_signed_certificate, trusting

from headscale_core.testing.inprocess import loopback_control, running
from headscale_core.testing.netns import free_loopback_port


async def test_derp_clients_relay_over_the_tls_listener(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    port = free_loopback_port()
    config = loopback_control(
        server_url=f"https://127.0.0.1:{port}",
        listen_addr=f"127.0.0.1:{port}",
        tls_cert_path=str(cert),
        tls_key_path=str(key),
        derp={"server": {"verify_clients": False, "region_id": 907, "region_code": "tls"}},
    )
    async with running(tmp_path / "control", **config) as control:
        (node,) = control.state.derp_map["Regions"][907]["Nodes"]
        assert (node["HostName"], node["DERPPort"]) == ("127.0.0.1", port)
        relay = plugin.service(control.ctx).relay
        assert relay is not None
        url = f"https://127.0.0.1:{port}/derp"
        tls = trusting(cert)
        one = await DerpClient.connect(url, generate_private_key(), ssl=tls)
        # Fast start: ClientInfo rides in the same TLS records as the request head.
        two = await DerpClient.connect(url, generate_private_key(), ssl=tls, fast_start_key=relay.public_key)
        try:
            assert one.server_key == two.server_key == relay.public_key
            assert one.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            big = bytes(range(256)) * 256
            one.send_packet(two.public_key, big)
            assert await asyncio.wait_for(two.recv_packet(), 5) == (one.public_key, big)
            two.send_packet(one.public_key, b"back over TLS")
            assert await asyncio.wait_for(one.recv_packet(), 5) == (two.public_key, b"back over TLS")
        finally:
            await one.close()
            await two.close()
        assert relay.stats.bytes_sent == len(big) + len(b"back over TLS")


async def test_a_client_that_does_not_trust_the_certificate_is_not_connected(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    other, _ = self_signed_certificate(tmp_path / "other")
    port = free_loopback_port()
    config = loopback_control(
        server_url=f"https://127.0.0.1:{port}",
        listen_addr=f"127.0.0.1:{port}",
        tls_cert_path=str(cert),
        tls_key_path=str(key),
    )
    async with running(tmp_path / "control", **config) as control:
        url = f"https://127.0.0.1:{port}/derp"
        with pytest.raises(ssl.SSLCertVerificationError):
            await DerpClient.connect(url, generate_private_key(), ssl=trusting(other))
        relay = plugin.service(control.ctx).relay
        assert relay is not None and relay.stats.accepts == 0
