"""Keep-alive deadlines fall on ticks shared by every session, so an idle server wakes once per
tick for all the keep-alives due in it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from headscale_core.flag import Flag
from headscale_core.mapper.session import MapSession


class _Stream:
    def __init__(self) -> None:
        self.closed = Flag()
        self.sent_at: list[float] = []

    async def send_data(self, data: bytes) -> None:
        self.sent_at.append(asyncio.get_running_loop().time())

    def try_send_nowait(self, data: bytes) -> bool:
        self.sent_at.append(asyncio.get_running_loop().time())
        return True

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        pass


def test_keepalives_of_many_sessions_share_ticks() -> None:
    async def scenario() -> list[list[float]]:
        streams = [_Stream() for _ in range(20)]
        sessions = [MapSession(i, s, capver=130, keepalive=1.0) for i, s in enumerate(streams)]
        tasks = [asyncio.create_task(s.run()) for s in sessions]
        await asyncio.sleep(3.5)
        for session in sessions:
            session.close()
        await asyncio.gather(*tasks)
        return [s.sent_at for s in streams]

    sent = asyncio.run(scenario())
    assert all(len(times) >= 2 for times in sent), sent  # every session kept alive, ~1.0-1.3 s apart
    tick = 0.1  # keepalive / 10
    moments = sorted(t for times in sent for t in times)
    for t in moments:
        off = (t / tick) % 1.0
        assert min(off, 1 - off) < 0.2, f"a keep-alive at {t:.3f} is off the {tick} s ticks"
    # 20 sessions with random jitter, yet they go out together on a handful of ticks
    ticks = {round(t / tick) for t in moments}
    assert len(ticks) < len(moments) / 2, (len(ticks), len(moments))
