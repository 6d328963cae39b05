"""``bosun agent`` end to end: a real uvicorn server on 127.0.0.1, the worker as a
subprocess, a real git origin and the demo agent. The worker dequeues, prepares the
worktree, runs the agent, streams its output, pushes the branch and hands in the receipt;
it carries on across a restart of the server and keeps an undelivered receipt on disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import uvicorn

from bosun.config import Settings
from bosun.models import ExecutionMode, Task, TaskSpec, TaskStatus
from bosun.server.app import create_app
from bosun.server.run import ApiServer, listen
from bosun.service import Service
from bosun.store import open_store
from bosun.store.sql import SqlStore
from tests.conftest import SettingsFactory, git

BOSUN = [sys.executable, "-m", "bosun"]

BODY = """\
Create hello.txt with: Hello from a pull agent
Create two.txt with: Two
Append "more" to two.txt
Create three.txt with: Three
"""


@dataclass
class LiveServer:
    """A bosun API server on a fixed 127.0.0.1 port that can be stopped and started again
    (with a freshly opened store: as a restarted process would)."""

    settings: Settings
    port: int = 0
    store: SqlStore | None = None
    _server: ApiServer | None = None
    _task: asyncio.Task[None] | None = None
    _socks: list[object] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.store = await open_store(self.settings.database_url, poll_interval=0.05)
        app = create_app(self.settings, self.store)
        sock = listen("127.0.0.1", self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = ApiServer(config)
        self._socks.append(sock)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        waiter = asyncio.create_task(self._server.listening.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        assert self._server.started, "uvicorn did not start"
        self._app = app

    async def stop(self) -> None:
        if self._server is None or self._task is None or self.store is None:
            return
        self._app.state.stopping.set()
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 10)
        for sock in self._socks:
            sock.close()  # type: ignore[attr-defined]
        self._socks.clear()
        await self.store.aclose()
        self._server = self._task = self.store = None

    async def task(self, task_id: int) -> Task:
        assert self.store is not None
        return await self.store.get_task(task_id)


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(server={"pull_lease_seconds": 6.0})


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    server = LiveServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def procs() -> Iterator[list[asyncio.subprocess.Process]]:
    """Worker processes a test started; killed at the end, whatever happened."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def agent_token(live: LiveServer, caps: tuple[str, ...] = ("demo",)) -> str:
    assert live.store is not None
    _, secret = await live.store.create_token("box", "agent", agent="box", capabilities=caps)
    return secret


async def submit(live: LiveServer, title: str = "Greet from afar", body: str = BODY) -> Task:
    assert live.store is not None
    spec = TaskSpec(
        title=title, body=body, repo="app", agent="demo", execution_mode=ExecutionMode.HTTP_PULL
    )
    return await Service(live.settings, live.store).submit(spec)


