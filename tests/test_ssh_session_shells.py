"""The host session's script (``ssh_scripts.SESSION_SCRIPT``) under the real shells a host
may have as ``/bin/sh``, with no SSH: started as the session starts it
(``env -i SHELL -s PATH SPARE_DIR``), it launches a run, and it offers spares only where a
spare can start a launch.

bash and zsh read a sourced file to its end before they run any of it, and the session
holds each spare's FIFO open read-write, so a FIFO never ends: a spare there would never
start the launch written down its FIFO. Where ``/bin/sh`` is bash (Fedora, RHEL, Arch),
the session must say it has no spares, and every launch goes through ``setsid``."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bosun.providers.ssh_scripts import SESSION_SCRIPT, SPARE_SCRIPT, session_request

#: A guard against a hang (a line that never comes), not a measurement.
GUARD = 20.0
PATH = "/usr/local/bin:/usr/bin:/bin"

_BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(_BASH is None, reason="bash is not installed")
needs_setsid = pytest.mark.skipif(
    subprocess.run(["setsid", "-f", "true"], check=False).returncode != 0,
    reason="setsid -f does not work here",
)


class Session:
    """A session shell started on ``shell`` (``argv0``: the name it is started under, as
    bash behaves as POSIX sh when started as ``sh``)."""

    def __init__(self, shell: str, argv0: str, spare_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [argv0, "-s", PATH, str(spare_dir)],
            executable=shell,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.out = self.proc.stdout.fileno()
        self.buf = b""
        self.stdin.write(SESSION_SCRIPT.encode())
        self.stdin.flush()

    def line(self) -> str:
        deadline = time.monotonic() + GUARD
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"the session said nothing more (so far: {self.buf!r})"
            ready, _, _ = select.select([self.out], [], [], left)
            if ready:
                chunk = os.read(self.out, 4096)
                assert chunk, f"the session ended (so far: {self.buf!r})"
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def call(self, function: str, request_id: int, args: list[str]) -> str:
        self.stdin.write(session_request(function, request_id, args))
        self.stdin.flush()
        return self.line()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            self.stdin.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@contextlib.contextmanager
def session(shell: str, argv0: str, tmp_path: Path) -> Iterator[Session]:
    s = Session(shell, argv0, tmp_path / "spares")
    try:
        yield s
    finally:
        s.close()
        kill_spares(tmp_path / "spares")


def kill_spares(spare_dir: Path) -> None:
    """Stop the spares this test's session started (by their PIDs, from /proc: a spare is
    ``sh -c SPARE_SCRIPT bosun-spare ID FIFO`` with a FIFO in ``spare_dir``)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bosun-spare" in argv and any(a.startswith(bytes(spare_dir)) for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)


def launch_args(run_dir: Path, cwd: Path, argv: list[str]) -> list[str]:
    """A ``launch`` request's arguments as ``SshProvider._launch_in_session`` makes them,
    with no spare: slot 0, no spare pid, the run directory, the working directory, no
    PWD kept, no subdirectories, ``cmd.json`` as the one file, no variables, the argv."""
    return ["0", "", str(run_dir), str(cwd), "0", "0", "1", "cmd.json", "{}", "0", *argv]


def wait_for(path: Path) -> str:
    deadline = time.monotonic() + GUARD
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text()


def launch_once(s: Session, tmp_path: Path) -> None:
    """A launch through setsid: answered with the wrapper's pid, the agent ran once in its
    working directory, and the wrapper wrote the exit code."""
    run_dir, cwd = tmp_path / "run", tmp_path / "cwd"
    run_dir.mkdir()
    cwd.mkdir()
    argv = ["/bin/sh", "-c", "pwd > marker; exit 3"]
    words = s.call("launch", 1, launch_args(run_dir, cwd, argv)).split()
    assert words[:2] == ["1", "ok"] and words[2].isdigit(), words
    assert wait_for(run_dir / "exit") == "3\n"
    assert (cwd / "marker").read_text() == f"{cwd}\n"
    assert (run_dir / "cmd.json").read_text() == "{}"


