"""The local provider: durable agent runs and short commands on this machine.

A run is started *detached*: ``/bin/sh`` runs the constant :data:`WRAPPER_SCRIPT` as
the leader of a new session and process group, and the agent's argv reaches it only as
positional arguments (``"$@"``), never inside a shell string. The wrapper sends stdout and
stderr to files in the run directory and writes the exit code there with one ``write``
to a file it creates exclusively (the first record wins; a reader takes a code only with
its newline), so the result survives the death of bosun itself.
``LocalProvider.attach`` rebuilds a handle from the stored ``ref`` after a restart.

Run directory layout::

    cmd.json   argv, cwd and the *names* of the env variables (never their values)
    stdin      the bytes fed on stdin (absent: /dev/null)
    stdout     the run's standard output
    stderr     the run's standard error, including the wrapper's own messages
    pid        the wrapper's pid (also the process group and session id)
    exit       the exit code, written once the run ended; 128+N for signal N

Signals: the wrapper traps HUP, INT and TERM with a no-op, so a signal sent to the group
(``cancel``) ends the agent while the wrapper lives on to record its code (143 for TERM).
Should the wrapper itself die first (SIGKILL), the reaper or ``cancel`` records the code.
A program that cannot be found ends the run with 127 and sh's "not found" line on stderr.

Tmux mode (``Command.tmux``) starts the run inside a detached tmux session instead; the
pane runs the same protocol (see :mod:`bosun.providers.tmux`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bosun.errors import ProviderError
from bosun.providers import tmux
from bosun.providers.base import Command, ExecResult, OutputChunk, RunHandle, Stream

# A constant shell text: task data never enters it, it arrives only as "$@".
# The trap is a no-op so that the wrapper outlives a signal sent to the whole group and
# records the agent's code. Positional arguments: run dir, cwd, keep_pwd ("1" when the
# caller's env sets PWD), argv.
# dash sets PWD at start-up and OLDPWD on cd; both are undone so the agent's environment
# is exactly the one asked for. ``(exec "$@")`` runs the program in a subshell so that a
# builtin-looking argv[0] such as ``exec`` or ``exit`` cannot end the wrapper early, and
# so that the program gets default signal dispositions. The exit code is written with
# builtins only (``set -C``: an exclusive create, so a code a cancel recorded first
# stays). fd 3 is closed first; a launch by an SSH host session (``$0`` is
# ``bosun-run-ID``) first answers it there with the wrapper's pid (bosun.providers.ssh_session).
WRAPPER_SCRIPT = r"""case $0 in bosun-run-*) echo "${0#bosun-run-} ok $$" >&3 ;; esac; exec 3>&-
d=$1; cwd=$2; keep_pwd=$3; shift 3
trap : HUP INT TERM
finish() { set -C; echo "$1" 2>/dev/null >"$d/exit"; exit "$1"; }
exec >>"$d/stdout" 2>>"$d/stderr"
if [ -f "$d/stdin" ]; then exec <"$d/stdin"; else exec </dev/null; fi
echo "$$" >"$d/pid"
o_set=${OLDPWD+x}; o_val=${OLDPWD-}
cd "$cwd" || finish 126
[ "$keep_pwd" = 1 ] || unset PWD
if [ -n "$o_set" ]; then OLDPWD=$o_val; else unset OLDPWD; fi
(exec "$@")
finish "$?"
"""

READ_CAP = 1 << 20  # bytes read per stream per call: a huge output is consumed in steps
_KEY_RE = re.compile(r"[A-Za-z0-9._-]+")
_RESERVED = frozenset({"cmd.json", "stdin", "stdout", "stderr", "pid", "exit"})
_REAP_INTERVAL = 0.2
_CANCEL_POLL = 0.05
_KILL_WAIT = 5.0
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def redact(text: str) -> str:
    """Hide ``user:token@`` in URLs so that credentials never reach an error message."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def _group_alive(pgid: int) -> bool:
    """Whether a non-zombie process of group ``pgid`` exists.

    ``killpg(pgid, 0)`` alone would also succeed for zombies, and orphans stay zombies
    forever where PID 1 does not reap (some containers and micro-VMs), so on Linux the
    answer is confirmed from /proc.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The usual case, a run whose wrapper (the group's leader, pid == pgid) still lives, is
    # answered by the leader's own stat file: scanning all of /proc for every running task
    # on every poll grows with tasks x processes (minutes to start 500 runs).
    if _member_alive(str(pgid), pgid):
        return True
    try:
        entries = os.scandir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    with entries:
        return any(e.name.isdigit() and _member_alive(e.name, pgid) for e in entries)


def _member_alive(pid: str, pgid: int) -> bool:
    """Whether process ``pid`` exists, belongs to group ``pgid`` and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False  # no such process (or it vanished while scanning)
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X")


