"""Fixtures for end-to-end tests: our server in-process with the built-in DERP relay and
STUN on loopback ports, for real clients in the same network namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from headscale_core.testing.inprocess import RunningServer, running
from headscale_core.testing.netns import free_loopback_port


def control_overrides(**extra: Any) -> dict[str, Any]:
    port, stun = free_loopback_port(), free_loopback_port()
    overrides: dict[str, Any] = {
        "server_url": f"http://127.0.0.1:{port}",
        "listen_addr": f"127.0.0.1:{port}",
        "derp": {"urls": [], "paths": [], "server": {
            "enabled": True, "stun_listen_addr": f"127.0.0.1:{stun}", "verify_clients": True,
            "ipv4": "127.0.0.1", "region_id": 901, "region_code": "test", "region_name": "Test relay"}},
        "tuning": {"batch_change_delay": "5ms"},
    }
    overrides.update(extra)
    return overrides


@pytest_asyncio.fixture
async def control(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running(tmp_path / "control", **control_overrides()) as srv:
        yield srv
