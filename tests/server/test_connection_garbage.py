"""A finished connection is freed by reference counting alone: the server freezes its heap
(``server/heap``), so state that needed the cycle collector stayed in memory until the next
sweep, and a reconnect storm's old connections made the storm's peak RSS."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import SimNode as Machine
from headscale_core.testing.simnode import next_message

# asyncio's own selector transport refers to itself (its read callback is a bound method); it is
# the event loop's, uvloop (the server's default) has no such cycle, and it holds nothing of ours.
_OURS = ("headscale_core.", "h2.", "hpack.", "hyperframe.")


@contextmanager
def cyclic_garbage() -> Iterator[Counter[str]]:
    """Count, by type, what only the cycle collector could free of what became garbage inside."""
    found: Counter[str] = Counter()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        for obj in gc.garbage:
            kind = type(obj)
            name = f"{kind.__module__}.{kind.__qualname__}"
            if name.startswith(_OURS) or (kind.__name__ == "method" and
                                         getattr(obj.__self__.__class__, "__module__", "").startswith(_OURS)):
                found[name] += 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_closed_map_session_leaves_no_cycles(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("alice")
        _, key = await srv.state.create_preauth_key(user, reusable=True)
        machines = [Machine(srv.url, f"n{i}") for i in range(2)]
        for m in machines:
            await m.connect()
            await m.client.register(m.node.node_public(), auth_key=key, hostinfo={"Hostname": m.name})
        streams = [m.client.map_stream(m.map_request()) for m in machines]
        for stream in streams:
            await next_message(stream)
        with cyclic_garbage() as found:
            await machines[0].client.close()
            for _ in range(50):  # the server notices the close and its session ends
                await asyncio.sleep(0.02)
                if len(srv.ctx.extras["mapper"].sessions) == 1:
                    break
            await asyncio.sleep(0.1)
        assert not found, f"a closed connection left reference cycles: {dict(found)}"
        await machines[1].client.close()
