"""A run on an SSH host: reading its output from offsets, its exit, liveness, cancel.

The handle holds only the run directory, pid and process group; every operation goes
through the host's provider (one connection, SFTP for files, exec channels for signals
and liveness). ``alive`` checks asked at the same moment share one exec channel
(:class:`AliveBatch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bosun.errors import BosunError, HostUnreachable, ProviderError
from bosun.providers.base import OutputChunk, Stream
from bosun.providers.local import READ_CAP, DetachedRun, check_offsets, cut_lines, parse_exit

if TYPE_CHECKING:
    from bosun.providers.ssh import SshProvider

__all__ = ["AliveBatch", "SshRun"]


class SshRun(DetachedRun):
    """A detached run on an SSH host (its files: see :mod:`bosun.providers.local`)."""

    def __init__(self, provider: SshProvider, run_dir: str, pid: int, pgid: int) -> None:
        super().__init__(run_dir, pid, pgid)
        self._provider = provider

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        """Complete lines past the offsets (see ``RunHandle.read``); a call that finds
        nothing new costs one round trip."""
        check_offsets(stdout_offset, stderr_offset)
        p = self._provider
        offsets: tuple[tuple[Stream, int], ...] = (
            ("stdout", stdout_offset),
            ("stderr", stderr_offset),
        )
        sizes = await asyncio.gather(
            *(p.files.size(f"{self._run_dir}/{stream}") for stream, _ in offsets)
        )
        wanted = [
            (stream, offset, size)
            for (stream, offset), size in zip(offsets, sizes, strict=True)
            if size is not None and size > offset
        ]
        datas = await asyncio.gather(
            *(
                p.files.read_at(f"{self._run_dir}/{stream}", offset, min(size - offset, READ_CAP))
                for stream, offset, size in wanted
            )
        )
        chunks = []
        for (stream, offset, size), data in zip(wanted, datas, strict=True):
            chunk = cut_lines(data or b"", stream, offset, size, final)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    async def exit_code(self) -> int | None:
        raw = await self._provider.files.read_small(f"{self._run_dir}/exit")
        return None if raw is None else parse_exit(self._run_dir, raw)

    async def alive(self) -> bool:
        """Whether a (non-zombie) process of the run's group still exists on the host."""
        return await self._provider._alive(self._pgid)

    async def _signal(self, kill: bool) -> bool:
        return await self._provider._signal("KILL" if kill else "TERM", self._pgid)

    async def _write_exit_if_missing(self, code: int) -> None:
        await self._provider.files.write_exit_if_missing(self._run_dir, code)


class AliveBatch:
    """Coalesces ``alive`` checks: those asked while a check runs share the next one."""

    def __init__(self, check: Callable[[list[int]], Awaitable[set[int]]]) -> None:
        self._check = check
        self._pending: dict[int, list[asyncio.Future[bool]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def ask(self, pgid: int) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._pending.setdefault(pgid, []).append(fut)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._flush(), name="bosun-ssh-alive")
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                alive = await self._check(sorted(batch))
            except BaseException as exc:
                for futs in batch.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(_copy(exc))
                if isinstance(exc, Exception):
                    continue
                raise
            for pgid, futs in batch.items():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(pgid in alive)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _copy(exc: BaseException) -> BaseException:
    if isinstance(exc, BosunError):
        return type(exc)(exc.message, exc.hint)
    if isinstance(exc, asyncio.CancelledError):
        return HostUnreachable("the liveness check was cancelled", hint="try again")
    return ProviderError(f"liveness check failed: {exc}", hint="try again")
