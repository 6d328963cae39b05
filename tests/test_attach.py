"""Tmux mode and ``bosun attach`` on this machine: real tmux servers, real processes.

Every run's tmux server has its own socket (``-S``) in the run directory, under a short
state directory in /tmp (a Unix socket path holds at most 108 bytes); at teardown every
server is killed and every run's process group too, also when a test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bosun.attach import plan_attach, session_of, ssh_attach_argv
from bosun.config import HostConfig
from bosun.errors import ConfigError, InputError, ProviderError
from bosun.models import Run, RunStatus, TaskStatus
from bosun.preflight import check_agent
from bosun.providers.base import Command, ExecResult, RunHandle, TmuxSession
from bosun.providers.local import LocalProvider
from bosun.providers.tmux import session_for_run
from tests.factories import make_run, make_task

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
BOSUN = [sys.executable, "-m", "bosun"]


def kill_tmux_and_runs(root: Path) -> None:
    for sock in root.rglob("tmux.sock"):
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, check=False)
    for pidfile in root.rglob("runs/*/pid"):
        with contextlib.suppress(ValueError, OSError, ProcessLookupError, PermissionError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def state() -> Iterator[Path]:
    """A short state directory in /tmp; its tmux servers and runs are killed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bosun-tmux-", dir="/tmp"))
    try:
        yield path
    finally:
        kill_tmux_and_runs(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def provider(state: Path) -> AsyncIterator[LocalProvider]:
    p = LocalProvider("local", str(state))
    await p.ensure_ready()
    yield p
    await p.aclose()


def tmux(session: TmuxSession, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tmux", *session.socket_args(), *args], capture_output=True, text=True, check=False
    )


async def eventually(check: Any, what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def launch(
    provider: LocalProvider,
    key: str,
    script: str,
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> tuple[RunHandle, TmuxSession]:
    run_dir = await provider.run_dir(key)
    session = session_for_run(run_dir)
    command = Command(
        argv=("sh", "-c", script),
        cwd=str(cwd),
        env=PATH_ENV if env is None else env,
        stdin=stdin,
        tmux=session,
    )
    return await provider.launch(command, run_dir), session


async def wait_exit(handle: RunHandle, limit: float = 15.0) -> int:
    deadline = time.monotonic() + limit
    while (code := await handle.exit_code()) is None:
        assert time.monotonic() < deadline, "the run did not end"
        await asyncio.sleep(0.02)
    return code


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


# -- the run protocol in tmux mode ---------------------------------------------------------
async def test_tmux_run_keeps_the_protocol_and_mirrors_to_the_pane(
    provider: LocalProvider, state: Path
) -> None:
    go = state / "go"
    script = f"echo out; echo err >&2; cat; while [ ! -e {go} ]; do sleep 0.02; done; exit 3"
    handle, session = await launch(provider, "task-1-attempt-1", script, state, stdin=b"in\n")
    run_dir = Path(handle.run_dir)
    assert session.socket == str(run_dir / "tmux.sock") and session.name == "task-1-attempt-1"
    # the session exists while the run runs, and the pane shows the agent's output
    assert tmux(session, "has-session", "-t", f"={session.name}").returncode == 0
    await eventually(
        lambda: "in" in tmux(session, "capture-pane", "-p", "-t", f"={session.name}:").stdout,
        "the pane to show the output",
    )
    pane = tmux(session, "capture-pane", "-p", "-t", f"={session.name}:").stdout.split()
    assert "out" in pane and "err" in pane
    # the recorded group is the pane's process: the one to follow and to cancel
    pane_pid = tmux(session, "display-message", "-p", "-t", f"={session.name}:", "#{pane_pid}")
    assert handle.ref["pgid"] == handle.ref["pid"] == int(pane_pid.stdout)
    assert int((run_dir / "pid").read_text()) == handle.ref["pgid"]
    assert await handle.alive() and await handle.exit_code() is None
    go.touch()
    assert await wait_exit(handle) == 3
    assert (run_dir / "stdout").read_text() == "out\nin\n"
    assert (run_dir / "stderr").read_text() == "err\n"
    chunks = await handle.read(0, 0, final=True)
    assert {c.stream: c.lines for c in chunks} == {"stdout": ("out", "in"), "stderr": ("err",)}
    # the session (and its server) end with the run
    await eventually(
        lambda: tmux(session, "has-session", "-t", f"={session.name}").returncode != 0,
        "the session to end",
    )


async def test_tmux_cancel_kills_the_whole_group(provider: LocalProvider, state: Path) -> None:
    child = state / "child"
    script = f"sleep 300 & echo $! > {child}; echo started; wait"
    handle, session = await launch(provider, "task-2-attempt-1", script, state)
    await eventually(lambda: child.exists() and child.read_text().strip() != "", "the child")
    pid = int(child.read_text())
    assert not gone(pid)
    await handle.cancel(grace=2)
    assert await handle.exit_code() == 143
    assert gone(pid) and not await handle.alive()
    await eventually(
        lambda: tmux(session, "has-session", "-t", f"={session.name}").returncode != 0,
        "the session to end",
    )


async def test_ctrl_c_in_the_pane_interrupts_the_agent(
    provider: LocalProvider, state: Path
) -> None:
    handle, session = await launch(provider, "task-6-attempt-1", "echo ready; sleep 30", state)
    await eventually(
        lambda: "ready" in tmux(session, "capture-pane", "-p", "-t", f"={session.name}:").stdout,
        "the agent to start",
    )
    assert tmux(session, "send-keys", "-t", f"={session.name}:", "C-c").returncode == 0
    assert await wait_exit(handle) == 130


async def test_tmux_run_survives_a_restart_of_bosun(provider: LocalProvider, state: Path) -> None:
    go = state / "go"
    script = f"echo one; while [ ! -e {go} ]; do sleep 0.02; done; echo two"
    handle, _ = await launch(provider, "task-3-attempt-1", script, state)
    ref = handle.ref
    await provider.aclose()  # bosun stops; the run goes on
    again = LocalProvider("local", str(state))
    try:
        by_ref = await again.attach(ref)
        by_dir = await again.attach({"run_dir": ref["run_dir"]})  # recorded late: adopt
        assert by_dir.ref == by_ref.ref == ref
        assert await by_ref.alive()
        go.touch()
        assert await wait_exit(by_ref) == 0
        lines = [line for c in await by_ref.read(0, 0, final=True) for line in c.lines]
        assert lines == ["one", "two"]
    finally:
        await again.aclose()


async def test_tmux_env_is_the_given_env_plus_tmux_own(
    provider: LocalProvider, state: Path
) -> None:
    env = {**PATH_ENV, "FOO": "a 'b' $c", "TERM": "xterm-test"}
    run_dir = await provider.run_dir("task-4-attempt-1")
    command = Command(argv=("env",), cwd=str(state), env=env, tmux=session_for_run(run_dir))
    handle = await provider.launch(command, run_dir)
    assert await wait_exit(handle) == 0
    seen = dict(line.split("=", 1) for line in (Path(run_dir) / "stdout").read_text().splitlines())
    assert {k: seen.pop(k) for k in env} == env  # TERM is the agent's, not tmux's
    assert sorted(seen) == ["TMUX", "TMUX_PANE"]


async def test_tmux_missing_ends_the_run_with_127_and_says_so(
    provider: LocalProvider, state: Path
) -> None:
    bare = state / "bin"
    bare.mkdir()
    os.symlink(shutil.which("sh") or "/bin/sh", bare / "sh")
    handle, _ = await launch(
        provider, "task-5-attempt-1", "echo never", state, env={"PATH": str(bare)}
    )
    assert await wait_exit(handle) == 127
    stderr = (Path(handle.run_dir) / "stderr").read_text()
    assert "tmux mode needs tmux on this host" in stderr and "tmux = false" in stderr


async def test_preflight_names_missing_tmux(
    provider: LocalProvider, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bosun.agents.spec import AgentSpec

    bare = state / "bin"
    bare.mkdir()
    os.symlink(shutil.which("sh") or "/bin/sh", bare / "sh")
    monkeypatch.setenv("PATH", str(bare))
    spec = AgentSpec(name="t", command=("sh", "-c", "true"), tmux=True)
    check = await check_agent(provider, "local", spec, {})
    assert not check.installed
    assert check.problems == ("tmux is not installed on local (agent t runs in tmux mode)",)
    assert check.fixes == ("install tmux on local, or set [agents.t] tmux = false",)


def test_session_names_and_sockets() -> None:
    short = session_for_run("/srv/bosun/runs/task-7-attempt-2")
    assert short == TmuxSession("task-7-attempt-2", "/srv/bosun/runs/task-7-attempt-2/tmux.sock")
    assert short.socket_args() == ["-S", short.socket]
    deep = "/" + "d" * 120 + "/runs/task.7:x"
    long = session_for_run(deep)
    assert long.name == "task_7_x"  # tmux does not allow '.' or ':' in names
    assert long.socket.startswith("bosun-task_7_x-") and "/" not in long.socket
    assert long.socket_args() == ["-L", long.socket]
    assert session_for_run(deep) == long  # the same run dir, the same socket


# -- plan_attach and the ssh argv ----------------------------------------------------------
def run_of(
    ref: dict[str, Any], *, host: str = "local", status: RunStatus = RunStatus.RUNNING
) -> Run:
    return make_run(9, host=host, status=status, ref=ref)


class NoTmux(LocalProvider):
    """Runs commands with a PATH where only sh is: tmux is 'not installed'."""

    def __init__(self, root: str, bare: Path) -> None:
        super().__init__("local", root)
        self._bare = str(bare)

    async def exec(self, argv: Any, **kw: Any) -> ExecResult:
        return await super().exec(argv, **{**kw, "env": {"PATH": self._bare}})


async def test_plan_attach_follows_or_says_why(state: Path) -> None:
    running = make_task(status=TaskStatus.RUNNING)
    tmux_ref = {
        "run_dir": "/x",
        "pid": 1,
        "pgid": 1,
        "tmux": {"session": "s", "socket": str(state / "no.sock")},
    }
    hosts = {"local": HostConfig()}
    with pytest.raises(InputError) as err:
        await plan_attach(make_task(status=TaskStatus.COMPLETED), [], hosts=hosts, providers={})
    assert err.value.message == "task 1 is completed, not running: there is nothing to attach to"
    assert err.value.hint == "`bosun logs 1` prints the output it had"
    plain = await plan_attach(
        running, [run_of({"run_dir": "/x"})], hosts=hosts, providers={}, agents_tmux={"echo": False}
    )
    assert plain.argv is None and plain.note is not None
    assert "not in tmux mode" in plain.note and "tmux = true in [agents.echo]" in plain.note
    follow = await plan_attach(
        running, [run_of(tmux_ref)], hosts=hosts, providers={}, follow_only=True
    )
    assert follow.argv is None and follow.note is None
    no_tty = await plan_attach(running, [run_of(tmux_ref)], hosts=hosts, providers={}, tty=False)
    assert no_tty.argv is None and no_tty.note is not None and "not a terminal" in no_tty.note
    remote = await plan_attach(running, [run_of(tmux_ref)], hosts=None, providers={})
    assert remote.argv is None and remote.note is not None and "bosun server" in remote.note
    provider = LocalProvider("local", str(state))
    ended = await plan_attach(
        running, [run_of(tmux_ref)], hosts=hosts, providers={"local": provider}
    )
    assert ended.argv is None and ended.note is not None and "has ended" in ended.note
    assert session_of(run_of(tmux_ref)) == TmuxSession("s", str(state / "no.sock"))
    bare = state / "bin"
    bare.mkdir()
    os.symlink(shutil.which("sh") or "/bin/sh", bare / "sh")
    with pytest.raises(ProviderError) as missing:
        await plan_attach(
            running, [run_of(tmux_ref)], hosts=hosts, providers={"local": NoTmux(str(state), bare)}
        )
    assert (
        missing.value.message
        == "tmux is not installed on host local (not on the PATH of a login there)"
    )
    assert missing.value.hint is not None and "bosun attach 1 --follow-only" in missing.value.hint
    with pytest.raises(ConfigError) as unknown:
        await plan_attach(running, [run_of(tmux_ref, host="old")], hosts=hosts, providers={})
    assert unknown.value.message == "run 9 of task 1 is on host 'old', which is not configured"
    # an ended run before the current one is not what attach looks at
    older = run_of({"run_dir": "/y"}, status=RunStatus.FAILED)
    current = await plan_attach(
        running, [older, run_of(tmux_ref)], hosts=hosts, providers={}, follow_only=True
    )
    assert current.run is not None and current.run.status is RunStatus.RUNNING


def test_ssh_attach_argv_uses_the_hosts_settings(tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host gpu1.example\n  UserKnownHostsFile ~/fleet_hosts\n")
    host = HostConfig(
        kind="ssh",
        address="dev@gpu1.example:2222",
        identity_file="/keys/id one",
        known_hosts="/etc/bosun/known hosts",
        ssh_config=str(ssh_config),
        connect_timeout=7.4,
    )
    session = TmuxSession("task-3-attempt-1", "/home/dev/.bosun/runs/it's here/tmux.sock")
    argv = ssh_attach_argv(host, session, str(tmp_path), ssh="/usr/bin/ssh")
    # the files bosun trusts: the ssh config's (and ssh's global ones), its own, the host's
    theirs = str(Path("~/fleet_hosts").expanduser())
    known = f"{theirs} /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2 {tmp_path}/known_hosts"
    assert argv == [
        "/usr/bin/ssh",
        "-t",
        "-F",
        str(ssh_config),
        "-p",
        "2222",
        "-i",
        "/keys/id one",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f'UserKnownHostsFile={known} "/etc/bosun/known hosts"',
        "-o",
        "ConnectTimeout=7",
        "-l",
        "dev",
        "--",
        "gpu1.example",
        argv[-1],
    ]
    # the remote command is quoted for the remote shell, and arrives as this argv
    assert shlex.split(argv[-1]) == [
        "tmux", "-S", session.socket, "attach-session", "-t", "=task-3-attempt-1",
    ]  # fmt: skip


def test_ssh_attach_argv_without_strict_keys_and_with_an_alias(tmp_path: Path) -> None:
    host = HostConfig(kind="ssh", address="buildbox", strict_host_keys=False)
    argv = ssh_attach_argv(host, TmuxSession("k", "bosun-k-1234"), str(tmp_path))
    assert argv[:2] == ["ssh", "-t"] and "-p" not in argv and "-l" not in argv
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert argv[-2:] == ["buildbox", "tmux -L bosun-k-1234 attach-session -t =k"]
    v6 = ssh_attach_argv(HostConfig(kind="ssh", address="u@[::1]:22"), TmuxSession("k", "s"), ".")
    assert v6[v6.index("-p") + 1] == "22" and v6[-2] == "::1"


# -- bosun attach, end to end ------------------------------------------------------------
def write_config(tmp_path: Path, state: Path, go: Path) -> Path:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    script = f"echo hello-from-agent; while [ ! -e {go} ]; do sleep 0.05; done; echo bye"
    (cfg / "bosun.toml").write_text(
        f"""
state_dir = "{state}"

[agents.slow]
command = ["sh", "-c", {json.dumps(script)}]
tmux = true

[hosts.local]
kind = "local"

[limits]
heartbeat_seconds = 0.5
poll_interval = 0.1
"""
    )
    return cfg


def bosun(cfg: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BOSUN, *args],
        cwd=cfg,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")},
        check=False,
        **kw,
    )


def recorded_tmux(state: Path) -> dict[str, Any] | None:
    db = state / "bosun.db"
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT ref FROM runs").fetchall()
    for (ref,) in rows:
        data = json.loads(ref)
        if "tmux" in data:
            return dict(data["tmux"])
    return None


def attach_in_a_terminal(cfg: Path, needle: bytes) -> tuple[int, bytes]:
    """Run ``bosun attach 1`` on a pseudo-terminal; once ``needle`` is on the screen,
    detach with Ctrl-b d. Returns the exit status and everything shown."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes bosun attach, on the terminal
        os.environ["BOSUN_CONFIG"] = str(cfg / "bosun.toml")
        os.environ["TERM"] = "xterm"
        os.chdir(cfg)
        os.execv(sys.executable, [*BOSUN, "attach", "1"])  # noqa: S606 (an argv list)
    shown = b""
    asked = 0.0
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and b"[detached" not in shown:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break  # the terminal closed: the process ended
                if not data:
                    break
                shown += data
            if needle in shown and time.monotonic() - asked > 1.0:
                # tmux's prefix, then d: detach (again if the client was not listening yet)
                os.write(fd, b"\x02")
                time.sleep(0.1)
                os.write(fd, b"d")
                asked = time.monotonic()
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), shown
            time.sleep(0.02)
        pytest.fail(f"bosun attach did not end; the terminal showed: {shown[-2000:]!r}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)


def test_bosun_attach_end_to_end(tmp_path: Path, state: Path) -> None:
    go = tmp_path / "go"
    cfg = write_config(tmp_path, state, go)
    submitted = bosun(cfg, "submit", "--agent", "slow", "--title", "Say hello")
    assert submitted.returncode == 0, submitted.stderr
    env = {**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")}
    runner_log = (tmp_path / "runner.log").open("w")
    runner = subprocess.Popen(
        [*BOSUN, "run", "-q"], cwd=cfg, env=env, stdout=runner_log, stderr=subprocess.STDOUT
    )
    follower: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 30
        while (recorded := recorded_tmux(state)) is None:
            assert time.monotonic() < deadline and runner.poll() is None, (
                f"no tmux run recorded: {(tmp_path / 'runner.log').read_text()}"
            )
            time.sleep(0.05)
        session = TmuxSession(recorded["session"], recorded["socket"])
        assert session.name == "task-1-attempt-1"
        assert session.socket == str(state / "runs" / "task-1-attempt-1" / "tmux.sock")
        deadline = time.monotonic() + 15
        while "hello-from-agent" not in tmux(session, "capture-pane", "-p").stdout:
            assert time.monotonic() < deadline, "the pane never showed the output"
            time.sleep(0.05)
        # a user's terminal attaches to the session, sees the agent, detaches
        code, shown = attach_in_a_terminal(cfg, b"hello-from-agent")
        assert b"hello-from-agent" in shown, bosun(cfg, "logs", "1").stdout
        assert code == 0 and b"detached" in shown
        # bosun dies (kill -9) and comes back: it re-attaches to the run in tmux
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        runner = subprocess.Popen(
            [*BOSUN, "run", "-q"], cwd=cfg, env=env, stdout=runner_log, stderr=subprocess.STDOUT
        )
        # --follow-only prints the output live, until the task settles
        follower = subprocess.Popen(
            [*BOSUN, "attach", "1", "--follow-only"],
            cwd=cfg,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        first = follower.stdout.readline()  # it follows: the output so far is there
        assert "queued -> running" in first, first
        go.touch()
        assert follower.stderr is not None
        out = first + follower.stdout.read()  # (communicate would skip what readline buffered)
        errs = follower.stderr.read()
        follower.wait(60)
        assert follower.returncode == 0, errs + bosun(cfg, "logs", "1").stdout
        lines = out.splitlines()
        assert lines.count("hello-from-agent") == 1 and lines.count("bye") == 1
        assert any("running -> completed" in line for line in lines)
        runner.wait(60)
        with contextlib.closing(sqlite3.connect(state / "bosun.db", timeout=10)) as conn:
            kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY id")]
            runs = conn.execute("SELECT exit_code, ref FROM runs").fetchall()
        assert "run.reattached" in kinds
        assert len(runs) == 1 and runs[0][0] == 0
        assert json.loads(runs[0][1])["tmux"] == recorded
    finally:
        for proc in (runner, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        runner_log.close()
        if follower is not None:
            for stream in (follower.stdout, follower.stderr):
                if stream is not None:
                    stream.close()
    # a task that is not running: a clear error
    after = bosun(cfg, "attach", "1")
    assert after.returncode == 2
    assert "task 1 is completed, not running" in after.stderr
    assert "bosun logs 1" in after.stderr
