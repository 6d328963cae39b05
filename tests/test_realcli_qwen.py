"""Qwen Code, the real CLI, through bosun against the fake model server.

qwen 0.15.10 retries a 429 or 5xx itself, 7 times with backoff (about 80 s, whatever
``maxRetries`` and ``Retry-After`` say), so the 429 and 500 cases run as two tasks at once
in one dispatch to keep that wait single.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from bosun.agents.cli_qwen import SPEC
from bosun.agents.parsers import parse_capture
from bosun.config import Settings
from bosun.dispatcher import Dispatcher
from bosun.models import ErrorKind, RunStatus, TaskSpec, TaskStatus
from bosun.providers.local import LocalProvider
from bosun.service import Service, make_providers
from bosun.workspace import Workspace
from tests.conftest import SettingsFactory, git
from tests.fakes import (
    FakeModelServer,
    Hang,
    RecordedRequest,
    Text,
    ToolCall,
    Turn,
    Usage,
    auth_error,
    rate_limited,
    server_error,
)
from tests.realcli import need, run_task

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]


def qwen_settings(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, url: str
) -> Settings:
    """Settings whose agent ``qwen`` is the built-in spec pointed at the fake at ``url``."""
    need("qwen")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    settings = make_settings(limits={"max_attempts": 1})
    spec = dataclasses.replace(SPEC, vars={**SPEC.vars, "model": "fake-model"})
    return dataclasses.replace(settings, agents={**settings.agents, "qwen": spec})


@pytest.fixture
def qwen(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    return qwen_settings(make_settings, monkeypatch, fake.url)


def live_members(pgid: int) -> list[int]:
    """The pids of process group ``pgid`` that are not zombies (from /proc)."""
    live = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # it ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        state, _ppid, pgrp = stat[stat.rfind(b")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            live.append(int(entry.name))
    return live


def task(title: str = "Say hello") -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="qwen")


async def test_plain_answer(qwen: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model.", usage=Usage(120, 7, cached_input_tokens=100)))
    done = await run_task(qwen, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    assert done.task.session_id and done.runs[0].session_id == done.task.session_id
    # qwen's input_tokens already include the cached ones
    assert (done.task.tokens_in, done.task.tokens_out) == (120, 7)
    # one model call: the settings turned off the auto-memory request after each answer,
    # and nothing else (telemetry, update checks) reached the only reachable host
    assert [(r.method, r.path) for r in fake.requests] == [("POST", "/v1/chat/completions")]
    sent = fake.model_requests[0].body
    assert sent["model"] == "fake-model"
    assert "# Task: Say hello" in str(sent["messages"][-1])


async def test_tool_call_writes_a_file_that_is_committed(
    qwen: Settings, fake: FakeModelServer, origin: Path
) -> None:
    title = "Write hello"
    worktree = Workspace(LocalProvider("local", "."), str(qwen.state_dir)).worktree_path(1, title)
    # qwen's write_file wants an absolute path
    fake.push(
        ToolCall("write_file", {"file_path": f"{worktree}/hello.txt", "content": "hi\n"}),
        Text("Wrote hello.txt."),
    )
    done = await run_task(qwen, task(title))
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Wrote hello.txt."
    assert done.task.branch is not None
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    assert {"agent.tool_use", "agent.file_change"} <= set(done.kinds())
    # the second request carried the tool's result back to the model
    assert fake.model_requests[-1].body["messages"][-1]["role"] == "tool"


async def test_auth_error_fails_without_retry(qwen: Settings, fake: FakeModelServer) -> None:
    fake.set_default(auth_error())
    done = await run_task(qwen, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.AUTH)
    assert "401" in (done.task.error or "")
    assert len(fake.model_requests) == 1  # qwen does not retry a 401 either
    assert done.runs[0].exit_code == 0  # qwen exits 0 on API errors: the result says why


async def test_rate_limit_pauses_and_server_error_fails_as_server(
    loopback_only: None, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def by_title(request: RecordedRequest) -> Turn | None:
        text = request.body_text()
        if "# Task: Hit the limit" in text:
            return rate_limited(20)
        if "# Task: Break the server" in text:
            return server_error(500)
        return None

    with FakeModelServer(side_turn=by_title) as fake:
        settings = qwen_settings(make_settings, monkeypatch, fake.url)
        async with await Service.open(settings) as svc:
            limited = await svc.submit(task("Hit the limit"))
            broken = await svc.submit(task("Break the server"))
            dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
            await asyncio.wait_for(dispatcher.run(burst=True), 240)
            limited, broken = await svc.get(limited.id), await svc.get(broken.id)
        requests = fake.model_requests
    assert (limited.status, limited.error_kind) == (TaskStatus.PAUSED, ErrorKind.USAGE_LIMIT)
    assert limited.not_before is not None  # from "Please try again in 20s"
    assert (broken.status, broken.error_kind) == (TaskStatus.FAILED, ErrorKind.SERVER)
    assert broken.attempt == 1 and "500" in (broken.error or "")
    # qwen's own retries, which no setting turns off
    assert len(requests) == 14


async def test_a_hang_is_killed_with_its_process_group(
    qwen: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang())
    # qwen prints its first line about 4 s after it starts: stay clear of that silence
    spec = dataclasses.replace(qwen.agents["qwen"], stall_timeout=8.0)
    settings = dataclasses.replace(qwen, agents={**qwen.agents, "qwen": spec})
    done = await run_task(settings, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.STALLED)
    assert done.runs[0].status is RunStatus.FAILED
    assert fake.model_requests  # it was waiting on the model when it was killed
    # qwen runs as two node processes; where PID 1 does not reap, the orphaned one stays a
    # zombie (which killpg(pgid, 0) still finds), so look for live members only
    assert live_members(int(done.runs[0].ref["pgid"])) == []


async def test_resume_carries_the_first_conversation(qwen: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("First answer: 42.", usage=Usage(100, 7)))
    first = await run_task(qwen, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    assert session
    ref = first.runs[0].ref
    # What a rework run does (bosun.execution): the same worktree path (qwen files sessions
    # per directory) and a copy of the previous run's home (where it keeps them).
    provider = LocalProvider("local", str(qwen.state_dir))
    run_dir = await provider.run_dir("resume-check")
    copied = await provider.exec(["cp", "-a", "--", f"{ref['run_dir']}/home", f"{run_dir}/home"])
    assert copied.ok, copied.stderr
    Path(ref["workdir"]).mkdir(parents=True, exist_ok=True)
    command = qwen.agents["qwen"].build(
        prompt="What was the number?",
        workdir=str(ref["workdir"]),
        run_dir=run_dir,
        session_id=session,
        environ=os.environ,
    )
    assert command.argv[-2:] == ("--resume", session)
    fake.push(Text("It was 42.", usage=Usage(50, 3)))
    handle = await provider.launch(command, run_dir)
    try:
        for _ in range(3000):
            if await handle.exit_code() is not None:
                break
            await asyncio.sleep(0.02)
        assert await handle.exit_code() == 0
    finally:
        if await handle.exit_code() is None:
            await handle.cancel(grace=1)
        await provider.aclose()
    messages = fake.model_requests[-1].body["messages"]
    said = [(m["role"], str(m["content"])) for m in messages]
    assert ("assistant", "First answer: 42.") in said
    assert "What was the number?" in said[-1][1]
    # the resumed run reports its own tokens, not the session's running total (150 / 10)
    stdout = Path(run_dir, "stdout").read_text()
    _events, outcome = parse_capture(SPEC.parser, stdout, "", 0)
    assert outcome.success and outcome.session_id == session
    assert (outcome.tokens_in, outcome.tokens_out) == (50, 3)
