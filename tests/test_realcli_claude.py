"""Claude Code, the real CLI, through bosun against the fake model server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from bosun.agents.cli_claude import SPEC
from bosun.config import Settings
from bosun.models import ErrorKind, RunStatus, TaskSpec, TaskStatus
from bosun.providers.local import LocalProvider
from bosun.workspace import Workspace
from tests.conftest import SettingsFactory, git
from tests.fakes import (
    FakeModelServer,
    Hang,
    Text,
    ToolCall,
    auth_error,
    rate_limited,
    server_error,
)
from tests.realcli import Finished, need, run_task

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]


@pytest.fixture
def claude(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    need("claude")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    settings = make_settings(limits={"max_attempts": 1})
    spec = dataclasses.replace(SPEC, vars={**SPEC.vars, "max_retries": "0"})
    return dataclasses.replace(settings, agents={**settings.agents, "claude": spec})


def task(title: str = "Say hello") -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="claude")


async def test_plain_answer(claude: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model.", chunk_size=5))
    done = await run_task(claude, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    assert done.task.session_id and done.runs[0].session_id == done.task.session_id
    assert done.task.tokens_in > 0 and done.task.tokens_out > 0
    sent = fake.model_requests[0].body
    assert isinstance(sent, dict) and "# Task: Say hello" in str(sent["messages"])


async def test_tool_call_writes_a_file_that_is_committed(
    claude: Settings, fake: FakeModelServer, origin: Path
) -> None:
    title = "Write hello"
    worktree = Workspace(LocalProvider("local", "."), str(claude.state_dir)).worktree_path(1, title)
    fake.push(
        ToolCall(
            "Write", {"file_path": f"{worktree}/hello.txt", "content": "hi\n"}, text="Writing."
        ),
        Text("Wrote hello.txt."),
    )
    done = await run_task(claude, task(title))
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.branch is not None
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    assert "agent.tool_use" in done.kinds()
    # the second request carried the tool result back to the model
    assert "tool_result" in str(fake.model_requests[-1].body)


@pytest.mark.parametrize(
    ("turn", "status", "kind"),
    [
        (auth_error(), TaskStatus.FAILED, ErrorKind.AUTH),
        (rate_limited(30), TaskStatus.PAUSED, ErrorKind.USAGE_LIMIT),
        (server_error(500), TaskStatus.FAILED, ErrorKind.SERVER),
    ],
)
async def test_api_errors(
    claude: Settings, fake: FakeModelServer, turn: object, status: TaskStatus, kind: ErrorKind
) -> None:
    fake.set_default(turn)  # type: ignore[arg-type]
    done = await run_task(claude, task())
    assert (done.task.status, done.task.error_kind) == (status, kind), done.task.error
    if status is TaskStatus.PAUSED:
        assert done.task.not_before is not None
    if kind is ErrorKind.AUTH:  # a login is per agent and host: the message names both
        assert done.task.error is not None
        assert done.task.error.startswith("agent claude on host local: ")
        assert "agent.unhealthy" in done.kinds()


async def test_a_hang_is_killed_with_its_process_group(
    claude: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang(partial_text="Thinking"))
    spec = dataclasses.replace(claude.agents["claude"], stall_timeout=4.0)
    settings = dataclasses.replace(claude, agents={**claude.agents, "claude": spec})
    done: Finished = await run_task(settings, task())
    assert done.task.status is TaskStatus.FAILED
    assert done.task.error_kind is ErrorKind.STALLED
    assert done.runs[0].status is RunStatus.FAILED
    with pytest.raises(ProcessLookupError):
        os.killpg(int(done.runs[0].ref["pgid"]), 0)


async def test_resume_carries_the_first_conversation(
    claude: Settings, fake: FakeModelServer
) -> None:
    fake.push(Text("First answer: 42."))
    first = await run_task(claude, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    assert session
    ref = first.runs[0].ref
    # A rework run gets the previous run's home (where claude keeps its sessions) and the
    # same worktree path (claude resumes only from the same directory).
    provider = LocalProvider("local", str(claude.state_dir))
    run_dir = await provider.run_dir("resume-check")
    shutil.copytree(Path(ref["run_dir"]) / "home", Path(run_dir) / "home")
    Path(ref["workdir"]).mkdir(parents=True, exist_ok=True)
    spec = claude.agents["claude"]
    command = spec.build(
        prompt="What was the number?",
        workdir=str(ref["workdir"]),
        run_dir=run_dir,
        session_id=session,
        environ=os.environ,
    )
    assert command.argv[-2:] == ("--resume", session)
    fake.push(Text("It was 42."))
    handle = await provider.launch(command, run_dir)
    for _ in range(3000):
        if await handle.exit_code() is not None:
            break
        await asyncio.sleep(0.02)
    await provider.aclose()
    assert await handle.exit_code() == 0
    resumed = str(fake.model_requests[-1].body)
    assert "First answer: 42." in resumed and "What was the number?" in resumed
