"""The dispatcher end to end: real SQLite, real git repositories, real processes."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bosun.dispatcher import Dispatcher
from bosun.errors import InputError
from bosun.execution import run_key
from bosun.models import ErrorKind, RunStatus, Task, TaskSpec, TaskStatus
from bosun.service import Service, make_providers
from bosun.workspace import Workspace
from tests.conftest import SettingsFactory, git


async def run_burst(svc: Service) -> None:
    dispatcher = Dispatcher(svc.settings, svc.store, make_providers(svc.settings))
    await asyncio.wait_for(dispatcher.run(burst=True), timeout=60)


async def output_lines(svc: Service, task_id: int) -> list[str]:
    return [
        str(e.data["line"])
        for e in await svc.events(task_id)
        if e.kind == "run.output" and e.data["stream"] == "stdout"
    ]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie nobody reaps still answers kill(0); /proc tells the truth
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


async def test_task_runs_to_a_committed_pushed_branch(
    make_settings: SettingsFactory, origin: Path
) -> None:
    async with await Service.open(make_settings()) as svc:
        task = await svc.submit(TaskSpec(title="Add a greeting", body="Say hello", repo="app"))
        await run_burst(svc)
        done = await svc.get(task.id)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.branch == f"task/{task.id}-add-a-greeting"
    assert len(done.commits) == 1
    # the branch is in the user's repository, with the agent's file committed
    notes = git(origin, "show", f"{done.branch}:NOTES.md")
    assert "# Task: Add a greeting" in notes and "Say hello" in notes
    assert (
        git(origin, "log", "-1", "--format=%s", done.branch)
        == f"bosun: task #{task.id}: Add a greeting"
    )
    assert done.attempt == 1 and done.assigned_host == "local"


async def test_task_without_repo_runs_in_a_scratch_dir(make_settings: SettingsFactory) -> None:
    settings = make_settings(agents={"pwd": {"command": ["sh", "-c", "pwd; ls -A | wc -l"]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="A question", agent="pwd"))
        await run_burst(svc)
        done = await svc.get(task.id)
        lines = await output_lines(svc, task.id)
    assert done.status is TaskStatus.COMPLETED
    assert lines[0].startswith(str(settings.state_dir)) and lines[1] == "0"
    assert done.branch is None and done.commits == ()


async def test_failures_retry_with_backoff_then_fail(make_settings: SettingsFactory) -> None:
    settings = make_settings(agents={"bad": {"command": ["sh", "-c", "echo nope >&2; exit 3"]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Never works", repo="app", agent="bad"))
        await run_burst(svc)
        done = await svc.get(task.id)
        runs = await svc.runs(task.id)
    assert done.status is TaskStatus.FAILED
    assert done.attempt == 3 and len(runs) == 3
    assert all(r.exit_code == 3 and r.status is RunStatus.FAILED for r in runs)
    assert done.error is not None and "3" in done.error and "nope" in done.error
    assert done.error_kind is ErrorKind.AGENT


async def test_stalled_run_is_killed_with_its_whole_process_group(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; echo started; wait"
    settings = make_settings(
        agents={"hang": {"command": ["sh", "-c", script], "stall_timeout": 0.5}},
        limits={"max_attempts": 1},
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Hangs", agent="hang"))
        await run_burst(svc)
        done = await svc.get(task.id)
    assert done.status is TaskStatus.FAILED
    assert done.error_kind is ErrorKind.STALLED
    assert pid_gone(int(pidfile.read_text()))


async def test_wall_clock_timeout(make_settings: SettingsFactory) -> None:
    chatty = "while true; do echo tick; sleep 0.05; done"
    settings = make_settings(
        agents={"chatty": {"command": ["sh", "-c", chatty], "timeout": 0.6, "stall_timeout": 30}},
        limits={"max_attempts": 1},
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Talks forever", agent="chatty"))
        await run_burst(svc)
        done = await svc.get(task.id)
        lines = await output_lines(svc, task.id)
    assert done.error_kind is ErrorKind.TIMEOUT and done.status is TaskStatus.FAILED
    assert lines and set(lines) == {"tick"}


async def test_scope_locks_serialize_overlapping_tasks(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    script = f'echo "start $0" >> {log}; sleep 0.3; echo "end $0" >> {log}'
    settings = make_settings(
        agents={
            "a": {"command": ["sh", "-c", script, "a"]},
            "b": {"command": ["sh", "-c", script, "b"]},
            "c": {"command": ["sh", "-c", script, "c"]},
        }
    )
    async with await Service.open(settings) as svc:
        await svc.submit(TaskSpec(title="one", repo="app", agent="a", scope=("src",)))
        await svc.submit(TaskSpec(title="two", repo="app", agent="b", scope=("src/api/x.py",)))
        await svc.submit(TaskSpec(title="three", repo="app", agent="c", scope=("src/",)))
        await run_burst(svc)
        tasks = await svc.list_tasks()
    assert all(t.status is TaskStatus.COMPLETED for t in tasks)
    entries = log.read_text().split("\n")[:-1]
    # every start is immediately followed by its own end: no two ran at once
    for i in range(0, len(entries), 2):
        assert entries[i].replace("start", "end") == entries[i + 1]
    assert len(entries) == 6


async def test_dependencies_block_until_completed(make_settings: SettingsFactory) -> None:
    async with await Service.open(make_settings()) as svc:
        first = await svc.submit(TaskSpec(title="first", repo="app"))
        second = await svc.submit(TaskSpec(title="second", repo="app", depends_on=(first.id,)))
        assert second.status is TaskStatus.BLOCKED
        await run_burst(svc)
        events = [e for e in await svc.store.events_since(0) if e.kind == "task.status"]
    completed_first = next(
        e.id for e in events if e.task_id == first.id and e.data["to"] == "completed"
    )
    started_second = next(
        e.id for e in events if e.task_id == second.id and e.data["to"] == "running"
    )
    assert completed_first < started_second


async def test_dependent_of_failed_task_stays_blocked_and_burst_ends(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents={"bad": {"command": ["false"]}}, limits={"max_attempts": 1})
    async with await Service.open(settings) as svc:
        first = await svc.submit(TaskSpec(title="first", agent="bad"))
        second = await svc.submit(TaskSpec(title="second", agent="bad", depends_on=(first.id,)))
        await run_burst(svc)
        assert (await svc.get(first.id)).status is TaskStatus.FAILED
        assert (await svc.get(second.id)).status is TaskStatus.BLOCKED


async def test_cancel_kills_a_running_agent(make_settings: SettingsFactory, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; echo up; wait"
    settings = make_settings(agents={"slow": {"command": ["sh", "-c", script]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Slow", agent="slow"))
        stop = asyncio.Event()
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        job = asyncio.create_task(dispatcher.run(stop=stop))
        try:
            async with asyncio.timeout(20):
                while "up" not in await output_lines(svc, task.id):
                    await asyncio.sleep(0.05)
            cancelled = await svc.cancel(task.id)
            assert cancelled.task.status is TaskStatus.CANCELLED and not cancelled.pending
            async with asyncio.timeout(20):
                while (runs := await svc.runs(task.id))[0].ended_at is None:
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(job, 20)
        assert runs[0].status is RunStatus.CANCELLED
        assert (await svc.get(task.id)).status is TaskStatus.CANCELLED
    assert pid_gone(int(pidfile.read_text()))


NASTY = [
    "$(touch {canary})",
    "`touch {canary}`; rm -rf / #",
    "a\nb'; touch {canary}; echo '",
    "../../../../etc/passwd",
    '"quoted" & touch {canary} | cat',
    "-rf --upload-pack=touch {canary}",
    "..",
]


@pytest.mark.parametrize("template", NASTY)
async def test_hostile_titles_execute_nothing_and_stay_inside(
    make_settings: SettingsFactory, tmp_path: Path, origin: Path, template: str
) -> None:
    canary = tmp_path / "pwned"
    title = template.format(canary=canary)
    async with await Service.open(make_settings()) as svc:
        task = await svc.submit(TaskSpec(title=title, body=title, repo="app", scope=("docs",)))
        await run_burst(svc)
        done = await svc.get(task.id)
        started = [e for e in await svc.events(task.id) if e.kind == "run.started"]
    assert not canary.exists()
    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.branch is not None
    git(origin, "check-ref-format", "--branch", done.branch)
    path = os.path.realpath(str(started[0].data["workdir"]))
    root = os.path.realpath(svc.settings.state_dir / "worktrees")
    assert path.startswith(root + os.sep)
    assert title.strip() in git(origin, "show", f"{done.branch}:NOTES.md")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TaskSpec(title="  "), "no title"),
        (TaskSpec(title="x", repo="nope"), "unknown repo 'nope'"),
        (TaskSpec(title="x", agent="nope"), "unknown agent 'nope'"),
        (TaskSpec(title="x", host="nope"), "unknown host 'nope'"),
        (TaskSpec(title="x", repo="app", scope=("../out",)), "inside"),
        (TaskSpec(title="x", scope=("src",)), "without a repo"),
        (TaskSpec(title="x", depends_on=(99,)), "99"),
        (TaskSpec(title="x", repo="app", base_branch="a..b"), "not a valid branch"),
        (TaskSpec(title="x", priority=10**6), "priority"),
        (TaskSpec(title="x", labels=("has space",)), "label"),
        (TaskSpec(title="x" * 400), "characters long"),
        (TaskSpec(title="x\x00"), "NUL"),
    ],
)
async def test_bad_task_input_is_a_clear_error_and_stores_nothing(
    make_settings: SettingsFactory, spec: TaskSpec, message: str
) -> None:
    async with await Service.open(make_settings()) as svc:
        with pytest.raises(InputError, match=message) as info:
            await svc.submit(spec)
        assert info.value.hint
        assert await svc.list_tasks() == []
        assert await svc.store.events_since(0) == []


async def test_graceful_stop_leaves_agent_running_and_next_dispatcher_adopts_it(
    make_settings: SettingsFactory,
) -> None:
    script = "for i in $(seq 1 30); do echo line $i; sleep 0.05; done"
    settings = make_settings(agents={"count": {"command": ["sh", "-c", script]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Count", agent="count"))
        stop = asyncio.Event()
        first = Dispatcher(settings, svc.store, make_providers(settings))
        job = asyncio.create_task(first.run(stop=stop))
        async with asyncio.timeout(20):
            while len(await output_lines(svc, task.id)) < 3:
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(job, 20)
        assert (await svc.get(task.id)).status is TaskStatus.RUNNING
        await run_burst(svc)
        done: Task = await svc.get(task.id)
        lines = await output_lines(svc, task.id)
        runs = await svc.runs(task.id)
    assert done.status is TaskStatus.COMPLETED
    assert lines == [f"line {i}" for i in range(1, 31)]
    assert len(runs) == 1 and done.attempt == 1


async def test_agent_files_land_in_an_isolated_home(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        agents={
            "cfg": {
                "command": ["sh", "-c", 'test -d "$HOME" && cat "$HOME/.tool/settings.json"'],
                "files": {"home/.tool/settings.json": '{{"dir": "{run_dir}"}}'},
            }
        }
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Reads its config", agent="cfg"))
        await run_burst(svc)
        done = await svc.get(task.id)
        lines = await output_lines(svc, task.id)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert lines == [f'{{"dir": "{settings.state_dir}/runs/task-{task.id}-attempt-1"}}']


async def test_cancel_without_a_dispatcher_records_the_end_of_the_run(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pidfile}; echo up; wait"
    settings = make_settings(agents={"slow": {"command": ["sh", "-c", script]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Slow", agent="slow"))
        stop = asyncio.Event()
        job = asyncio.create_task(
            Dispatcher(settings, svc.store, make_providers(settings)).run(stop=stop)
        )
        async with asyncio.timeout(20):
            while "up" not in await output_lines(svc, task.id):
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(job, 20)  # bosun is gone; the agent keeps running
        assert not pid_gone(int(pidfile.read_text()))
        await svc.cancel(task.id)
        (run,) = await svc.runs(task.id)
    assert pid_gone(int(pidfile.read_text()))
    assert run.status is RunStatus.CANCELLED and run.ended_at is not None
    assert run.exit_code is not None


async def test_a_run_that_cannot_be_reattached_is_retried_not_stranded(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Interrupted", repo="app"))
        # a bosun (pid 999999999 on this machine: dead) claimed it and stored the run, then
        # died before the launch recorded a process
        dead = f"{socket.gethostname()}:999999999:deadbeef"
        now = datetime.now(UTC)
        claimed = await svc.store.claim(
            task.id, owner=dead, host="local", lease_seconds=300, now=now
        )
        assert claimed is not None
        await svc.store.add_run(
            task.id, attempt=1, host="local", agent="echo", ref={"run_dir": "/nonexistent/run"}
        )
        await run_burst(svc)
        done = await svc.get(task.id)
        runs = await svc.runs(task.id)
        kinds = [e.kind for e in await svc.events(task.id)]
    assert done.status is TaskStatus.COMPLETED and done.attempt == 2
    assert runs[0].status is RunStatus.LOST and runs[0].error_kind is ErrorKind.INTERNAL
    assert "dispatcher.error" in kinds


async def test_a_task_no_host_can_take_is_reported_and_burst_ends(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        agents={"echo": {"command": ["true"]}, "other": {"command": ["true"]}},
        hosts={"local": {"kind": "local", "agents": ["echo"]}},
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Nobody runs me", agent="other"))
        await run_burst(svc)
        events = [e for e in await svc.events(task.id) if e.kind == "task.unplaceable"]
        assert (await svc.get(task.id)).status is TaskStatus.QUEUED
    assert len(events) == 1 and "other" in events[0].data["reason"]


async def test_a_command_that_cannot_be_built_fails_once_without_retries(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents={"argy": {"command": ["echo", "{prompt}"], "prompt": "arg"}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Too long", agent="argy", body="x" * 200_000))
        await run_burst(svc)
        done = await svc.get(task.id)
    assert done.status is TaskStatus.FAILED and done.attempt == 1
    assert done.error_kind is ErrorKind.CONFIG and done.error is not None


async def test_a_run_launched_but_never_recorded_is_adopted(make_settings: SettingsFactory) -> None:
    settings = make_settings(agents={"count": {"command": ["sh", "-c", "seq 1 5"]}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Launched, then bosun died", agent="count"))
        dead = f"{socket.gethostname()}:999999999:deadbeef"
        now = datetime.now(UTC)
        claimed = await svc.store.claim(
            task.id, owner=dead, host="local", lease_seconds=300, now=now
        )
        assert claimed is not None
        # what the dead bosun did: prepare, launch; it died before add_run
        provider = make_providers(settings)["local"]
        workspace = Workspace(provider, str(settings.state_dir))
        wt = await workspace.prepare(task.id, task.title, None)
        run_dir = await provider.run_dir(run_key(task.id, 1))
        spec = settings.agents["count"]
        command = spec.build(prompt="p", workdir=wt.path, run_dir=run_dir, environ=os.environ)
        await provider.launch(command, run_dir)
        await provider.aclose()
        await run_burst(svc)
        done = await svc.get(task.id)
        runs = await svc.runs(task.id)
        lines = await output_lines(svc, task.id)
        events = [e.kind for e in await svc.events(task.id)]
    assert done.status is TaskStatus.COMPLETED and done.attempt == 1
    assert len(runs) == 1 and runs[0].exit_code == 0
    assert lines == ["1", "2", "3", "4", "5"]
    assert "run.reattached" in events


async def test_a_usage_limit_pauses_until_the_reset_time_the_agent_named(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    capture = Path(__file__).parent / "fixtures" / "agent-output" / "claude-json" / "429.stdout"
    settings = make_settings(
        agents={
            "limited": {"command": ["sh", "-c", f"cat {capture}; exit 1"], "parser": "claude-json"}
        }
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Hits the limit", agent="limited"))
        await run_burst(svc)  # burst mode does not wait for a paused task
        done = await svc.get(task.id)
    assert done.status is TaskStatus.PAUSED and done.error_kind is ErrorKind.USAGE_LIMIT
    assert done.not_before is not None and done.not_before > datetime.now(UTC)
    # "resets 3pm (Europe/Berlin)": the next 3 pm in Berlin
    berlin = done.not_before.astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute) == (15, 0)


async def test_a_missing_agent_program_fails_once_and_marks_the_agent_unhealthy(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents={"ghost": {"command": ["no-such-agent-cli-xyz"]}})
    async with await Service.open(settings) as svc:
        first = await svc.submit(TaskSpec(title="First", agent="ghost"))
        stop = asyncio.Event()
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        job = asyncio.create_task(dispatcher.run(stop=stop))
        async with asyncio.timeout(20):
            while (await svc.get(first.id)).status is not TaskStatus.FAILED:
                await asyncio.sleep(0.05)
            # a later task is not run on a host where the agent is known to be missing
            second = await svc.submit(TaskSpec(title="Second", agent="ghost"))
            while not [e for e in await svc.events(second.id) if e.kind == "task.unplaceable"]:
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(job, 20)
        failed = await svc.get(first.id)
        kinds = [e.kind for e in await svc.events(first.id)]
        assert (await svc.get(second.id)).status is TaskStatus.QUEUED
    assert failed.error_kind is ErrorKind.CONFIG and failed.attempt == 1
    assert failed.error is not None
    assert failed.error.startswith("agent ghost on host local: ")
    assert "no-such-agent-cli-xyz is not installed" in failed.error
    assert "agent.unhealthy" in kinds


async def test_a_retry_is_told_how_the_previous_attempt_failed(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    # Attempt 1 says why it fails and exits 3; attempt 2 succeeds. Both keep their prompt.
    script = (
        f'cat > {prompts}/"$(basename "$0")"; '
        'case "$0" in *attempt-1) echo "disk quota exceeded on /data" >&2; exit 3;; esac'
    )
    settings = make_settings(
        agents={"flaky": {"command": ["sh", "-c", script, "{run_dir}"]}},
        limits={"max_attempts": 2},
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="retry me", agent="flaky"))
        await run_burst(svc)
        assert (await svc.get(task.id)).status is TaskStatus.COMPLETED
    first = (prompts / f"task-{task.id}-attempt-1").read_text()
    second = (prompts / f"task-{task.id}-attempt-2").read_text()
    assert "Previous attempt" not in first
    assert "Previous attempt" in second and "disk quota exceeded on /data" in second
