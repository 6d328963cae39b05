"""A spare run wrapper (``ssh_scripts.SPARE_SCRIPT``) under the real shells, with a real
FIFO and no SSH: it runs the line a launch writes down its FIFO (``SPARE_LINE``) only
when all of it arrived. A session shell killed while it writes a long line leaves the
spare a prefix and then end of file: the spare must run none of it (no variable
exported, no wrapper, no agent, no answer) and end."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bosun.providers.ssh_scripts import (
    SPARE_LINE,
    SPARE_SCRIPT,
    env_pairs,
    quote,
    spare_payload,
)

#: The launch request's id the spare answers with.
REQUEST = 7
#: How long a spare may take to do what it is told before the test gives up (a guard
#: against a hang, not a measurement).
GUARD = 30.0

_BASH = shutil.which("bash")
SHELLS = [
    pytest.param("/bin/sh", id="sh"),
    pytest.param(
        _BASH or "bash",
        id="bash",
        marks=pytest.mark.skipif(_BASH is None, reason="bash is not installed"),
    ),
]

#: The agent: writes its variable and its arguments to ``marker`` in its working
#: directory, so a run with fewer variables or a shorter argv shows.
AGENT = ["/bin/sh", "-c", 'printf "%s|" "$BOSUN_T" "$@" > marker', "agent"]
ENV = {"BOSUN_T": "it's one value"}


@dataclass
class Launch:
    """One launch handed to a spare: its run directory, working directory, argv and the
    line the session would write down the FIFO."""

    run_dir: Path
    cwd: Path
    argv: list[str]
    words: list[str]  # as quoted in the line
    line: bytes

    @property
    def marker(self) -> str:
        return "".join(f"{v}|" for v in [ENV["BOSUN_T"], *self.argv[len(AGENT) :]])


def launch(tmp_path: Path, args: list[str]) -> Launch:
    """The words a launch hands a spare (as ``SshProvider._launch_in_session`` makes
    them), in the line the session writes (``printf SPARE_LINE ID PAYLOAD``)."""
    run_dir, cwd = tmp_path / "runs" / "r1", tmp_path / "work"
    run_dir.mkdir(parents=True)
    cwd.mkdir()
    argv = [*AGENT, *args]
    env = env_pairs(ENV)
    words = [str(len(env)), *env, str(run_dir), str(cwd), "0", *argv]
    line = (SPARE_LINE % (REQUEST, spare_payload(words))).encode()
    return Launch(run_dir, cwd, argv, [quote(word) for word in words], line)


@dataclass
class Spare:
    proc: subprocess.Popen[bytes]
    fifo: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def feed(self, data: bytes) -> list[str]:
        """Write ``data`` down the FIFO and close it (as a session shell killed there
        would), then return the spare's answers on fd 3 until it closes it (it ended,
        or it runs the launch as the wrapper, which closes fd 3 first)."""
        fd = self._open_writer()
        try:
            os.set_blocking(fd, True)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode().splitlines()

    def _open_writer(self) -> int:
        """The FIFO opened for writing once the spare has opened it for reading (a
        non-blocking open fails with ENXIO until then), or AssertionError when the
        spare ends first."""
        deadline = time.monotonic() + GUARD
        while True:
            try:
                return os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the spare never read its FIFO: {self.stderr()}")
            time.sleep(0.002)

    def wait(self) -> int:
        return self.proc.wait(GUARD)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


@contextlib.contextmanager
def spare(shell: str, tmp_path: Path) -> Iterator[Spare]:
    """A spare started the way the host session starts one (``setsid -f /bin/sh -c
    SPARE_SCRIPT bosun-spare ID FIFO``, stdin and stdout on /dev/null, fd 3 on the
    session's stdout), here as this process's child: the leader of a session of its
    own, with an empty environment, fd 3 on a pipe the test reads and stderr kept in a
    file. It has said ``ID spare PID`` when it is handed over; its process group (the
    spare, then the run) is killed afterwards, even when the test failed."""
    fifo, err = tmp_path / "spare.1", tmp_path / "spare.err"
    os.mkfifo(fifo, 0o600)
    launcher = ["/bin/sh", "-c", 'exec "$@" 3>&1 >/dev/null', "bosun-test"]
    try:
        with err.open("wb") as err_file:
            proc = subprocess.Popen(
                [*launcher, shell, "-c", SPARE_SCRIPT, "bosun-spare", str(REQUEST), str(fifo)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err_file,
                env={},
                start_new_session=True,
            )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().decode()
            assert first == f"{REQUEST} spare {proc.pid}\n", err.read_text(errors="replace")
            yield Spare(proc, fifo, err)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    finally:
        fifo.unlink()


def ran_whole(s: Spare, answers: list[str], run: Launch) -> None:
    """The spare answered ``ID ok PID`` and ran the launch as its wrapper, with all of
    its variables and words."""
    assert answers == [f"{REQUEST} ok {s.pid}"], s.stderr()
    assert s.wait() == 0, s.stderr()
    assert (run.run_dir / "pid").read_text() == f"{s.pid}\n"
    assert (run.run_dir / "exit").read_text() == "0\n"
    assert (run.cwd / "marker").read_text() == run.marker


def ran_nothing(s: Spare, answers: list[str], run: Launch, cut: int) -> None:
    """The spare read a prefix of the line and end of file: it answered nothing, wrote
    nothing in the run directory, started no agent, and ended."""
    said = f"cut at {cut} of {len(run.line)}: {run.line[:cut]!r}"
    assert answers == [], said
    s.wait()
    assert sorted(os.listdir(run.run_dir)) == [], said
    assert not (run.cwd / "marker").exists(), said


def short_args() -> list[str]:
    """Arguments quoted and not: a word with a space, plain words, an option."""
    return ["arg one", "two", "--last"]


def long_args() -> list[str]:
    """A launch well above PIPE_BUF (4 KiB, the most a FIFO takes at once): plain words
    (left unquoted by ``quote``), and words with spaces and quotes (quoted)."""
    plain = [f"w{i}-" + "x" * 150 for i in range(60)]
    quoted = [f"q {i} it's" + " y" * 40 for i in range(20)]
    return [word for pair in zip(plain[:20], quoted, strict=True) for word in pair] + plain[20:]


def word_cuts(run: Launch) -> list[int]:
    """Where to cut the line: everywhere in ``{ bosun_run ID``, at every boundary of the
    quoted words (before and after each space between them), in the middle of every
    word, inside the closing ``}`` line, and around the first 4 KiB blocks."""
    start = len((SPARE_LINE % (REQUEST, "")).split("\n")[0])  # "{ bosun_run ID "
    cuts = set(range(start + 1)) | {len(run.line) - 3, len(run.line) - 2}
    for word in run.words:
        end = start + len(word.encode())
        cuts |= {start, (start + end) // 2, end, end + 1}
        start = end + 1
    cuts |= {4095, 4096, 4097, 8191, 8192, 8193}
    return sorted(c for c in cuts if 0 <= c < len(run.line) - 1)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("args", [short_args(), long_args()], ids=["short", "long"])
def test_a_whole_line_runs_as_the_launch(shell: str, args: list[str], tmp_path: Path) -> None:
    """The line the session writes, whole: the spare exports the run's variable,
    answers ``ID ok PID`` and runs the agent with every word, as the run's wrapper."""
    run = launch(tmp_path, args)
    assert (len(run.line) > 4096) == (args == long_args())
    with spare(shell, tmp_path) as s:
        ran_whole(s, s.feed(run.line), run)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_line_without_its_last_newline_is_whole(shell: str, tmp_path: Path) -> None:
    """Cut after the closing brace, the launch has arrived whole: it runs."""
    run = launch(tmp_path, short_args())
    with spare(shell, tmp_path) as s:
        ran_whole(s, s.feed(run.line[:-1]), run)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_short_line_cut_anywhere_runs_nothing(shell: str, tmp_path: Path) -> None:
    """Every prefix of the line short of its closing brace (at word boundaries, inside
    quoted and unquoted words, inside ``bosun_run``, before the ``}``) then end of file:
    no answer, nothing in the run directory, no agent, and the spare ends."""
    run = launch(tmp_path, short_args())
    assert b" two " in run.line and b" '" in run.line  # plain and quoted words
    for cut in range(len(run.line) - 1):
        with spare(shell, tmp_path) as s:
            ran_nothing(s, s.feed(run.line[:cut]), run, cut)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_long_line_cut_runs_nothing(shell: str, tmp_path: Path) -> None:
    """A launch above PIPE_BUF, cut at every word boundary, in the middle of every word
    and around 4 KiB blocks: nothing runs and the spare ends."""
    run = launch(tmp_path, long_args())
    cuts = word_cuts(run)
    assert b"\n}\n" not in run.line[:-3] and run.line[cuts[-1] :] == b"}\n"
    for cut in cuts:
        with spare(shell, tmp_path) as s:
            ran_nothing(s, s.feed(run.line[:cut]), run, cut)
