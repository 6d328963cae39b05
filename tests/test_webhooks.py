"""``POST /api/v1/webhooks/{forge}`` in-process over a real SQLite store, with the fake
forge as the repo's forge: signed deliveries move tasks through the review loop; unsigned,
wrongly signed, replayed, malformed and unknown ones change nothing."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bosun.config import NotificationsConfig
from bosun.models import TaskStatus
from bosun.notify import Notifier
from tests.conftest import SettingsFactory
from tests.forgekit import SECRET, Rig, receiver, rig_for
from tests.store_fixtures import migrated_db
from tests.test_forge_events import CASES, FIXTURES

__all__ = ["migrated_db"]

S = TaskStatus


ALL = ["forgejo", "gitea", "github"]


def on(*kinds: str) -> pytest.MarkDecorator:
    """Run the test with a rig of each forge kind named."""
    return pytest.mark.parametrize("rig", list(kinds) or ALL, indirect=True)


@pytest.fixture
async def rig(
    request: pytest.FixtureRequest,
    make_settings: SettingsFactory,
    migrated_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    origin: Path,
) -> AsyncIterator[Rig]:
    async with rig_for(
        request.param, make_settings, migrated_db, tmp_path, monkeypatch, origin, max_reviews=2
    ) as made:
        yield made


def review_event(rig: Rig) -> str:
    return "pull_request_review" if rig.forge.kind == "github" else "pull_request_rejected"


def changes(rig: Rig) -> str:
    return "CHANGES_REQUESTED" if rig.forge.kind == "github" else "REQUEST_CHANGES"


@on()
async def test_merged_completes_the_task(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    rig.forge.merge(task.pr_number)
    resp = await rig.post(rig.forge.pull_payload(task.pr_number, "closed"), event="pull_request")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "processed" and resp.json()["task_status"] == "completed"
    done = await rig.store.get_task(task.id)
    assert done.status is S.COMPLETED
    events = await rig.store.events_since(0, task_id=task.id)
    last = [e for e in events if e.kind == "task.status"][-1]
    assert last.data["reason"] == f"pull request #{task.pr_number} merged by alice"
    assert any(e.kind == "forge.webhook" for e in events)


@on("gitea")
async def test_closed_unmerged_cancels_and_reopened_brings_it_back(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    rig.forge.close(task.pr_number)
    resp = await rig.post(rig.forge.pull_payload(task.pr_number, "closed"), event="pull_request")
    assert resp.json()["task_status"] == "cancelled"
    assert (await rig.store.get_task(task.id)).status is S.CANCELLED
    resp = await rig.post(rig.forge.pull_payload(task.pr_number, "reopened"), event="pull_request")
    assert resp.json()["task_status"] == "review_pending", resp.text
    assert (await rig.store.get_task(task.id)).status is S.REVIEW_PENDING


@on()
async def test_changes_requested_sends_the_review_and_its_inline_comments_to_rework(
    rig: Rig,
) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    review = rig.forge.add_review(
        task.pr_number,
        changes(rig),
        "Please use a constant.",
        [("src/app.py", 12, "Magic number"), ("README.md", None, "Document it")],
        author="carol",
    )
    body = rig.forge.review_payload(task.pr_number, review)
    resp = await rig.post(body, event=review_event(rig))
    assert resp.status_code == 200, resp.text
    assert resp.json()["task_status"] == "rework"
    after = await rig.store.get_task(task.id)
    assert after.status is S.REWORK and after.review_count == 1
    assert after.session_id == "sess-1"  # kept: the rework run resumes it
    feedback = after.review_feedback or ""
    assert "A reviewer by carol requested changes on pull request #" in feedback
    assert "Please use a constant." in feedback
    assert "- `src/app.py` line 12 (carol): Magic number" in feedback
    assert "- `README.md` (carol): Document it" in feedback
    # the inline comments came from the forge's REST API
    assert rig.forge.calls_to("GET", f"/reviews/{review['id']}/comments")


@on("forgejo")
async def test_the_review_limit_leads_to_needs_input_and_a_notification(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    await rig.store.update_task(task.id, review_count=2)  # max_reviews = 2 in this rig
    with receiver() as hook:
        notify = NotificationsConfig(url=hook.url)
        notifier = Notifier(dataclasses.replace(rig.settings, notifications=notify), rig.store)
        await notifier.start()
        review = rig.forge.add_review(task.pr_number, changes(rig), "Still wrong.")
        body = rig.forge.review_payload(task.pr_number, review)
        resp = await rig.post(body, event=review_event(rig))
        assert resp.json()["task_status"] == "needs_input", resp.text
        try:
            assert await notifier.pass_once() == 1
        finally:
            await notifier.aclose()
    [(_, sent, _)] = hook.posts
    assert (sent["event"], sent["task"]["id"]) == ("task.needs_input", task.id)
    assert "max_reviews = 2" in sent["reason"]
    after = await rig.store.get_task(task.id)
    assert after.status is S.NEEDS_INPUT and after.review_count == 2
    assert "Still wrong." in (after.review_feedback or "")
    reason = [
        e for e in await rig.store.events_since(0, task_id=task.id) if e.kind == "task.status"
    ]
    assert "max_reviews = 2" in reason[-1].data["reason"]
    # a human may still send it back explicitly with a command
    resp = await rig.post(
        rig.forge.comment_payload(task.pr_number, "/bosun one more try"), event="issue_comment"
    )
    assert resp.json()["task_status"] == "rework", resp.text
    assert (await rig.store.get_task(task.id)).review_count == 3


@on("github")
@pytest.mark.parametrize(
    ("text", "moves"),
    [
        ("/bosun rename foo to bar", True),
        ("@bosun please add a test", True),
        ("Nice work!", False),
        ("/bosun pushed the rework\n<!-- bosun -->", False),  # bosun's own comment
    ],
)
async def test_comments_addressed_to_bosun_rework(rig: Rig, text: str, moves: bool) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    resp = await rig.post(rig.forge.comment_payload(task.pr_number, text), event="issue_comment")
    assert resp.status_code == 200, resp.text
    after = await rig.store.get_task(task.id)
    if moves:
        assert after.status is S.REWORK and after.review_count == 1
        assert "asked bosun" in (after.review_feedback or "")
        assert text.removeprefix("/bosun ") in (after.review_feedback or "")
    else:
        assert after.status is S.REVIEW_PENDING and after.review_feedback is None
        assert resp.json()["status"] == "ignored"


@on("forgejo", "github")
async def test_pushes_record_activity_and_a_moved_head(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.branch and task.pr_number
    old = task.pr_head_sha or ""
    new = "b" * 40
    resp = await rig.post(rig.forge.push_payload(task.branch, old, new), event="push")
    assert resp.json()["outcome"] == "head moved", resp.text
    after = await rig.store.get_task(task.id)
    assert after.pr_head_sha == new and after.last_activity_at is not None
    moved = [
        e for e in await rig.store.events_since(0, task_id=task.id) if e.kind == "review.head_moved"
    ]
    assert moved[-1].data == {"from": old, "to": new, "by": "alice", "pr_number": task.pr_number}
    # a synchronize / synchronized pull request event says the same
    rig.forge.move_head(task.pr_number, "c" * 40)
    action = "synchronize" if rig.forge.kind == "github" else "synchronized"
    await rig.post(rig.forge.pull_payload(task.pr_number, action), event="pull_request")
    assert (await rig.store.get_task(task.id)).pr_head_sha == "c" * 40
    # pushes to other branches are none of bosun's business
    resp = await rig.post(rig.forge.push_payload("main", old, new), event="push")
    assert resp.json()["status"] == "ignored"


async def test_a_labelled_issue_becomes_a_task(
    make_settings: SettingsFactory,
    migrated_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    origin: Path,
) -> None:
    async with rig_for(
        "github",
        make_settings,
        migrated_db,
        tmp_path,
        monkeypatch,
        origin,
        issue_label="bosun",
        issue_agent="demo",
    ) as rig:
        issue = {
            "number": 42,
            "title": "Greet people",
            "html_url": "https://github.example/team/app/issues/42",
            "body": "## Goal\nAdd hello.txt.\n\n## Constraints\n- keep it short\n\n"
            "## Validation\n- hello.txt exists\n",
            "labels": [{"name": "bosun"}],
        }
        repository = {"full_name": "team/app"}
        body = json.dumps(
            {
                "action": "labeled",
                "label": {"name": "bosun"},
                "issue": issue,
                "repository": repository,
            }
        ).encode()
        resp = await rig.post(body, event="issues")
        assert resp.json()["outcome"] == "task created", resp.text
        task = await rig.store.get_task(resp.json()["task_id"])
        assert (task.title, task.repo, task.agent) == ("Greet people", "app", "demo")
        assert task.constraints == ("keep it short",)
        assert task.validation == ("hello.txt exists",)
        assert set(task.labels) == {"bosun", "issue:42"}
        assert "https://github.example/team/app/issues/42" in task.body
        # labelled again (another delivery): no second task
        resp = await rig.post(body, event="issues")
        assert resp.json()["outcome"] == f"already task #{task.id}"
        other = json.dumps(
            {
                "action": "labeled",
                "label": {"name": "bug"},
                "issue": {**issue, "number": 43},
                "repository": repository,
            }
        ).encode()
        resp = await rig.post(other, event="issues")
        assert resp.json()["status"] == "ignored"
        assert len(await rig.store.list_tasks()) == 1


# -- what must change nothing ----------------------------------------------------------------
@on()
async def test_bad_missing_or_foreign_signatures_are_401_and_change_nothing(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    rig.forge.merge(task.pr_number)
    body = rig.forge.pull_payload(task.pr_number, "closed")
    before = await rig.snapshot()
    for kwargs in (
        {"secret": "not-the-secret"},
        {
            "headers": {
                "X-Hub-Signature-256": "",
                "X-Gitea-Signature": "",
                "X-Forgejo-Signature": "",
            }
        },
        {
            "headers": {
                "X-Hub-Signature-256": "sha256=" + "0" * 64,
                "X-Gitea-Signature": "0" * 64,
                "X-Forgejo-Signature": "0" * 64,
            }
        },
    ):
        resp = await rig.post(body, event="pull_request", **kwargs)
        assert resp.status_code == 401, resp.text
        err = resp.json()["error"]
        assert err["code"] == "unauthorized" and "signature" in err["message"]
        assert SECRET not in resp.text
    # signed right, but over another body than the one sent
    good = rig.forge.signed_headers(body, SECRET, event="pull_request")
    resp = await rig.client.post(
        f"/api/v1/webhooks/{rig.forge.kind}", content=body + b" ", headers=good
    )
    assert resp.status_code == 401
    assert await rig.snapshot() == before
    assert (await rig.store.get_task(task.id)).status is S.REVIEW_PENDING


@on()
async def test_a_replayed_delivery_changes_nothing_the_second_time(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    body = rig.forge.comment_payload(task.pr_number, "/bosun rename it")
    first = await rig.post(body, event="issue_comment", delivery="d-1")
    assert first.json()["status"] == "processed"
    await rig.store.transition(task.id, S.RUNNING, reason="test")
    await rig.store.transition(task.id, S.REVIEW_PENDING, reason="test")
    before = await rig.snapshot()
    again = await rig.post(body, event="issue_comment", delivery="d-1")
    assert again.status_code == 200 and again.json()["status"] == "duplicate", again.text
    assert await rig.snapshot() == before
    assert (await rig.store.get_task(task.id)).review_count == 1
    # another delivery id of the same text is a new delivery
    third = await rig.post(body, event="issue_comment", delivery="d-2")
    assert third.json()["task_status"] == "rework"


@on("gitea")
async def test_malformed_bodies_are_400_and_change_nothing(rig: Rig) -> None:
    await rig.task_with_pull()
    before = await rig.snapshot()
    for body, message in (
        (b"{not json", "not valid JSON"),
        (b"[]", "not an object"),
        (b'{"action": "opened", "pull_request": 7}', "pull_request should be an object"),
        (b"", "empty"),
    ):
        resp = await rig.post(body, event="pull_request")
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "bad_request" and message in err["message"] and err["hint"]
    assert await rig.snapshot() == before


@on("github")
async def test_unknown_events_and_repos_are_acknowledged_and_ignored(rig: Rig) -> None:
    task = await rig.task_with_pull()
    before = await rig.snapshot()
    resp = await rig.post(
        b'{"action": "created", "repository": {"full_name": "team/app"}}', event="star"
    )
    assert resp.status_code == 200 and resp.json()["status"] == "ignored", resp.text
    foreign = json.loads(rig.forge.pull_payload(task.pr_number or 0, "closed"))
    foreign["repository"]["full_name"] = "someone/else"
    resp = await rig.post(json.dumps(foreign).encode(), event="pull_request")
    assert resp.json() == {
        "status": "ignored",
        "delivery": None,
        "event": "pr_closed",
        "outcome": "repository someone/else is not configured",
        "task_id": None,
        "task_status": None,
    }
    tasks, _, _ = await rig.snapshot()
    assert tasks == before[0]


@on("forgejo")
async def test_routes_and_repo_names(rig: Rig) -> None:
    task = await rig.task_with_pull()
    assert task.pr_number is not None
    resp = await rig.client.post("/api/v1/webhooks/gitlab", content=b"{}")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    # the repo's name works as well as the forge kind
    rig.forge.merge(task.pr_number)
    resp = await rig.post(
        rig.forge.pull_payload(task.pr_number, "closed"),
        event="pull_request",
        path="/api/v1/webhooks/app",
    )
    assert resp.json()["task_status"] == "completed", resp.text
    # no bearer token needed, and one does not replace the signature
    resp = await rig.client.post(
        f"/api/v1/webhooks/{rig.forge.kind}",
        content=b"{}",
        headers={"Authorization": "Bearer bsn_" + "A" * 43},
    )
    assert resp.status_code == 401


@on()
async def test_every_real_payload_is_accepted_when_signed(rig: Rig) -> None:
    """The real payloads (every file of the forge's kind) are for repositories bosun does
    not know: 2xx, and no task changes."""
    before = await rig.snapshot()
    names = [n for n in sorted(CASES) if n.startswith(rig.forge.kind + "_")]
    assert names
    for name in names:
        header, event_type, _kind, _ = CASES[name]
        body = (FIXTURES / f"{name}.json").read_bytes()
        resp = await rig.post(body, event=header, event_type=event_type)
        assert resp.status_code == 200, (name, resp.text)
        assert resp.json()["status"] == "ignored", name
    assert (await rig.snapshot())[0] == before[0]
