"""A run on an SSH host: reading its output from offsets, its exit, liveness, cancel.

The handle holds only the run directory, pid and process group; every operation goes
through the host's provider. Exit code, liveness and whether the output files hold
anything come from the host session's ``probe`` (:mod:`bosun.providers.ssh_session`):
the probes of all runs of a host asked at the same moment share one request
(:class:`Coalescer`). Output is read over SFTP, and only when a probe found some.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from bosun.errors import BosunError, HostUnreachable, ProviderError
from bosun.providers.base import OutputChunk, Stream
from bosun.providers.local import READ_CAP, DetachedRun, check_offsets, cut_lines, parse_exit

if TYPE_CHECKING:
    from bosun.providers.ssh import SshProvider

__all__ = ["Coalescer", "Probe", "SshRun"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Probe:
    """What the host session saw of one run at one moment."""

    exit: int | None  # the exit code, once the wrapper (or a cancel) recorded it
    bad_exit: bool  # the exit file holds something that is not a code
    stdout: bool  # stdout holds at least one byte
    stderr: bool
    alive: bool | None  # a (non-zombie) process of the run's group exists; None: not asked
    # (an ended run's group is looked at only when asked for: a leader that is still a
    # zombie then costs a scan of /proc)

    @classmethod
    def parse(cls, word: str) -> Probe:
        """``EXIT:OEA`` (``-`` for no exit yet, ``bad``; 0/1 flags, ``A`` also ``-``)."""
        code, _, flags = word.partition(":")
        if len(flags) != 3 or not (code in ("-", "bad") or code.isdigit()):
            raise ProviderError(f"unexpected probe answer {word!r}", hint="report this as a bug")
        return cls(
            exit=int(code) if code.isdigit() else None,
            bad_exit=code == "bad",
            stdout=flags[0] == "1",
            stderr=flags[1] == "1",
            alive=None if flags[2] == "-" else flags[2] == "1",
        )


class SshRun(DetachedRun):
    """A detached run on an SSH host (its files: see :mod:`bosun.providers.local`).

    A follower asks ``exit_code``, then ``read``, then ``alive``: the last two use what
    the probe behind ``exit_code`` saw (once each), so one poll is one shared request.
    """

    def __init__(self, provider: SshProvider, run_dir: str, pid: int, pgid: int) -> None:
        super().__init__(run_dir, pid, pgid)
        self._provider = provider
        self._for_read: Probe | None = None
        self._for_alive: Probe | None = None

    async def _probe(self, *, group: bool = False) -> Probe:
        """``group``: look at the process group even if the run has an exit code."""
        probe = await self._provider.probe(self._run_dir, self._pgid, group=group)
        self._for_read = self._for_alive = probe
        return probe

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        """Complete lines past the offsets (see ``RunHandle.read``): nothing to do when
        the last probe saw both files empty; else one round trip to learn the sizes."""
        check_offsets(stdout_offset, stderr_offset)
        seen, self._for_read = self._for_read, None
        if seen is not None and not seen.stdout and not seen.stderr:
            return []
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
        probe = await self._probe()
        if probe.bad_exit:  # read it to say what it holds
            raw = await self._provider.files.read_small(f"{self._run_dir}/exit")
            return None if raw is None else parse_exit(self._run_dir, raw)
        return probe.exit

    async def alive(self) -> bool:
        """Whether a (non-zombie) process of the run's group still exists on the host."""
        seen, self._for_alive = self._for_alive, None
        if seen is None or seen.alive is None:
            seen = await self._probe(group=True)
            self._for_read = None
        return bool(seen.alive)

    async def _signal(self, kill: bool) -> bool:
        return await self._provider.signal("KILL" if kill else "TERM", self._pgid)

    async def _write_exit_if_missing(self, code: int) -> None:
        await self._provider.files.write_exit_if_missing(self._run_dir, code)


class Coalescer(Generic[K, V]):
    """Coalesces questions: those asked while an answer is on its way share the next
    request (``check`` answers a list of keys with a dict)."""

    def __init__(self, check: Callable[[list[K]], Awaitable[dict[K, V]]], what: str) -> None:
        self._check = check
        self._what = what
        self._pending: dict[K, list[asyncio.Future[V]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def ask(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[V] = loop.create_future()
        self._pending.setdefault(key, []).append(fut)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._flush(), name=f"bosun-ssh-{self._what}")
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                answers = await self._check(list(batch))
            except BaseException as exc:
                for futs in batch.values():
                    for fut in futs:
                        if not fut.done():
                            fut.set_exception(_copy(exc, self._what))
                if isinstance(exc, Exception):
                    continue
                raise
            for key, futs in batch.items():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(answers[key])

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _copy(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, BosunError):
        return type(exc)(exc.message, exc.hint)
    if isinstance(exc, asyncio.CancelledError):
        return HostUnreachable(f"the {what} was cancelled", hint="try again")
    return ProviderError(f"{what} failed: {exc}", hint="try again")