@needs_setsid
@needs_bash
def test_bash_as_sh_runs_the_session_without_spares(tmp_path: Path) -> None:
    assert _BASH is not None
    with session(_BASH, "sh", tmp_path) as s:
        assert s.line() == "0 ready setsid"  # no "spares": none could start a launch
        launch_once(s, tmp_path)
    assert not (tmp_path / "spares").exists() or not any((tmp_path / "spares").iterdir())


@needs_setsid
def test_dash_as_sh_offers_spares_and_launches(tmp_path: Path) -> None:
    if os.path.realpath("/bin/sh").rsplit("/", 1)[-1] not in ("dash", "busybox"):
        pytest.skip("/bin/sh is not dash here")
    with session("/bin/sh", "sh", tmp_path) as s:
        assert s.line() == "0 ready setsid spares"
        launch_once(s, tmp_path)


#: ``bash -c _AS_SH_WITH_FD3 BASH SCRIPT FIFO``: SCRIPT under bash started as sh, as a
#: spare (``$0`` bosun-spare, ``$1`` 5, ``$2`` FIFO) with fd 3 on its stdout.
_AS_SH_WITH_FD3 = 'exec 3>&1 && exec -a sh "$0" -c "$1" bosun-spare 5 "$2"'


@needs_bash
def test_bash_never_starts_a_sourced_fifo_that_stays_open(tmp_path: Path) -> None:
    """Why: the behaviour the rule above rests on. A spare under bash sources its FIFO
    (``SPARE_SCRIPT``); with the FIFO held open, as the session holds it, bash waits for
    its end and runs nothing of what is already there."""
    assert _BASH is not None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    held = os.open(fifo, os.O_RDWR)  # the session's read-write hold
    answer_r, answer_w = os.pipe()
    # bash started as sh (POSIX mode, as /bin/sh), with fd 3 (where a spare answers) on
    # the pipe: as the session starts a spare, but for setsid
    spare = subprocess.Popen(
        [_BASH, "-c", _AS_SH_WITH_FD3, _BASH, SPARE_SCRIPT, str(fifo)],
        stdin=subprocess.DEVNULL,
        stdout=answer_w,
        env={"PATH": PATH},
    )
    os.close(answer_w)
    try:
        hello = b""
        while not hello.endswith(b"\n"):
            ready, _, _ = select.select([answer_r], [], [], GUARD)
            assert ready, "the spare never said it was there"
            hello += os.read(answer_r, 100)
        assert hello.split()[:2] == [b"5", b"spare"]
        os.write(held, b"{ echo sourced >&3\n}\n")
        # bash would answer at once if it ran what it has read; it waits for the end
        ready, _, _ = select.select([answer_r], [], [], 1.0)
        assert not ready
        assert spare.poll() is None
    finally:
        spare.kill()
        spare.wait()
        os.close(held)
        os.close(answer_r)


@needs_setsid
def test_a_new_session_frees_a_spare_blocked_on_a_dead_session_s_fifo(tmp_path: Path) -> None:
    """A spare started just before its session's shell died blocks opening its FIFO (no
    writer is left) and holds the dead session's channel open. The next session, which
    removes the FIFOs of sessions that are gone, first opens each for a moment, so that
    such a spare gets through its open, reads the end and exits."""
    if os.path.realpath("/bin/sh").rsplit("/", 1)[-1] not in ("dash", "busybox"):
        pytest.skip("/bin/sh is not dash here (no spares under bash)")
    spares = tmp_path / "spares"
    spares.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no session has any more
    fifo = spares / f"{gone.pid}.1"
    os.mkfifo(fifo, 0o600)
    blocked = subprocess.Popen(["/bin/sh", "-c", '. "$1"; echo out', "bosun-spare", str(fifo)])
    try:
        with session("/bin/sh", "sh", tmp_path) as s:
            assert s.line() == "0 ready setsid spares"
            assert blocked.wait(GUARD) == 0  # (a guard against a hang, not a measurement)
        assert not fifo.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            blocked.kill()
        blocked.wait()
