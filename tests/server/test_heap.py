"""The heap keeper of ``headscale serve``: frozen objects stay out of automatic collections, and a
sweep still finds cyclic garbage that was frozen."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from headscale_core.config import load_config
from headscale_core.errors import ConfigError
from headscale_core.server.heap import HeapKeeper, kept_heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_frozen_cycles_survive_collections_until_a_sweep() -> None:
    garbage = _Cycle()
    ref = weakref.ref(garbage)
    gc.freeze()
    del garbage
    gc.collect()
    assert ref() is not None, "a frozen object must be invisible to ordinary collections"
    keeper = HeapKeeper(freeze_interval=1, sweep_interval=1)
    assert keeper.sweep() >= 1
    assert ref() is None
    assert gc.get_freeze_count() > 0, "what survived the sweep is frozen again"
    assert keeper.sweeps == 1


def test_intervals_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="at most sweep_interval"):
        HeapKeeper(freeze_interval=60, sweep_interval=30)


def test_kept_heap_freezes_on_its_clock_and_thaws_at_the_end() -> None:
    async def scenario() -> tuple[int, int]:
        async with kept_heap(0.05, 10) as keeper:
            assert keeper is not None
            await asyncio.sleep(0)  # the first sweep
            young = [_Cycle() for _ in range(100)]
            before = gc.get_freeze_count()
            await asyncio.sleep(0.12)
            during = gc.get_freeze_count()
            del young
        return during - before, gc.get_freeze_count()

    grown, after = asyncio.run(scenario())
    assert grown >= 100, "objects made after a sweep are frozen at the next tick"
    assert after == 0


def test_zero_interval_turns_the_keeper_off() -> None:
    async def scenario() -> object:
        async with kept_heap(0, 600) as keeper:
            return keeper

    assert asyncio.run(scenario()) is None
    assert gc.get_freeze_count() == 0


def test_config_rejects_a_sweep_shorter_than_the_freeze(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("tuning:\n  gc_freeze_interval: 5m\n  gc_sweep_interval: 1m\n")
    with pytest.raises(ConfigError, match="tuning.gc_sweep_interval: '1m' must not be shorter"):
        load_config(str(path))


_FRAGMENTED_HEAP = """
import json
from headscale_core.server.heap import release_free_pages

def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

blocks = [bytes(4000) + bytes([i % 251]) for i in range(40_000)]  # ~160 MB of C-heap blocks
kept = blocks[::16]  # live blocks all along the heap: free() alone cannot shrink it from the top
del blocks
before = rss_kb()
released = release_free_pages()
print(json.dumps({"released": released, "before": before, "after": rss_kb(), "kept": len(kept)}))
"""


def test_free_pages_between_live_blocks_go_back_to_the_kernel() -> None:
    """What a storm leaves: free chunks between live ones stay resident until trimmed."""
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True,
                         check=True, timeout=60)
    figures = json.loads(out.stdout)
    if not figures["released"]:
        pytest.skip("this C library has no malloc_trim")
    assert figures["before"] - figures["after"] > 100_000, figures  # of ~150 MB freed, in KB
