"""The dispatcher and its hosts: drain, health, capabilities, load, and host outages.

Real SQLite, real processes on local hosts. An outage is injected with ``Outage``: the
host's provider (a real ``LocalProvider``) then fails every call like a host whose link is
down (``HostUnreachable``) or hangs like one whose packets are dropped, while the agent
processes on it go on, as they would on a real host. The same behaviour over real sshd
hosts is in ``test_hosts_ssh.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bosun.config import Settings
from bosun.dispatcher import Dispatcher
from bosun.errors import HostUnreachable
from bosun.hosts.health import unreachable_limit
from bosun.models import Event, RunStatus, TaskSpec, TaskStatus
from bosun.providers.base import Command, ExecResult, OutputChunk, Provider, RunHandle
from bosun.providers.local import LocalProvider
from bosun.service import Service, make_providers
from bosun.store.base import HostStore
from tests.conftest import SettingsFactory
from tests.test_dispatch import pid_gone


class Outage:
    """A switch for a host's link: up, down (calls fail), or dropping (calls hang)."""

    def __init__(self) -> None:
        self.down = False
        self.hang = False

    async def gate(self) -> None:
        if not self.down:
            return
        if self.hang:
            await asyncio.sleep(3600)  # cancelled by the caller's timeout
        raise HostUnreachable("connection lost (test outage)", "wait for the host")


class FlakyRun:
    def __init__(self, inner: RunHandle, outage: Outage) -> None:
        self.inner = inner
        self.outage = outage

    @property
    def ref(self) -> dict[str, Any]:
        return self.inner.ref

    @property
    def run_dir(self) -> str:
        return self.inner.run_dir

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        await self.outage.gate()
        return await self.inner.read(stdout_offset, stderr_offset, final=final)

    async def exit_code(self) -> int | None:
        await self.outage.gate()
        return await self.inner.exit_code()

    async def alive(self) -> bool:
        await self.outage.gate()
        return await self.inner.alive()

    async def cancel(self, grace: float = 5.0) -> None:
        await self.outage.gate()
        await self.inner.cancel(grace)


