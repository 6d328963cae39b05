"""A launch whose host session shell dies under it, against a real sshd: on a new session
the run directory tells whether the launch took effect; it is then sent once more (it
never ran), followed (its wrapper runs), or refused (cmd.json and no wrapper), and an
agent never runs twice nor unknown to bosun."""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import signal
import termios
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from bosun.config import HostConfig
from bosun.errors import ProviderError
from bosun.providers import ssh as ssh_module
from bosun.providers.base import Command, RunHandle
from bosun.providers.ssh import SshProvider
from bosun.providers.ssh_scripts import SPARE_LINE, SPARES, env_pairs, spare_payload
from bosun.providers.ssh_session import SessionEnded
from tests.provider_contract import PATH_ENV, drain, start, wait_exit, wait_until
from tests.sshd import SshdFleet, SshHost

pytestmark = pytest.mark.ssh

#: The agent: one line per start in ``ran`` (its pid), one line of output.
AGENT = ["sh", "-c", 'echo "$$" >> ran; echo once']


@pytest.fixture
def host(sshd: SshdFleet) -> SshHost:
    (h,) = sshd.start(1)
    sshd.trust(h)
    return h


@pytest.fixture(params=[True, False], ids=["spare", "setsid"])
async def provider(
    request: pytest.FixtureRequest, sshd: SshdFleet, host: SshHost, tmp_path: Path
) -> AsyncIterator[SshProvider]:
    """Ready, its session not started yet: launched by a spare, or by the session's
    setsid."""
    table = sshd.host_table(host, spares=request.param)
    p = SshProvider(host.name, HostConfig(**table), str(tmp_path / "state"))
    await p.ensure_ready()
    yield p
    await p.aclose()


async def session_started(p: SshProvider, host: SshHost) -> int:
    """Start the host session (and wait for its spares, if it has some): its shell's pid."""
    await p.session.start()
    if p.session.has_spares:
        await wait_until(lambda: p.session.idle_spares == SPARES)
    (shell,) = session_shells(host)
    return shell


def session_shells(host: SshHost) -> list[int]:
    """Pids of the host's bosun session shells (``/bin/sh -s PATH``)."""
    return [pid for pid, _pgid, argv in host.processes() if argv[:2] == ["/bin/sh", "-s"]]


def spy_calls(
    p: SshProvider, monkeypatch: pytest.MonkeyPatch, before: Callable[[str], None] | None = None
) -> list[str]:
    """The functions of the requests the provider sends its session from now on, in
    order (``before`` runs as each is sent)."""
    calls: list[str] = []
    real = p.session.call

    async def spy(function: str, args: Any, **kwargs: Any) -> list[str]:
        calls.append(function)
        if before is not None:
            before(function)
        return await real(function, args, **kwargs)

    monkeypatch.setattr(p.session, "call", spy)
    return calls


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def ran_once(run: RunHandle, work: Path) -> None:
    """The run ends well, and the agent started once on the host."""
    assert await wait_exit(run) == 0
    assert (await drain(run))["stdout"] == ["once"]
    assert len((work / "ran").read_text().split()) == 1


