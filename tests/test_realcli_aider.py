"""aider, the real CLI, through bosun against the fake model server (Chat Completions)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bosun.agents.cli_aider import SPEC
from bosun.agents.spec import AgentSpec
from bosun.config import Settings
from bosun.models import ErrorKind, RunStatus, TaskSpec, TaskStatus
from tests.agent_clis import require_cli
from tests.conftest import SettingsFactory, git
from tests.fakes import (
    FakeModelServer,
    Hang,
    Text,
    auth_error,
    rate_limited,
    server_error,
)
from tests.realcli import Finished, need, resume_in_place, run_task

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]

#: aider retries rate limits and server errors for about 64 s (a hard-coded limit, 60 s
#: for its doubling delay). The error tests start aider through its own interpreter with
#: that limit at 1 s, which leaves three retries; everything else is the spec's command.
QUICK_RETRIES = (
    "import sys, aider.coders.base_coder as coder; coder.RETRY_TIMEOUT = 1; "
    "from aider.main import main; sys.exit(main())"
)


@pytest.fixture
def aider(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    need("aider")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    settings = make_settings(limits={"max_attempts": 1})
    spec = dataclasses.replace(
        SPEC, vars={**SPEC.vars, "base_url": f"{fake.url}/v1", "model": "fake-model"}
    )
    return with_spec(settings, spec)


def with_spec(settings: Settings, spec: AgentSpec) -> Settings:
    return dataclasses.replace(settings, agents={**settings.agents, "aider": spec})


def quick_retries(settings: Settings) -> Settings:
    """``settings`` with aider started by its venv's python, its retry limit at 1 s."""
    python = Path(os.path.realpath(require_cli("aider"))).parent / "python"
    spec = settings.agents["aider"]
    command = (str(python), "-c", QUICK_RETRIES, *spec.command[1:])
    return with_spec(settings, dataclasses.replace(spec, command=command))


def task(title: str = "Say hello") -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="aider")


async def test_plain_answer(aider: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model.", chunk_size=5))
    done = await run_task(aider, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    # the analytics user_id names the run's home (see bosun.agents.cli_aider)
    assert done.task.session_id and done.runs[0].session_id == done.task.session_id
    assert done.task.tokens_in > 0 and done.task.tokens_out > 0
    assert len(fake.model_requests) == 1
    sent = fake.model_requests[0].body
    assert isinstance(sent, dict) and sent["model"] == "fake-model" and "tools" not in sent
    assert "# Task: Say hello" in str(sent["messages"])


async def test_whole_file_edit_is_committed(
    aider: Settings, fake: FakeModelServer, origin: Path
) -> None:
    # aider's "whole" edit format: a path line, then the file in a fenced block
    fake.push(Text("Creating hello.txt.\n\nhello.txt\n```\nhi\n```\n"))
    done = await run_task(aider, task("Write hello"))
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.branch is not None
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    assert "agent.file_change" in done.kinds()
    # nothing of aider's own (history, caches, .gitignore) was committed
    files = git(origin, "ls-tree", "-r", "--name-only", done.task.branch).split()
    assert sorted(files) == ["README.md", "hello.txt"]


async def test_auth_error_fails_at_once(aider: Settings, fake: FakeModelServer) -> None:
    fake.set_default(auth_error())
    done = await run_task(aider, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.AUTH)
    assert "Invalid API key" in (done.task.error or "")
    assert len(fake.model_requests) == 1  # neither aider nor its client retries a 401


async def test_rate_limit_pauses_until_the_reset(aider: Settings, fake: FakeModelServer) -> None:
    fake.set_default(rate_limited(30))
    done = await run_task(quick_retries(aider), task())
    assert done.task.status is TaskStatus.PAUSED, done.task.error
    assert done.task.error_kind is ErrorKind.USAGE_LIMIT
    assert done.task.not_before is not None
    assert len(fake.model_requests) == 4  # aider's attempts; the client's retries are off


async def test_server_error_fails_as_server(aider: Settings, fake: FakeModelServer) -> None:
    fake.set_default(server_error(500))
    done = await run_task(quick_retries(aider), task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.SERVER)
    assert done.task.attempt == 1  # limits.max_attempts = 1: bosun's retry is not taken
    assert len(fake.model_requests) == 4


async def test_a_hang_is_killed_with_its_process_group(
    aider: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang(partial_text="Thinking"))
    # aider is silent for several seconds while it starts: the stall limit must outlast that
    spec = dataclasses.replace(aider.agents["aider"], stall_timeout=8.0)
    done: Finished = await run_task(with_spec(aider, spec), task())
    assert done.task.status is TaskStatus.FAILED
    assert done.task.error_kind is ErrorKind.STALLED
    assert done.runs[0].status is RunStatus.FAILED
    assert len(fake.model_requests) == 1  # it stalled on the model, not while starting
    with pytest.raises(ProcessLookupError):
        os.killpg(int(done.runs[0].ref["pgid"]), 0)


async def test_resume_carries_the_first_conversation(
    aider: Settings, fake: FakeModelServer, origin: Path, tmp_path: Path
) -> None:
    fake.push(Text("First answer: 42."))
    first = await run_task(aider, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    assert session
    ref = first.runs[0].ref
    # resume_in_place copies the previous run's home (aider's chat history is in it);
    # the same path holds a git checkout (aider wants a git repo), as for a rework run.
    assert not Path(ref["workdir"]).exists()  # bosun removed the finished task's worktree
    git(tmp_path, "clone", "-q", str(origin), str(ref["workdir"]))
    fake.push(Text("It was 42."))
    resumed = await resume_in_place(aider, "aider", first, "What was the number?")
    assert resumed.command.argv[-1] == "--restore-chat-history"
    assert resumed.exit_code == 0
    sent = str(fake.model_requests[-1].body)
    assert "First answer: 42." in sent and "What was the number?" in sent
    # the same home, so the same analytics user_id: the resumed run reports the same id
    assert session in resumed.stderr
    assert "Restored previous conversation history." in resumed.stdout
