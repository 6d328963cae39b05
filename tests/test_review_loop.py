"""The review loop end to end on real git, real processes, real SQLite and the fake forge:
a run pushes its branch and opens one pull request; a signed "changes requested" webhook
sends the task back with the review in the next prompt; a signed "merged" completes it.
Also: pull requests are never opened twice, a forge that is down is caught up by the
polling fallback, and polling uses conditional requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bosun.dispatcher import Dispatcher
from bosun.models import TaskSpec, TaskStatus
from bosun.review import MARKER, ReviewLoop
from bosun.service import make_providers
from tests.conftest import SettingsFactory, git
from tests.forgekit import Rig, rig_for
from tests.store_fixtures import migrated_db

__all__ = ["migrated_db"]

S = TaskStatus


@pytest.fixture
async def rig(
    make_settings: SettingsFactory,
    migrated_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    origin: Path,
) -> AsyncIterator[Rig]:
    monkeypatch.setenv("BOSUN_DEMO_DELAY", "0")
    async with rig_for(
        "forgejo", make_settings, migrated_db, tmp_path, monkeypatch, origin
    ) as made:
        yield made


async def dispatch(rig: Rig) -> None:
    dispatcher = Dispatcher(rig.settings, rig.store, make_providers(rig.settings))
    await asyncio.wait_for(dispatcher.run(burst=True), 60)


def prompt_of(run_ref: dict[str, object]) -> str:
    return (Path(str(run_ref["run_dir"])) / "stdin").read_text()


async def test_run_pull_request_review_rework_merge(rig: Rig, origin: Path) -> None:
    forge = rig.forge
    task = await rig.store.add_task(
        TaskSpec(
            title="Add a greeting",
            body="Create hello.txt with: Hello",
            repo="app",
            agent="demo",
        ),
        max_attempts=3,
    )
    await dispatch(rig)

    # 1. the run succeeded: its branch is pushed, one pull request is open for it
    task = await rig.store.get_task(task.id)
    assert task.status is S.REVIEW_PENDING, (task.error, task.status)
    assert task.branch and task.pr_number == 1
    head = git(origin, "rev-parse", task.branch)
    assert git(origin, "show", f"{task.branch}:hello.txt") == "Hello"
    pr = forge.pulls[1]
    assert (pr["head"]["ref"], pr["base"]["ref"], pr["title"]) == (task.branch, "main", task.title)
    assert task.pr_head_sha == head == pr["head"]["sha"]
    assert task.pr_url == pr["html_url"]
    body = pr["body"]
    assert f"bosun task [#{task.id}](https://bosun.example/api/v1/tasks/{task.id})" in body
    assert "Create hello.txt with: Hello" in body  # the task
    assert "Done: 1 change (demo agent, not an AI)" in body  # the agent's summary
    assert "- tokens: 0 (0 in, 0 out)" in body and "- cost: $0.0000" in body
    assert MARKER in body
    assert len(forge.calls_to("POST", "/pulls")) == 1
    assert task.to_json()["pr_number"] == 1

    # 2. a reviewer requests changes, with an inline comment; the forge's webhook arrives
    review = forge.add_review(
        1,
        "REQUEST_CHANGES",
        "Good start.\nCreate fix.txt with: fixed",
        [("hello.txt", 1, "Say it louder")],
        author="carol",
    )
    resp = await rig.post(forge.review_payload(1, review), event="pull_request_rejected")
    assert resp.status_code == 200 and resp.json()["task_status"] == "rework", resp.text

    # 3. the rework run: same branch and pull request, the review in its prompt
    await dispatch(rig)
    task = await rig.store.get_task(task.id)
    assert task.status is S.REVIEW_PENDING, (task.error, task.status)
    assert task.review_count == 1 and task.pr_number == 1
    runs = await rig.store.list_runs(task.id)
    assert len(runs) == 2
    first, second = prompt_of(runs[0].ref), prompt_of(runs[1].ref)
    assert "Review feedback" not in first
    assert "## Review feedback" in second
    assert "A reviewer by carol requested changes on pull request #1" in second
    assert "Good start.\nCreate fix.txt with: fixed" in second
    assert "- `hello.txt` line 1 (carol): Say it louder" in second
    assert git(origin, "show", f"{task.branch}:fix.txt") == "fixed"
    assert task.pr_head_sha == git(origin, "rev-parse", task.branch or "") != head
    # no second pull request: a comment on the first one says what was pushed
    assert len(forge.calls_to("POST", "/pulls")) == 1 and len(forge.pulls) == 1
    assert len(forge.comments) == 1
    assert "rework of review round 1" in forge.comments[0]["body"]
    assert MARKER in forge.comments[0]["body"]

    # 4. merged: completed
    forge.merge(1)
    resp = await rig.post(forge.pull_payload(1, "closed"), event="pull_request")
    assert resp.json()["task_status"] == "completed", resp.text
    assert (await rig.store.get_task(task.id)).status is S.COMPLETED


async def test_a_task_without_changes_completes_without_a_pull_request(rig: Rig) -> None:
    task = await rig.store.add_task(
        TaskSpec(title="Nothing to do", body="Just look around.", repo="app", agent="demo"),
        max_attempts=1,
    )
    await dispatch(rig)
    task = await rig.store.get_task(task.id)
    assert task.status is S.COMPLETED and task.pr_number is None
    assert rig.forge.calls == []


async def test_publishing_twice_opens_one_pull_request(rig: Rig, origin: Path) -> None:
    task = await rig.task_with_pull()
    pr = rig.forge.pulls[task.pr_number or 0]
    # as if the first attempt opened the pull request and crashed before storing it
    task = await rig.store.update_task(task.id, pr_number=None, pr_url=None)
    loop = ReviewLoop(rig.settings, rig.store)
    try:
        found = await loop.publish(task, head_sha=None)
        again = await loop.publish(task, head_sha=None)
    finally:
        await loop.aclose()
    assert found.number == again.number == pr["number"]
    assert len(rig.forge.pulls) == 1 and rig.forge.calls_to("POST", "/pulls") == []
    kinds = [e.kind for e in await rig.store.events_since(0, task_id=task.id)]
    assert kinds.count("review.pr_found") == 2


async def test_a_closed_pull_request_is_reopened_not_duplicated(rig: Rig) -> None:
    task = await rig.task_with_pull()
    number = task.pr_number or 0
    rig.forge.close(number)
    loop = ReviewLoop(rig.settings, rig.store)
    try:
        pr = await loop.publish(task, head_sha=None)
    finally:
        await loop.aclose()
    assert pr.number == number and pr.state == "open"
    assert len(rig.forge.pulls) == 1
    assert rig.forge.calls_to("PATCH", f"/pulls/{number}")[0].body == {"state": "open"}


async def test_a_forge_that_is_down_is_caught_up_by_polling(rig: Rig) -> None:
    rig.forge.failures += [502, 502]
    task = await rig.store.add_task(
        TaskSpec(
            title="Add a greeting", body="Create hello.txt with: Hi", repo="app", agent="demo"
        ),
        max_attempts=1,
    )
    await dispatch(rig)
    task = await rig.store.get_task(task.id)
    assert task.status is S.REVIEW_PENDING and task.pr_number is None
    failed = [
        e for e in await rig.store.events_since(0, task_id=task.id) if e.kind == "review.pr_failed"
    ]
    assert "HTTP 502" in failed[0].data["error"]
    loop = ReviewLoop(rig.settings, rig.store)
    try:
        rig.forge.failures.clear()
        done = await loop.reconcile("app")
        assert [h.outcome for h in done] == ["pull request opened"]
        task = await rig.store.get_task(task.id)
        assert task.pr_number == 1 and task.pr_url == rig.forge.pulls[1]["html_url"]
        # idempotent: the next pass opens nothing more
        await loop.reconcile("app")
        assert len(rig.forge.pulls) == 1
    finally:
        await loop.aclose()


async def test_polling_uses_conditional_requests_and_finds_reviews_and_merges(rig: Rig) -> None:
    task = await rig.task_with_pull()
    number = task.pr_number or 0
    loop = ReviewLoop(rig.settings, rig.store)
    try:
        assert await loop.reconcile("app") == []
        assert await loop.reconcile("app") == []
        gets = rig.forge.calls_to("GET", f"/pulls/{number}")
        assert "if-none-match" not in gets[0].headers
        assert gets[1].headers["if-none-match"]  # the second pass: 304 Not Modified

        # a review no webhook told bosun about
        review = rig.forge.add_review(number, "REQUEST_CHANGES", "Rename it", [("a.py", 2, "x")])
        done = await loop.reconcile("app")
        assert [h.outcome for h in done] == ["rework"]
        task = await rig.store.get_task(task.id)
        assert task.status is S.REWORK and "Rename it" in (task.review_feedback or "")
        assert "- `a.py` line 2 (reviewer): x" in (task.review_feedback or "")
        # back in review after the rework: the same review is not handled twice
        await rig.store.transition(task.id, S.RUNNING, reason="test")
        await rig.store.transition(task.id, S.REVIEW_PENDING, reason="test")
        rig.forge.add_review(number, "COMMENT", "nice")  # the reviews changed, nothing new
        assert await loop.reconcile("app") == []
        assert (await rig.store.get_task(task.id)).review_count == 1
        assert review["id"]

        rig.forge.merge(number)
        done = await loop.reconcile("app")
        assert [h.outcome for h in done] == ["completed"]
        assert (await rig.store.get_task(task.id)).status is S.COMPLETED
    finally:
        await loop.aclose()


async def test_polling_runs_on_its_interval_until_stopped(rig: Rig) -> None:
    task = await rig.task_with_pull()
    rig.forge.merge(task.pr_number or 0)
    stop = asyncio.Event()
    loop = ReviewLoop(rig.settings, rig.store)  # poll_interval 300: due at once, then not
    runner = asyncio.create_task(loop.run(stop, tick=0.05))
    for _ in range(200):
        if (await rig.store.get_task(task.id)).status is S.COMPLETED:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(runner, 10)
    assert (await rig.store.get_task(task.id)).status is S.COMPLETED
    assert len(rig.forge.calls_to("GET", f"/pulls/{task.pr_number}")) == 1
