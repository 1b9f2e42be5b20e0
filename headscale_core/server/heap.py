"""Keeping Python's cycle collector off the server's long-lived state (``headscale serve`` only).

The server's heap is mostly long-lived: nodes, compiled policy, encoded peers, one connection
state per client. CPython's cycle collector walks the whole of it on every full collection,
and it runs one each time that heap has grown by a quarter: during a 5,000-node join storm
that was 28 full collections and 11 s of a 190 s CPU budget, each one a pause of up to 0.4 s
in every map stream.

``HeapKeeper`` moves what exists into the collector's permanent generation (``gc.freeze``)
every ``freeze_interval``, so automatic collections only walk what is new since then. Objects
frozen while already garbage, or that become cyclic garbage later, are not lost: every
``sweep_interval`` everything is unfrozen, collected once and frozen again. A connection's
state must not depend on that: it is freed by reference counting when the client leaves (no
reference cycles, see ``tests/server/test_connection_garbage.py``), or a reconnect storm would
keep every old connection until the next sweep. Reference counting is not affected at all.

After each freeze the keeper also hands glibc's free pages back to the kernel
(``malloc_trim``). A storm leaves the C heap (hpack tables, dict key tables, buffers: everything
above pymalloc's 512 bytes) full of free chunks between live ones, which glibc returns only from
the top of the heap on its own: at 5,000 idle sparse nodes that was ~35 MB of resident memory
nobody used (367 → 332 MB side by side). The call walks the heap once (milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)


class HeapKeeper:
    """Freezes the heap on a clock and sweeps it now and then; ``run`` loops until cancelled."""

    def __init__(self, freeze_interval: float, sweep_interval: float) -> None:
        if freeze_interval <= 0 or sweep_interval < freeze_interval:
            raise ValueError("freeze_interval must be positive and at most sweep_interval")
        self.freeze_interval = freeze_interval
        self.sweep_interval = sweep_interval
        self.sweeps = 0
        self.last_sweep_seconds = 0.0

    def sweep(self) -> int:
        """Collect everything once (frozen objects too), then freeze what survived."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.sweeps += 1
        self.last_sweep_seconds = time.perf_counter() - started
        log.debug("heap sweep: %d unreachable objects, %.3f s, %d frozen",
                  found, self.last_sweep_seconds, gc.get_freeze_count())
        return found

    async def run(self) -> None:
        self.sweep()
        since_sweep = 0.0
        while True:
            await asyncio.sleep(self.freeze_interval)
            since_sweep += self.freeze_interval
            if since_sweep >= self.sweep_interval:
                since_sweep = 0.0
                self.sweep()
            else:
                gc.freeze()
            release_free_pages()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def release_free_pages() -> bool:
    """Return the C heap's free pages to the kernel; False where that is not possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


@contextlib.asynccontextmanager
async def kept_heap(freeze_interval: float, sweep_interval: float) -> AsyncIterator[HeapKeeper | None]:
    """Run a ``HeapKeeper`` for the duration; a zero interval turns it off (plain CPython GC)."""
    if freeze_interval <= 0 or sweep_interval <= 0:
        yield None
        return
    keeper = HeapKeeper(freeze_interval, sweep_interval)
    task = asyncio.create_task(keeper.run())
    try:
        yield keeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
