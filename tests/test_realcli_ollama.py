"""The ollama agent (bosun's own ``python -m bosun.ollama_agent``) through bosun, against the
fake model server's Ollama API (``/api/chat``).

A text-only agent has no tools, so there is no tool-call case: it writes no file and its
answer is the task's result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
from pathlib import Path

import pytest

from bosun.agents.cli_ollama import SPEC
from bosun.agents.parsers import parse_capture
from bosun.config import Settings
from bosun.models import ErrorKind, RunStatus, TaskSpec, TaskStatus
from bosun.providers.local import LocalProvider
from tests.conftest import SettingsFactory
from tests.fakes import (
    FakeModelServer,
    Hang,
    HttpError,
    Text,
    auth_error,
    rate_limited,
    server_error,
)
from tests.fakes.turns import Turn
from tests.realcli import run_task

pytestmark = pytest.mark.realcli


def with_spec(settings: Settings, **changes: object) -> Settings:
    spec = dataclasses.replace(settings.agents["ollama"], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(settings, agents={**settings.agents, "ollama": spec})


@pytest.fixture
def ollama(
    fake: FakeModelServer, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    settings = make_settings(limits={"max_attempts": 1})
    settings = dataclasses.replace(settings, agents={**settings.agents, "ollama": SPEC})
    return with_spec(settings, vars={**SPEC.vars, "base_url": fake.url})


def task(title: str = "Say hello") -> TaskSpec:
    return TaskSpec(title=title, body="Do it.", repo="app", agent="ollama")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_plain_answer(ollama: Settings, fake: FakeModelServer) -> None:
    fake.push(Text("Hello from the fake model.", chunk_size=5))
    done = await run_task(ollama, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Hello from the fake model."
    assert done.task.session_id and done.runs[0].session_id == done.task.session_id
    assert (done.task.tokens_in, done.task.tokens_out) == (12, 5)
    sent = fake.model_requests[0].body
    assert isinstance(sent, dict)
    assert (sent["model"], sent["stream"]) == ("llama3.1", True)
    assert [m["role"] for m in sent["messages"]] == ["user"]
    assert "# Task: Say hello" in sent["messages"][0]["content"]


async def test_ollama_host_from_the_environment_wins(
    ollama: Settings, fake: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", fake.url.removeprefix("http://"))  # Ollama's host:port
    settings = with_spec(
        ollama, vars={**SPEC.vars, "base_url": f"http://127.0.0.1:{closed_port()}"}
    )
    fake.push(Text("Via OLLAMA_HOST."))
    done = await run_task(settings, task())
    assert done.task.status is TaskStatus.COMPLETED, done.task.error
    assert done.task.result_summary == "Via OLLAMA_HOST."


@pytest.mark.parametrize(
    ("turn", "status", "kind"),
    [
        (auth_error(), TaskStatus.FAILED, ErrorKind.AUTH),
        (rate_limited(30), TaskStatus.PAUSED, ErrorKind.USAGE_LIMIT),
        (server_error(500), TaskStatus.FAILED, ErrorKind.SERVER),
        (HttpError(404, 'model "llama3.1" not found'), TaskStatus.FAILED, ErrorKind.CONFIG),
    ],
)
async def test_api_errors(
    ollama: Settings, fake: FakeModelServer, turn: Turn, status: TaskStatus, kind: ErrorKind
) -> None:
    fake.set_default(turn)
    done = await run_task(ollama, task())
    assert (done.task.status, done.task.error_kind) == (status, kind), done.task.error
    assert len(fake.model_requests) == 1  # the agent never retries on its own
    if status is TaskStatus.PAUSED:
        assert done.task.not_before is not None


async def test_an_unreachable_server_is_a_server_error(ollama: Settings) -> None:
    settings = with_spec(
        ollama, vars={**SPEC.vars, "base_url": f"http://127.0.0.1:{closed_port()}"}
    )
    done = await run_task(settings, task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.SERVER)
    assert done.task.error is not None and "connection refused" in done.task.error


async def test_a_hang_is_killed_with_its_process_group(
    ollama: Settings, fake: FakeModelServer
) -> None:
    fake.set_default(Hang(partial_text="Thinking"))
    done = await run_task(with_spec(ollama, stall_timeout=3.0), task())
    assert (done.task.status, done.task.error_kind) == (TaskStatus.FAILED, ErrorKind.STALLED)
    assert done.runs[0].status is RunStatus.FAILED
    with pytest.raises(ProcessLookupError):
        os.killpg(int(done.runs[0].ref["pgid"]), 0)


async def test_resume_carries_the_first_conversation(
    ollama: Settings, fake: FakeModelServer
) -> None:
    fake.push(Text("First answer: 42."))
    first = await run_task(ollama, task("Remember a number"))
    assert first.task.status is TaskStatus.COMPLETED, first.task.error
    session = first.task.session_id
    assert session
    ref = first.runs[0].ref
    # The session file is in the first run's isolated home: a resumed run gets a copy of it
    # (what bosun does for a rework run).
    provider = LocalProvider("local", str(ollama.state_dir))
    run_dir = await provider.run_dir("resume-check")
    shutil.copytree(Path(ref["run_dir"]) / "home", Path(run_dir) / "home")
    Path(ref["workdir"]).mkdir(parents=True, exist_ok=True)
    command = ollama.agents["ollama"].build(
        prompt="What was the number?",
        workdir=str(ref["workdir"]),
        run_dir=run_dir,
        session_id=session,
        environ=os.environ,
    )
    assert command.argv[-2:] == ("--resume", session)
    fake.push(Text("It was 42."))
    handle = await provider.launch(command, run_dir)
    try:
        for _ in range(1500):
            if await handle.exit_code() is not None:
                break
            await asyncio.sleep(0.02)
    finally:
        await handle.cancel(0.5)  # a no-op once it has ended
        await provider.aclose()
    out, err = (Path(run_dir, name).read_text() for name in ("stdout", "stderr"))
    assert await handle.exit_code() == 0, err
    _, outcome = parse_capture(SPEC.parser, out, err, 0)
    assert (outcome.success, outcome.summary, outcome.session_id) == (True, "It was 42.", session)
    messages = fake.model_requests[-1].body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "# Task: Remember a number" in messages[0]["content"]
    assert messages[1:] == [
        {"role": "assistant", "content": "First answer: 42."},
        {"role": "user", "content": "What was the number?"},
    ]
