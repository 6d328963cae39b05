"""The review loop with a real agent CLI: Claude Code against the fake model server opens
a pull request on the fake forge; a signed "changes requested" webhook sends it back; the
rework run resumes the same Claude session with the review text in its prompt; a signed
"merged" webhook completes the task."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from bosun.agents.cli_claude import SPEC
from bosun.dispatcher import Dispatcher
from bosun.models import TaskSpec, TaskStatus
from bosun.providers.local import LocalProvider
from bosun.service import make_providers
from bosun.workspace import Workspace
from tests.conftest import SettingsFactory, git
from tests.fakes import FakeModelServer, Text, ToolCall
from tests.forgekit import rig_for
from tests.realcli import need
from tests.store_fixtures import migrated_db

__all__ = ["migrated_db"]

pytestmark = [pytest.mark.realcli, pytest.mark.usefixtures("cli_path")]


async def test_claude_rework_resumes_its_session_with_the_review(
    fake: FakeModelServer,
    make_settings: SettingsFactory,
    migrated_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    origin: Path,
) -> None:
    need("claude")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    async with rig_for("gitea", make_settings, migrated_db, tmp_path, monkeypatch, origin) as rig:
        spec = dataclasses.replace(SPEC, vars={**SPEC.vars, "max_retries": "0"})
        settings = dataclasses.replace(
            rig.settings,
            agents={**rig.settings.agents, "claude": spec},
            limits=rig.settings.limits.model_copy(update={"max_attempts": 1}),
        )

        async def dispatch() -> None:
            dispatcher = Dispatcher(settings, rig.store, make_providers(settings))
            await asyncio.wait_for(dispatcher.run(burst=True), 180)

        title = "Write hello"
        workdir = Workspace(LocalProvider("local", "."), str(settings.state_dir)).worktree_path(
            1, title
        )
        fake.push(
            ToolCall("Write", {"file_path": f"{workdir}/hello.txt", "content": "hi\n"}),
            Text("Wrote hello.txt."),
        )
        task = await rig.store.add_task(
            TaskSpec(title=title, body="Write hello.txt.", repo="app", agent="claude"),
            max_attempts=1,
        )
        await dispatch()
        task = await rig.store.get_task(task.id)
        assert task.status is TaskStatus.REVIEW_PENDING, task.error
        assert task.pr_number == 1 and task.session_id
        session = task.session_id
        assert "Wrote hello.txt." in rig.forge.pulls[1]["body"]
        assert f"- tokens: {task.tokens_in + task.tokens_out:,}" in rig.forge.pulls[1]["body"]
        assert task.tokens_in > 0

        review = rig.forge.add_review(
            1, "REQUEST_CHANGES", "Please also write bye.txt.", [("hello.txt", 1, "Say hello")]
        )
        resp = await rig.post(rig.forge.review_payload(1, review), event="pull_request_rejected")
        assert resp.json()["task_status"] == "rework", resp.text

        asked = len(fake.model_requests)
        fake.push(
            ToolCall("Write", {"file_path": f"{workdir}/bye.txt", "content": "bye\n"}),
            Text("Wrote bye.txt."),
        )
        await dispatch()
        task = await rig.store.get_task(task.id)
        assert task.status is TaskStatus.REVIEW_PENDING, task.error
        assert task.session_id and task.review_count == 1
        started = [
            e for e in await rig.store.events_since(0, task_id=task.id) if e.kind == "run.started"
        ]
        assert [e.data["resumed_session"] for e in started] == [None, session]
        # the resumed conversation: the first run's turns and the review's text
        sent = str(fake.model_requests[asked].body)
        assert "Wrote hello.txt." in sent
        assert "Please also write bye.txt." in sent and "`hello.txt` line 1" in sent
        assert git(origin, "show", f"{task.branch}:bye.txt") == "bye"
        assert len(rig.forge.pulls) == 1

        rig.forge.merge(1)
        resp = await rig.post(rig.forge.pull_payload(1, "closed"), event="pull_request")
        assert resp.json()["task_status"] == "completed", resp.text
