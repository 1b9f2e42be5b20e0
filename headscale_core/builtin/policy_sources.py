"""Built-in policy sources: a HuJSON ``file`` (watched, SIGHUP) and the ``database``."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from headscale_core.errors import InvalidRequest
from headscale_core.hookspecs import hookimpl
from headscale_core.providers import PolicySource, PolicySourceReadOnly
from headscale_core.server.context import ServerContext
from headscale_core.storage import repository as repo

log = logging.getLogger(__name__)


class FilePolicySource:
    """``policy.mode: file``. The file is the truth; ``policy set`` cannot write it."""

    def __init__(self, path: Path | None, poll_interval: float = 1.0) -> None:
        self.path = path
        self.poll_interval = poll_interval

    async def load(self) -> str | None:
        if self.path is None:
            return None
        try:
            return await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError as exc:
            raise OSError(f"cannot read policy.path {self.path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            # A ValueError: left alone it would end the reload loop, and no later edit would load.
            raise InvalidRequest(f"policy.path {self.path} is not UTF-8 text (byte {exc.start}): "
                                 "save the policy as UTF-8") from exc

    async def store(self, text: str) -> None:
        raise PolicySourceReadOnly(
            f"policy.mode is file: edit {self.path} instead (the server reloads it), "
            "or set policy.mode: database to manage the policy with `headscale policy set`"
        )

    async def watch(self) -> AsyncIterator[None]:
        if self.path is None:
            return
        hup = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, hup.set)
        except (RuntimeError, ValueError):  # not the main thread (tests): file polling only
            pass
        last = _stamp(self.path)
        try:
            while True:
                try:
                    await asyncio.wait_for(hup.wait(), self.poll_interval)
                except TimeoutError:
                    pass
                stamp = _stamp(self.path)
                if hup.is_set() or stamp != last:
                    hup.clear()
                    last = stamp
                    yield None
        finally:
            try:
                loop.remove_signal_handler(signal.SIGHUP)
            except (RuntimeError, ValueError):
                pass


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


class DatabasePolicySource:
    """``policy.mode: database``: the newest row of the policies table."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def load(self) -> str | None:
        async with self.ctx.state.storage.transaction() as s:
            return await repo.latest_policy(s)

    async def store(self, text: str) -> None:
        from datetime import UTC, datetime

        async with self.ctx.state.writing() as s:
            await repo.store_policy(s, text, datetime.now(UTC))

    async def watch(self) -> AsyncIterator[None]:
        # Changes made through this server are applied directly by the state service;
        # other instances learn of them through the change bus.
        return
        yield


def file_source(ctx: ServerContext) -> PolicySource:
    path = ctx.config.policy.path
    return FilePolicySource(Path(path).expanduser() if path else None)


@hookimpl(trylast=True)
def headscale_policy_sources() -> Mapping[str, Callable[[ServerContext], PolicySource]]:
    return {"file": file_source, "database": DatabasePolicySource}