async def test_the_shell_killed_before_the_request_launches_once_on_a_new_session(
    provider: SshProvider, host: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session shell is killed as the launch request goes out (bosun has not seen it
    end yet): the request is lost with it, no cmd.json was written, so the launch goes
    once more on a new session and the agent runs once."""
    work = host.work_dir()
    shell = await session_started(provider, host)

    def kill_first_launch(function: str) -> None:
        if function == "launch" and calls.count("launch") == 1:
            kill(shell)

    calls = spy_calls(provider, monkeypatch, kill_first_launch)
    run = await start(provider, "killed-before", AGENT, work)
    assert calls == ["launch", "launched", "launch"]
    assert provider.session.starts == 2 and shell not in session_shells(host)
    assert sum(provider.launches.values()) == 1
    await ran_once(run, work)


async def test_a_launch_goes_once_more_only(
    provider: SshProvider, host: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session shell is killed as each launch request goes out: the launch is sent
    twice, then fails saying that nothing was started in the run directory."""
    work = host.work_dir()
    await session_started(provider, host)

    def kill_every_launch(function: str) -> None:
        if function == "launch":
            for shell in session_shells(host):
                kill(shell)

    calls = spy_calls(provider, monkeypatch, kill_every_launch)
    run_dir = await provider.run_dir("killed-twice")
    with pytest.raises(ProviderError, match="ended twice") as caught:
        await start(provider, "killed-twice", AGENT, work)
    assert f"nothing was started in {run_dir}" in caught.value.message
    assert calls == ["launch", "launched", "launch", "launched"]
    assert not os.path.exists(f"{run_dir}/cmd.json") and not (work / "ran").exists()
    assert sum(provider.launches.values()) == 0


async def test_a_run_handed_over_before_the_shell_died_is_followed_not_launched_again(
    provider: SshProvider, host: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wrapper (a spare, or started with setsid) has the run and answers, but its
    answer is lost and the session shell then dies: the launch finds the wrapper's pid
    in the run directory on a new session and returns that run; nothing starts twice."""
    work = host.work_dir()
    dropped: list[bytes] = []
    shell: list[int] = []
    real_read = provider.session._read

    async def lossy_read(proc: asyncssh.SSHClientProcess[bytes], waiting: Any) -> None:
        """The session's reader, without the first launch answer (``ID ok PID``): once
        that was written, the session shell is killed on the host."""
        stdout = proc.stdout
        real_readline = stdout.readline

        async def readline() -> bytes:
            while True:
                line = await real_readline()
                if not dropped and line.split()[1:2] == [b"ok"]:
                    dropped.append(line)
                    kill(shell[0])
                    continue
                return line

        monkeypatch.setattr(stdout, "readline", readline)
        await real_read(proc, waiting)

    monkeypatch.setattr(provider.session, "_read", lossy_read)
    shell.append(await session_started(provider, host))
    calls = spy_calls(provider, monkeypatch)
    run = await start(provider, "answer-lost", AGENT, work)
    assert len(dropped) == 1
    assert run.ref["pid"] == run.ref["pgid"] == int(dropped[0].split()[2])
    assert calls[:2] == ["launch", "launched"] and calls.count("launch") == 1
    assert provider.session.starts == 2 and shell[0] not in session_shells(host)
    assert sum(provider.launches.values()) == 1
    await ran_once(run, work)


async def test_cmd_json_without_a_wrapper_fails_naming_the_run_directory(
    provider: SshProvider, host: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session shell dies after it created cmd.json and before any wrapper had the
    run (it is held up writing a run file into a FIFO, and killed there): no pid ever
    comes, so the launch fails with what was found and where, and starts nothing."""
    work = host.work_dir()
    monkeypatch.setattr(ssh_module, "STARTED_WAIT", 0.3)
    shell = await session_started(provider, host)
    run_dir = await provider.run_dir("cut-off")
    await provider.makedirs(run_dir)
    os.mkfifo(f"{run_dir}/held")  # no reader: the session's write into it waits
    os.chown(f"{run_dir}/held", host.uid, -1)
    calls = spy_calls(provider, monkeypatch)
    cmd = Command(argv=tuple(AGENT), cwd=str(work), env=PATH_ENV, files={"held": b"x"})
    launch: asyncio.Task[RunHandle] = asyncio.create_task(provider.launch(cmd, run_dir))
    try:
        await wait_until(lambda: os.path.exists(f"{run_dir}/cmd.json"))
        kill(shell)
        with pytest.raises(ProviderError) as caught:
            await launch
    finally:
        launch.cancel()
        await asyncio.gather(launch, return_exceptions=True)
    message = caught.value.message
    assert f"{run_dir} holds cmd.json but no wrapper started there" in message
    assert "bosun does not launch a run directory twice" in message
    assert caught.value.hint is not None and run_dir in caught.value.hint
    assert calls.count("launch") == 1 and "launched" in calls
    assert not os.path.exists(f"{run_dir}/pid") and not (work / "ran").exists()
    assert not [argv for _pid, _pgid, argv in host.processes() if run_dir in argv]
    assert sum(provider.launches.values()) == 0


def fifo_opened(pid: int, fifo: Path) -> bool:
    """Whether process ``pid`` has ``fifo`` open."""
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo):
                    return True
    return False


async def test_a_spare_given_a_launch_cut_off_by_the_shells_death_runs_none_of_it(
    sshd: SshdFleet, host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session shell is killed while it writes a long launch down a spare's FIFO
    (the FIFOs hold 4 KiB here and the spares are stopped, so the write waits, the line
    cut among the agent's unquoted words): the spare reads that prefix and end of file,
    runs none of it (a bare ``bosun_run`` line would have run the agent with fewer
    words) and ends, and the launch fails as one whose shell died before a wrapper had
    the run."""
    work = host.work_dir()
    monkeypatch.setattr(ssh_module, "STARTED_WAIT", 0.3)
    table = sshd.host_table(host, spares=True)
    p = SshProvider(host.name, HostConfig(**table), str(tmp_path / "state"))
    readers: list[int] = []
    stopped: list[int] = []
    launch: asyncio.Task[RunHandle] | None = None
    try:
        await p.ensure_ready()
        shell = await session_started(p, host)
        # (pid, FIFO) of each spare: ``/bin/sh -c SPARE bosun-spare ID FIFO``, the FIFO's
        # path relative to the home directory, where the session runs
        spares = [(pid, host.home / a[-1]) for pid, _g, a in host.processes() if "bosun-spare" in a]
        assert len(spares) == SPARES
        for pid, fifo in spares:
            await wait_until(lambda: fifo_opened(pid, fifo))  # noqa: B023 (awaited here)
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
            readers.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            fcntl.fcntl(readers[-1], fcntl.F_SETPIPE_SZ, 4096)
        words = [f"w{i}-" + "x" * 95 for i in range(100)]  # 10 KiB, left unquoted
        agent = ["sh", "-c", 'echo "$#" >> ran', "agent", *words]
        run_dir = await p.run_dir("cut-line")
        launch = asyncio.create_task(start(p, "cut-line", agent, work))
        # The line (~10 KiB) does not fit: once some of it is in a FIFO, the write waits.
        await wait_until(lambda: any(map(queued, readers)))
        kill(shell)
        # the spare reads a prefix that ends among the agent's words (old spares ran that)
        head = spare_payload(["1", *env_pairs(PATH_ENV), run_dir, str(work), "0", *agent[:4]])
        assert len(SPARE_LINE % (1, head)) < sum(map(queued, readers)) <= 4096
        for fd in readers:
            os.close(fd)
        readers.clear()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        with pytest.raises(ProviderError) as caught:
            await launch
        assert f"{run_dir} holds cmd.json but no wrapper started there" in caught.value.message
        await wait_until(lambda: not set(stopped) & {pid for pid, _g, _a in host.processes()})
        assert not os.path.exists(f"{run_dir}/pid") and not (work / "ran").exists()
        assert sum(p.launches.values()) == 0
    finally:
        for fd in readers:
            os.close(fd)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if launch is not None:
            launch.cancel()
            await asyncio.gather(launch, return_exceptions=True)
        await p.aclose()


def queued(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` reads."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


async def test_the_shell_s_exit_ends_the_session_while_its_output_is_still_held(
    provider: SshProvider, host: SshHost
) -> None:
    """A process still holding the session's output (as a spare blocked on opening a FIFO
    that lost its writer does) keeps the channel open after the shell died: bosun learns
    the end from the shell's exit status, so a waiting request fails at once with
    ``SessionEnded`` rather than at its timeout, and the next request gets a new session."""
    shell = await session_started(provider, host)
    # the holder: opens the shell's stdout (the channel's pipe) as root, through /proc
    holder = await asyncio.create_subprocess_exec(
        "python3",
        "-c",
        "import os, sys, time; os.open(sys.argv[1], os.O_WRONLY); print('held', flush=True);"
        " time.sleep(120)",
        f"/proc/{shell}/fd/1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        os.kill(shell, signal.SIGSTOP)  # the request below waits for an answer
        pending = asyncio.ensure_future(provider.session.call("probe", [], timeout=60))
        await asyncio.sleep(0.2)
        assert not pending.done()
        kill(shell)
        with pytest.raises(SessionEnded):
            await asyncio.wait_for(pending, 30)  # a guard: the timeout above is 60 s
        assert holder.returncode is None  # the channel's output was held all along
        assert await provider.session.call("probe", [], timeout=30) == []  # a new session
        assert [p for p in session_shells(host) if p != shell] != []
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        await holder.wait()
