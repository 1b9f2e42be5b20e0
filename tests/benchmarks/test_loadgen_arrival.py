"""The load generator times a frame's arrival when it reached the node's socket (the kernel's
receive timestamp), not when its one busy core got round to reading it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from benchmarks.loadgen.node import _DirectProtocol, _StampedReader


class _Client:
    """What ``_DirectProtocol`` needs of a ``CountingClient``."""

    _closed: str | None = None
    arrived_at = 0.0

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self.got: list[tuple[bytes, float, float]] = []
        self.shut: list[str] = []

    def _receive(self, data: bytes) -> None:
        self.got.append((data, self.arrived_at, time.perf_counter()))

    def _shut(self, reason: str) -> None:
        self.shut.append(reason)


def test_arrival_is_the_kernels_receive_time_and_the_end_is_noticed() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def peer() -> None:  # another thread: it sends while the event loop is busy
        conn, _ = listener.accept()
        with conn:
            time.sleep(0.05)
            conn.sendall(b"x" * 100)
            time.sleep(0.3)

    async def scenario() -> tuple[_Client, bool]:
        threading.Thread(target=peer, daemon=True).start()
        loop = asyncio.get_running_loop()
        _, writer = await asyncio.open_connection(*listener.getsockname())
        client = _Client(writer)
        lost = loop.create_future()
        protocol = _DirectProtocol(client, lost)  # type: ignore[arg-type]
        writer.transport.set_protocol(protocol)
        protocol.stamped = _StampedReader.attach(protocol, writer.transport, loop)
        time.sleep(0.25)  # the loop is busy: the bytes wait in the kernel
        await asyncio.wait_for(lost, 5)
        return client, protocol.stamped is None

    client, released = asyncio.run(scenario())
    listener.close()
    assert [data for data, _, _ in client.got] == [b"x" * 100]
    _, arrived, read = client.got[0]
    assert read - arrived > 0.1, "arrival must be the kernel's time, ~0.2 s before the read"
    assert client.shut and released, "the end of the connection closes the reader"
