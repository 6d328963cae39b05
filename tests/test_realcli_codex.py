"""OpenAI Codex CLI, the real one, through bosun against the fake model server.

Each test points the built-in ``codex`` spec at the fake through its ``base_url`` var (codex
reads its endpoint from the config file the spec writes, not from the environment) and
passes the API key in ``OPENAI_API_KEY``, which the spec's allowlist lets through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bosun.agents.cli_codex import SPEC
from bosun.agents.parsers import parse_capture
from bosun.agents.spec import AgentSpec
from bosun.config import Settings
from bosun.models import ErrorKind, Outcome, RunStatus, TaskSpec, TaskStatus
from bosun.providers.base import Command
from bosun.providers.local import LocalProvider
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
from tests.realcli import need, run_task

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]

PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch\n"


def codex_spec(fake: FakeModelServer, **fields: Any) -> AgentSpec:
    """The built-in spec aimed at the fake (a model codex knows, so no warning event)."""
    values = {**SPEC.vars, "base_url": f"{fake.url}/v1", "model": "gpt-5.5"}
    return dataclasses.replace(SPEC, vars=values, **fields)


@pytest.fixture
def codex(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    need("codex")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    settings = make_settings(limits={"max_attempts": 1, "run_timeout": 120})
    return dataclasses.replace(settings, agents={**settings.agents, "codex": codex_spec(fake)})


def with_spec(settings: Settings, fake: FakeModelServer, **fields: Any) -> Settings:
    return dataclasses.replace(
        settings, agents={**settings.agents, "codex": codex_spec(fake, **fields)}
    )


def task(title: str = "Say hello", **fields: Any) -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="codex", **fields)


async def test_plain_answer(codex: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model."))
    done = await run_task(codex, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    assert done.task.session_id and done.runs[0].session_id == done.task.session_id
    assert (done.task.tokens_in, done.task.tokens_out) == (12, 5)  # the fake's usage
    [request] = fake.model_requests
    assert request.api == "openai-responses" and request.body["model"] == "gpt-5.5"
    assert "# Task: Say hello" in request.body_text()  # the prompt arrived on stdin
    # one model call: no model list, no probe, no retry
    assert [r.path for r in fake.requests] == ["/v1/responses"]


async def test_apply_patch_writes_a_file_that_is_committed(
    codex: Settings, fake: FakeModelServer, origin: Path
) -> None:
    fake.push(ToolCall("apply_patch", custom_input=PATCH), Text("Wrote hello.txt."))
    done = await run_task(codex, task("Write hello"))
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.branch is not None
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    # codex left nothing else in the worktree (its state lives in the run's home)
    assert git(origin, "show", "--name-only", "--format=", done.task.branch) == "hello.txt"
    changes = [e.data for e in done.events if e.kind == "agent.file_change"]
    assert [(Path(c["path"]).name, c["kind"]) for c in changes] == [("hello.txt", "add")]
    assert "agent.tool_use" in done.kinds()
    # the second request carried the patch tool's result back to the model
    assert "custom_tool_call_output" in fake.model_requests[-1].body_text()


@pytest.mark.parametrize(
    ("turn", "status", "kind"),
    [
        (auth_error(), TaskStatus.FAILED, ErrorKind.AUTH),
        # codex drops Retry-After: paused with bosun's backoff
        (rate_limited(30), TaskStatus.PAUSED, ErrorKind.USAGE_LIMIT),
    ],
)
async def test_api_errors(
    codex: Settings, fake: FakeModelServer, turn: HttpError, status: TaskStatus, kind: ErrorKind
) -> None:
    fake.set_default(turn)
    done = await run_task(codex, task())
    assert (done.task.status, done.task.error_kind) == (status, kind), done.task.error
    # codex's own retries are off (request_max_retries = 0), yet on a 429 it sometimes
    # sends the request twice (seen in 1 of about 10 runs): allow that, never more
    limit = 1 if kind is ErrorKind.AUTH else 2
    assert 1 <= len(fake.model_requests) <= limit
    if status is TaskStatus.PAUSED:
        assert done.task.not_before is not None
    else:
        assert "127.0.0.1" in (done.task.error or "")  # the message names the endpoint


async def test_usage_limit_pauses_until_the_reset_codex_names(
    codex: Settings, fake: FakeModelServer
) -> None:
    # codex prints the reset as a wall-clock time ("try again at 3:07 PM"), to the minute,
    # in its TZ, which the spec pins to UTC
    reset = (datetime.now(UTC) + timedelta(hours=2)).replace(second=0, microsecond=0)
    body = {
        "error": {
            "type": "usage_limit_reached",
            "message": "The usage limit has been reached",
            "plan_type": "pro",
            "resets_at": int(reset.timestamp()),
        }
    }
    fake.set_default(HttpError(429, body=body))
    done = await run_task(codex, task())
    assert done.task.status is TaskStatus.PAUSED, done.task.error
    assert done.task.error_kind is ErrorKind.USAGE_LIMIT
    assert "try again at" in (done.task.error or "")
    assert done.task.not_before == reset


async def test_server_error_is_retried(
    make_settings: SettingsFactory, fake: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("codex")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    settings = with_spec(make_settings(limits={"max_attempts": 2}), fake)
    fake.push(server_error(500), Text("Recovered."))
    done = await run_task(settings, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.attempt == 2 and done.task.result_summary == "Recovered."
    first = done.runs[0]
    assert (first.status, first.error_kind) == (RunStatus.FAILED, ErrorKind.SERVER)


async def test_a_hang_is_killed_with_its_process_group(
    codex: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang())  # not even a status line: codex waits forever on its own
    done = await run_task(with_spec(codex, fake, stall_timeout=3.0), task())
    assert done.task.status is TaskStatus.FAILED
    assert done.task.error_kind is ErrorKind.STALLED
    assert done.runs[0].status is RunStatus.FAILED
    assert len(fake.model_requests) == 1
    pgid = int(done.runs[0].ref["pgid"])
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not group_members(pgid)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group ``pgid``, from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


async def run_direct(provider: LocalProvider, command: Command, run_dir: str) -> Outcome:
    """Launch ``command`` in ``run_dir``, wait for it, and parse its output."""
    handle = await provider.launch(command, run_dir)
    for _ in range(3000):
        if await handle.exit_code() is not None:
            break
        await asyncio.sleep(0.02)
    else:
        await handle.cancel(1)
    out, err = (Path(run_dir, name).read_text() for name in ("stdout", "stderr"))
    return parse_capture(SPEC.parser, out, err, await handle.exit_code())[1]


async def test_resume_carries_the_first_conversation(
    codex: Settings, fake: FakeModelServer
) -> None:
    fake.push(Text("First answer: 42."))
    first = await run_task(codex, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    assert session
    ref = first.runs[0].ref
    workdir = str(ref["workdir"])
    Path(workdir).mkdir(parents=True, exist_ok=True)  # removed when the task completed
    spec = codex.agents["codex"]
    provider = LocalProvider("local", str(codex.state_dir))
    try:

        def build(run_dir: str) -> Command:
            return spec.build(
                prompt="What was the number?",
                workdir=workdir,
                run_dir=run_dir,
                session_id=session,
                environ=os.environ,
            )

        # codex keeps the thread in $CODEX_HOME/sessions, inside the run's own home: a
        # resumed run that starts with a fresh home cannot find it ...
        fresh = await provider.run_dir("resume-fresh-home")
        lost = await run_direct(provider, build(fresh), fresh)
        assert lost.error_kind is ErrorKind.AGENT
        assert f"cannot resume session {session}" in (lost.error or "")
        assert len(fake.model_requests) == 1
        # ... and one that starts from a copy of the first run's home can.
        run_dir = await provider.run_dir("resume-copied-home")
        shutil.copytree(Path(ref["run_dir"]) / "home", Path(run_dir) / "home")
        command = build(run_dir)
        assert command.argv[-3:] == ("resume", session, "-")
        fake.push(Text("It was 42."))
        outcome = await run_direct(provider, command, run_dir)
    finally:
        await provider.aclose()
    assert outcome.success, outcome.error
    assert (outcome.session_id, outcome.summary) == (session, "It was 42.")
    # codex reports the thread's running total: the first run's 12 + 5 are counted again
    assert (outcome.tokens_in, outcome.tokens_out) == (24, 10)
    resumed = fake.model_requests[-1].body_text()
    assert "Remember a number" in resumed and "First answer: 42." in resumed
    assert "What was the number?" in resumed
