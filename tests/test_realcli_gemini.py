"""Gemini CLI, the real CLI, through bosun against the fake model server.

gemini takes ~5 s to start, silently: every stall timeout here stays well above that, so
that in the hang test it is the fake's stalled stream, not the start-up, that trips it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from bosun.agents.cli_gemini import SPEC
from bosun.config import Settings
from bosun.models import ErrorKind, RunStatus, TaskSpec, TaskStatus
from tests.conftest import SettingsFactory, git
from tests.fakes import (
    FakeModelServer,
    Hang,
    HttpError,
    Text,
    ToolCall,
    auth_error,
    rate_limited,
    server_error,
)
from tests.realcli import need, resume_in_place, run_task

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]

#: Seconds without output before bosun kills a run: well above gemini's silent start-up.
HANG_STALL = 8.0


@pytest.fixture
def gemini(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    need("gemini")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
    monkeypatch.setenv("GEMINI_API_KEY", "fake-gemini-key")
    settings = make_settings(limits={"max_attempts": 1})
    return dataclasses.replace(settings, agents={**settings.agents, "gemini": SPEC})


def task(title: str = "Say hello") -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="gemini")


def contents(body: object) -> str:
    """The conversation a Gemini API request carries, as text."""
    assert isinstance(body, dict)
    return json.dumps(body["contents"])


async def test_plain_answer(gemini: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model.", chunk_size=5))
    done = await run_task(gemini, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    assert done.task.session_id and done.runs[0].session_id == done.task.session_id
    assert (done.task.tokens_in, done.task.tokens_out) == (12, 5)  # the fake's usage
    [request] = fake.model_requests
    assert request.path == f"/v1beta/models/{SPEC.vars['model']}:streamGenerateContent"
    # the prompt went in on stdin
    assert "# Task: Say hello" in contents(request.body)


async def test_tool_call_writes_a_file_that_is_committed(
    gemini: Settings, fake: FakeModelServer, origin: Path
) -> None:
    fake.push(
        # a path relative to the worktree, gemini's working directory
        ToolCall("write_file", {"file_path": "hello.txt", "content": "hi\n"}, text="Writing."),
        Text("Wrote hello.txt."),
    )
    done = await run_task(gemini, task("Write hello"))
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Wrote hello.txt."
    assert done.task.branch is not None
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    changes = [e.data for e in done.events if e.kind == "agent.file_change"]
    assert changes == [{"text": "write hello.txt", "path": "hello.txt", "kind": "write"}]
    # the second request carried the tool's result back to the model
    assert "functionResponse" in contents(fake.model_requests[-1].body)


@pytest.mark.parametrize(
    ("turn", "status", "kind", "reason"),
    [
        (auth_error(), TaskStatus.FAILED, ErrorKind.AUTH, "auth error; not retried"),
        (rate_limited(30), TaskStatus.PAUSED, ErrorKind.USAGE_LIMIT, "usage limit reached"),
        # retried while attempts are left: this task has one ([limits] max_attempts = 1)
        (server_error(500), TaskStatus.FAILED, ErrorKind.SERVER, "failed after 1 attempt(s)"),
    ],
    ids=["401", "429", "500"],
)
async def test_api_errors(
    gemini: Settings,
    fake: FakeModelServer,
    turn: HttpError,
    status: TaskStatus,
    kind: ErrorKind,
    reason: str,
) -> None:
    fake.set_default(turn)
    done = await run_task(gemini, task())
    assert (done.task.status, done.task.error_kind) == (status, kind), done.task.error
    assert [e.data["reason"] for e in done.events if e.kind == "task.status"][-1] == reason
    assert len(fake.model_requests) == 1  # gemini's own retry loop is capped at one attempt
    [run] = done.runs
    assert run.exit_code == turn.status % 256
    if status is TaskStatus.PAUSED:
        # "try again in 30s", counted from the result event's timestamp
        assert done.task.not_before is not None
        assert done.task.not_before > run.started_at + timedelta(seconds=20)
    # gemini's error report (it holds the whole request) stays in the run directory
    assert list((Path(run.ref["run_dir"]) / "tmp").glob("gemini-client-error-*.json"))


async def test_a_hang_is_killed_with_its_process_group(
    gemini: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang(partial_text="Thinking"))
    spec = dataclasses.replace(gemini.agents["gemini"], stall_timeout=HANG_STALL)
    settings = dataclasses.replace(gemini, agents={**gemini.agents, "gemini": spec})
    done = await run_task(settings, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.STALLED)
    assert done.runs[0].status is RunStatus.FAILED
    # gemini had started answering when it went quiet: the hang, not start-up, was killed
    assert len(fake.model_requests) == 1
    assert any('"content":"Thinking"' in line for line in done.output())
    with pytest.raises(ProcessLookupError):
        os.killpg(int(done.runs[0].ref["pgid"]), 0)


async def test_resume_carries_the_first_conversation(
    gemini: Settings, fake: FakeModelServer
) -> None:
    fake.push(Text("First answer: 42."))
    first = await run_task(gemini, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    # gemini keeps the session under $HOME/.gemini/tmp/<project>/chats, <project> keyed by
    # the working directory: resume_in_place copies the home and keeps the worktree path.
    fake.push(Text("It was 42."))
    resumed = await resume_in_place(gemini, "gemini", first, "What was the number?")
    assert resumed.command.argv[-2:] == ("--resume", session)
    assert resumed.exit_code == 0, resumed.stderr
    outcome = resumed.outcome
    assert (outcome.success, outcome.summary, outcome.session_id) == (True, "It was 42.", session)
    sent = contents(fake.model_requests[-1].body)
    assert "First answer: 42." in sent and "What was the number?" in sent
