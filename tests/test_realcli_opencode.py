"""opencode, the real CLI, through bosun against the fake model server (Chat Completions)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bosun.agents.cli_opencode import SPEC
from bosun.config import Settings
from bosun.models import ErrorKind, RunStatus, TaskSpec, TaskStatus
from bosun.providers.local import LocalProvider
from bosun.workspace import Workspace
from tests.conftest import SettingsFactory, git
from tests.fakes import FakeModelServer, Hang, HttpError, Text, ToolCall, auth_error, rate_limited
from tests.realcli import Finished, need, resume_in_place, run_task

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]

#: opencode retries a failed request five times itself, waiting what ``retry-after-ms`` /
#: ``retry-after`` say (else 2 s, 4 s, ... 32 s); no setting turns that off.
RETRIES = 5
QUICK = {"retry-after-ms": "10"}


@pytest.fixture
def opencode(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    need("opencode")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    settings = make_settings(limits={"max_attempts": 1})
    spec = dataclasses.replace(
        SPEC, vars={**SPEC.vars, "base_url": f"{fake.url}/v1", "model": "fake-model"}
    )
    return dataclasses.replace(settings, agents={**settings.agents, "opencode": spec})


def task(title: str = "Say hello") -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="opencode")


async def test_plain_answer(opencode: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model.", chunk_size=5))
    done = await run_task(opencode, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    assert done.task.session_id and done.task.session_id.startswith("ses_")
    assert done.runs[0].session_id == done.task.session_id
    assert (done.task.tokens_in, done.task.tokens_out) == (12, 5)
    # one model request: --title spares the title request; the prompt came on stdin
    assert len(fake.model_requests) == 1
    sent = fake.model_requests[0].body
    assert isinstance(sent, dict) and sent["model"] == "fake-model"
    assert "# Task: Say hello" in str(sent["messages"])
    assert fake.model_requests[0].headers["authorization"] == "<redacted>"


async def test_tool_call_writes_a_file_that_is_committed(
    opencode: Settings, fake: FakeModelServer, origin: Path
) -> None:
    title = "Write hello"
    workspace = Workspace(LocalProvider("local", "."), str(opencode.state_dir))
    worktree = workspace.worktree_path(1, title)
    fake.push(
        ToolCall("write", {"filePath": f"{worktree}/hello.txt", "content": "hi\n"}, text="On it."),
        Text("Wrote hello.txt."),
    )
    done = await run_task(opencode, task(title))
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Wrote hello.txt."
    assert done.task.branch is not None
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    assert "agent.tool_use" in done.kinds() and "agent.file_change" in done.kinds()
    tools = fake.model_requests[0].body["tools"]
    assert "write" in [t["function"]["name"] for t in tools]
    # the second request carried the tool result back to the model
    last = fake.model_requests[-1].body["messages"]
    assert last[-1]["role"] == "tool" and last[-1]["tool_call_id"] == "call_fake_1"


async def test_auth_error_fails_at_once(opencode: Settings, fake: FakeModelServer) -> None:
    fake.set_default(auth_error())
    done = await run_task(opencode, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.AUTH)
    assert "Invalid API key" in (done.task.error or "")
    assert len(fake.model_requests) == 1  # opencode does not retry a 401


async def test_rate_limit_pauses_until_the_reset(opencode: Settings, fake: FakeModelServer) -> None:
    # opencode's own retries wait 10 ms; the last answer's retry-after is what it reports
    quick = rate_limited(1)
    fake.push(*[dataclasses.replace(quick, headers={**quick.headers, **QUICK})] * RETRIES)
    fake.set_default(rate_limited(30))
    done = await run_task(opencode, task())
    assert done.task.status is TaskStatus.PAUSED, done.task.error
    assert done.task.error_kind is ErrorKind.USAGE_LIMIT
    assert done.task.not_before is not None
    assert len(fake.model_requests) == RETRIES + 1


async def test_server_error_fails_as_server(opencode: Settings, fake: FakeModelServer) -> None:
    fake.set_default(HttpError(500, headers=QUICK))
    done = await run_task(opencode, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.SERVER)
    assert done.task.attempt == 1  # limits.max_attempts = 1: bosun's retry is not taken
    assert len(fake.model_requests) == RETRIES + 1


async def test_a_hang_is_killed_with_its_process_group(
    opencode: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang(partial_text="Thinking"))
    base = opencode.agents["opencode"]
    # INFO logs keep the slow start-up (several seconds, no stdout) from counting as a stall
    spec = dataclasses.replace(base, stall_timeout=8.0, vars={**base.vars, "log_level": "INFO"})
    settings = dataclasses.replace(opencode, agents={**opencode.agents, "opencode": spec})
    done: Finished = await run_task(settings, task())
    assert done.task.status is TaskStatus.FAILED
    assert done.task.error_kind is ErrorKind.STALLED
    assert done.runs[0].status is RunStatus.FAILED
    assert len(fake.model_requests) == 1  # it stalled on the model, not while starting
    with pytest.raises(ProcessLookupError):
        os.killpg(int(done.runs[0].ref["pgid"]), 0)


async def test_resume_carries_the_first_conversation(
    opencode: Settings, fake: FakeModelServer, origin: Path, tmp_path: Path
) -> None:
    fake.push(Text("First answer: 42."))
    first = await run_task(opencode, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    assert session
    ref = first.runs[0].ref
    # resume_in_place copies the previous run's home (opencode's session database is in it);
    # the same path holds a git checkout, as for a rework run.
    assert not Path(ref["workdir"]).exists()  # bosun removed the finished task's worktree
    git(tmp_path, "clone", "-q", str(origin), str(ref["workdir"]))
    fake.push(Text("It was 42."))
    resumed = await resume_in_place(opencode, "opencode", first, "What was the number?")
    assert resumed.command.argv[-2:] == ("--session", session)
    assert resumed.exit_code == 0
    sent = str(fake.model_requests[-1].body)
    assert "First answer: 42." in sent and "What was the number?" in sent
    assert f'"sessionID":"{session}"' in resumed.stdout
