"""The host session: one long-lived ``/bin/sh`` per SSH host that launches runs and
answers for all of them, so that neither costs a channel, a login or a process.

An exec channel per command costs a channel open, a process forked by sshd, the user's
login shell and the command (a few milliseconds each on a warm connection, and as many
processes on the host), and an SFTP request per file is a round trip. The session is
started once per connection: ``env -i /bin/sh -s PATH`` reading
:data:`~bosun.providers.ssh_scripts.SESSION_SCRIPT` and then bosun's requests from its
stdin (each a brace group made by :func:`~bosun.providers.ssh_scripts.session_request`,
every argument quoted by the one quoting function). Its answers are lines on stdout:
the request id, then words. Requests are served one at a time, in order.

- ``launch``: writes the run's files with ``printf`` (a builtin: no process, and the
  environment's values never appear on a command line), exports the run's variables in a
  subshell that becomes ``setsid -f /bin/sh -c WRAPPER``; the wrapper itself answers,
  once it runs in its own session, while the session serves the next request.
- ``probe``: for any number of runs, the exit code, whether ``stdout``/``stderr`` hold
  anything and whether the process group lives, with builtins only (files and /proc).
- ``launched``: what a launch cut off by the end of a session left in its run directory
  (no ``cmd.json``; the wrapper's pid; ``cmd.json`` and no pid).

The session holds no state that matters: runs are detached and their files are the
record, so a session that dies (its shell killed, the link lost) fails the requests in
flight (``HostUnreachable`` when the link is gone, else :class:`SessionEnded`) and the
next request starts a new one. A probe or a signal is simply sent again; a launch finds
out from the run directory whether it took effect (``SshProvider._launch_in_session``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from typing import NamedTuple

import asyncssh

from bosun.errors import HostUnreachable, ProviderError
from bosun.providers.ssh_conn import SshLink
from bosun.providers.ssh_scripts import SESSION_SCRIPT, SPARES, remote_command, session_request

__all__ = ["HostSession", "SessionEnded", "Spare"]

log = logging.getLogger(__name__)

#: How long the session may take to start and say it is ready.
START_TIMEOUT = 30.0
_STDERR_KEEP = 2000


class SessionEnded(ProviderError):
    """The session shell ended under a request while the link is up (the shell was
    killed, or its channel closed): the request may have run, or not."""


class Spare(NamedTuple):
    """A spare wrapper of the session (see :data:`~bosun.providers.ssh_scripts.SPARE_SCRIPT`)."""

    slot: int
    pid: int
    session: int  # the HostSession.starts it belongs to


class HostSession:
    """The session shell of one host (see the module docstring)."""

    def __init__(self, link: SshLink, name: str, spare_dir: str = "") -> None:
        self.link = link
        self.name = name
        self.path = ""  # the host's PATH for the session's own commands (setsid)
        self.spare_dir = spare_dir  # where the session makes its FIFOs ("": no spares)
        self.has_setsid = False
        self.has_spares = False
        self.starts = 0  # sessions started so far (which one a spare belongs to)
        self._idle: dict[int, int] = {}  # slot -> pid of a spare waiting there
        self._filling: set[int] = set()  # slots whose refill is on its way
        self._refills: set[asyncio.Task[None]] = set()
        self._proc: asyncssh.SSHClientProcess[bytes] | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._err_tail = b""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._conn is not None and not self._conn.is_closed()

    async def call(
        self,
        function: str,
        args: Sequence[str],
        *,
        retry: bool = False,
        timeout: float | None = None,
    ) -> list[str]:
        """Send one request and return the words of its answer (after the id).

        ``retry``: when the session ends under the request while the link is up (its
        shell was killed), send it once more on a new session; only for requests that
        may run twice (a probe, a signal), never for a launch (which raises
        :class:`SessionEnded` and looks at its run directory). ``timeout``: seconds to
        wait for the answer (``TimeoutError``)."""
        # (asyncio.timeout, not wait_for: no task of its own, so no turn of a busy loop)
        try:
            async with asyncio.timeout(timeout):
                return await self._call(function, args)
        except ProviderError:
            if not retry or not self.link.connected:
                raise
        async with asyncio.timeout(timeout):
            return await self._call(function, args)

    async def _call(
        self, function: str, args: Sequence[str], *, session: int | None = None
    ) -> list[str]:
        request_id = next(self._ids)
        data = session_request(function, request_id, args)
        if session is not None and (session != self.starts or not self.running):
            raise self._ended(None)  # meant for a session that has ended
        proc = await self._ensure()
        if session is not None and session != self.starts:
            raise self._ended(None)
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        waiting = self._waiting  # this session's: its end fails only its own requests
        waiting[request_id] = fut
        try:
            proc.stdin.write(data)
            if len(data) > 65536:
                await proc.stdin.drain()
            return await fut
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            # The channel is closed before the reader saw its end: the next request starts
            # a new session rather than writing to this one again.
            raise self._lost(proc, waiting, exc) from exc
        finally:
            waiting.pop(request_id, None)

    async def start(self) -> None:
        """Start the session now if it is not running (what it learnt of the host, such
        as ``has_setsid``, is known afterwards)."""
        await self._ensure()

    async def _ensure(self) -> asyncssh.SSHClientProcess[bytes]:
        conn = await self.link.connection()
        if self._proc is not None and self._conn is conn and not conn.is_closed():
            return self._proc
        async with self._lock:
            conn = await self.link.connection()
            if self._proc is not None and self._conn is conn and not conn.is_closed():
                return self._proc
            await self._stop()
            proc = await self.link.start_process(
                remote_command(
                    ["env", "-i", "/bin/sh", "-s", self.path or "/usr/bin:/bin", self.spare_dir]
                )
            )
            self._err_tail = b""
            try:
                proc.stdin.write(SESSION_SCRIPT.encode())
                ready = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
            except (TimeoutError, asyncssh.Error, OSError) as exc:
                proc.close()
                raise self._ended(exc if not isinstance(exc, TimeoutError) else None) from exc
            words = ready.decode(errors="replace").split()
            if words[:2] != ["0", "ready"]:
                proc.close()
                raise ProviderError(
                    f"host {self.name}: the bosun session shell did not start "
                    f"(said {ready[:200]!r})",
                    hint="check that /bin/sh and env work for the remote user",
                )
            self.has_setsid = words[2:3] == ["setsid"]
            self.has_spares = words[3:] == ["spares"]
            self._proc, self._conn = proc, conn
            self._waiting = {}
            self._watch_exit(proc)
            self.starts += 1
            if self.has_spares:
                for slot in range(1, SPARES + 1):
                    self._start_refill(slot)
            self._reader = asyncio.create_task(
                self._read(proc, self._waiting), name=f"bosun-session-{self.name}"
            )
            self._stderr = asyncio.create_task(
                self._drain(proc), name=f"bosun-session-err-{self.name}"
            )
            return proc

    @property
    def idle_spares(self) -> int:
        """Spares waiting for a launch now."""
        return len(self._idle) if self.running else 0

    # -- spares ----------------------------------------------------------------------------
    def take_spare(self) -> Spare | None:
        """A waiting spare, now the caller's to launch with, or None. The caller hands it
        back with :meth:`spare_done` once its launch has an answer."""
        if not self._idle or not self.running:
            return None
        slot, pid = self._idle.popitem()
        return Spare(slot, pid, self.starts)

    def spare_done(self, spare: Spare, *, written: bool, answered: bool = True) -> None:
        """``written``: the launch reached the spare's FIFO; then a new spare takes the
        slot (``answered`` False: the spare never answered; it is killed first). Else the
        spare still waits and goes back to the pool."""
        if spare.session != self.starts:
            return  # that session has ended; the new one fills its own slots
        if not written:
            self._idle[spare.slot] = spare.pid
        else:
            self._start_refill(spare.slot, None if answered else spare.pid)

    def _start_refill(self, slot: int, kill: int | None = None) -> None:
        """Start a new spare in ``slot`` of the running session, in the background: only
        once the slot's last spare has answered its launch (it has read its command and
        runs it), or with ``kill``, that spare's pid, killed first."""
        if slot in self._filling:
            return
        self._filling.add(slot)
        task = asyncio.create_task(self._refill(slot, kill, self.starts))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _refill(self, slot: int, kill: int | None, session: int) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                words = await self._call("refill", [str(slot), str(kill or "")], session=session)
        except (ProviderError, TimeoutError) as exc:  # (HostUnreachable is a ProviderError)
            log.debug("host %s: no spare in slot %s: %s", self.name, slot, exc)
            words = []
        if session != self.starts:
            return  # that session has ended; the new one fills its own slots
        self._filling.discard(slot)
        if len(words) == 2 and words[0] == "spare" and words[1].isdigit():
            self._idle[slot] = int(words[1])
        else:
            log.debug("host %s: no spare in slot %s (%s)", self.name, slot, " ".join(words))

    async def _read(
        self,
        proc: asyncssh.SSHClientProcess[bytes],
        waiting: dict[int, asyncio.Future[list[str]]],
    ) -> None:
        error: BaseException | None = None
        try:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                words = line.decode(errors="replace").split()
                if not words or not words[0].isdigit():
                    log.warning("host %s: unexpected session output %r", self.name, line[:200])
                    continue
                fut = waiting.get(int(words[0]))
                if fut is not None and not fut.done():
                    fut.set_result(words[1:])
        except (asyncssh.Error, OSError) as exc:
            error = exc
        if self._proc is proc:
            self._proc = None
        _fail(waiting, self._ended(error))

    def _watch_exit(self, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        """End the session when its shell exits, not only when its channel does. sshd
        sends the exit status (or signal) as soon as the shell is gone, but closes the
        channel only once every process holding its output has let go of it, and a spare
        started just before the shell was killed may hold it for a long time (blocked
        opening a FIFO that has lost its writer, until the next session's ``bosun_fifos``
        releases it): the requests waiting on this session fail now, and the next one
        starts a new session. (``exit_status_received`` and ``exit_signal_received`` are
        the session callbacks asyncssh calls; an ``SSHClientProcess`` leaves them empty.)"""
        waiting = self._waiting
        loop = asyncio.get_running_loop()

        def exited(*_: object) -> None:
            loop.call_soon(self._lost, proc, waiting, None)

        proc.exit_status_received = exited  # type: ignore[method-assign,assignment]
        proc.exit_signal_received = exited  # type: ignore[method-assign,assignment]

    def _lost(
        self,
        proc: asyncssh.SSHClientProcess[bytes],
        waiting: dict[int, asyncio.Future[list[str]]],
        exc: BaseException | None,
    ) -> HostUnreachable | SessionEnded:
        """Session ``proc`` is gone (its shell exited, or writing to it failed): let go
        of it if it is the current one, close it, and fail its requests (``waiting``)
        with the error, which is returned."""
        if self._proc is proc:
            self._forget()
        proc.close()
        ended = self._ended(exc)
        _fail(waiting, ended)
        return ended

    def _forget(self) -> asyncssh.SSHClientProcess[bytes] | None:
        """Let go of the current session (its spares, its reader): its process, for the
        caller to close; the next request starts a new session."""
        proc, self._proc = self._proc, None
        self._idle.clear()
        self._filling.clear()
        for task in (self._reader, self._stderr):
            if task is not None:
                task.cancel()
        self._reader = self._stderr = None
        return proc

    async def _drain(self, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            while True:
                chunk = await proc.stderr.read(4096)
                if not chunk:
                    return
                self._err_tail = (self._err_tail + chunk)[-_STDERR_KEEP:]

    def _ended(self, exc: BaseException | None) -> HostUnreachable | SessionEnded:
        if not self.link.connected:
            return self.link.unreachable("the SSH connection was lost")
        said = self._err_tail.decode(errors="replace").strip()[-300:]
        reason = f": {exc}" if exc is not None else ""
        return SessionEnded(
            f"host {self.name}: the bosun session shell ended{reason}"
            + (f" ({said})" if said else ""),
            hint="bosun starts a new one on its next request; if this repeats, check the host",
        )

    async def _stop(self) -> None:
        proc = self._forget()
        if proc is not None:
            proc.close()
        _fail(self._waiting, self._ended(None))

    async def aclose(self) -> None:
        for task in list(self._refills):
            task.cancel()
        await asyncio.gather(*self._refills, return_exceptions=True)
        await self._stop()


def _fail(waiting: dict[int, asyncio.Future[list[str]]], error: BaseException) -> None:
    """Every request still waiting in ``waiting`` (one session's) fails with ``error``."""
    for fut in list(waiting.values()):
        if not fut.done():
            fut.set_exception(error)
