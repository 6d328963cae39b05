"""The SSH provider: durable agent runs and short commands on a host reached over SSH.

One asyncssh connection per host carries everything (:mod:`bosun.providers.ssh_conn`):
exec channels for commands, one SFTP channel for files, remote port forwards. Host keys
are checked strictly (:mod:`bosun.providers.ssh_keys`).

A run uses the protocol of :mod:`bosun.providers.local`, on the host: the same constant
:data:`~bosun.providers.local.WRAPPER_SCRIPT` runs detached as the leader of a new session
and process group, sending stdout and stderr to files in the run directory
``<work_dir>/runs/<key>`` and writing the exit code there atomically. The host needs
only a POSIX ``sh`` (``/bin/sh``), ``env``, ``kill``, ``rm``, ``mv``, ``mkdir`` and the
agent; ``setsid`` (util-linux, busybox) is used when present. Without it the run stays in
the process group that sshd created for the launching command (sshd makes every
command's shell a session leader; the launcher replaces that shell (``exec``) and the run
is its background child), which is just as separate from everything else.

A launch is one round trip of pipelined SFTP ``mkdir``s (the run directory, its files'
own, a scratch working directory) and then one request to the host session
(:mod:`bosun.providers.ssh_session`, one ``/bin/sh`` per connection, started with an
empty environment): it creates ``cmd.json`` exclusively (a run directory is launched
once), writes ``stdin`` and the run files with ``printf``, and hands the run to a spare
wrapper already waiting in a session of its own, or else starts the wrapper with
``setsid`` in a subshell that exports exactly the run's variables (their values never
appear on a command line, where other users of the host could read them); the wrapper
answers with its pid once it leads its own session. When the session shell dies under
the request while the link is up, a new session tells from the run directory whether the
launch took effect: it is sent once more, its run is returned, or it fails (``cmd.json``
and no wrapper), and a run directory is still launched once. Agents in tmux mode, hosts without
``setsid -f`` and files holding NUL bytes take the older way: the files
over SFTP (``env.sh`` with mode 0600 for the variables) and one exec channel running
:data:`~bosun.providers.ssh_scripts.LAUNCH_SCRIPT`.

Following a run (:mod:`bosun.providers.ssh_run`): the session's ``probe`` tells, for
every run of the host at once and with builtins only, the exit code, whether the output
files hold anything and whether the process group lives; output is read over SFTP from
the stored byte offsets when there is some, so bosun picks up where it left off after a
reconnect or a restart, with no line lost or repeated. Cancel signals the group through
the session too.

Every text that crosses the remote shell is made by
:func:`~bosun.providers.ssh_scripts.remote_command` from a constant script and its
arguments; :func:`~bosun.providers.ssh_scripts.quote` is the one place that quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from bosun.config import HostConfig
from bosun.errors import HostUnreachable, ProviderError
from bosun.providers import tmux
from bosun.providers.base import Command, ExecResult, RunHandle
from bosun.providers.local import (
    WRAPPER_SCRIPT,
    check_run_files,
    check_run_key,
    missing_cwd,
    missing_run_dir,
    redact,
    used_run_dir,
)
from bosun.providers.ssh_conn import SshLink, parse_address
from bosun.providers.ssh_files import HostFiles, close_all
from bosun.providers.ssh_keys import HostKey
from bosun.providers.ssh_run import Coalescer, Probe, SshRun
from bosun.providers.ssh_scripts import (
    ENV_NAME,
    EXEC_SCRIPT,
    LAUNCH_SCRIPT,
    NO_DIR,
    NO_PROGRAM,
    PREPARE_SCRIPT,
    env_pairs,
    env_script,
    remote_command,
    spare_payload,
)
from bosun.providers.ssh_session import HostSession, SessionEnded
from bosun.providers.ssh_trust import fetch_host_key, trust_host_key

__all__ = [
    "HostKey",
    "SshProvider",
    "SshRun",
    "fetch_host_key",
    "parse_address",
    "remote_command",
    "trust_host_key",
]

_RESERVED = frozenset({"cmd.json", "stdin", "stdout", "stderr", "pid", "pgid", "exit", "env.sh"})
_READY_BACKOFF_MAX = 5.0
#: How long a launch waits for the wrapper to say it runs (a busy host may be slow).
LAUNCH_TIMEOUT = 60.0
#: After the session ended under a launch that wrote ``cmd.json``: how long to wait for
#: the wrapper's pid file before saying that no wrapper started (one that answered
#: writes it at once).
STARTED_WAIT = 2.0
_STARTED_POLL = 0.05
#: The longest launch (in bytes of quoted words) a spare takes: the FIFO holds it at once.
_SPARE_MAX = 32768
#: How long ``ensure_ready`` waits for SSH after running a host's ``wake_command``.
WAKE_READY_TIMEOUT = 180.0


class SshProvider:
    """Runs agents and commands on one SSH host; run dirs in ``<work_dir>/runs/<key>``.

    ``state_dir`` is bosun's local state directory (its ``known_hosts`` lives there).
    """

    def __init__(
        self,
        name: str,
        host_config: HostConfig,
        state_dir: str,
        *,
        ready_timeout: float | None = None,
        use_setsid: bool = True,
        spares: bool | None = None,
    ) -> None:
        if host_config.kind != "ssh":
            raise ProviderError(
                f"host {name} is kind {host_config.kind!r}, not 'ssh'",
                hint="use LocalProvider for local hosts",
            )
        self.name = name
        self.config = host_config
        self.link = SshLink(name, host_config, state_dir)
        self.files = HostFiles(self.link, name)
        self._ready_timeout = ready_timeout
        self._mode = "auto" if use_setsid else "nosetsid"
        self._home: str | None = None
        self._path = ""  # the host's PATH for commands (learnt with $HOME)
        self._has_proc = False
        self._root: str | None = None
        self._prepare_lock = asyncio.Lock()
        if spares is None:
            spares = host_config.spares
        spare_dir = posixpath.join(host_config.work_dir, "spares") if spares else ""
        self.session = HostSession(self.link, name, spare_dir=spare_dir)
        #: launches so far by how they started: a spare, the session's setsid, an exec
        self.launches = {"spare": 0, "setsid": 0, "exec": 0}
        self._probes: Coalescer[tuple[str, int, bool], Probe] = Coalescer(self._probe_runs, "probe")

    # -- paths ---------------------------------------------------------------------------
    def host_env(self) -> Mapping[str, str]:
        """The host's ``PATH`` (where its agent CLIs are installed), once ready."""
        return {"PATH": self._path} if self._path else {}

    @property
    def home(self) -> str:
        """The remote user's $HOME (known after the first connection)."""
        if self._home is None:
            raise ProviderError(
                f"host {self.name} is not ready yet", hint="call ensure_ready() first"
            )
        return self._home

    @property
    def root(self) -> str:
        """The absolute ``work_dir`` on the host: repo caches, worktrees, ``runs/``."""
        if self._root is None:
            raise ProviderError(
                f"host {self.name} is not ready yet", hint="call ensure_ready() first"
            )
        return self._root

    async def _ready(self) -> str:
        """Connect if needed and learn $HOME once; return the absolute work dir."""
        if self._root is not None:
            return self._root
        async with self._prepare_lock:
            if self._root is None:
                code, out, err = await self.link.run(
                    remote_command(
                        ["/bin/sh", "-c", PREPARE_SCRIPT, "bosun-prepare", self.config.work_dir]
                    )
                )
                proc, _, rest = out.decode(errors="replace").partition("\n")
                home, _, path = rest.partition("\n")
                if code != 0 or proc not in ("proc", "noproc") or not home.startswith("/"):
                    raise ProviderError(
                        f"cannot prepare work_dir {self.config.work_dir!r} on host "
                        f"{self.name} (exit {code}): {err.decode(errors='replace').strip()}",
                        hint="check the remote user's $HOME and that work_dir is writable",
                    )
                self._home = home
                self._path = path
                self.session.path = path
                self._has_proc = proc == "proc"
                self._root = posixpath.normpath(posixpath.join(home, self.config.work_dir))
        return self._root

    # -- Provider ------------------------------------------------------------------------
    async def ensure_ready(self) -> None:
        """Connect (strict host keys), learn $HOME and create ``work_dir/runs``.

        When the host cannot be reached and has a ``wake_command``, run that here first
        and then wait for SSH with backoff (``ready_timeout``, default 180 s after a wake,
        else ``connect_timeout``). Unknown host keys and failed logins fail at once.
        """
        try:
            await self.link.connection()
        except HostUnreachable:
            woke = bool(self.config.wake_command)
            if woke:
                await self._wake()
            default = WAKE_READY_TIMEOUT if woke else self.config.connect_timeout
            await self._wait_for_ssh(self._ready_timeout or default)
        await self._ready()
        await self.link.sftp()
        problem = self.link.forwards_problem()
        if problem is not None:
            raise problem

    async def _wake(self) -> None:
        argv = list(self.config.wake_command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProviderError(
                f"wake_command of host {self.name} ({shlex.join(argv)}) cannot start: {exc}",
                hint=f"fix wake_command in [hosts.{self.name}] (an argv list run on this machine)",
            ) from exc
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), WAKE_READY_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ProviderError(
                f"wake_command of host {self.name} did not finish in {WAKE_READY_TIMEOUT:g}s",
                hint="make wake_command return once the host is starting",
            ) from None
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-500:]
            raise ProviderError(
                f"wake_command of host {self.name} failed (exit {proc.returncode}): {tail}",
                hint=f"run `{shlex.join(argv)}` by hand to see why",
            )

    async def _wait_for_ssh(self, limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        delay = 0.2
        while True:
            try:
                await self.link.connection(wait=True)
                return
            except HostUnreachable as exc:
                if loop.time() + delay > deadline:
                    raise HostUnreachable(
                        f"{exc.message} (waited {limit:g}s for SSH)", exc.hint
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, _READY_BACKOFF_MAX)

    async def run_dir(self, key: str) -> str:
        """The absolute run directory for ``key``; the launch creates it (no round trip
        of its own)."""
        check_run_key(key)
        return f"{await self._ready()}/runs/{key}"

    async def makedirs(self, path: str) -> None:
        """``mkdir -p`` over SFTP (one round trip for a new directory)."""
        await self.files.makedirs(path)

    async def launch(self, command: Command, run_dir: str) -> RunHandle:
        """Start ``command`` detached on the host (see the module docstring)."""
        self._check_launch(command)
        await self._ready()
        meta = {"argv": list(command.argv), "cwd": command.cwd, "env_keys": sorted(command.env)}
        files: dict[str, bytes] = {name: data for name, data in command.files.items()}
        if command.stdin is not None:
            files["stdin"] = command.stdin
        # The run directory (then its files' own, parents first) and a scratch working
        # directory, at once over SFTP: sftp-server makes a directory with a system call,
        # where a `mkdir` process cost the host 3-4 ms of CPU here (coreutils starts slowly).
        run_dirs = sorted({posixpath.dirname(f"{run_dir}/{n}") for n in files} | {run_dir}, key=len)
        meta_bytes = json.dumps(meta).encode()
        made = asyncio.ensure_future(
            asyncio.gather(
                self._makedirs_in_order(run_dirs),
                *([self.makedirs(command.cwd)] if command.make_cwd else []),
            )
        )
        try:
            if (
                command.tmux is None
                and self._mode == "auto"
                and not any(b"\0" in data for data in files.values())
                and await self._session_setsid()
            ):
                return await self._launch_in_session(
                    command, run_dir, run_dirs[1:], meta_bytes, files, made
                )
            await made
            return await self._launch_exec(command, run_dir, meta_bytes, files)
        finally:
            if not made.done():
                made.cancel()
            await asyncio.gather(made, return_exceptions=True)

    async def _makedirs_in_order(self, paths: list[str]) -> None:
        """Parents first, without waiting for each other: sftp-server serves a channel's
        requests in order (and ``makedirs`` makes a parent it finds missing anyway)."""
        await asyncio.gather(*(self.makedirs(path) for path in paths))

    async def _session_setsid(self) -> bool:
        """Whether the host session can launch (it needs ``setsid`` on the host)."""
        await self.session.start()
        return self.session.has_setsid

    async def _launch_in_session(
        self,
        command: Command,
        run_dir: str,
        subdirs: Sequence[str],
        meta: bytes,
        files: Mapping[str, bytes],
        made: asyncio.Future[Any],
    ) -> RunHandle:
        """The request goes out once the directories exist (the session checks every
        directory the launch writes in, and writes nothing if one is missing).

        A waiting spare of the session takes the launch when there is one (its words go
        down its FIFO: the wrapper is already running in its own session); else the
        session starts the wrapper with setsid.

        When the session ends under the request and the link is up (``SessionEnded``),
        :meth:`_launched` asks a new session what the run directory holds: no
        ``cmd.json``: the request is sent once more (the dead session's spare is gone);
        the wrapper's pid: that run is returned; ``cmd.json`` alone: ``ProviderError``."""
        env = env_pairs(command.env)
        keep_pwd = "1" if "PWD" in command.env else "0"
        head = [run_dir, command.cwd, keep_pwd, str(len(subdirs)), *subdirs, str(1 + len(files))]
        for name, data in {"cmd.json": meta, **files}.items():
            head += [name, data.decode("utf-8", "surrogateescape")]
        payload = spare_payload(
            [str(len(env)), *env, run_dir, command.cwd, keep_pwd, *command.argv]
        )
        # The directories first: sent alongside them, the request nearly always arrived
        # first here, was refused and went again (docs/benchmarks.md).
        await made
        fits = len(payload) <= _SPARE_MAX
        spare = self.session.take_spare() if fits else None
        answer: list[str] | None = None  # the spare's launch's answer, if it has one
        sent = ""  # how the launch sent before a relaunch went (a spare, setsid)
        try:
            while True:
                if spare is None:
                    args = ["0", "", *head, str(len(env)), *env, *command.argv]
                else:
                    args = [str(spare.slot), str(spare.pid), *head, payload]
                answer = None
                try:
                    words = answer = await self.session.call("launch", args, timeout=LAUNCH_TIMEOUT)
                except SessionEnded as ended:
                    # The shell died under the request, the link is up: the run directory
                    # tells whether the request ran, on a new session.
                    run = await self._launched(command, run_dir, ended)
                    if run is not None:
                        self.launches["setsid" if spare is None else "spare"] += 1
                        return run
                    if sent:
                        raise ProviderError(
                            f"the session shell of host {self.name} ended twice under the "
                            f"launch of {command.argv[0]!r}: nothing was started in {run_dir}",
                            hint="check what kills sh on the host (memory, an admin's "
                            "script); the attempt can be retried",
                        ) from ended
                    # It never ran: once more (the dead session's spares are gone).
                    sent = "setsid" if spare is None else "spare"
                    spare = self.session.take_spare() if fits else None
                    continue
                if words == ["nospare"] and spare is not None:  # it died: start one anew
                    self.session.spare_done(spare, written=True)
                    spare = None
                    continue
                if words == ["used"] and sent:
                    # The first request ran after all: a session shell that bosun counted
                    # as ended (replaced after a reconnect) still served what it had read.
                    run = await self._launched(command, run_dir, None)
                    if run is not None:
                        self.launches[sent] += 1
                        return run
                break
        except TimeoutError:
            raise ProviderError(
                f"{command.argv[0]!r} in {run_dir} on host {self.name} did not start within "
                f"{LAUNCH_TIMEOUT:g}s: {await self._stderr_tail(run_dir)}",
                hint="check that /bin/sh and setsid work on the host and it is not overloaded",
            ) from None
        finally:
            if spare is not None:
                # Nothing reached its FIFO: it waits on. Else a new spare takes the slot,
                # once this one is known to have read its command (it answered), or killed.
                unused = answer in (["nodir"], ["nocwd"], ["used"], ["nofile"])
                self.session.spare_done(
                    spare, written=not unused, answered=answer is not None and answer[:1] == ["ok"]
                )
        if words == ["nodir"]:
            raise missing_run_dir(run_dir, f" on host {self.name}")
        if words == ["nocwd"]:
            raise self._no_cwd(command)
        if words == ["used"]:
            raise used_run_dir(run_dir)
        if words == ["nofile"]:
            raise self.files.fs_error("write the run files in", run_dir)
        if words == ["failed"]:
            raise ProviderError(
                f"cannot start {command.argv[0]!r} in {run_dir} on host {self.name}: "
                f"{await self._stderr_tail(run_dir)}",
                hint="check that /bin/sh and setsid work on the host",
            )
        if len(words) != 2 or words[0] != "ok" or not words[1].isdigit():
            raise ProviderError(
                f"cannot start {command.argv[0]!r} in {run_dir} on host {self.name}: "
                f"unexpected answer {' '.join(words)[:200]!r}",
                hint="check that /bin/sh and setsid work on the host",
            )
        pid = int(words[1])
        self.launches["setsid" if spare is None else "spare"] += 1
        return SshRun(self, run_dir, pid, pid)

    async def _launched(
        self, command: Command, run_dir: str, ended: SessionEnded | None
    ) -> SshRun | None:
        """After the session ended under a launch (``ended``), on a new session: the run
        the launch started (its wrapper wrote its pid), or None when it never ran (no
        ``cmd.json``); ``ProviderError`` when ``cmd.json`` is there and no wrapper says
        its pid within :data:`STARTED_WAIT` (a run directory is launched once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTED_WAIT
        try:
            while True:
                words = await self.session.call(
                    "launched", [run_dir], retry=True, timeout=LAUNCH_TIMEOUT
                )
                if words == ["none"]:
                    return None
                if len(words) == 3 and words[0] == "pid" and all(w.isdigit() for w in words[1:]):
                    return SshRun(self, run_dir, int(words[1]), int(words[2]))
                if words != ["nopid"]:
                    raise ProviderError(
                        f"host {self.name}: unexpected answer about {run_dir}: "
                        f"{' '.join(words)[:200]!r}",
                        hint="report this as a bug",
                    )
                # A wrapper that answered writes its pid at once; one that never started
                # never will.
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(_STARTED_POLL)
        except TimeoutError:
            raise ProviderError(
                f"host {self.name}: the session did not answer within {LAUNCH_TIMEOUT:g}s "
                f"whether {command.argv[0]!r} was started in {run_dir}",
                hint=f"look in {run_dir} on the host: a pid file there names the run",
            ) from None
        why = f" ({ended.message})" if ended is not None else ""
        raise ProviderError(
            f"the launch of {command.argv[0]!r} on host {self.name} was cut off{why}: "
            f"{run_dir} holds cmd.json but no wrapper started there (no pid file after "
            f"{STARTED_WAIT:g}s; stderr: {await self._stderr_tail(run_dir)}); bosun does not "
            "launch a run directory twice",
            hint="this attempt fails; the task can be retried (a new attempt gets a run "
            f"directory of its own). {run_dir} is left as it is: if a process started there "
            "after all, stop it",
        )

    async def _stderr_tail(self, run_dir: str) -> str:
        """The end of a run's stderr (where setsid and the wrapper say what failed)."""
        try:
            raw = await self.files.read_small(f"{run_dir}/stderr")
        except ProviderError:
            raw = None
        return redact((raw or b"").decode(errors="replace").strip()[-300:]) or "(no message)"

    def _no_cwd(self, command: Command) -> ProviderError:
        return missing_cwd(command.cwd, command.argv[0], f" on host {self.name}")

    async def _launch_exec(
        self, command: Command, run_dir: str, meta: bytes, files: Mapping[str, bytes]
    ) -> RunHandle:
        """The launch for tmux mode, hosts without setsid and files with NUL bytes: the
        files over SFTP, then one exec channel (see the module docstring)."""
        env_text = env_script(command.env)
        keep_pwd = "PWD" in command.env
        handles = await self.files.write_launch_files(run_dir, meta, files, env_text)
        if command.tmux is not None:
            program = tmux.start_argv(
                "/bin/sh", command.tmux, run_dir, command.cwd, keep_pwd, command.argv
            )
            mode = "tmux"
        else:
            program = ["/bin/sh", "-c", WRAPPER_SCRIPT, "bosun-run", run_dir, command.cwd]
            program += ["1" if keep_pwd else "0", *command.argv]
            mode = self._mode
        line = remote_command(
            ["/bin/sh", "-c", LAUNCH_SCRIPT, "bosun-launch", mode, run_dir, command.cwd, *program]
        )
        # The data is on the host once the writes were acknowledged: the closes travel
        # alongside the launch.
        launched, _ = await asyncio.gather(
            self.link.run(line), close_all(handles), return_exceptions=True
        )
        if isinstance(launched, BaseException):
            raise launched
        code, out, err = launched
        text = out.decode(errors="replace").strip()
        if text == "nocwd":
            await self.files.remove(f"{run_dir}/env.sh")
            raise self._no_cwd(command)
        parts = text.split()
        if code != 0 or len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ProviderError(
                f"cannot start {command.argv[0]!r} in {run_dir} on host {self.name} "
                f"(exit {code}): {redact(err.decode(errors='replace').strip()[-500:])}",
                hint="check that /bin/sh and env exist on the host and the run dir is writable",
            )
        self.launches["exec"] += 1
        return SshRun(self, run_dir, int(parts[0]), int(parts[1]))

    def _check_launch(self, command: Command) -> None:
        if not command.argv:
            raise ProviderError("empty argv", hint="an agent command needs a program to run")
        check_run_files(command.files, _RESERVED)

    async def attach(self, ref: Mapping[str, Any]) -> RunHandle:
        """The handle of a run from ``ref``, possibly started by an earlier bosun."""
        run_dir, pid, pgid = ref.get("run_dir"), ref.get("pid"), ref.get("pgid")
        if not isinstance(run_dir, str):
            raise ProviderError(
                f"malformed ssh run reference {dict(ref)!r}",
                hint="an ssh run ref has 'run_dir' (str), 'pid' and 'pgid' (int)",
            )
        async with self.link.files() as sftp:
            if not await sftp.isdir(run_dir):
                if pid is None and pgid is None:  # (the launch creates the directory)
                    raise ProviderError(
                        f"no run was started in {run_dir} on host {self.name} (no run directory)",
                        hint="the attempt never launched; it can be retried",
                    )
                raise ProviderError(
                    f"run directory {run_dir} no longer exists on host {self.name}",
                    hint="the run's files were removed; mark the run as lost",
                )
        if pid is None and pgid is None:
            # Only the run directory is known (bosun stopped between the launch and
            # recording it): the pid files say which process group it is.
            pid = await self._read_int(run_dir, "pid")
            pgid = await self._read_int(run_dir, "pgid", missing_ok=True) or pid
        if not (isinstance(pid, int) and isinstance(pgid, int)):
            raise ProviderError(
                f"malformed ssh run reference {dict(ref)!r}",
                hint="an ssh run ref has 'run_dir' (str), 'pid' and 'pgid' (int)",
            )
        return SshRun(self, run_dir, pid, pgid)

    async def _read_int(self, run_dir: str, name: str, *, missing_ok: bool = False) -> int:
        # The wrapper writes its pid with one small write: empty means "being written".
        for _ in range(50):
            raw = await self.files.read_small(f"{run_dir}/{name}")
            if raw is None:
                if missing_ok:
                    return 0
                raise ProviderError(
                    f"no run was started in {run_dir} on host {self.name} (no {name} file)",
                    hint="the attempt never launched; it can be retried",
                )
            text = raw.decode("ascii", errors="replace").strip()
            if text.isdigit():
                return int(text)
            await asyncio.sleep(0.02)
        raise ProviderError(
            f"the {name} file of {run_dir} on host {self.name} is unreadable",
            hint="the attempt can be retried",
        )

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a short command on the host, attached, on its own channel.

        ``env`` is added to the login environment of the remote user; its values travel
        on the command line (fine for ``GIT_TERMINAL_PROMPT=0``, not for secrets: those
        belong in ``launch``). A timeout or cancel kills the command's process group.
        """
        if not argv:
            raise ProviderError("empty argv", hint="pass the program to run as argv[0]")
        shown = redact(shlex.join(argv))
        pairs = []
        for name, value in (env or {}).items():
            if not ENV_NAME.fullmatch(name):
                raise ProviderError(
                    f"invalid environment variable name {name!r}",
                    hint="names use letters, digits and '_' (not first a digit)",
                )
            pairs.append(f"{name}={value}")
        head = ["/bin/sh", "-c", EXEC_SCRIPT, "bosun-exec", cwd or "", str(len(pairs))]
        line = remote_command([*head, *pairs, *argv])
        try:
            code, out, err = await self.link.run(line, stdin=stdin, timeout=timeout)
        except TimeoutError:
            raise ProviderError(
                f"{shown} on host {self.name} timed out after {timeout:g}s and was killed",
                hint="check the host and network, or raise the timeout",
            ) from None
        if (code, err) == NO_DIR:
            raise ProviderError(
                f"cannot run {shown} on host {self.name}: directory {cwd} does not exist",
                hint="create the directory first",
            )
        if (code, err) == NO_PROGRAM:
            raise ProviderError(
                f"cannot run {shown} on host {self.name}: {argv[0]!r} was not found",
                hint=f"install {argv[0]!r} on {self.name} or add its directory to PATH there",
            )
        return ExecResult(
            argv=tuple(argv),
            exit_code=code,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )

    async def upload(self, local_path: str, remote_path: str) -> None:
        """Copy a local file to the host (SFTP), e.g. a git bundle."""
        await self.files.upload(local_path, remote_path)

    async def download(self, remote_path: str, local_path: str) -> None:
        """Copy a file from the host to this machine (SFTP)."""
        await self.files.download(remote_path, local_path)

    async def aclose(self) -> None:
        """Close the connection. Runs on the host are detached and keep running."""
        self._probes.cancel()
        await self.session.aclose()
        await self.link.aclose()

    async def probe(self, run_dir: str, pgid: int, *, group: bool = False) -> Probe:
        """What the host session sees of a run now; the probes of all runs asked at the
        same moment share one request. ``group``: whether the process group lives even
        when the run has an exit code (else ``alive`` is None then)."""
        return await self._probes.ask((run_dir, pgid, group))

    async def _probe_runs(
        self, runs: list[tuple[str, int, bool]]
    ) -> dict[tuple[str, int, bool], Probe]:
        args = [w for d, g, full in runs for w in (d, str(g), "1" if full else "0")]
        words = await self.session.call("probe", args, retry=True)
        if len(words) != len(runs):
            raise ProviderError(
                f"host {self.name}: the session answered {len(words)} probes for {len(runs)}",
                hint="report this as a bug",
            )
        return {run: Probe.parse(word) for run, word in zip(runs, words, strict=True)}

    async def signal(self, sig: str, pgid: int) -> bool:
        """Send ``sig`` (TERM, KILL) to a process group on the host; False if it is gone."""
        words = await self.session.call("signal", [sig, str(pgid)], retry=True)
        return words == ["sent"]
