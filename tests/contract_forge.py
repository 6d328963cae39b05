"""ForgeStoreContract: the review loop's rows (``ForgeStore``): a delivery id or a
notification is taken by exactly one of many concurrent callers, on one store or two.
Run on SQLite by tests/test_review_store.py, on PostgreSQL by tests/test_store_postgres.py."""

from __future__ import annotations

import asyncio

import pytest

from bosun.errors import InputError
from bosun.models import TaskSpec
from bosun.store.sql import SqlStore


class ForgeStoreContract:
    """Fixtures ``store`` and ``peer_store`` (a second store on the same database)."""

    async def test_a_delivery_is_recorded_once(self, store: SqlStore, peer_store: SqlStore) -> None:
        results = await asyncio.gather(
            *(
                s.record_delivery("gitea:abc", forge="gitea", event="push", repo="app")
                for s in [store, peer_store] * 5
            )
        )
        assert sorted(results) == [False] * 9 + [True]
        assert await store.count_deliveries() == 1
        await store.finish_delivery("gitea:abc", outcome="head moved", task_id=None)
        row = await peer_store.delivery("gitea:abc")
        assert row is not None and (row["outcome"], row["event"]) == ("head moved", "push")
        await store.forget_delivery("gitea:abc")
        assert await store.delivery("gitea:abc") is None
        assert await store.record_delivery("gitea:abc", forge="gitea", event="push")
        with pytest.raises(InputError):
            await store.record_delivery("x" * 201, forge="gitea", event="push")

    async def test_tasks_by_pull_request(self, store: SqlStore) -> None:
        first = await store.add_task(TaskSpec(title="a", repo="app"), max_attempts=3)
        second = await store.add_task(TaskSpec(title="b", repo="app"), max_attempts=3)
        await store.update_task(first.id, pr_number=7, pr_url="u7", pr_head_sha="a" * 40)
        await store.update_task(second.id, pr_number=8)
        found = await store.task_for_pull("app", 7)
        assert found is not None and found.id == first.id
        assert (found.pr_url, found.pr_head_sha) == ("u7", "a" * 40)
        assert found.to_json()["pr_number"] == 7
        assert await store.task_for_pull("other", 7) is None
        assert await store.task_for_pull("app", 9) is None
        assert await store.task_for_pull("app", 2**40) is None

    async def test_a_notification_is_claimed_once(
        self, store: SqlStore, peer_store: SqlStore
    ) -> None:
        assert await store.notification_cursor() == 0
        claims = await asyncio.gather(
            *(
                s.claim_notification("task-status-5", event_id=5, task_id=None)
                for s in [store, peer_store] * 4
            )
        )
        assert claims.count(True) == 1
        await store.finish_notification("task-status-5", sent=False, error="HTTP 500")
        await peer_store.finish_notification("task-status-5", sent=True)
        row = await store.get_notification("task-status-5")
        assert row is not None and (row.status, row.attempts, row.error) == ("sent", 2, None)
        assert await peer_store.notification_cursor() == 5
