"""Tmux mode on a real SSH host, and attaching to it with the real OpenSSH client."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from bosun.attach import plan_attach, ssh_attach_argv
from bosun.config import HostConfig
from bosun.models import Run, TaskStatus
from bosun.providers.base import Command, RunHandle, TmuxSession
from bosun.providers.ssh import SshProvider
from bosun.providers.tmux import session_for_run
from tests.factories import make_run, make_task
from tests.sshd import SshdFleet, SshHost

pytestmark = [
    pytest.mark.ssh,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture
def host(sshd: SshdFleet) -> SshHost:
    (h,) = sshd.start(1)
    sshd.trust(h)
    return h


@pytest.fixture
def table(sshd: SshdFleet, host: SshHost) -> HostConfig:
    return HostConfig(**sshd.host_table(host))


@pytest.fixture
async def provider(host: SshHost, table: HostConfig, tmp_path: Path) -> AsyncIterator[SshProvider]:
    p = SshProvider(host.name, table, str(tmp_path / "state"))
    await p.ensure_ready()
    yield p
    await p.aclose()


async def launch(
    provider: SshProvider, key: str, script: str, cwd: Path
) -> tuple[RunHandle, TmuxSession]:
    run_dir = await provider.run_dir(key)
    session = session_for_run(run_dir)
    command = Command(argv=("sh", "-c", script), cwd=str(cwd), env=PATH_ENV, tmux=session)
    return await provider.launch(command, run_dir), session


async def on_host(provider: SshProvider, session: TmuxSession, *args: str) -> str:
    res = await provider.exec(["tmux", *session.socket_args(), *args])
    return res.stdout if res.ok else f"failed: {res.stderr}"


async def eventually_shows(provider: SshProvider, session: TmuxSession, text: str) -> None:
    deadline = time.monotonic() + 15
    target = f"={session.name}:"
    while text not in await on_host(provider, session, "capture-pane", "-p", "-t", target):
        assert time.monotonic() < deadline, f"the pane never showed {text!r}"
        await asyncio.sleep(0.05)


async def client_stderr(argv: Sequence[str]) -> str:
    """Run ``argv`` (the ssh client) without a terminal; what it said on stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode(errors="replace")


def run_on(host: str, handle: RunHandle, session: TmuxSession) -> Run:
    return make_run(host=host, agent="slow", ref={**handle.ref, "tmux": session.to_json()})


async def test_tmux_run_on_an_ssh_host_and_attach_over_ssh(
    provider: SshProvider, host: SshHost, table: HostConfig, tmp_path: Path, ssh_client_home: Path
) -> None:
    work = host.work_dir()
    go = work / "go"
    script = f"echo hello-over-ssh; while [ ! -e {go} ]; do sleep 0.05; done; echo bye; exit 4"
    handle, session = await launch(provider, "task-1-attempt-1", script, work)
    assert session.socket == f"{host.home}/.bosun/runs/task-1-attempt-1/tmux.sock"
    await eventually_shows(provider, session, "hello-over-ssh")
    pane_pid = await on_host(
        provider, session, "display-message", "-p", "-t", f"={session.name}:", "#{pane_pid}"
    )
    assert handle.ref["pgid"] == int(pane_pid)
    # bosun attach's plan for this run: the OpenSSH client, attaching on the host
    plan = await plan_attach(
        make_task(status=TaskStatus.RUNNING),
        [run_on(host.name, handle, session)],
        hosts={host.name: table},
        providers={host.name: provider},
        state_dir=str(tmp_path / "state"),
    )
    assert plan.argv is not None and plan.note is None
    assert plan.argv[plan.argv.index("--") + 1] == host.addr
    # The real OpenSSH client with exactly this argv reaches tmux on the host and finds the
    # session (port, user, identity, known_hosts and the quoted remote command all work);
    # with no terminal here tmux stops at the terminal. (A pty over the test sshd is not
    # possible: it runs unprivileged and cannot chown the pty; the terminal side of attach
    # is proven on this machine in test_attach.py.)
    said = await client_stderr(plan.argv)
    assert "open terminal failed: not a terminal" in said, said
    wrong = TmuxSession("task-9-attempt-9", session.socket)
    other = ssh_attach_argv(table, wrong, str(tmp_path / "state"))
    said = await client_stderr(other)
    assert "can't find session: task-9-attempt-9" in said, said
    assert await handle.alive()  # attaching and leaving did nothing to the run
    go.touch()
    deadline = time.monotonic() + 15
    while (exit_code := await handle.exit_code()) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert exit_code == 4
    lines = [line for c in await handle.read(0, 0, final=True) for line in c.lines]
    assert lines == ["hello-over-ssh", "bye"]


async def test_tmux_cancel_on_an_ssh_host_kills_the_group(
    provider: SshProvider, host: SshHost
) -> None:
    work = host.work_dir()
    script = "sleep 300 & echo $! > child; wait"
    handle, session = await launch(provider, "task-2-attempt-1", script, work)
    deadline = time.monotonic() + 15
    while not (work / "child").exists() or not (work / "child").read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    child = int((work / "child").read_text())
    assert any(pid == child for pid, _, _ in host.processes())
    await handle.cancel(grace=2)
    assert await handle.exit_code() == 143
    assert not any(pid == child for pid, _, _ in host.processes())
    assert not await handle.alive()
    gone = await provider.exec(["tmux", *session.socket_args(), "has-session"])
    assert not gone.ok
