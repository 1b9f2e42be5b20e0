"""``Flag`` behaves like ``asyncio.Event`` where the server relies on it."""

from __future__ import annotations

import asyncio
import collections
import sys

import pytest

from headscale_core.flag import Flag


def test_set_wakes_every_waiter_and_wait_returns_at_once_when_set() -> None:
    async def scenario() -> None:
        flag = Flag()
        woke: list[int] = []

        async def waiter(n: int) -> None:
            assert await flag.wait()
            woke.append(n)

        tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
        await asyncio.sleep(0)
        assert woke == [] and not flag.is_set()
        flag.set()
        await asyncio.gather(*tasks)
        assert sorted(woke) == [0, 1, 2]
        assert await asyncio.wait_for(flag.wait(), 0.1)  # already set
        flag.clear()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(flag.wait(), 0.05)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    async def scenario() -> None:
        flag = Flag()
        first = asyncio.create_task(flag.wait())
        second = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        assert first.cancelled() and not second.done()
        flag.set()
        assert await second

    asyncio.run(scenario())


def test_an_idle_flag_is_far_smaller_than_an_event() -> None:
    flag, event = Flag(), asyncio.Event()
    assert sys.getsizeof(flag) * 5 < sys.getsizeof(collections.deque()) + sys.getsizeof(event)
