"""Keeping Python's cycle collector off the server's long-lived state (``headscale serve`` only).

The server's heap is mostly long-lived: nodes, compiled policy, encoded peers, one connection
state per client. CPython's cycle collector walks the whole of it on every full collection,
and it runs one each time that heap has grown by a quarter: during a 5,000-node join storm
that was 28 full collections and 11 s of a 190 s CPU budget, each one a pause of up to 0.4 s
in every map stream.

``HeapKeeper`` moves what exists into the collector's permanent generation (``gc.freeze``)
every ``freeze_interval``, so automatic collections only walk what is new since then. Objects
frozen while already garbage, or that become cyclic garbage later, are not lost: every
``sweep_interval`` everything is unfrozen, collected once and frozen again, and sooner after
churn: when more connections have ended since the last sweep than a tenth of those open (a
reconnect storm leaves every old connection's reference cycles frozen: 80 MB at 5,000 nodes),
as soon as connections stop ending and opening, so the pause falls right after the storm.
Reference counting, which frees almost everything, is not affected at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)

CHURN_CHECK_SECONDS = 2.0


class HeapKeeper:
    """Freezes the heap on a clock and sweeps it now and then; ``run`` loops until cancelled."""

    def __init__(self, freeze_interval: float, sweep_interval: float,
                 churn: Callable[[], tuple[int, int]] | None = None) -> None:
        """``churn`` returns (connections ended so far, connections open now)."""
        if freeze_interval <= 0 or sweep_interval < freeze_interval:
            raise ValueError("freeze_interval must be positive and at most sweep_interval")
        self.freeze_interval = freeze_interval
        self.sweep_interval = sweep_interval
        self.churn = churn
        self.sweeps = 0
        self.last_sweep_seconds = 0.0
        self._ended_at_sweep = 0

    def churned(self) -> bool:
        """Have enough connections ended since the last sweep to sweep now?"""
        if self.churn is None:
            return False
        ended, open_now = self.churn()
        return ended - self._ended_at_sweep > max(100, open_now // 10)

    def sweep(self) -> int:
        """Collect everything once (frozen objects too), then freeze what survived."""
        started = time.perf_counter()
        if self.churn is not None:
            self._ended_at_sweep = self.churn()[0]
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
        # Churn is looked at every few seconds, and swept once connections neither end nor
        # open any more (the storm and the redials after it are over: a sweep in the middle of
        # them would be one of many, each a pause), or at the next freeze if they go on.
        step = min(CHURN_CHECK_SECONDS, self.freeze_interval)
        since_sweep = since_freeze = 0.0
        last = (-1, -1)
        while True:
            await asyncio.sleep(step)
            since_sweep += step
            since_freeze += step
            now = self.churn() if self.churn is not None else (0, 0)
            settled, last = now == last, now
            if since_sweep >= self.sweep_interval or (
                    self.churned() and (settled or since_freeze >= self.freeze_interval)):
                since_sweep = since_freeze = 0.0
                self.sweep()
            elif since_freeze >= self.freeze_interval:
                since_freeze = 0.0
                gc.freeze()


@contextlib.asynccontextmanager
async def kept_heap(freeze_interval: float, sweep_interval: float,
                    churn: Callable[[], tuple[int, int]] | None = None) -> AsyncIterator[HeapKeeper | None]:
    """Run a ``HeapKeeper`` for the duration; a zero interval turns it off (plain CPython GC)."""
    if freeze_interval <= 0 or sweep_interval <= 0:
        yield None
        return
    keeper = HeapKeeper(freeze_interval, sweep_interval, churn)
    task = asyncio.create_task(keeper.run())
    try:
        yield keeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