class FlakyProvider:
    """A real local provider behind an ``Outage`` switch."""

    def __init__(self, inner: LocalProvider, outage: Outage) -> None:
        self.inner = inner
        self.name = inner.name
        self.outage = outage

    async def ensure_ready(self) -> None:
        await self.outage.gate()
        await self.inner.ensure_ready()

    def host_env(self) -> Mapping[str, str]:
        return self.inner.host_env()

    async def run_dir(self, key: str) -> str:
        await self.outage.gate()
        return await self.inner.run_dir(key)

    async def makedirs(self, path: str) -> None:
        await self.outage.gate()
        await self.inner.makedirs(path)

    async def launch(self, command: Command, run_dir: str) -> RunHandle:
        await self.outage.gate()
        return FlakyRun(await self.inner.launch(command, run_dir), self.outage)

    async def attach(self, ref: Mapping[str, Any]) -> RunHandle:
        await self.outage.gate()
        return FlakyRun(await self.inner.attach(ref), self.outage)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        await self.outage.gate()
        return await self.inner.exec(argv, cwd=cwd, env=env, stdin=stdin, timeout=timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


def flaky(settings: Settings, name: str, outage: Outage) -> dict[str, Provider]:
    providers = make_providers(settings)
    inner = providers[name]
    assert isinstance(inner, LocalProvider)
    providers[name] = FlakyProvider(inner, outage)
    return providers


@contextlib.asynccontextmanager
async def serving(
    svc: Service, providers: Mapping[str, Provider] | None = None
) -> AsyncIterator[Dispatcher]:
    """A dispatcher in serve mode for the duration of the block."""
    stop = asyncio.Event()
    dispatcher = Dispatcher(svc.settings, svc.store, providers or make_providers(svc.settings))
    running = asyncio.create_task(dispatcher.run(stop=stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def events(svc: Service, kind: str | None = None) -> list[Event]:
    found: list[Event] = []
    cursor = 0
    while batch := await svc.store.events_since(cursor, limit=1000):
        found += [e for e in batch if kind is None or e.kind == kind]
        cursor = batch[-1].id
    return found


async def settled(svc: Service, *ids: int) -> bool:
    tasks = [await svc.get(i) for i in ids]
    return all(t.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) for t in tasks)


def two_hosts(make_settings: SettingsFactory, **agents: Any) -> Settings:
    return make_settings(
        agents=agents or {"echo": {"command": ["sh", "-c", "echo hi"]}},
        hosts={
            "a": {"kind": "local", "max_concurrent": 4, "priority": 10},
            "b": {"kind": "local", "max_concurrent": 4},
        },
    )


def hosts_of_runs(runs: Sequence[Any]) -> list[str]:
    return [r.host for r in runs]


# -- drain, capabilities, load ------------------------------------------------------------
async def test_a_drained_host_gets_no_new_tasks_and_its_running_run_goes_on(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    settings = two_hosts(
        make_settings,
        echo={"command": ["sh", "-c", "echo hi"]},
        waiter={
            "command": ["sh", "-c", f"echo waiting; while [ ! -e {gate} ]; do sleep 0.05; done"]
        },
    )
    async with await Service.open(settings) as svc, serving(svc) as dispatcher:
        long = await svc.submit(TaskSpec(title="long", agent="waiter", host="a"))
        await until(lambda: _has_output(svc, long.id, "waiting"))
        await svc.drain_host("a")

        async def seen() -> bool:  # the dispatcher reloads the registry every poll interval
            return any(h.name == "a" and h.drained for h in dispatcher.fleet.hosts)

        await until(seen)
        pinned = await svc.submit(TaskSpec(title="pinned to a", host="a"))
        quick = [await svc.submit(TaskSpec(title=f"quick {i}")) for i in range(4)]
        await until(lambda: settled(svc, *(t.id for t in quick)))
        # a still has priority, but is drained: everything went to b
        assert {(await svc.get(t.id)).assigned_host for t in quick} == {"b"}
        assert (await svc.get(pinned.id)).status is TaskStatus.QUEUED
        unplaceable = [e for e in await events(svc, "task.unplaceable") if e.task_id == pinned.id]
        assert unplaceable and "drained" in unplaceable[0].data["reason"]
        gate.touch()  # the run on the drained host goes on to its end
        await until(lambda: settled(svc, long.id))
        assert (await svc.get(long.id)).status is TaskStatus.COMPLETED
        await svc.enable_host("a")
        await until(lambda: settled(svc, pinned.id))
        done = await svc.get(pinned.id)
        assert done.status is TaskStatus.COMPLETED and done.assigned_host == "a"


async def _has_output(svc: Service, task_id: int, line: str) -> bool:
    return any(
        e.kind == "run.output" and e.data.get("line") == line for e in await svc.events(task_id)
    )


async def test_an_agent_missing_on_a_host_is_not_sent_there(
    make_settings: SettingsFactory,
) -> None:
    settings = two_hosts(make_settings)
    async with await Service.open(settings) as svc:
        # what `bosun hosts check a` stores when echo's program is not found on a
        store = svc.store
        assert isinstance(store, HostStore)
        caps = {"agents": {"echo": {"program": "sh", "installed": False}}}
        await store.update_host("a", create=True, capabilities=caps)
        tasks = [await svc.submit(TaskSpec(title=f"t{i}")) for i in range(3)]
        pinned = await svc.submit(TaskSpec(title="pinned", host="a"))
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        await asyncio.wait_for(dispatcher.run(burst=True), 60)
        done = [await svc.get(t.id) for t in tasks]
        assert {t.assigned_host for t in done} == {"b"}
        assert all(t.status is TaskStatus.COMPLETED for t in done)
        assert (await svc.get(pinned.id)).status is TaskStatus.QUEUED
        (why,) = [e for e in await events(svc, "task.unplaceable") if e.task_id == pinned.id]
        assert "cannot run agent echo" in why.data["reason"]


async def test_tasks_spread_over_config_and_registered_hosts_by_load_and_labels(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    settings = make_settings(
        agents={"waiter": {"command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]}},
        hosts={"local": {"kind": "local", "max_concurrent": 1}},
        limits={"max_concurrent": 20},
    )
    async with await Service.open(settings) as svc:
        # registered at run time: the dispatcher opens their providers itself
        await svc.add_host("r1", {"kind": "local", "max_concurrent": 2, "labels": ["gpu"]})
        await svc.add_host("r2", {"kind": "local", "max_concurrent": 3, "priority": 5})
        gpu = await svc.submit(TaskSpec(title="needs gpu", agent="waiter", labels=("host:gpu",)))
        linux = await svc.submit(
            TaskSpec(title="needs linux", agent="waiter", labels=("host:os:linux",))
        )
        rest = [await svc.submit(TaskSpec(title=f"t{i}", agent="waiter")) for i in range(4)]
        async with serving(svc):

            async def all_running() -> bool:
                return len(await svc.store.running()) == 6

            await until(all_running)
            placed = {t.id: t.assigned_host for t in await svc.store.running()}
            load = {h.name: h.running for h in await svc.hosts()}
            gate.touch()
            await until(lambda: settled(svc, gpu.id, linux.id, *(t.id for t in rest)))
    # six tasks, six slots: every host filled to its max_concurrent, none beyond
    assert load == {"local": 1, "r1": 2, "r2": 3}
    assert placed[gpu.id] == "r1"  # the only host labelled gpu
    # os:linux is derived from the check of r1 and r2 (local was never checked)
    assert placed[linux.id] in ("r1", "r2")


# -- health -------------------------------------------------------------------------------
async def test_an_unhealthy_host_gets_no_work_until_it_answers_again(
    make_settings: SettingsFactory,
) -> None:
    settings = two_hosts(make_settings)
    outage = Outage()
    outage.down = True
    async with await Service.open(settings) as svc:
        async with serving(svc, flaky(settings, "a", outage)):
            await until(lambda: _event(svc, "host.unhealthy"))
            tasks = [await svc.submit(TaskSpec(title=f"t{i}")) for i in range(3)]
            pinned = await svc.submit(TaskSpec(title="pinned", host="a"))
            await until(lambda: settled(svc, *(t.id for t in tasks)))
            assert {(await svc.get(t.id)).assigned_host for t in tasks} == {"b"}
            assert (await svc.get(pinned.id)).status is TaskStatus.QUEUED
            row = (await svc.host("a")).to_json()
            assert row["health"] == "unhealthy" and "test outage" in row["health_error"]
            outage.down = False
            await until(lambda: settled(svc, pinned.id))
        done = await svc.get(pinned.id)
        assert done.status is TaskStatus.COMPLETED and done.assigned_host == "a"
        kinds = [(e.kind, e.data["host"]) for e in await events(svc) if e.kind.startswith("host.")]
        assert kinds == [("host.unhealthy", "a"), ("host.healthy", "a")]
        assert (await svc.host("a")).host.health == "healthy"


async def _exists(path: Path) -> bool:
    return path.exists()


async def _event(svc: Service, kind: str) -> bool:
    return bool(await events(svc, kind))


# -- outages during runs ------------------------------------------------------------------
def _attempt_script(tmp_path: Path) -> list[str]:
    """The first attempt writes its pid and runs long; later attempts finish at once."""
    pidfile = tmp_path / "first.pid"
    script = (
        'case "$0" in *attempt-1) echo $$ > ' + str(pidfile) + "; echo started; "
        "exec sleep 60;; *) echo quick;; esac"
    )
    return ["sh", "-c", script, "{run_dir}"]


@pytest.mark.parametrize("mode", ["refused", "dropped"])
async def test_runs_on_a_host_unreachable_past_the_limit_are_retried_elsewhere_once(
    make_settings: SettingsFactory, tmp_path: Path, mode: str
) -> None:
    settings = two_hosts(make_settings, slow={"command": _attempt_script(tmp_path)})
    limit = unreachable_limit(settings)
    outage = Outage()
    outage.hang = mode == "dropped"
    async with await Service.open(settings) as svc:
        async with serving(svc, flaky(settings, "a", outage)):
            task = await svc.submit(TaskSpec(title="outlives its host", agent="slow"))
            await until(lambda: _has_output(svc, task.id, "started"))
            first_pid = int((tmp_path / "first.pid").read_text())
            outage.down = True
            await until(lambda: settled(svc, task.id))
            done = await svc.get(task.id)
            assert done.status is TaskStatus.COMPLETED and done.assigned_host == "b"
            # the first run was given up, not killed: the host could not be asked to
            assert not pid_gone(first_pid)
            outage.down = False  # the host is back: its reconciliation stops the stray
            await until(lambda: _event(svc, "run.stray_killed"))
            assert pid_gone(first_pid)
        runs = await svc.runs(task.id)
        lines = [e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output"]
        all_events = await events(svc)
    assert hosts_of_runs(runs) == ["a", "b"]
    assert runs[0].status is RunStatus.LOST and runs[0].ref["abandoned"] == "reconciled"
    assert runs[0].error is not None and "unreachable" in runs[0].error
    assert runs[1].status is RunStatus.SUCCEEDED
    assert lines == ["started", "quick"]  # each once: nothing lost, nothing run twice
    assert done.attempt == 2
    gone = _first(all_events, "run.abandoned")
    redispatched = next(
        e
        for e in all_events
        if e.kind == "task.status" and e.data.get("to") == "running" and e.data["attempt"] == 2
    )
    assert redispatched.data["host"] == "b"
    # given up once the limit (two heartbeat intervals) had passed, not before ...
    assert gone.data["unreachable_for"] >= limit == gone.data["limit"]
    # ... and re-dispatched right then: the task's next status changes are the re-queue
    # and the claim on b (no wall-clock bound: the machine's speed is not under test)
    after = [
        e.data["to"]
        for e in all_events
        if e.kind == "task.status" and e.task_id == task.id and e.id > gone.id
    ]
    assert after[:2] == ["queued", "running"], after


def _first(evs: Sequence[Event], kind: str) -> Event:
    return next(e for e in evs if e.kind == kind)


async def test_a_host_back_within_the_limit_keeps_its_run_and_every_line(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    counter = (
        f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; "
        "i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo line $i; done"
    )
    settings = make_settings(
        agents={"count": {"command": ["sh", "-c", counter]}},
        hosts={"a": {"kind": "local"}, "b": {"kind": "local", "enabled": False}},
        limits={"heartbeat_seconds": 1.0},
    )
    outage = Outage()
    async with await Service.open(settings) as svc:
        async with serving(svc, flaky(settings, "a", outage)):
            task = await svc.submit(TaskSpec(title="rides it out", agent="count"))
            await until(lambda: _has_output(svc, task.id, "before"))
            outage.down = True
            await until(lambda: _event(svc, "run.host_unreachable"))
            gate.touch()  # the agent writes all its output while the host is unreachable
            await asyncio.sleep(0.3)
            outage.down = False  # back well within the limit (2 s)
            await until(lambda: settled(svc, task.id))
        done = await svc.get(task.id)
        runs = await svc.runs(task.id)
        lines = [e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output"]
        kinds = {e.kind for e in await svc.events(task.id)}
    assert done.status is TaskStatus.COMPLETED and done.attempt == 1
    assert len(runs) == 1 and runs[0].status is RunStatus.SUCCEEDED
    assert lines == ["before"] + [f"line {i}" for i in range(1, 21)]
    assert {"run.host_unreachable", "run.host_back"} <= kinds
    assert "run.abandoned" not in kinds


async def test_a_host_back_with_its_runs_gone_has_their_tasks_retried_elsewhere(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(
        agents={"slow": {"command": _attempt_script(tmp_path)}},
        hosts={"a": {"kind": "local", "priority": 10}, "b": {"kind": "local"}},
        limits={"heartbeat_seconds": 1.0},
    )
    outage = Outage()
    async with await Service.open(settings) as svc:
        async with serving(svc, flaky(settings, "a", outage)):
            task = await svc.submit(TaskSpec(title="its host reboots", agent="slow"))
            await until(lambda: _has_output(svc, task.id, "started"))
            outage.down = True
            await until(lambda: _event(svc, "run.host_unreachable"))
            # the host "reboots": its processes are gone, and nothing recorded their exit
            (run,) = await svc.runs(task.id)
            os.killpg(run.ref["pgid"], signal.SIGKILL)
            exit_file = Path(run.ref["run_dir"]) / "exit"
            await until(lambda: _exists(exit_file))  # (our reaper wrote it: undo that)
            exit_file.unlink()
            outage.down = False
            await until(lambda: settled(svc, task.id))
        done = await svc.get(task.id)
        runs = await svc.runs(task.id)
    assert done.status is TaskStatus.COMPLETED
    assert hosts_of_runs(runs) == ["a", "b"]  # the retry prefers another host
    assert runs[0].status is RunStatus.LOST and runs[1].status is RunStatus.SUCCEEDED


async def test_hosts_registered_or_changed_while_serving_are_used_at_once(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents={"echo": {"command": ["sh", "-c", "echo hi"]}})
    async with await Service.open(settings) as svc, serving(svc) as dispatcher:

        async def sees(label: str) -> bool:
            return any(h.name == "late" and label in h.labels for h in dispatcher.fleet.hosts)

        await svc.add_host("late", {"kind": "local", "labels": ["x"]}, check=False)
        await until(lambda: sees("x"))
        first = await svc.submit(TaskSpec(title="on x", labels=("host:x",)))
        await until(lambda: settled(svc, first.id))
        assert (await svc.get(first.id)).assigned_host == "late"
        # registered again with other settings: the running dispatcher follows
        await svc.remove_host("late")
        await svc.add_host("late", {"kind": "local", "labels": ["y"]}, check=False)
        await until(lambda: sees("y"))
        second = await svc.submit(TaskSpec(title="on y", labels=("host:y",)))
        stale = await svc.submit(TaskSpec(title="on x again", labels=("host:x",)))
        await until(lambda: settled(svc, second.id))
        assert (await svc.get(second.id)).assigned_host == "late"
        assert (await svc.get(stale.id)).status is TaskStatus.QUEUED
