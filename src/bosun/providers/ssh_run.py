"""A run on an SSH host: reading its output from offsets, its exit, liveness, cancel.

The handle holds only the run directory, pid and process group; every operation goes
through the host's provider (one connection, SFTP for files, exec channels for signals
and liveness). ``alive`` checks asked at the same moment share one exec channel
(:class:`AliveBatch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bosun.errors import BosunError, HostUnreachable, ProviderError
from bosun.providers.base import OutputChunk, Stream
from bosun.providers.local import READ_CAP

if TYPE_CHECKING:
    from bosun.providers.ssh import SshProvider

__all__ = ["AliveBatch", "SshRun"]

_CANCEL_POLL = 0.05
_KILL_WAIT = 5.0


def _chunk(data: bytes, stream: Stream, offset: int, size: int, final: bool) -> OutputChunk | None:
    """Complete lines of ``data`` (read at ``offset`` of a file of ``size`` bytes), as
    ``bosun.providers.local`` cuts them."""
    if not data:
        return None
    at_eof = offset + len(data) >= size
    cut = data.rfind(b"\n")
    if final and at_eof:
        body = data[:-1] if data.endswith(b"\n") else data
        consumed = len(data)
    elif cut >= 0:
        body = data[:cut]
        consumed = cut + 1
    elif len(data) >= READ_CAP:
        body = data
        consumed = len(data)
    else:
        return None
    lines = tuple(
        (raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8", errors="replace")
        for raw in body.split(b"\n")
    )
    return OutputChunk(stream=stream, lines=lines, end_offset=offset + consumed)


def _parse_exit(run_dir: str, raw: bytes) -> int:
    text = raw.decode("ascii", errors="replace").strip()
    try:
        return int(text)
    except ValueError as exc:
        raise ProviderError(
            f"the exit file of run {run_dir} holds {text[:40]!r}, not an exit code",
            hint="the run directory was modified by hand; remove the 'exit' file to wait again",
        ) from exc


class SshRun:
    """A detached run on an SSH host (its files: see :mod:`bosun.providers.local`)."""

    def __init__(self, provider: SshProvider, run_dir: str, pid: int, pgid: int) -> None:
        self._provider = provider
        self._run_dir = run_dir
        self._pid = pid
        self._pgid = pgid

    @property
    def ref(self) -> dict[str, Any]:
        """``{"run_dir", "pid", "pgid"}`` (paths on the host): what ``attach`` needs."""
        return {"run_dir": self._run_dir, "pid": self._pid, "pgid": self._pgid}

    @property
    def run_dir(self) -> str:
        return self._run_dir

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def pgid(self) -> int:
        return self._pgid

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        """Complete lines past the offsets (see ``RunHandle.read``); a call that finds
        nothing new costs one round trip."""
        if stdout_offset < 0 or stderr_offset < 0:
            raise ProviderError(
                f"negative output offset ({stdout_offset}, {stderr_offset})",
                hint="offsets are byte positions from the run's stored chunks, starting at 0",
            )
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
            chunk = _chunk(data or b"", stream, offset, size, final)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    async def exit_code(self) -> int | None:
        raw = await self._provider.files.read_small(f"{self._run_dir}/exit")
        return None if raw is None else _parse_exit(self._run_dir, raw)

    async def alive(self) -> bool:
        """Whether a (non-zombie) process of the run's group still exists on the host."""
        return await self._provider._alive(self._pgid)

    async def cancel(self, grace: float = 5.0) -> None:
        """SIGTERM the group on the host, SIGKILL it after ``grace`` seconds; always
        leaves an exit code (143 or 137 unless the wrapper recorded its own)."""
        p = self._provider
        loop = asyncio.get_running_loop()
        code = 143
        if await p._signal("TERM", self._pgid):
            deadline = loop.time() + grace
            while await self.alive() and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_CANCEL_POLL)
            if await self.alive():
                code = 137
                await p._signal("KILL", self._pgid)
                deadline = loop.time() + _KILL_WAIT
                while await self.alive() and loop.time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(_CANCEL_POLL)
        await p.files.write_exit_if_missing(self._run_dir, code)


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
