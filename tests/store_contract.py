"""The Store contract: every rule of ``bosun.store.base.Store``, as tests any backend runs.

A backend's test module subclasses ``StoreContract`` (named ``Test...``) and provides two
fixtures:

- ``store``: a fresh, empty, open store;
- ``peer_store``: a second store instance on the *same* database, opened as another
  process would open it (its own engine and connections).

Nothing here knows which backend it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bosun import lifecycle
from bosun.errors import BosunError, InputError, InvalidTransition, LeaseLost, NotFound
from bosun.models import (
    ErrorKind,
    Event,
    ExecutionMode,
    NewEvent,
    RunStatus,
    Task,
    TaskSpec,
    TaskStatus,
)
from bosun.store.base import (
    RUN_FIELDS,
    TASK_FIELDS,
    ClaimRequest,
    RunningTask,
    RunUpdate,
    Store,
    SubmitClaimer,
    TaskFilter,
)

S = TaskStatus
LEASE = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


async def add(store: Store, title: str = "task", **spec: Any) -> Task:
    """Submit a task with a default of 3 attempts."""
    return await store.add_task(TaskSpec(title=title, **spec), max_attempts=3)


async def wakes_on_peer_submit(wait: Coroutine[Any, Any, None], peer: Store) -> None:
    """Submit through ``peer`` until ``wait`` returns (it fails the test if it never does).

    Keep writing until the waiter notices: it may still be taking its baseline when the
    first write lands, which then does not count as a change."""
    waiter = asyncio.ensure_future(wait)
    try:
        for i in range(100):
            await add(peer, f"from the peer {i}")
            done, _ = await asyncio.wait({waiter}, timeout=0.1)
            if done:
                break
        assert waiter.done()
        waiter.result()
    finally:
        waiter.cancel()


def path_to(target: TaskStatus) -> list[TaskStatus]:
    """The shortest chain of allowed transitions from ``queued`` to ``target``."""
    paths: dict[TaskStatus, list[TaskStatus]] = {S.QUEUED: []}
    todo = deque([S.QUEUED])
    while todo:
        here = todo.popleft()
        for nxt in sorted(lifecycle.TRANSITIONS[here]):
            if nxt not in paths:
                paths[nxt] = [*paths[here], nxt]
                todo.append(nxt)
    return paths[target]


async def task_in(store: Store, status: TaskStatus, **spec: Any) -> Task:
    """A new task driven to ``status`` through allowed transitions."""
    task = await add(store, f"in {status.value}", **spec)
    for step in path_to(status):
        task = await store.transition(task.id, step, reason="setup")
    assert task.status is status
    return task


async def last_event_id(store: Store) -> int:
    cursor = 0
    while batch := await store.events_since(cursor, limit=1000):
        cursor = batch[-1].id
    return cursor


async def all_events(store: Store, task_id: int | None = None) -> list[Event]:
    return await store.events_since(0, task_id=task_id, limit=100_000)


class StoreContract:
    """Tests every Store backend passes unchanged."""

    # -- add / get / list ---------------------------------------------------------------
    async def test_add_task_stores_every_spec_field(self, store: Store) -> None:
        spec = TaskSpec(
            title="Fix login",
            body="The login form 500s.",
            repo="app",
            agent="claude",
            base_branch="develop",
            constraints=("no new deps",),
            validation=("pytest -q", "ruff check"),
            labels=("bug", "auth"),
            priority=5,
            scope=("src/auth", "tests/auth"),
            execution_mode=ExecutionMode.HTTP_PULL,
            host="gpu-1",
        )
        before = utcnow()
        task = await store.add_task(spec, max_attempts=4)
        assert task == await store.get_task(task.id)
        assert (task.title, task.body, task.repo, task.agent) == (
            "Fix login",
            "The login form 500s.",
            "app",
            "claude",
        )
        assert task.base_branch == "develop"
        assert task.constraints == ("no new deps",)
        assert task.validation == ("pytest -q", "ruff check")
        assert task.labels == ("bug", "auth")
        assert task.scope == ("src/auth", "tests/auth")
        assert (task.priority, task.execution_mode, task.host) == (
            5,
            ExecutionMode.HTTP_PULL,
            "gpu-1",
        )
        assert task.status is S.QUEUED
        assert (task.attempt, task.max_attempts, task.review_count) == (0, 4, 0)
        assert (task.tokens_in, task.tokens_out, task.cost_usd, task.commits) == (0, 0, 0.0, ())
        assert (task.branch, task.assigned_host, task.lease_owner, task.not_before) == (None,) * 4
        assert task.created_at.tzinfo is not None
        assert task.created_at.utcoffset() == timedelta(0)
        assert before <= task.created_at <= utcnow()
        assert task.updated_at == task.created_at

    async def test_add_task_appends_submitted_event(self, store: Store) -> None:
        task = await add(store, "hello")
        (event,) = await all_events(store, task.id)
        assert (event.kind, event.task_id, event.run_id) == ("task.submitted", task.id, None)
        assert event.data == {"title": "hello", "status": "queued"}
        assert event.created_at.tzinfo is not None

    async def test_spec_max_attempts_wins_over_default(self, store: Store) -> None:
        task = await store.add_task(TaskSpec(title="t", max_attempts=7), max_attempts=2)
        assert task.max_attempts == 7
        assert (await add(store)).max_attempts == 3

    async def test_base_branch_none_is_kept(self, store: Store) -> None:
        assert (await add(store, base_branch=None)).base_branch is None

    async def test_ids_increase(self, store: Store) -> None:
        ids = [(await add(store, f"t{i}")).id for i in range(3)]
        assert ids == sorted(ids)
        assert len(set(ids)) == 3

    async def test_missing_things_raise_not_found(self, store: Store) -> None:
        now = utcnow()
        with pytest.raises(NotFound, match="task 999"):
            await store.get_task(999)
        with pytest.raises(NotFound):
            await store.transition(999, S.CANCELLED)
        with pytest.raises(NotFound):
            await store.update_task(999, branch="b")
        with pytest.raises(NotFound):
            await store.claim(999, owner="o", host="h", lease_seconds=LEASE, now=now)
        with pytest.raises(NotFound):
            await store.heartbeat(999, owner="o", lease_seconds=LEASE)
        with pytest.raises(NotFound):
            await store.take_over(999, owner="o", lease_seconds=LEASE, now=now)
        with pytest.raises(NotFound):
            await store.add_run(999, attempt=1, host="h", agent="a", ref={})
        with pytest.raises(NotFound):
            await store.list_runs(999)
        with pytest.raises(NotFound, match="run 999"):
            await store.get_run(999)
        with pytest.raises(NotFound):
            await store.update_run(999, exit_code=0)
        with pytest.raises(NotFound):
            await store.append_output(999, [], stdout_offset=1, stderr_offset=0)
        with pytest.raises(NotFound):
            await store.append_event(NewEvent("note", task_id=999))
        with pytest.raises(NotFound):
            await store.append_event(NewEvent("note", run_id=999))
        assert await all_events(store) == []

    async def test_list_is_by_id_with_cursor_pagination(self, store: Store) -> None:
        ids = [(await add(store, f"t{i}")).id for i in range(5)]
        assert [t.id for t in await store.list_tasks()] == ids
        page1 = await store.list_tasks(TaskFilter(limit=2))
        page2 = await store.list_tasks(TaskFilter(limit=2, after_id=page1[-1].id))
        page3 = await store.list_tasks(TaskFilter(limit=2, after_id=page2[-1].id))
        assert [t.id for t in page1 + page2 + page3] == ids
        assert await store.list_tasks(TaskFilter(after_id=ids[-1])) == []
        with pytest.raises(InputError):
            await store.list_tasks(TaskFilter(limit=0))

    async def test_list_filters(self, store: Store) -> None:
        a = await add(store, "a", repo="app", agent="claude", labels=("bug", "ui"))
        b = await add(store, "b", repo="app", agent="codex", labels=("bugfix",))
        c = await add(store, "c", repo="lib", agent="claude", labels=("bug",))
        await store.transition(c.id, S.CANCELLED)

        async def ids(**kw: Any) -> list[int]:
            return [t.id for t in await store.list_tasks(TaskFilter(**kw))]

        assert await ids(repo="app") == [a.id, b.id]
        assert await ids(agent="claude") == [a.id, c.id]
        assert await ids(label="bug") == [a.id, c.id]  # exact: "bugfix" is another label
        assert await ids(label="bu") == []
        assert await ids(statuses=frozenset({S.CANCELLED})) == [c.id]
        assert await ids(statuses=frozenset({S.QUEUED, S.CANCELLED})) == [a.id, b.id, c.id]
        assert await ids(statuses=frozenset()) == []
        assert await ids(repo="app", label="bug", agent="claude") == [a.id]
        assert await ids(label="bug", after_id=a.id) == [c.id]

    # -- transitions --------------------------------------------------------------------
    async def test_every_allowed_transition_is_stored_with_an_event(self, store: Store) -> None:
        for source, targets in lifecycle.TRANSITIONS.items():
            for target in sorted(targets):
                task = await task_in(store, source)
                cursor = await last_event_id(store)
                moved = await store.transition(task.id, target, reason=f"to {target.value}")
                assert moved.status is target
                assert moved == await store.get_task(task.id)
                assert moved.updated_at >= task.updated_at
                events = await store.events_since(cursor)
                assert [(e.kind, e.task_id) for e in events] == [("task.status", task.id)]
                assert events[0].data == {
                    "from": source.value,
                    "to": target.value,
                    "reason": f"to {target.value}",
                }

    async def test_reason_may_be_none(self, store: Store) -> None:
        task = await add(store)
        await store.transition(task.id, S.CANCELLED)
        assert (await all_events(store, task.id))[-1].data == {
            "from": "queued",
            "to": "cancelled",
            "reason": None,
        }

    async def test_invalid_transitions_raise_and_change_nothing(self, store: Store) -> None:
        for source in S:
            task = await task_in(store, source)
            cursor = await last_event_id(store)
            refused = [t for t in S if not lifecycle.allowed(source, t)]
            for target in refused:
                with pytest.raises(InvalidTransition, match=f"task {task.id}"):
                    await store.transition(task.id, target, branch="changed", error="x")
            # Changes would accumulate, so checking once after all attempts is enough.
            assert await store.get_task(task.id) == task
            assert await store.events_since(cursor) == []

    async def test_transition_sets_fields(self, store: Store) -> None:
        task = await task_in(store, S.RUNNING)
        done = await store.transition(
            task.id,
            S.FAILED,
            reason="agent failed",
            error="exit 1",
            error_kind=ErrorKind.AGENT,
            tokens_in=10,
            commits=("abc123",),
        )
        assert (done.error, done.error_kind, done.tokens_in, done.commits) == (
            "exit 1",
            ErrorKind.AGENT,
            10,
            ("abc123",),
        )
        assert done == await store.get_task(task.id)

    async def test_unknown_or_bad_fields_are_refused(self, store: Store) -> None:
        task = await add(store)
        cursor = await last_event_id(store)
        with pytest.raises(InputError, match="title"):
            await store.transition(task.id, S.CANCELLED, title="renamed")
        with pytest.raises(InputError, match="status"):
            await store.update_task(task.id, status="running")
        with pytest.raises(InputError, match="attempt"):
            await store.update_task(task.id, attempt="two")
        with pytest.raises(InputError, match="error_kind"):
            await store.update_task(task.id, error_kind="nonsense")
        with pytest.raises(InputError, match="not_before"):
            await store.update_task(task.id, not_before=datetime(2030, 1, 1))
        with pytest.raises(InputError):
            await store.transition(task.id, "no-such-status")  # type: ignore[arg-type]
        assert await store.get_task(task.id) == task
        assert await store.events_since(cursor) == []

    async def test_update_task_sets_every_settable_field(self, store: Store) -> None:
        task = await add(store)
        when = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        values: dict[str, Any] = {
            "assigned_host": "h1",
            "branch": "task/1-x",
            "attempt": 2,
            "max_attempts": 5,
            "review_count": 1,
            "session_id": "sess",
            "result_summary": "did it",
            "error": "boom",
            "error_kind": ErrorKind.USAGE_LIMIT,
            "tokens_in": 2**40,
            "tokens_out": 7,
            "cost_usd": 1.25,
            "commits": ("a1", "b2"),
            "not_before": when,
            "lease_owner": "me",
            "lease_expires_at": when + timedelta(seconds=1),
            "last_activity_at": when - timedelta(days=1),
            "pr_number": 12,
            "pr_url": "https://forge.example/team/app/pulls/12",
            "pr_head_sha": "c" * 40,
            "review_feedback": "Rename foo.",
        }
        assert set(values) == TASK_FIELDS
        updated = await store.update_task(task.id, **values)
        assert updated == await store.get_task(task.id)
        for name, value in values.items():
            assert getattr(updated, name) == value, name
        assert updated.status is task.status
        assert updated.updated_at >= task.updated_at
        # a time in another zone is stored as the same instant, returned in UTC
        other = datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
        stored = await store.update_task(task.id, not_before=other)
        assert stored.not_before == other
        assert stored.not_before is not None
        assert stored.not_before.utcoffset() == timedelta(0)
        cleared = await store.update_task(task.id, not_before=None, error=None, error_kind=None)
        assert (cleared.not_before, cleared.error, cleared.error_kind) == (None, None, None)

    async def test_owner_must_hold_the_lease(self, store: Store) -> None:
        task = await add(store)
        now = utcnow()
        await store.claim(task.id, owner="a", host="h", lease_seconds=LEASE, now=now)
        held = await store.get_task(task.id)
        cursor = await last_event_id(store)
        with pytest.raises(LeaseLost):
            await store.transition(task.id, S.COMPLETED, owner="b")
        with pytest.raises(LeaseLost):
            await store.update_task(task.id, owner="b", branch="x")
        assert await store.get_task(task.id) == held
        assert await store.events_since(cursor) == []
        assert (await store.update_task(task.id, owner="a", branch="x")).branch == "x"
        done = await store.transition(task.id, S.COMPLETED, owner="a")
        assert done.status is S.COMPLETED

    async def test_leaving_running_clears_the_lease(self, store: Store) -> None:
        task = await add(store)
        claimed = await store.claim(task.id, owner="a", host="h", lease_seconds=LEASE, now=utcnow())
        assert claimed is not None
        assert claimed.lease_owner == "a"
        queued = await store.transition(task.id, S.QUEUED, reason="retry", lease_owner="kept?")
        assert (queued.lease_owner, queued.lease_expires_at) == (None, None)
        assert queued.attempt == 1
        assert queued.assigned_host == "h"

    # -- runnable / claim ---------------------------------------------------------------
    async def test_runnable_orders_by_priority_then_id(self, store: Store) -> None:
        low = await add(store, "low", priority=-1)
        mid1 = await add(store, "mid1")
        high = await add(store, "high", priority=10)
        mid2 = await add(store, "mid2")
        rework = await task_in(store, S.REWORK, priority=3)
        now = utcnow()
        got = [t.id for t in await store.runnable(now, 10)]
        assert got == [high.id, rework.id, mid1.id, mid2.id, low.id]
        assert [t.id for t in await store.runnable(now, 2)] == [high.id, rework.id]
        with pytest.raises(InputError):
            await store.runnable(now, 0)

    async def test_runnable_skips_what_cannot_run_now(self, store: Store) -> None:
        now = utcnow()
        ready = await add(store, "ready")
        await add(store, "pull", execution_mode=ExecutionMode.HTTP_PULL)
        later = await add(store, "later")
        await store.update_task(later.id, not_before=now + timedelta(minutes=5))
        due = await add(store, "due")
        await store.update_task(due.id, not_before=now - timedelta(seconds=1))
        for status in (S.BLOCKED, S.PAUSED, S.RUNNING, S.NEEDS_INPUT, S.FAILED, S.COMPLETED):
            await task_in(store, status)
        assert [t.id for t in await store.runnable(now, 100)] == [ready.id, due.id]
        soon = now + timedelta(minutes=6)
        assert [t.id for t in await store.runnable(soon, 100)] == [ready.id, later.id, due.id]

    async def test_claim_takes_a_lease_and_counts_the_attempt(self, store: Store) -> None:
        task = await add(store)
        await store.update_task(task.id, error="old", error_kind=ErrorKind.AGENT, attempt=1)
        now = utcnow()
        cursor = await last_event_id(store)
        claimed = await store.claim(task.id, owner="disp-1", host="h1", lease_seconds=30, now=now)
        assert claimed is not None
        assert claimed == await store.get_task(task.id)
        assert claimed.status is S.RUNNING
        assert (claimed.attempt, claimed.assigned_host, claimed.lease_owner) == (2, "h1", "disp-1")
        assert claimed.lease_expires_at == now + timedelta(seconds=30)
        assert (claimed.error, claimed.error_kind, claimed.not_before) == (None, None, None)
        (event,) = await store.events_since(cursor)
        assert (event.kind, event.task_id) == ("task.status", task.id)
        assert event.data == {
            "from": "queued",
            "to": "running",
            "reason": "claimed",
            "host": "h1",
            "attempt": 2,
        }

    async def test_claim_refuses_what_is_not_runnable(self, store: Store) -> None:
        now = utcnow()
        for status in S:
            if status in lifecycle.RUNNABLE:
                continue
            task = await task_in(store, status)
            cursor = await last_event_id(store)
            assert await store.claim(task.id, owner="o", host="h", lease_seconds=1, now=now) is None
            assert await store.get_task(task.id) == task
            assert await store.events_since(cursor) == []
        pull = await add(store, execution_mode=ExecutionMode.HTTP_PULL)
        assert await store.claim(pull.id, owner="o", host="h", lease_seconds=1, now=now) is None
        rework = await task_in(store, S.REWORK)
        claimed = await store.claim(rework.id, owner="o", host="h", lease_seconds=1, now=now)
        assert claimed is not None
        assert claimed.status is S.RUNNING

    async def test_claim_waits_for_not_before(self, store: Store) -> None:
        now = utcnow()
        task = await add(store)
        await store.update_task(task.id, not_before=now + timedelta(seconds=30))
        assert await store.claim(task.id, owner="o", host="h", lease_seconds=1, now=now) is None
        later = now + timedelta(seconds=30)
        claimed = await store.claim(task.id, owner="o", host="h", lease_seconds=1, now=later)
        assert claimed is not None
        assert claimed.not_before is None

    async def test_claim_is_refused_twice(self, store: Store) -> None:
        task = await add(store)
        now = utcnow()
        assert await store.claim(task.id, owner="a", host="h", lease_seconds=1, now=now)
        assert await store.claim(task.id, owner="b", host="h", lease_seconds=1, now=now) is None
        assert (await store.get_task(task.id)).lease_owner == "a"

    async def test_concurrent_claimers_get_a_task_once(
        self, store: Store, peer_store: Store
    ) -> None:
        task = await add(store)
        now = utcnow()
        results = await asyncio.gather(
            *(
                (store if i % 2 else peer_store).claim(
                    task.id, owner=f"o{i}", host="h", lease_seconds=LEASE, now=now
                )
                for i in range(20)
            )
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        final = await peer_store.get_task(task.id)
        assert final.lease_owner == winners[0].lease_owner
        assert final.attempt == 1

    async def test_twenty_workers_on_two_instances_claim_each_task_once(
        self, store: Store, peer_store: Store
    ) -> None:
        ids = {(await add(store, f"t{i}", priority=i % 3)).id for i in range(10)}
        claimed: list[int] = []

        async def worker(i: int, mine: Store) -> None:
            while batch := await mine.runnable(utcnow(), 50):
                # Start at different places so that workers mostly race for distinct tasks
                # and sometimes for the same one.
                start = i % len(batch)
                for candidate in batch[start:] + batch[:start]:
                    got = await mine.claim(
                        candidate.id, owner=f"w{i}", host="h", lease_seconds=LEASE, now=utcnow()
                    )
                    if got is not None:
                        claimed.append(got.id)
                        break

        await asyncio.gather(*(worker(i, store if i % 2 else peer_store) for i in range(20)))
        assert Counter(claimed) == Counter(ids)
        claim_events = [e for e in await all_events(store) if e.data.get("reason") == "claimed"]
        assert sorted(e.task_id or 0 for e in claim_events) == sorted(ids)
        assert {t.id for t in await store.running()} == ids

    async def test_scope_collision_blocks_claim_until_release(self, store: Store) -> None:
        now = utcnow()

        async def claim(task: Task) -> Task | None:
            return await store.claim(task.id, owner="o", host="h", lease_seconds=LEASE, now=now)

        api = await add(store, "api", repo="app", scope=("src/api",))
        parent = await add(store, "parent", repo="app", scope=("src/",))
        docs = await add(store, "docs", repo="app", scope=("docs",))
        other_repo = await add(store, "lib", repo="lib", scope=("src/api",))
        unscoped = await add(store, "anything", repo="app")
        assert await claim(api) is not None
        assert await claim(parent) is None
        assert (await store.get_task(parent.id)).status is S.QUEUED
        for free in (docs, other_repo, unscoped):
            assert await claim(free) is not None, free.title
        await store.transition(api.id, S.REVIEW_PENDING, reason="pr opened")
        assert await claim(parent) is not None

    # -- dependencies -------------------------------------------------------------------
    async def test_dependencies_block_then_queue_on_completion(self, store: Store) -> None:
        a = await add(store, "a")
        b = await add(store, "b")
        c = await add(store, "c", depends_on=(a.id, b.id))
        assert c.status is S.BLOCKED
        assert c.depends_on == (a.id, b.id)
        assert (await all_events(store, c.id))[0].data == {"title": "c", "status": "blocked"}
        assert c.id not in [t.id for t in await store.runnable(utcnow(), 10)]
        for dep in (a, b):
            await store.transition(dep.id, S.RUNNING)
        await store.transition(a.id, S.COMPLETED)
        assert (await store.get_task(c.id)).status is S.BLOCKED
        cursor = await last_event_id(store)
        await store.transition(b.id, S.COMPLETED, reason="merged")
        assert (await store.get_task(c.id)).status is S.QUEUED
        events = await store.events_since(cursor)
        assert [(e.task_id, e.data["to"]) for e in events] == [
            (b.id, "completed"),
            (c.id, "queued"),
        ]
        assert events[1].data == {
            "from": "blocked",
            "to": "queued",
            "reason": "dependencies completed",
        }
        d = await add(store, "d", depends_on=(a.id,))
        assert d.status is S.QUEUED

    async def test_unknown_dependency_is_refused(self, store: Store) -> None:
        a = await add(store, "a")
        with pytest.raises(InputError, match="4242"):
            await add(store, "b", depends_on=(a.id, 4242))
        assert [t.id for t in await store.list_tasks()] == [a.id]
        assert len(await all_events(store)) == 1

    async def test_failed_dependency_keeps_dependents_blocked(self, store: Store) -> None:
        a = await task_in(store, S.RUNNING)
        c = await add(store, "c", depends_on=(a.id,))
        await store.transition(a.id, S.FAILED)
        assert (await store.get_task(c.id)).status is S.BLOCKED

    # -- leases -------------------------------------------------------------------------
    async def test_heartbeat_extends_the_lease(self, store: Store) -> None:
        task = await add(store)
        past = utcnow() - timedelta(hours=1)
        await store.claim(task.id, owner="a", host="h", lease_seconds=1, now=past)
        await store.heartbeat(task.id, owner="a", lease_seconds=600)
        held = await store.get_task(task.id)
        assert held.lease_expires_at is not None
        assert held.lease_expires_at > utcnow()
        with pytest.raises(LeaseLost):
            await store.heartbeat(task.id, owner="b", lease_seconds=600)
        assert await store.get_task(task.id) == held

    async def test_heartbeat_after_leaving_running_is_lease_lost(self, store: Store) -> None:
        task = await add(store)
        await store.claim(task.id, owner="a", host="h", lease_seconds=LEASE, now=utcnow())
        await store.transition(task.id, S.CANCELLED, reason="user")
        with pytest.raises(LeaseLost):
            await store.heartbeat(task.id, owner="a", lease_seconds=LEASE)

    async def test_take_over_only_an_expired_lease(self, store: Store) -> None:
        task = await add(store)
        now = utcnow()
        claimed = await store.claim(task.id, owner="a", host="h", lease_seconds=30, now=now)
        assert claimed is not None
        cursor = await last_event_id(store)
        assert await store.take_over(task.id, owner="b", lease_seconds=30, now=now) is None
        assert await store.events_since(cursor) == []
        later = now + timedelta(seconds=31)
        taken = await store.take_over(task.id, owner="b", lease_seconds=30, now=later)
        assert taken is not None
        assert taken == await store.get_task(task.id)
        assert (taken.status, taken.attempt, taken.lease_owner) == (S.RUNNING, 1, "b")
        assert taken.lease_expires_at == later + timedelta(seconds=30)
        (event,) = await store.events_since(cursor)
        assert (event.kind, event.task_id) == ("task.lease", task.id)
        assert event.data == {"from_owner": "a", "to_owner": "b"}
        with pytest.raises(LeaseLost):
            await store.heartbeat(task.id, owner="a", lease_seconds=30)
        with pytest.raises(LeaseLost):
            await store.transition(task.id, S.FAILED, owner="a")

    async def test_take_over_with_force_and_of_non_running(self, store: Store) -> None:
        task = await add(store)
        now = utcnow()
        assert await store.take_over(task.id, owner="b", lease_seconds=1, now=now) is None
        await store.claim(task.id, owner="a", host="h", lease_seconds=LEASE, now=now)
        forced = await store.take_over(task.id, owner="b", lease_seconds=1, now=now, force=True)
        assert forced is not None
        assert forced.lease_owner == "b"
        await store.transition(task.id, S.COMPLETED, owner="b")
        assert (
            await store.take_over(task.id, owner="c", lease_seconds=1, now=now, force=True) is None
        )

    async def test_running_and_due_paused(self, store: Store) -> None:
        now = utcnow()
        r1 = await task_in(store, S.RUNNING)
        await task_in(store, S.QUEUED)
        r2 = await task_in(store, S.RUNNING)
        assert [t.id for t in await store.running()] == [r1.id, r2.id]
        p_due = await task_in(store, S.PAUSED)
        await store.update_task(p_due.id, not_before=now - timedelta(seconds=1))
        p_later = await task_in(store, S.PAUSED)
        await store.update_task(p_later.id, not_before=now + timedelta(hours=1))
        p_none = await task_in(store, S.PAUSED)
        assert [t.id for t in await store.due_paused(now)] == [p_due.id, p_none.id]
        in_2h = now + timedelta(hours=2)
        assert [t.id for t in await store.due_paused(in_2h)] == [p_due.id, p_later.id, p_none.id]

    async def test_naive_now_is_refused(self, store: Store) -> None:
        task = await add(store)
        naive = datetime(2030, 1, 1)
        with pytest.raises(InputError, match="timezone"):
            await store.runnable(naive, 1)
        with pytest.raises(InputError, match="timezone"):
            await store.claim(task.id, owner="o", host="h", lease_seconds=1, now=naive)

    # -- runs ---------------------------------------------------------------------------
    async def test_runs_crud(self, store: Store) -> None:
        task = await add(store)
        other = await add(store)
        r1 = await store.add_run(task.id, attempt=1, host="h1", agent="claude", ref={"pgid": 5})
        await store.add_run(other.id, attempt=1, host="h2", agent="echo", ref={})
        r2 = await store.add_run(task.id, attempt=2, host="h1", agent="claude", ref={})
        assert r1 == await store.get_run(r1.id)
        assert (r1.task_id, r1.attempt, r1.host, r1.agent, r1.ref) == (
            task.id,
            1,
            "h1",
            "claude",
            {"pgid": 5},
        )
        assert (r1.status, r1.stdout_offset, r1.stderr_offset, r1.exit_code) == (
            RunStatus.STARTING,
            0,
            0,
            None,
        )
        assert r1.started_at.utcoffset() == timedelta(0)
        assert r1.ended_at is None
        assert [r.id for r in await store.list_runs(task.id)] == [r1.id, r2.id]
        ended = utcnow()
        values: dict[str, Any] = {
            "status": RunStatus.SUCCEEDED,
            "ref": {"run_dir": "/tmp/r1", "pgid": 5},
            "exit_code": 0,
            "error_kind": ErrorKind.TIMEOUT,
            "error": "slow",
            "session_id": "s-1",
            "tokens_in": 100,
            "tokens_out": 200,
            "cost_usd": 0.5,
            "ended_at": ended,
        }
        assert set(values) == RUN_FIELDS
        updated = await store.update_run(r1.id, **values)
        assert updated == await store.get_run(r1.id)
        for name, value in values.items():
            assert getattr(updated, name) == value, name
        with pytest.raises(InputError, match="stdout_offset"):
            await store.update_run(r1.id, stdout_offset=5)
        with pytest.raises(InputError, match="status"):
            await store.update_run(r1.id, status="exploded")
        assert await store.get_run(r1.id) == updated

    async def test_append_output_writes_events_and_offsets(self, store: Store) -> None:
        task = await add(store)
        run = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        stored = await store.append_output(
            run.id,
            [NewEvent("run.output", {"line": "hello"}), NewEvent("agent.text", {"text": "hi"})],
            stdout_offset=120,
            stderr_offset=7,
        )
        assert [(e.kind, e.task_id, e.run_id) for e in stored] == [
            ("run.output", task.id, run.id),
            ("agent.text", task.id, run.id),
        ]
        assert stored[0].id < stored[1].id
        assert stored == (await all_events(store, task.id))[-2:]
        again = await store.get_run(run.id)
        assert (again.stdout_offset, again.stderr_offset) == (120, 7)
        active = await store.get_task(task.id)
        assert active.last_activity_at is not None
        assert active.last_activity_at >= task.created_at
        assert active.updated_at >= active.last_activity_at
        assert await store.append_output(run.id, [], stdout_offset=130, stderr_offset=7) == []
        assert (await store.get_run(run.id)).stdout_offset == 130

    async def test_append_output_is_all_or_nothing(self, store: Store) -> None:
        task = await add(store)
        run = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        await store.append_output(
            run.id, [NewEvent("run.output", {"n": 1})], stdout_offset=10, stderr_offset=0
        )
        before_run, before_task = await store.get_run(run.id), await store.get_task(task.id)
        cursor = await last_event_id(store)
        batch = [NewEvent("run.output", {"n": 2}), NewEvent("run.output", {"bad": object()})]
        with pytest.raises(BosunError):
            await store.append_output(run.id, batch, stdout_offset=20, stderr_offset=5)
        assert await store.get_run(run.id) == before_run
        assert await store.get_task(task.id) == before_task
        assert await store.events_since(cursor) == []

    # -- events -------------------------------------------------------------------------
    async def test_events_since_is_a_cursor(self, store: Store) -> None:
        a = await add(store, "a")
        b = await add(store, "b")
        loose = await store.append_event(NewEvent("host.up", {"host": "h1"}))
        assert (loose.task_id, loose.run_id, loose.data) == (None, None, {"host": "h1"})
        await store.transition(a.id, S.CANCELLED)
        everything = await all_events(store)
        ids = [e.id for e in everything]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids) == 4
        assert await store.events_since(ids[1]) == everything[2:]
        assert await store.events_since(ids[0], limit=2) == everything[1:3]
        assert await store.events_since(ids[-1]) == []
        assert [e.id for e in await store.events_since(0, task_id=a.id)] == [ids[0], ids[3]]
        assert [e.id for e in await store.events_since(ids[0], task_id=a.id)] == [ids[3]]
        assert [e.kind for e in await store.events_since(0, task_id=b.id)] == ["task.submitted"]
        with pytest.raises(InputError):
            await store.events_since(0, limit=0)

    async def test_append_event_checks_its_data(self, store: Store) -> None:
        task = await add(store)
        run = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        ev = await store.append_event(
            NewEvent("note", {"x": [1, 2]}, task_id=task.id, run_id=run.id)
        )
        assert ev == (await all_events(store))[-1]
        with pytest.raises(InputError):
            await store.append_event(NewEvent("note", {"x": float("nan")}))
        with pytest.raises(InputError):
            await store.append_event(NewEvent("", {}))
        with pytest.raises(InputError):
            await store.add_run(task.id, attempt=1, host="h", agent="a", ref={"x": {1, 2}})

    async def test_event_ids_increase_across_instances(
        self, store: Store, peer_store: Store
    ) -> None:
        stored = []
        for i in range(6):
            writer = store if i % 2 else peer_store
            stored.append(await writer.append_event(NewEvent("tick", {"i": i})))
        assert [e.id for e in stored] == sorted(e.id for e in stored)
        assert await store.events_since(0) == await peer_store.events_since(0) == stored

    # -- waiting ------------------------------------------------------------------------
    async def test_wait_for_change_times_out_quietly(self, store: Store) -> None:
        await add(store)
        # returns by itself (neither hangs nor raises) when nothing changes
        await asyncio.wait_for(store.wait_for_change(0.05), 10)

    async def test_wait_for_change_wakes_on_own_write(self, store: Store) -> None:
        waiter = asyncio.ensure_future(store.wait_for_change(60))
        await asyncio.sleep(0)  # the waiter is now listening
        await add(store)
        await asyncio.wait_for(waiter, 10)

    async def test_wait_for_change_wakes_on_other_instance_write(
        self, store: Store, peer_store: Store
    ) -> None:
        await wakes_on_peer_submit(store.wait_for_change(60), peer_store)

    @pytest.mark.parametrize("writer", ["own", "peer"])
    async def test_wait_for_change_after_sees_a_write_that_came_before_the_wait(
        self, store: Store, peer_store: Store, writer: str
    ) -> None:
        # A reader noted the newest id, read, and an event landed before it began to wait:
        # the wait must end at once instead of sleeping through it (a lost wake-up).
        seen = await store.last_event_id()
        await add(store if writer == "own" else peer_store)
        await asyncio.wait_for(store.wait_for_change(60, after=seen), 10)

    async def test_wait_for_work_wakes_on_submit_and_requeue(self, store: Store) -> None:
        waiter = asyncio.ensure_future(store.wait_for_work(60))
        await asyncio.sleep(0)
        task = await add(store)
        await asyncio.wait_for(waiter, 10)
        claimed = await store.claim(task.id, owner="w", host="h", lease_seconds=30, now=utcnow())
        assert claimed is not None
        waiter = asyncio.ensure_future(store.wait_for_work(60))
        await asyncio.sleep(0)
        await store.transition(task.id, TaskStatus.QUEUED, owner="w", reason="retry")
        await asyncio.wait_for(waiter, 10)

    async def test_wait_for_work_ignores_output_of_this_process(self, store: Store) -> None:
        task = await add(store)
        run = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        waiter = asyncio.ensure_future(store.wait_for_work(0.3))
        await asyncio.sleep(0)
        await store.append_output(run.id, [], stdout_offset=1, stderr_offset=0)
        await asyncio.sleep(0)
        # an output write is no new work: the waiter is still waiting (it ends by timeout)
        assert not waiter.done()
        await asyncio.wait_for(waiter, 10)

    async def test_wait_for_work_wakes_on_other_instance_submit(
        self, store: Store, peer_store: Store
    ) -> None:
        await wakes_on_peer_submit(store.wait_for_work(60), peer_store)

    # -- claim_batch: plan and claim in one transaction ---------------------------------
    async def test_claim_batch_claims_the_picks_in_order(self, store: Store) -> None:
        a = await add(store, "a")
        b = await add(store, "b", priority=5)
        await add(store, "blocked", depends_on=(a.id,))
        await add(store, "pull", execution_mode=ExecutionMode.HTTP_PULL)
        later = await add(store, "later")
        await store.update_task(later.id, not_before=utcnow() + timedelta(hours=1))
        calls: list[tuple[list[int], list[int]]] = []

        def choose(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            calls.append(([t.id for t in offered], [t.id for t in running]))
            return [(b.id, "h1"), (a.id, "h2")]

        claimed = await store.claim_batch(
            choose, owner="w", lease_seconds=30, now=utcnow(), limit=10
        )
        assert [(t.id, t.assigned_host, t.status, t.attempt) for t in claimed] == [
            (b.id, "h1", S.RUNNING, 1),
            (a.id, "h2", S.RUNNING, 1),
        ]
        assert all(t.lease_owner == "w" and t.lease_expires_at is not None for t in claimed)
        assert len(calls) == 1 and calls[0][0][:2] == [b.id, a.id] and calls[0][1] == []
        assert sorted(calls[0][0]) == sorted([a.id, b.id])
        events = [e for e in await store.events_since(0) if e.kind == "task.status"]
        assert [(e.task_id, e.data["to"]) for e in events] == [(b.id, "running"), (a.id, "running")]

    async def test_claim_batch_skips_colliding_and_unoffered_picks(self, store: Store) -> None:
        busy = await add(store, "busy", repo="r", scope=("src",))
        assert await store.claim(busy.id, owner="w", host="h", lease_seconds=30, now=utcnow())
        inside = await add(store, "inside", repo="r", scope=("src/api",))
        docs1 = await add(store, "docs1", repo="r", scope=("docs",))
        docs2 = await add(store, "docs2", repo="r", scope=("docs/x.md",))
        seen_running: list[int] = []

        def choose(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            seen_running.extend(t.id for t in running)
            return [(inside.id, "h"), (docs1.id, "h"), (docs2.id, "h"), (busy.id, "h"), (999, "h")]

        claimed = await store.claim_batch(
            choose, owner="w", lease_seconds=30, now=utcnow(), limit=10
        )
        assert [t.id for t in claimed] == [docs1.id]
        assert seen_running == [busy.id]
        assert (await store.get_task(inside.id)).status is S.QUEUED
        assert (await store.get_task(docs2.id)).status is S.QUEUED

    async def test_claim_batch_shows_the_planner_what_running_tasks_occupy(
        self, store: Store
    ) -> None:
        busy = await add(store, "busy", repo="r", scope=("src", "docs"), agent="a1")
        assert await store.claim(busy.id, owner="w", host="h9", lease_seconds=LEASE, now=utcnow())
        await add(store, "next")
        shown: list[RunningTask] = []

        def choose(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            shown.extend(running)
            return []

        await store.claim_batch(choose, owner="w", lease_seconds=LEASE, now=utcnow(), limit=5)
        assert shown == [
            RunningTask(busy.id, "a1", "h9", "r", ("src", "docs"), ExecutionMode.DISPATCH)
        ]

    async def test_claim_batch_with_nothing_runnable_still_asks_once(self, store: Store) -> None:
        calls: list[int] = []

        def choose(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            calls.append(len(offered))
            return []

        assert (
            await store.claim_batch(choose, owner="w", lease_seconds=30, now=utcnow(), limit=5)
            == []
        )
        assert calls == [0]

    async def test_claim_batch_is_exclusive_across_instances(
        self, store: Store, peer_store: Store
    ) -> None:
        ids = [(await add(store, f"t{i}")).id for i in range(30)]

        def take_two(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            return [(t.id, "h") for t in offered[:2]]

        async def worker(s: Store, name: str) -> list[int]:
            got: list[int] = []
            while True:
                batch = await s.claim_batch(
                    take_two, owner=name, lease_seconds=30, now=utcnow(), limit=4
                )
                if not batch:
                    return got
                got.extend(t.id for t in batch)

        results = await asyncio.gather(
            *(worker(s, f"w{i}") for i, s in enumerate([store, peer_store] * 3))
        )
        claimed = [i for r in results for i in r]
        assert sorted(claimed) == ids

    # -- add_task with a claimer (a dispatcher of the same process) ----------------------
    async def test_a_submit_is_claimed_in_its_own_transaction(self, store: Store) -> None:
        older = await add(store, "older", priority=5)
        started: list[list[int]] = []
        calls: list[tuple[list[int], list[int]]] = []

        def choose(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            calls.append(([t.id for t in offered], [t.id for t in running]))
            return [(t.id, "h1") for t in offered]

        def claimer() -> ClaimRequest:
            return ClaimRequest(
                choose, "w", LEASE, utcnow(), 10, lambda ts: started.append([t.id for t in ts])
            )

        remove = store.claim_on_submit(claimer)
        task = await add(store, "new")
        # the task as the transaction left it: claimed, with the older one (priority first)
        assert task.status is S.RUNNING and task.lease_owner == "w" and task.attempt == 1
        assert task.assigned_host == "h1"
        assert calls == [([older.id, task.id], [])]
        assert started == [[older.id, task.id]]
        events = [e for e in await store.events_since(0) if e.task_id == task.id]
        assert [(e.kind, e.data.get("to")) for e in events] == [
            ("task.submitted", None),
            ("task.status", "running"),
        ]
        assert events[0].data == {"title": "new", "status": "queued"}
        remove()
        plain = await add(store, "after removal")
        assert plain.status is S.QUEUED and len(calls) == 1

    async def test_a_submit_claims_only_what_the_chooser_picks_and_scopes_allow(
        self, store: Store
    ) -> None:
        busy = await add(store, "busy", repo="r", scope=("src",))
        assert await store.claim(busy.id, owner="x", host="h", lease_seconds=LEASE, now=utcnow())
        started: list[int] = []
        seen_running: list[list[int]] = []

        def choose(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            seen_running.append([t.id for t in running])
            return [(t.id, "h") for t in offered]

        store.claim_on_submit(
            lambda: ClaimRequest(
                choose, "w", LEASE, utcnow(), 10, lambda ts: started.extend(t.id for t in ts)
            )
        )
        inside = await add(store, "inside", repo="r", scope=("src/api",))
        assert inside.status is S.QUEUED  # its scope overlaps a running task's
        assert seen_running == [[busy.id]] and started == []
        # a blocked task and a pull agent's task are not claimable: the claimer is not asked
        blocked = await add(store, "blocked", depends_on=(busy.id,))
        pull = await add(store, "pull", execution_mode=ExecutionMode.HTTP_PULL)
        assert blocked.status is S.BLOCKED and pull.status is S.QUEUED
        assert len(seen_running) == 1
        # a claimer without a free slot: a plain submit, which wakes the dispatcher
        store.claim_on_submit(lambda: None)
        fired = asyncio.ensure_future(store.wait_for_work(10))
        await asyncio.sleep(0)
        queued = await add(store, "no slot")
        await asyncio.wait_for(fired, 5)
        assert queued.status is S.QUEUED and started == []

    async def test_a_submit_claims_for_itself_not_for_a_backlog(self, store: Store) -> None:
        backlog = [(await add(store, f"q{i}")).id for i in range(3)]
        started: list[int] = []

        def take_all(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            return [(t.id, "h") for t in offered]

        store.claim_on_submit(
            lambda: ClaimRequest(
                take_all, "w", LEASE, utcnow(), 2, lambda ts: started.extend(t.id for t in ts)
            )
        )
        # two slots, and older tasks come first: the new one is not placed, so nothing is
        fired = asyncio.ensure_future(store.wait_for_work(10))
        await asyncio.sleep(0)
        behind = await add(store, "behind")
        await asyncio.wait_for(fired, 5)
        assert behind.status is S.QUEUED and started == []
        # placed along with older ones (a higher priority): all of them are claimed
        urgent = await add(store, "urgent", priority=9)
        assert urgent.status is S.RUNNING and started == [urgent.id, backlog[0]]

    async def test_submits_claimed_at_once_by_two_instances_never_share_a_task(
        self, store: Store, peer_store: Store
    ) -> None:
        taken: dict[str, list[int]] = {"a": [], "b": []}

        def take_all(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            return [(t.id, "h") for t in offered]

        def claimer(name: str) -> SubmitClaimer:
            def started(tasks: list[Task]) -> None:
                taken[name].extend(t.id for t in tasks)

            return lambda: ClaimRequest(take_all, name, LEASE, utcnow(), 3, started)

        store.claim_on_submit(claimer("a"))
        peer_store.claim_on_submit(claimer("b"))
        new = await asyncio.gather(
            *(add(s, f"n{i}") for i in range(10) for s in (store, peer_store))
        )
        claimed = taken["a"] + taken["b"]
        assert len(claimed) == len(set(claimed)) == 20
        assert sorted(claimed) == sorted(t.id for t in new)
        assert all(t.status is S.RUNNING for t in new)
        for task_id in claimed:
            events = await store.events_since(0, task_id=task_id)
            assert [e.data["to"] for e in events if e.kind == "task.status"] == ["running"]

    async def test_last_event_id_is_the_newest_cursor(
        self, store: Store, peer_store: Store
    ) -> None:
        assert await store.last_event_id() == 0
        await add(store)
        await add(peer_store)
        newest = (await store.events_since(0))[-1].id
        assert await store.last_event_id() == newest == await peer_store.last_event_id()

    async def test_a_cancelled_write_does_not_block_later_writes(
        self, store: Store, peer_store: Store
    ) -> None:
        # Cancel writers at many points of their transaction; an abandoned transaction
        # would hold the database's write lock and every later write would hang.
        # After each one the other instance must be able to write: the 5 s limit is a hang
        # detector (a stuck lock lasts until SQLite's 10 s busy timeout), not a speed check.
        for step in range(60):
            job = asyncio.ensure_future(add(store, f"cancelled {step}"))
            await asyncio.sleep(step * 0.0002)
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            await asyncio.wait_for(add(peer_store, f"after {step}, from the peer"), 5)
        await asyncio.wait_for(add(store, "after"), 5)

    async def test_add_run_may_record_a_run_already_running(self, store: Store) -> None:
        task = await add(store)
        run = await store.add_run(
            task.id, attempt=1, host="h", agent="a", ref={"pid": 7}, status=RunStatus.RUNNING
        )
        assert (await store.get_run(run.id)).status is RunStatus.RUNNING
        default = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        assert default.status is RunStatus.STARTING

    # -- an attempt's start and end: one write each -------------------------------------
    async def test_add_run_writes_its_events_in_the_same_write(self, store: Store) -> None:
        task = await add(store)
        cursor = await last_event_id(store)
        run = await store.add_run(
            task.id,
            attempt=1,
            host="h",
            agent="a",
            ref={"pgid": 7},
            status=RunStatus.RUNNING,
            events=lambda r: [
                NewEvent("run.started", {"run_id": r.id, "host": "h"}, task_id=task.id, run_id=r.id)
            ],
        )
        assert await store.list_runs(task.id) == [run]
        assert run.status is RunStatus.RUNNING
        started = await store.events_since(cursor)
        assert [(e.kind, e.task_id, e.run_id, e.data) for e in started] == [
            ("run.started", task.id, run.id, {"run_id": run.id, "host": "h"})
        ]

    async def test_add_run_whose_events_are_refused_writes_nothing(self, store: Store) -> None:
        task = await add(store)
        cursor = await last_event_id(store)
        with pytest.raises(InputError):
            await store.add_run(
                task.id,
                attempt=1,
                host="h",
                agent="a",
                ref={},
                events=lambda r: [NewEvent("run.started", {"bad": {1, 2}}, run_id=r.id)],
            )
        with pytest.raises(NotFound, match="task 999"):
            await store.add_run(
                task.id,
                attempt=1,
                host="h",
                agent="a",
                ref={},
                events=lambda r: [NewEvent("note", task_id=999, run_id=r.id)],
            )
        with pytest.raises(NotFound, match="task 999"):
            await store.add_run(
                999, attempt=1, host="h", agent="a", ref={}, events=lambda r: [NewEvent("note")]
            )
        assert await store.list_runs(task.id) == []
        assert await store.events_since(cursor) == []

    async def test_transition_ends_a_run_and_appends_its_events_first(self, store: Store) -> None:
        task = await add(store)
        dependent = await add(store, "dependent", depends_on=(task.id,))
        await store.claim(task.id, owner="a", host="h", lease_seconds=LEASE, now=utcnow())
        run = await store.add_run(
            task.id, attempt=1, host="h", agent="a", ref={"pgid": 7}, status=RunStatus.RUNNING
        )
        cursor = await last_event_id(store)
        ended = utcnow()
        end = RunUpdate(
            run.id,
            {"status": RunStatus.SUCCEEDED, "exit_code": 0, "tokens_in": 12, "ended_at": ended},
        )
        finished = NewEvent("run.finished", {"exit_code": 0}, task_id=task.id, run_id=run.id)
        note = NewEvent("agent.note", {"text": "done"}, task_id=task.id)
        done = await store.transition(
            task.id,
            S.COMPLETED,
            owner="a",
            reason="run succeeded",
            events=[finished, note],
            run=end,
            result_summary="all done",
        )
        assert (done.status, done.result_summary, done.lease_owner) == (
            S.COMPLETED,
            "all done",
            None,
        )
        assert done == await store.get_task(task.id)
        stored = await store.get_run(run.id)
        assert (stored.status, stored.exit_code, stored.tokens_in, stored.ended_at) == (
            RunStatus.SUCCEEDED,
            0,
            12,
            ended,
        )
        assert stored.ref == {"pgid": 7}  # only the fields given change
        written = await store.events_since(cursor)
        assert [(e.kind, e.task_id, e.run_id) for e in written] == [
            ("run.finished", task.id, run.id),
            ("agent.note", task.id, None),
            ("task.status", task.id, None),
            ("task.status", dependent.id, None),  # its dependent queued, in the same write
        ]
        assert written[2].data == {"from": "running", "to": "completed", "reason": "run succeeded"}
        assert (await store.get_task(dependent.id)).status is S.QUEUED

    async def test_a_refused_end_of_run_writes_nothing(self, store: Store) -> None:
        task = await add(store)
        other = await add(store, "other")
        await store.claim(task.id, owner="a", host="h", lease_seconds=LEASE, now=utcnow())
        run = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        other_run = await store.add_run(other.id, attempt=1, host="h", agent="a", ref={})
        before = (await store.get_task(task.id), await store.get_run(run.id))
        before_other = await store.get_run(other_run.id)
        cursor = await last_event_id(store)
        end = RunUpdate(run.id, {"status": RunStatus.FAILED, "exit_code": 1})
        finished = [NewEvent("run.finished", {"exit_code": 1}, task_id=task.id, run_id=run.id)]
        with pytest.raises(LeaseLost):  # cancelled or taken over meanwhile
            await store.transition(task.id, S.QUEUED, owner="b", events=finished, run=end)
        with pytest.raises(InvalidTransition):
            await store.transition(task.id, S.BLOCKED, owner="a", events=finished, run=end)
        with pytest.raises(NotFound):  # not a run of this task
            await store.transition(
                task.id, S.QUEUED, owner="a", events=finished, run=RunUpdate(other_run.id, {})
            )
        with pytest.raises(NotFound, match="run 999"):
            await store.transition(
                task.id, S.QUEUED, owner="a", events=[NewEvent("note", run_id=999)], run=end
            )
        with pytest.raises(InputError, match="stdout_offset"):
            await store.transition(
                task.id,
                S.QUEUED,
                owner="a",
                events=finished,
                run=RunUpdate(run.id, {"stdout_offset": 3}),
            )
        with pytest.raises(InputError):
            await store.transition(
                task.id,
                S.QUEUED,
                owner="a",
                events=[NewEvent("run.finished", {"x": float("nan")}, task_id=task.id)],
                run=end,
            )
        assert (await store.get_task(task.id), await store.get_run(run.id)) == before
        assert await store.get_run(other_run.id) == before_other
        assert await store.events_since(cursor) == []
        # and the same end, by the lease holder, goes through
        queued = await store.transition(task.id, S.QUEUED, owner="a", events=finished, run=end)
        assert queued.status is S.QUEUED
        assert (await store.get_run(run.id)).status is RunStatus.FAILED
        assert [e.kind for e in await store.events_since(cursor)] == ["run.finished", "task.status"]

    async def test_running_filters_by_mode_and_lease_owner(self, store: Store) -> None:
        now = utcnow()
        mine, theirs = await add(store, "mine"), await add(store, "theirs")
        await store.claim(mine.id, owner="me", host="h", lease_seconds=LEASE, now=now)
        await store.claim(theirs.id, owner="them", host="h", lease_seconds=LEASE, now=now)
        unleased = await task_in(store, S.RUNNING)
        pulled = await task_in(store, S.RUNNING, execution_mode=ExecutionMode.HTTP_PULL)
        await store.update_task(pulled.id, lease_owner="pull:w1:x")
        await task_in(store, S.QUEUED)

        async def ids(**flt: Any) -> list[int]:
            return [t.id for t in await store.running(**flt)]

        assert await ids() == [mine.id, theirs.id, unleased.id, pulled.id]
        dispatch = ExecutionMode.DISPATCH
        assert await ids(mode=dispatch) == [mine.id, theirs.id, unleased.id]
        assert await ids(mode=ExecutionMode.HTTP_PULL) == [pulled.id]
        assert await ids(not_owned_by="me") == [theirs.id, unleased.id, pulled.id]
        assert await ids(mode=dispatch, not_owned_by="me") == [theirs.id, unleased.id]
        assert await ids(mode=dispatch, not_owned_by="nobody") == [mine.id, theirs.id, unleased.id]
