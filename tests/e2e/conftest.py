"""Fixtures for end-to-end tests: our server in-process with the built-in DERP relay and
STUN on loopback ports, for real clients in the same network namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from headscale_core.testing.inprocess import RunningServer, loopback_control, running


@pytest_asyncio.fixture
async def control(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running(tmp_path / "control", **loopback_control()) as srv:
        yield srv
