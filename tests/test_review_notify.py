"""Outgoing notifications: a signed JSON POST for needs_input, failed and completed, each
status change sent once even with two notifiers on one database, retried when the
receiver fails, and nothing for the history before the first start."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bosun.config import Settings
from bosun.forges.signatures import sign
from bosun.models import Task, TaskSpec, TaskStatus
from bosun.notify import Notifier
from bosun.store import open_store
from bosun.store.sql import SqlStore
from tests.conftest import SettingsFactory
from tests.forgekit import Receiver, receiver
from tests.store_fixtures import migrated_db

__all__ = ["migrated_db"]

S = TaskStatus
NOTIFY_SECRET = "notify-secret"


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as got:
        yield got


@pytest.fixture
def settings(
    make_settings: SettingsFactory, hook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("BOSUN_TEST_NOTIFY_SECRET", NOTIFY_SECRET)
    return make_settings(
        notifications={"url": hook.url, "secret_env": "BOSUN_TEST_NOTIFY_SECRET"},
        server={"public_url": "https://bosun.example/"},
    )


@pytest.fixture
async def store(settings: Settings, migrated_db: Path) -> AsyncIterator[SqlStore]:
    db = Path(settings.database_url.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, db)
    opened = await open_store(settings.database_url, poll_interval=0.05)
    yield opened
    await opened.aclose()


async def drive(store: SqlStore, *steps: TaskStatus) -> Task:
    task = await store.add_task(TaskSpec(title="t"), max_attempts=3)
    for step in steps:
        task = await store.transition(task.id, step, reason=f"to {step.value}")
    return task


async def test_each_status_change_is_sent_once_signed(
    settings: Settings, store: SqlStore, hook: Receiver
) -> None:
    old = await drive(store, S.RUNNING, S.FAILED)  # before the notifier ever ran: history
    first = Notifier(settings, store)
    second = Notifier(settings, store)  # another bosun process on the same database
    await first.start()
    await second.start()
    failed = await drive(store, S.RUNNING, S.FAILED)
    needs = await drive(store, S.RUNNING, S.REVIEW_PENDING, S.NEEDS_INPUT)
    done = await drive(store, S.RUNNING, S.COMPLETED)
    await drive(store, S.RUNNING, S.CANCELLED)  # not in `on`
    try:
        sent = await asyncio.gather(first.pass_once(), second.pass_once())
        assert sum(sent) == 3
        assert await first.pass_once() == 0 and await second.pass_once() == 0
    finally:
        await first.aclose()
        await second.aclose()
    assert len(hook.posts) == 3
    by_task = {body["task"]["id"]: (headers, body, raw) for headers, body, raw in hook.posts}
    assert old.id not in by_task
    for task, status in ((failed, "failed"), (needs, "needs_input"), (done, "completed")):
        headers, body, raw = by_task[task.id]
        assert body["event"] == f"task.{status}" and body["status"] == status
        assert body["reason"] == f"to {status}"
        assert body["task"]["status"] == status
        assert body["url"] == f"https://bosun.example/api/v1/tasks/{task.id}"
        assert headers["x-bosun-event"] == f"task.{status}"
        assert headers["x-bosun-delivery"] == body["id"]
        assert headers["x-bosun-signature-256"] == "sha256=" + sign(raw, NOTIFY_SECRET)
        row = await store.get_notification(body["id"])
        assert row is not None and (row.status, row.attempts) == ("sent", 1)


async def test_a_failing_receiver_is_retried_and_restarts_resume_where_they_were(
    settings: Settings, store: SqlStore, hook: Receiver
) -> None:
    notifier = Notifier(settings, store, retry_delay=0.01)
    await notifier.start()
    hook.statuses += [500, 503]
    task = await drive(store, S.RUNNING, S.FAILED)
    try:
        assert await notifier.pass_once() == 1
    finally:
        await notifier.aclose()
    assert len(hook.posts) == 3  # two failures, then taken
    key = hook.posts[-1][1]["id"]
    row = await store.get_notification(key)
    assert row is not None and (row.status, row.attempts, row.error) == ("sent", 3, None)
    # bosun was down while another task completed: a new notifier starts after the last
    # notification, so that one is not lost, and the first is not sent again
    later = await drive(store, S.RUNNING, S.COMPLETED)
    again = Notifier(settings, store)
    try:
        assert await again.pass_once() == 1
    finally:
        await again.aclose()
    assert [p[1]["task"]["id"] for p in hook.posts[-1:]] == [later.id]
    assert task.id != later.id


async def test_a_receiver_that_keeps_failing_gives_up(
    make_settings: SettingsFactory, store: SqlStore, hook: Receiver
) -> None:
    settings = make_settings(notifications={"url": hook.url, "retries": 1})
    hook.statuses += [500, 500, 500]
    notifier = Notifier(settings, store, retry_delay=0.01)
    await notifier.start()
    await drive(store, S.RUNNING, S.FAILED)
    try:
        assert await notifier.pass_once() == 0
    finally:
        await notifier.aclose()
    key = hook.posts[-1][1]["id"]
    row = await store.get_notification(key)
    assert row is not None and row.status == "failed" and row.attempts == 2
    assert row.error == "the notification URL answered HTTP 500"
    assert "x-bosun-signature-256" not in hook.posts[0][0]  # no secret configured


async def test_the_notifier_runs_until_stopped(
    settings: Settings, store: SqlStore, hook: Receiver
) -> None:
    stop = asyncio.Event()
    notifier = Notifier(settings, store)
    await notifier.start()
    running = asyncio.create_task(notifier.run(stop, idle=0.05))
    await drive(store, S.RUNNING, S.COMPLETED)
    for _ in range(200):
        if hook.posts:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(running, 10)
    assert len(hook.posts) == 1