async def start_worker(
    procs: list[asyncio.subprocess.Process],
    live: LiveServer,
    token: str,
    state: Path,
    *args: str,
    delay: str = "0.5",
) -> asyncio.subprocess.Process:
    env = {**os.environ, "BOSUN_TOKEN": token, "BOSUN_DEMO_DELAY": delay}
    env.pop("BOSUN_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        *BOSUN,
        "agent",
        "--server",
        live.url,
        "--state-dir",
        str(state),
        "--poll",
        "0.2",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    procs.append(proc)
    return proc


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str]:
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def until(check: Callable[[], object], timeout: float = 30) -> None:
    """Poll the async ``check`` until it returns something true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def event_kinds(live: LiveServer, task_id: int) -> list[str]:
    assert live.store is not None
    return [e.kind for e in await live.store.events_since(0, task_id=task_id, limit=10_000)]


def branch_file(origin: Path, branch: str, name: str) -> str:
    return git(origin, "show", f"{branch}:{name}")


async def test_the_worker_runs_a_task_across_a_server_restart(
    live: LiveServer, origin: Path, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    token = await agent_token(live)
    task = await submit(live)
    proc = await start_worker(procs, live, token, tmp_path / "worker", "--once", delay="1.0")

    async def started() -> bool:
        return "run.started" in await event_kinds(live, task.id)

    await until(started)
    running = await live.task(task.id)
    assert running.status is TaskStatus.RUNNING and running.assigned_host == "pull:box"
    first_expiry = running.lease_expires_at
    assert first_expiry is not None

    async def extended() -> bool:
        expiry = (await live.task(task.id)).lease_expires_at
        return expiry is not None and expiry > first_expiry

    await until(extended)  # status reports extend the lease while the agent works
    # The server goes away mid-run and comes back on the same port, as a new process.
    await live.stop()
    await asyncio.sleep(1.5)
    await live.start()
    code, err = await finish(proc)
    assert code == 0, err
    assert "answers again" in err
    done = await live.task(task.id)
    assert done.status is TaskStatus.COMPLETED, (done, err)
    assert done.branch == f"task/{task.id}-greet-from-afar"
    assert len(done.commits) == 1 and done.error is None
    assert done.lease_owner is None
    # The branch is on the origin, with the agent's work in its commit.
    assert git(origin, "rev-parse", done.branch) == done.commits[0]
    assert branch_file(origin, done.branch, "hello.txt") == "Hello from a pull agent"
    assert branch_file(origin, done.branch, "two.txt") == "Two\nmore"
    assert "task #" in git(origin, "log", "-1", "--format=%s", done.branch)
    # Its output reached the server as events, each once, and the lease was extended.
    assert live.store is not None
    events = await live.store.events_since(0, task_id=task.id, limit=10_000)
    lines = [e.data["line"] for e in events if e.kind == "run.output"]
    assert len(lines) == len(set(lines)) and any(line.startswith("Done:") for line in lines)
    assert any(e.kind == "agent.preflight" for e in events)
    (run,) = await live.store.list_runs(task.id)
    assert run.status.value == "succeeded" and run.exit_code == 0
    assert all(e.run_id == run.id for e in events if e.kind.startswith(("run.", "agent.")))
    assert not (tmp_path / "worker" / "receipts" / f"{task.id}-1.json").exists()


async def test_a_receipt_that_could_not_be_sent_is_kept_and_sent_later(
    live: LiveServer, origin: Path, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    token = await agent_token(live)
    task = await submit(live, "Kept receipt", "Create kept.txt with: kept\n")
    state = tmp_path / "worker"
    proc = await start_worker(
        procs, live, token, state, "--once", "--stop-grace", "0.5", delay="1.0"
    )

    async def started() -> bool:
        return "run.started" in await event_kinds(live, task.id)

    await until(started)
    await live.stop()  # down until the run has ended: the receipt cannot be delivered
    receipt = state / "receipts" / f"{task.id}-1.json"
    await until(receipt.exists)
    proc.send_signal(signal.SIGTERM)
    code, err = await finish(proc)
    assert code == 0, err
    assert receipt.exists() and "kept in" in err
    await live.start()
    assert (await live.task(task.id)).status is TaskStatus.RUNNING
    # A new worker sends it first thing.
    again = await start_worker(procs, live, token, state, "--once")
    code, err = await finish(again)
    assert code == 0, err
    done = await live.task(task.id)
    assert done.status is TaskStatus.COMPLETED, err
    assert branch_file(origin, f"task/{task.id}-kept-receipt", "kept.txt") == "kept"
    assert not receipt.exists()


async def test_a_bad_token_is_named_and_exits_non_zero(
    live: LiveServer, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    proc = await start_worker(procs, live, "bsn_not-a-token", tmp_path / "w", "--once")
    code, err = await finish(proc)
    assert code == 2
    assert "refused the token" in err and "BOSUN_TOKEN" in err
    assert "bsn_not-a-token" not in err


async def test_a_cancelled_task_stops_the_agent(
    live: LiveServer, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    token = await agent_token(live)
    task = await submit(live, "Slow", "".join(f"Create f{i}.txt with: {i}\n" for i in range(30)))
    proc = await start_worker(procs, live, token, tmp_path / "worker", "--once")

    async def started() -> bool:
        return "run.started" in await event_kinds(live, task.id)

    await until(started)
    assert live.store is not None
    await Service(live.settings, live.store).cancel(task.id)
    code, err = await finish(proc)
    assert code == 0, err
    assert "lease was lost" in err and "cancelled" in err
    assert (await live.task(task.id)).status is TaskStatus.CANCELLED
    pids = list((tmp_path / "worker" / "runs").glob("*/pid"))
    assert pids
    for pidfile in pids:  # the agent's process group is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(int(pidfile.read_text()), 0)


async def test_a_worker_killed_mid_run_reattaches_when_it_starts_again(
    live: LiveServer, origin: Path, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    token = await agent_token(live)
    task = await submit(live, "Survive a kill")
    state = tmp_path / "worker"
    first = await start_worker(procs, live, token, state, "--once", delay="1.0")

    async def started() -> bool:
        return "run.started" in await event_kinds(live, task.id)

    await until(started)
    first.kill()  # SIGKILL: no chance to clean up; the agent runs on, detached
    await first.wait()
    second = await start_worker(procs, live, token, state, "--once", delay="1.0")
    code, err = await finish(second)
    assert code == 0, err
    assert "resuming after a restart" in err
    done = await live.task(task.id)
    assert done.status is TaskStatus.COMPLETED, err
    assert done.attempt == 1  # the same attempt, seen through to the end
    assert branch_file(origin, f"task/{task.id}-survive-a-kill", "three.txt") == "Three"
    assert live.store is not None
    events = await live.store.events_since(0, task_id=task.id, limit=10_000)
    lines = [e.data["line"] for e in events if e.kind == "run.output"]
    assert len(lines) == len(set(lines)) and any(line.startswith("Done:") for line in lines)


async def test_a_task_the_worker_cannot_run_is_handed_back(
    live: LiveServer, tmp_path: Path, procs: list[asyncio.subprocess.Process]
) -> None:
    """The server no longer knows the task's repository (bosun.toml changed since the
    submit): the worker says why and hands the task back as a failed launch, retried by
    the server's rules."""
    token = await agent_token(live)
    task = await submit(live, "Orphan")
    await live.stop()
    live.settings = replace(live.settings, repos={})
    await live.start()
    proc = await start_worker(procs, live, token, tmp_path / "worker", "--once")
    code, err = await finish(proc)
    assert code == 0, err
    assert "cannot run it here" in err and "sent no URL" in err
    back = await live.task(task.id)
    assert back.status is TaskStatus.QUEUED and back.error_kind is not None
    assert back.error_kind.value == "launch" and "sent no URL" in (back.error or "")
