"""pytest fixtures for end-to-end tests with real Tailscale clients and our server in a subprocess.

Opt in with ``pytest_plugins = ["headscale_core.testing.pytest_plugin"]``. Tests marked ``e2e``
are skipped, with the reason, when the run is not in a loopback-only network namespace (run them
with ``scripts/test``); inside one, a missing binary is a failure that says how to build it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from headscale_core.testing.netns import isolation_problems
from headscale_core.testing.serverproc import ServerProcess
from headscale_core.testing.tailscale import DEFAULT_VERSION, TailscaleNode

NodeFactory = Callable[..., Awaitable[TailscaleNode]]
ServerFactory = Callable[..., ServerProcess]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = isolation_problems()
    if not problems:
        return
    skip = pytest.mark.skip(
        reason="e2e: real Tailscale clients run only in a loopback-only network namespace "
        f"({'; '.join(problems)}); run `scripts/test`"
    )
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:  # teardown of the fixtures below prints the logs of a failed test
        item.stash[_failed] = True
    return report


_failed = pytest.StashKey[bool]()


@pytest_asyncio.fixture
async def tailscale_node_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[NodeFactory]:
    """``await factory("n1", version=..., env=..., start=True)`` -> a started `TailscaleNode`."""
    nodes: list[TailscaleNode] = []

    async def make(
        name: str = "", *, version: str = DEFAULT_VERSION, start: bool = True, **kwargs: Any
    ) -> TailscaleNode:
        name = name or f"n{len(nodes) + 1}"
        node = TailscaleNode(name, tmp_path / f"ts-{name}", version=version, **kwargs)
        nodes.append(node)
        if start:
            await node.start()
        return node

    yield make
    for node in nodes:
        await node.stop()
        if request.node.stash.get(_failed, False):
            print(f"\n=== tailscale node {node.name} ({node.version})\n{node.log_tail()}")


@pytest.fixture
def headscale_server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """``factory(overrides={...}, start=True)`` -> our server as a started `ServerProcess`."""
    servers: list[ServerProcess] = []

    def make(overrides: dict[str, Any] | None = None, *, start: bool = True) -> ServerProcess:
        server = ServerProcess(tmp_path / f"server{len(servers) + 1}", overrides)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        if request.node.stash.get(_failed, False):
            print(f"\n=== server {server.url}\n{server.log_tail()}")


@pytest.fixture
def headscale_server(headscale_server_factory: ServerFactory) -> ServerProcess:
    """Our server with the default loopback config, started."""
    return headscale_server_factory()
