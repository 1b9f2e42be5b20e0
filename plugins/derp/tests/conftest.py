"""Fixtures: relays on 127.0.0.1 (see ``headscale_derp.testing``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from headscale_derp.http import VerifyNodeKey
from headscale_derp.testing import RunningRelay, start_relay, stop_relay


@pytest.fixture
async def derp() -> AsyncIterator[RunningRelay]:
    running = await start_relay()
    yield running
    await stop_relay(running)


@pytest.fixture
async def relays() -> AsyncIterator[Callable[..., Awaitable[RunningRelay]]]:
    """A factory for extra relays (mesh, admission); all are stopped after the test."""
    started: list[RunningRelay] = []

    async def factory(verify: VerifyNodeKey | None = None, **kwargs: object) -> RunningRelay:
        running = await start_relay(verify, **kwargs)
        started.append(running)
        return running

    yield factory
    for running in started:
        await stop_relay(running)
