"""Claude Code, the real CLI, through bosun against the fake model server."""

from __future__ import annotations

import dataclasses
import os
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
from tests.realcli import Finished, need, resume_in_place, run_task

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
    fake.push(Text("It was 42."))
    resumed = await resume_in_place(claude, "claude", first, "What was the number?")
    assert resumed.command.argv[-2:] == ("--resume", first.task.session_id)
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.outcome.summary == "It was 42."
    sent = str(fake.model_requests[-1].body)
    assert "First answer: 42." in sent and "What was the number?" in sent
