"""``Flag``: what the server needs of ``asyncio.Event``, in a fraction of its memory.

Every client connection holds a few events (its streams' "closed" and "window opened", its map
session's "closed" and "frames ready"). ``asyncio.Event`` allocates a ``collections.deque`` for
its waiters up front: ~620 bytes each, kilobytes per idle client, for waiters that seldom
exist. A ``Flag`` keeps no list until someone waits.
"""

from __future__ import annotations

import asyncio


class Flag:
    """Set, clear, test and wait, like ``asyncio.Event`` (same semantics, no loop binding)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        """Return True once the flag is set (at once if it is)."""
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters = self._waiters
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
