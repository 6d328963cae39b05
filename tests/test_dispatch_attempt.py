"""One attempt's writes, end to end (real SQLite, real processes): the end of a run goes in
with the task's transition, and on the paths that cannot fold it (a lost lease) it is
still recorded once; the worktree and the run directory are made side by side without
mixing up whose failure is whose."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bosun.dispatcher import Dispatcher
from bosun.execution import run_key
from bosun.models import ErrorKind, Event, RunStatus, TaskSpec, TaskStatus
from bosun.service import Service, make_providers
from tests.conftest import SettingsFactory

CAPTURES = Path(__file__).parent / "fixtures" / "agent-output"


async def run_burst(svc: Service) -> None:
    dispatcher = Dispatcher(svc.settings, svc.store, make_providers(svc.settings))
    await asyncio.wait_for(dispatcher.run(burst=True), timeout=60)


def after(events: list[Event], kind: str) -> list[str]:
    """The kinds of the events from the first ``kind`` on."""
    kinds = [e.kind for e in events]
    return kinds[kinds.index(kind) :]


async def test_a_run_ends_with_its_task_in_one_write(make_settings: SettingsFactory) -> None:
    settings = make_settings(agents={"ok": {"command": ["sh", "-c", "echo hi"]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Fine", agent="ok"))
        await run_burst(svc)
        done = await svc.get(task.id)
        (run,) = await svc.runs(task.id)
        events = await svc.events(task.id)
    assert done.status is TaskStatus.COMPLETED
    assert (run.status, run.exit_code) == (RunStatus.SUCCEEDED, 0)
    assert run.ended_at is not None
    started = next(e for e in events if e.kind == "run.started")
    assert (started.run_id, started.data["run_id"]) == (run.id, run.id)
    assert after(events, "run.finished") == ["run.finished", "task.status"]
    finished, status = events[-2:]
    # one transaction: one insert of both, so adjacent ids and one timestamp
    assert (status.id - finished.id, status.created_at) == (1, finished.created_at)
    assert status.data["to"] == "completed"


async def test_an_auth_failure_marks_the_agent_with_the_end_of_the_run(
    make_settings: SettingsFactory,
) -> None:
    capture = CAPTURES / "claude-json" / "401.stdout"
    command = ["sh", "-c", f"cat {capture}; exit 1"]
    settings = make_settings(agents={"locked": {"command": command, "parser": "claude-json"}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="No login", agent="locked"))
        await run_burst(svc)
        failed = await svc.get(task.id)
        (run,) = await svc.runs(task.id)
        events = await svc.events(task.id)
    assert (failed.status, failed.error_kind) == (TaskStatus.FAILED, ErrorKind.AUTH)
    assert failed.error is not None and failed.error.startswith("agent locked on host local: ")
    assert (run.status, run.error_kind) == (RunStatus.FAILED, ErrorKind.AUTH)
    assert after(events, "run.finished") == ["run.finished", "agent.unhealthy", "task.status"]
    unhealthy = events[-2]
    assert (unhealthy.data["host"], unhealthy.data["agent"]) == ("local", "locked")


async def test_a_run_cancelled_while_it_runs_has_its_end_recorded_once(
    make_settings: SettingsFactory,
) -> None:
    # The attempt's transition finds the lease gone (LeaseLost): nothing of it was
    # written, so the run's end and run.finished are recorded on their own.
    settings = make_settings(agents={"slow": {"command": ["sh", "-c", "echo up; sleep 60"]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Slow", agent="slow"))
        stop = asyncio.Event()
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        job = asyncio.create_task(dispatcher.run(stop=stop))
        try:
            async with asyncio.timeout(20):
                while not any(e.kind == "run.output" for e in await svc.events(task.id)):
                    await asyncio.sleep(0.05)
                await svc.cancel(task.id)
                while not any(e.kind == "run.finished" for e in await svc.events(task.id)):
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(job, 20)
        (run,) = await svc.runs(task.id)
        kinds = [e.kind for e in await svc.events(task.id)]
        done = await svc.get(task.id)
    assert done.status is TaskStatus.CANCELLED
    assert run.status is RunStatus.CANCELLED and run.ended_at is not None
    assert kinds.count("run.finished") == 1
    assert kinds.index("run.finished") > kinds.index("task.status", kinds.index("run.started"))


async def test_a_run_directory_that_cannot_be_made_is_a_launch_error(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents={"ok": {"command": ["sh", "-c", "echo hi"]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Blocked run dir", agent="ok"))
        # the first attempt's run directory is taken by a file; its worktree is fine
        runs_dir = Path(settings.state_dir) / "runs"
        runs_dir.mkdir(parents=True, exist_ok=True)
        (runs_dir / run_key(task.id, 1)).write_text("not a directory")
        await run_burst(svc)
        done = await svc.get(task.id)
        errors = [e.data for e in await svc.events(task.id) if e.kind == "run.error"]
        runs = await svc.runs(task.id)
    assert [e["error_kind"] for e in errors] == [ErrorKind.LAUNCH.value]
    assert (done.status, done.attempt) == (TaskStatus.COMPLETED, 2)
    assert [r.attempt for r in runs] == [2]


async def test_a_worktree_that_cannot_be_made_is_a_workspace_error(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents={"ok": {"command": ["sh", "-c", "echo hi"]}})
    async with await Service.open(settings) as svc:
        # a local host's workspace is ready from the start: the worktree and the run
        # directory are made side by side
        task = await svc.submit(
            TaskSpec(title="No such base", agent="ok", repo="app", base_branch="no-such-branch")
        )
        await run_burst(svc)
        done = await svc.get(task.id)
        errors = [e.data for e in await svc.events(task.id) if e.kind == "run.error"]
        runs = await svc.runs(task.id)
    assert done.status is TaskStatus.FAILED
    assert errors and {e["error_kind"] for e in errors} == {ErrorKind.WORKSPACE.value}
    assert runs == []  # never launched