def _makedirs(path: str, what: str) -> None:
    """``mkdir -p``, failing with a ``ProviderError`` that names ``what`` and the path."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ProviderError(
            f"cannot create {what} {path}: {exc.strerror}",
            hint="check that bosun's state directory is writable and has free space",
        ) from exc


def _write_exit_if_missing(run_dir: str, code: int) -> None:
    """Record ``code`` unless the wrapper already did; atomic (link never overwrites)."""
    final = os.path.join(run_dir, "exit")
    if os.path.exists(final):
        return
    tmp = os.path.join(run_dir, f"exit.bosun-{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{code}\n")
    try:
        os.link(tmp, final)
    except FileExistsError:
        pass  # the wrapper won the race: its code is the true one
    finally:
        os.unlink(tmp)


def _try_reap(pid: int, run_dir: str) -> bool:
    """Reap our own child ``pid`` if it ended; True once it is gone (or not ours)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if done == 0:
        return False
    code = os.waitstatus_to_exitcode(status)
    # The wrapper normally wrote the code itself; if it was killed, record 128+signal.
    with contextlib.suppress(OSError):  # run dir removed by hand: nothing to record in
        _write_exit_if_missing(run_dir, 128 - code if code < 0 else code)
    return True


def _read_lines(
    path: str, stream: Stream, offset: int, size: int, final: bool
) -> OutputChunk | None:
    """Complete lines of ``path`` from ``offset`` (at most :data:`READ_CAP` bytes)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(min(size - offset, READ_CAP))
    return cut_lines(data, stream, offset, size, final)


def cut_lines(
    data: bytes, stream: Stream, offset: int, size: int, final: bool
) -> OutputChunk | None:
    """The complete lines of ``data``, read at ``offset`` of a stream file of ``size``
    bytes: with ``final`` also the trailing line without a newline, once the read reaches
    the end of the file; ``None`` when there is no complete line yet."""
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
        # One line longer than the cap: hand it over in pieces rather than stall forever.
        body = data
        consumed = len(data)
    else:
        return None
    lines = tuple(
        (raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8", errors="replace")
        for raw in body.split(b"\n")
    )
    return OutputChunk(stream=stream, lines=lines, end_offset=offset + consumed)


def _read_exit(run_dir: str) -> int | None:
    try:
        with open(os.path.join(run_dir, "exit"), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return parse_exit(run_dir, raw)


def parse_exit(run_dir: str, raw: bytes) -> int | None:
    """The code in the bytes of a run's ``exit`` file; None while it is being written
    (a code counts with its newline)."""
    if not raw.endswith(b"\n"):
        return None
    text = raw.decode("ascii", errors="replace").strip()
    try:
        return int(text)
    except ValueError as exc:
        raise ProviderError(
            f"the exit file of run {run_dir} holds {text[:40]!r}, not an exit code",
            hint="the run directory was modified by hand; remove the 'exit' file to wait again",
        ) from exc


def check_offsets(stdout_offset: int, stderr_offset: int) -> None:
    if stdout_offset < 0 or stderr_offset < 0:
        raise ProviderError(
            f"negative output offset ({stdout_offset}, {stderr_offset})",
            hint="offsets are byte positions from the run's stored chunks, starting at 0",
        )


def check_run_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key) or key in (".", ".."):
        raise ProviderError(
            f"invalid run key {key!r}",
            hint="run keys use only letters, digits, '.', '_' and '-', e.g. task-12-attempt-2",
        )


def missing_run_dir(run_dir: str, where: str = "") -> ProviderError:
    """A launch into a run directory that does not exist (``where``: " on host X")."""
    return ProviderError(
        f"run directory {run_dir} does not exist{where}",
        hint="create it with provider.run_dir(key) before launching",
    )


def used_run_dir(run_dir: str) -> ProviderError:
    """A second launch into one run directory."""
    return ProviderError(
        f"run directory {run_dir} was already used by a launch",
        hint="give every attempt its own run key, e.g. task-12-attempt-3",
    )


def missing_cwd(cwd: str, program: str, where: str = "") -> ProviderError:
    """A launch whose working directory does not exist (``where``: " on host X")."""
    return ProviderError(
        f"working directory {cwd} of {program!r} does not exist{where}",
        hint="prepare the workspace before launching the agent",
    )


def check_run_files(names: Iterable[str], reserved: frozenset[str]) -> None:
    """Run file names must stay inside the run directory and clear of the ``reserved``
    names of the run protocol."""
    for name in names:
        parts = name.split("/")
        bad = (
            not name
            or "\0" in name
            or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or parts[0] in reserved
            or name.endswith(".tmp")
        )
        if bad:
            raise ProviderError(
                f"invalid run file name {name!r}",
                hint="use a path relative to the run directory (like home/.tool/config.json; "
                "no '..', not a reserved name like 'stdout', 'exit' or '*.tmp')",
            )


class DetachedRun:
    """What a handle of every detached run shares, wherever it runs: the run directory,
    the wrapper's pid and process group (``ref``: what ``attach`` rebuilds it from), and
    the cancel sequence. Subclasses read the files and send the signals."""

    def __init__(self, run_dir: str, pid: int, pgid: int) -> None:
        self._run_dir = run_dir
        self._pid = pid
        self._pgid = pgid

    @property
    def ref(self) -> dict[str, Any]:
        """``{"run_dir", "pid", "pgid"}``: what the provider's ``attach`` needs."""
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

    async def alive(self) -> bool:
        raise NotImplementedError

    async def _signal(self, kill: bool) -> bool:
        """SIGTERM (SIGKILL with ``kill``) the run's group; False when it is gone."""
        raise NotImplementedError

    async def _write_exit_if_missing(self, code: int) -> None:
        raise NotImplementedError

    async def cancel(self, grace: float = 5.0) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; always leaves an exit
        code (143 or 137 unless the wrapper recorded its own)."""
        loop = asyncio.get_running_loop()
        code = 143
        if await self._signal(False):
            deadline = loop.time() + grace
            # Polling: the group need not be our child, so there is nothing to await.
            while await self.alive() and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_CANCEL_POLL)
            if await self.alive():
                code = 137
                await self._signal(True)
                deadline = loop.time() + _KILL_WAIT
                while await self.alive() and loop.time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(_CANCEL_POLL)
        # Followers stop on the exit file; write one if the wrapper could not.
        await self._write_exit_if_missing(code)


class LocalRun(DetachedRun):
    """A detached run on this machine (see the module docstring for its files)."""

    def __init__(self, run_dir: str, pid: int, pgid: int, *, own_child: bool = False) -> None:
        super().__init__(run_dir, pid, pgid)
        # Only a child of this very process may be reaped with waitpid.
        self._own_child = own_child

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        """Complete lines past the offsets, per stream; see ``RunHandle.read``.

        With ``final`` the trailing line without a newline is returned too, but only once
        the read reaches the end of the file (call again until the list is empty).
        """
        check_offsets(stdout_offset, stderr_offset)
        chunks: list[OutputChunk] = []
        offsets: tuple[tuple[Stream, int], ...] = (
            ("stdout", stdout_offset),
            ("stderr", stderr_offset),
        )
        for stream, offset in offsets:
            path = os.path.join(self._run_dir, stream)
            try:
                size = os.stat(path).st_size  # cheap when nothing is new
            except FileNotFoundError:
                continue
            if size <= offset:
                continue
            chunk = await asyncio.to_thread(_read_lines, path, stream, offset, size, final)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    async def exit_code(self) -> int | None:
        """The recorded exit code, or ``None`` while the run has not ended."""
        if self._own_child:
            _try_reap(self._pid, self._run_dir)
        return _read_exit(self._run_dir)

    async def alive(self) -> bool:
        """Whether a (non-zombie) process of the run's group still exists."""
        if self._own_child:
            _try_reap(self._pid, self._run_dir)
        return _group_alive(self._pgid)

    async def _write_exit_if_missing(self, code: int) -> None:
        _write_exit_if_missing(self._run_dir, code)

    async def _signal(self, kill: bool) -> bool:
        try:
            os.killpg(self._pgid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise ProviderError(
                f"not allowed to signal process group {self._pgid} of run {self._run_dir}",
                hint="the run belongs to another user; stop it as that user",
            ) from exc
        return True


class LocalProvider:
    """Runs agents and commands on this machine; run dirs live in ``root/runs/<key>``."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self._root = os.path.abspath(root)
        self._sh = shutil.which("sh") or "/bin/sh"
        self._reapers: dict[int, asyncio.Task[None]] = {}

    def host_env(self) -> Mapping[str, str]:
        """Nothing: on this machine, bosun's own environment is the host's."""
        return {}

    async def ensure_ready(self) -> None:
        """Create ``root/runs`` and check that it is writable."""
        runs = os.path.join(self._root, "runs")
        await self.makedirs(runs)
        if not os.access(runs, os.W_OK | os.X_OK):
            raise ProviderError(
                f"the run directory root {runs} is not writable",
                hint="fix its permissions or choose another state directory",
            )

    async def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents (no error when it exists)."""
        _makedirs(path, "directory")

    async def run_dir(self, key: str) -> str:
        """Create (if needed) and return the absolute run directory for ``key``."""
        check_run_key(key)
        path = os.path.join(self._root, "runs", key)
        _makedirs(path, "run directory")
        return path

    async def launch(self, command: Command, run_dir: str) -> RunHandle:
        """Start ``command`` detached, its output and exit code going to ``run_dir``."""
        # File writes and the spawn block briefly: keep them off the event loop.
        run_dir, pid = await asyncio.to_thread(self._spawn, command, run_dir)
        if command.tmux is not None:
            # The spawned process only starts the tmux session; the run is the pane's group.
            await asyncio.to_thread(os.waitpid, pid, 0)
            pgid = await asyncio.to_thread(_read_pid, run_dir)
            return LocalRun(run_dir, pgid, pgid)
        self._reapers[pid] = asyncio.get_running_loop().create_task(
            self._reap(pid, run_dir), name=f"bosun-reap-{pid}"
        )
        return LocalRun(run_dir, pid, pid, own_child=True)

    def _spawn(self, command: Command, run_dir: str) -> tuple[str, int]:
        run_dir = os.path.abspath(run_dir)
        cwd = os.path.abspath(command.cwd)
        if command.make_cwd:
            _makedirs(cwd, "working directory")
        self._check_launch(command, run_dir, cwd)
        try:
            for name, data in command.files.items():
                target = os.path.join(run_dir, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _write_file(target, data)
            if command.stdin is not None:
                _write_file(os.path.join(run_dir, "stdin"), command.stdin)
            for stream in ("stdout", "stderr"):
                _write_file(os.path.join(run_dir, stream), b"")
            meta = {"argv": list(command.argv), "cwd": cwd, "env_keys": sorted(command.env)}
            _write_file(os.path.join(run_dir, "cmd.json"), json.dumps(meta).encode())
        except OSError as exc:
            raise ProviderError(
                f"cannot write into run directory {run_dir}: {exc.strerror}",
                hint="check free space and permissions of bosun's state directory",
            ) from exc
        keep_pwd = "1" if "PWD" in command.env else "0"
        if command.tmux is not None:
            argv = tmux.start_argv(
                self._sh, command.tmux, run_dir, cwd, "PWD" in command.env, command.argv
            )
        else:
            argv = [self._sh, "-c", WRAPPER_SCRIPT, "bosun-run", run_dir, cwd, keep_pwd]
            argv += command.argv
        append = os.O_WRONLY | os.O_APPEND
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.path.join(run_dir, "stdout"), append, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.path.join(run_dir, "stderr"), append, 0),
        ]
        try:
            # posix_spawn, not Popen or asyncio: those kill or warn about a child that is
            # still running when their object is collected, and these runs must outlive us.
            pid = os.posix_spawn(
                self._sh,
                argv,
                dict(command.env),
                file_actions=actions,
                setsid=True,
                setsigmask=(),
                # Python ignores SIGPIPE/SIGXFSZ; the agent must get the default back.
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except (OSError, ValueError) as exc:
            raise ProviderError(
                f"cannot start {command.argv[0]!r} in {run_dir}: {exc}",
                hint=f"check that {self._sh} exists and the argv/env hold no NUL bytes",
            ) from exc
        return run_dir, pid

    def _check_launch(self, command: Command, run_dir: str, cwd: str) -> None:
        if not command.argv:
            raise ProviderError("empty argv", hint="an agent command needs a program to run")
        if not os.path.isdir(run_dir):
            raise missing_run_dir(run_dir)
        if os.path.exists(os.path.join(run_dir, "cmd.json")):
            raise used_run_dir(run_dir)
        if not os.path.isdir(cwd):
            raise missing_cwd(cwd, command.argv[0])
        check_run_files(command.files, _RESERVED)

    async def _reap(self, pid: int, run_dir: str) -> None:
        # Without a waitpid the ended wrapper stays a zombie and alive() would lie.
        try:
            while not _try_reap(pid, run_dir):  # noqa: ASYNC110 (waitpid WNOHANG poll)
                await asyncio.sleep(_REAP_INTERVAL)
        finally:
            self._reapers.pop(pid, None)

    async def attach(self, ref: Mapping[str, Any]) -> RunHandle:
        """The handle of a run from ``ref``, possibly started by an earlier bosun."""
        run_dir, pid, pgid = ref.get("run_dir"), ref.get("pid"), ref.get("pgid")
        if isinstance(run_dir, str) and pid is None and pgid is None:
            # Only the run directory is known (bosun stopped between the launch and
            # recording it): the wrapper's pid file says which process group it is.
            pid = pgid = await asyncio.to_thread(_read_pid, run_dir)
        if not (isinstance(run_dir, str) and isinstance(pid, int) and isinstance(pgid, int)):
            raise ProviderError(
                f"malformed local run reference {dict(ref)!r}",
                hint="a local run ref has 'run_dir' (str), 'pid' and 'pgid' (int)",
            )
        if not await asyncio.to_thread(os.path.isdir, run_dir):
            raise ProviderError(
                f"run directory {run_dir} no longer exists",
                hint="the run's files were removed; mark the run as lost",
            )
        return LocalRun(run_dir, pid, pgid, own_child=pid in self._reapers)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a short command attached; env is this process's env updated with ``env``."""
        if not argv:
            raise ProviderError("empty argv", hint="pass the program to run as argv[0]")
        shown = redact(shlex.join(argv))
        full_env = {**os.environ, **env} if env else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=full_env,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # so a timeout kills the command's children too
            )
        except FileNotFoundError as exc:
            if cwd is not None and exc.filename == cwd:
                raise ProviderError(
                    f"cannot run {shown}: directory {cwd} does not exist",
                    hint="create the directory first",
                ) from exc
            raise ProviderError(
                f"cannot run {shown}: {argv[0]!r} was not found",
                hint=f"install {argv[0]!r} or add its directory to PATH",
            ) from exc
        except OSError as exc:
            raise ProviderError(
                f"cannot run {shown}: {exc.strerror or exc}",
                hint=f"check that {argv[0]!r} is an executable program",
            ) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            await _kill_group(proc)
            raise ProviderError(
                f"{shown} timed out after {timeout:g}s and was killed",
                hint="check the host and network, or raise the timeout",
            ) from None
        except BaseException:
            await _kill_group(proc)  # cancelled: leave no stray process behind
            raise
        assert proc.returncode is not None
        return ExecResult(
            argv=tuple(argv),
            exit_code=proc.returncode,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )

    async def aclose(self) -> None:
        """Stop the reaper tasks. Running agents are durable and keep running."""
        tasks = list(self._reapers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reapers.clear()


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


def _read_pid(run_dir: str) -> int:
    # The wrapper writes its pid with one small write (no rename: an `mv` would cost a
    # fork on the path to every agent's start), so an empty file means "being written".
    path = os.path.join(run_dir, "pid")
    for _ in range(50):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError as exc:
            raise ProviderError(
                f"no run was started in {run_dir} (no pid file)",
                hint="the attempt never launched; it can be retried",
            ) from exc
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    raise ProviderError(
        f"the pid file of {run_dir} is unreadable", hint="the attempt can be retried"
    )


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
