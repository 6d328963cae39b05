"""The pull protocol's store contract: every rule of ``bosun.store.base.PullStore``.

A backend's test module subclasses ``PullContract`` (named ``Test...``) and provides the
fixtures of the store contract: ``store`` (a fresh, empty, open store) and ``peer_store``
(a second store on the same database, as another process would open it). Both must be
``Store`` and ``PullStore`` (``SqlStore`` is).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from bosun.errors import Forbidden, InputError, LeaseLost
from bosun.models import ErrorKind, ExecutionMode, NewEvent, Outcome, RunStatus, Task, TaskSpec
from bosun.models import TaskStatus as S
from bosun.store.base import PullStore, Store

LEASE = 60.0
PULL = ExecutionMode.HTTP_PULL


class Both(Store, PullStore, Protocol):
    """A store with the pull protocol."""


def utcnow() -> datetime:
    return datetime.now(UTC)


async def pull_task(store: Both, title: str = "pull me", **spec: Any) -> Task:
    spec.setdefault("agent", "claude")
    spec.setdefault("execution_mode", PULL)
    return await store.add_task(TaskSpec(title=title, **spec), max_attempts=3)


async def take(store: Both, agent: str = "w1", caps: tuple[str, ...] = ("claude",)) -> Task:
    task = await store.dequeue(agent, caps, lease_seconds=LEASE, now=utcnow())
    assert task is not None
    return task


def lease_of(task: Task) -> str:
    assert task.lease_owner is not None
    return task.lease_owner


async def receipt(store: Both, task: Task, outcome: Outcome, **kw: Any) -> Task:
    return await store.pull_receipt(
        task.id,
        lease_of(task),
        outcome,
        now=kw.pop("now", utcnow()),
        backoff_base=kw.pop("backoff_base", 5.0),
        backoff_cap=kw.pop("backoff_cap", 60.0),
        **kw,
    )


class PullContract:
    """Tests every PullStore backend passes unchanged."""

    # -- dequeue -----------------------------------------------------------------------
    async def test_fifty_agents_race_over_a_thousand_tasks(
        self, store: Both, peer_store: Both
    ) -> None:
        """Every task is dequeued exactly once, however the agents interleave, from two
        store instances (two processes, to the database)."""
        await asyncio.gather(*(pull_task(store, f"t{i}") for i in range(1000)))
        got: list[tuple[str, Task]] = []

        async def agent(n: int) -> None:
            mine = store if n % 2 else peer_store
            while (
                task := await mine.dequeue(f"a{n}", ["claude"], lease_seconds=LEASE, now=utcnow())
            ) is not None:
                got.append((f"a{n}", task))

        await asyncio.gather(*(agent(n) for n in range(50)))
        ids = Counter(t.id for _, t in got)
        assert len(ids) == 1000
        assert set(ids.values()) == {1}
        assert all(t.status is S.RUNNING and t.attempt == 1 for _, t in got)
        assert all(t.assigned_host == f"pull:{a}" for a, t in got)
        assert len({lease_of(t) for _, t in got}) == 1000
        assert len({a for a, _ in got}) > 1  # the agents really raced
        running = await store.running()
        assert len(running) == 1000
        # One pull run and one running-status event per task: nothing was taken twice.
        for _, task in got[:20]:
            runs = await store.list_runs(task.id)
            assert [r.host for r in runs] == [task.assigned_host]
            events = await store.events_since(0, task_id=task.id, limit=100)
            assert [e.data["to"] for e in events if e.kind == "task.status"] == ["running"]

    async def test_dequeue_takes_priority_then_age_and_sets_the_lease(self, store: Both) -> None:
        low = await pull_task(store, "low")
        high = await pull_task(store, "high", priority=5)
        older_high = await pull_task(store, "high too", priority=5)
        assert older_high.id > high.id
        before = utcnow()
        first = await take(store, "w1")
        assert first.id == high.id
        assert first.lease_owner is not None and first.lease_owner.startswith("pull:w1:")
        assert first.lease_expires_at is not None
        assert first.lease_expires_at >= before + timedelta(seconds=LEASE - 1)
        assert (await take(store, "w2")).id == older_high.id
        assert (await take(store, "w1")).id == low.id
        assert await store.dequeue("w1", ["claude"], lease_seconds=LEASE, now=utcnow()) is None
        (run,) = await store.list_runs(high.id)
        assert (run.status, run.host, run.agent, run.attempt) == (
            RunStatus.RUNNING,
            "pull:w1",
            "claude",
            1,
        )
        assert first.lease_owner not in str(run.ref)  # the lease is not shown to users

    async def test_capabilities_filter_what_an_agent_gets(self, store: Both) -> None:
        codex = await pull_task(store, "codex task", agent="codex")
        claude = await pull_task(store, "claude task", agent="claude")
        assert await store.dequeue("w", [], lease_seconds=LEASE, now=utcnow()) is None
        assert await store.dequeue("w", ["gemini"], lease_seconds=LEASE, now=utcnow()) is None
        assert (await take(store, "w", ("claude",))).id == claude.id
        assert await store.dequeue("w", ["claude"], lease_seconds=LEASE, now=utcnow()) is None
        assert (await take(store, "w", ("gemini", "codex"))).id == codex.id

    async def test_dispatch_tasks_are_never_dequeued_nor_pull_tasks_dispatched(
        self, store: Both
    ) -> None:
        dispatch = await store.add_task(TaskSpec(title="local", agent="claude"), max_attempts=3)
        pull = await pull_task(store)
        now = utcnow()
        assert [t.id for t in await store.runnable(now, 10)] == [dispatch.id]
        assert (
            await store.claim(pull.id, owner="d", host="local", lease_seconds=LEASE, now=now)
            is None
        )
        offered: list[list[int]] = []

        def choose(cands: Any, running: Any) -> list[tuple[int, str]]:
            offered.append([t.id for t in cands])
            return [(t.id, "local") for t in cands]

        claimed = await store.claim_batch(choose, owner="d", lease_seconds=LEASE, now=now, limit=10)
        assert [t.id for t in claimed] == [dispatch.id]
        assert offered == [[dispatch.id]]
        assert (await take(store)).id == pull.id
        assert await store.dequeue("w1", ["claude"], lease_seconds=LEASE, now=utcnow()) is None

    async def test_not_before_and_rework_are_respected(self, store: Both) -> None:
        later = await pull_task(store, "later")
        await store.update_task(later.id, not_before=utcnow() + timedelta(hours=1))
        assert await store.dequeue("w", ["claude"], lease_seconds=LEASE, now=utcnow()) is None
        got = await store.dequeue(
            "w", ["claude"], lease_seconds=LEASE, now=utcnow() + timedelta(hours=2)
        )
        assert got is not None and got.id == later.id

    async def test_scope_locks_hold_against_running_tasks(self, store: Both) -> None:
        local = await store.add_task(
            TaskSpec(title="local", repo="app", scope=("src/auth",)), max_attempts=3
        )
        now = utcnow()
        assert await store.claim(local.id, owner="d", host="h", lease_seconds=LEASE, now=now)
        blocked = await pull_task(store, "same dir", repo="app", scope=("src/auth/login.py",))
        free = await pull_task(store, "other dir", repo="app", scope=("docs",))
        assert (await take(store)).id == free.id
        assert await store.dequeue("w", ["claude"], lease_seconds=LEASE, now=utcnow()) is None
        await store.transition(local.id, S.COMPLETED, owner="d")
        assert (await take(store)).id == blocked.id

    # -- status ------------------------------------------------------------------------
    async def test_status_extends_the_lease_and_appends_events(self, store: Both) -> None:
        await pull_task(store)
        task = await take(store)
        later = utcnow() + timedelta(seconds=30)
        events = [
            NewEvent("run.output", {"stream": "stdout", "line": "hello"}),
            NewEvent("agent.text", {"text": "thinking"}),
        ]
        held = await store.pull_status(
            task.id, lease_of(task), now=later, lease_seconds=LEASE, events=events, agent="w1"
        )
        assert held.lease_expires_at == later + timedelta(seconds=LEASE)
        assert held.lease_owner == task.lease_owner and held.status is S.RUNNING
        (run,) = await store.list_runs(task.id)
        got = [e for e in await store.events_since(0, task_id=task.id) if e.run_id == run.id]
        assert [(e.kind, e.data.get("line") or e.data.get("text")) for e in got[-2:]] == [
            ("run.output", "hello"),
            ("agent.text", "thinking"),
        ]
        assert held.last_activity_at == later

    async def test_status_sent_again_adds_no_event_twice(self, store: Both) -> None:
        await pull_task(store)
        task = await take(store)
        lines = [NewEvent("run.output", {"line": f"l{i}"}) for i in range(5)]

        async def report(first: int, batch: list[NewEvent]) -> None:
            await store.pull_status(
                task.id,
                lease_of(task),
                now=utcnow(),
                lease_seconds=LEASE,
                events=batch,
                first_seq=first,
            )

        await report(0, lines[:3])
        await report(0, lines[:3])  # the answer was lost: sent again
        await report(2, lines[2:])  # overlaps by one
        await report(5, [])
        seen = [
            e.data["line"]
            for e in await store.events_since(0, task_id=task.id)
            if e.kind == "run.output"
        ]
        assert seen == ["l0", "l1", "l2", "l3", "l4"]

    async def test_status_refuses_bad_event_kinds(self, store: Both) -> None:
        await pull_task(store)
        task = await take(store)
        for kind in ("task.status", "run", "RUN.output", "x.y", "run.out put"):
            with pytest.raises(InputError):
                await store.pull_status(
                    task.id,
                    lease_of(task),
                    now=utcnow(),
                    lease_seconds=LEASE,
                    events=[NewEvent(kind, {})],
                )
        with pytest.raises(InputError):
            await store.pull_status(
                task.id,
                lease_of(task),
                now=utcnow(),
                lease_seconds=LEASE,
                events=[NewEvent("run.output", {"bad": {1, 2}})],
            )
        kinds = [e.kind for e in await store.events_since(0, task_id=task.id)]
        assert "run.output" not in kinds  # nothing of a refused report was written

    async def test_another_agents_task_is_forbidden(self, store: Both) -> None:
        await pull_task(store)
        task = await take(store, "w1")
        for lease in ("pull:w2:made-up", lease_of(task)):
            with pytest.raises(Forbidden):
                await store.pull_status(
                    task.id, lease, now=utcnow(), lease_seconds=LEASE, agent="w2"
                )
            with pytest.raises(Forbidden):
                await receipt(
                    store,
                    Task(**{**_fields(task), "lease_owner": lease}),
                    Outcome(success=True),
                    agent="w2",
                )
        assert (await store.get_task(task.id)).status is S.RUNNING

    async def test_a_dispatch_task_is_forbidden(self, store: Both) -> None:
        local = await store.add_task(TaskSpec(title="local", agent="claude"), max_attempts=3)
        claimed = await store.claim(
            local.id, owner="pull:w1:x", host="h", lease_seconds=LEASE, now=utcnow()
        )
        assert claimed is not None
        with pytest.raises(Forbidden):
            await store.pull_status(
                local.id, "pull:w1:x", now=utcnow(), lease_seconds=LEASE, agent="w1"
            )
        with pytest.raises(Forbidden):
            await receipt(store, claimed, Outcome(success=True), agent="w1")
        assert (await store.get_task(local.id)).status is S.RUNNING

    # -- expiry ------------------------------------------------------------------------
    async def test_an_expired_lease_returns_the_task_and_late_reports_are_refused(
        self, store: Both
    ) -> None:
        await pull_task(store)
        t0 = utcnow()
        task = await store.dequeue("w1", ["claude"], lease_seconds=10, now=t0)
        assert task is not None
        assert await store.expire_pull_leases(t0 + timedelta(seconds=5)) == []
        (back,) = await store.expire_pull_leases(t0 + timedelta(seconds=11))
        assert (back.id, back.status, back.lease_owner) == (task.id, S.QUEUED, None)
        assert back.error_kind is ErrorKind.LOST and "pull:w1" in (back.error or "")
        moved = [e for e in await store.events_since(0, task_id=task.id) if e.kind == "task.status"]
        assert moved[-1].data["from"] == "running" and moved[-1].data["to"] == "queued"
        assert "lease of pull:w1 expired" in moved[-1].data["reason"]
        (run,) = await store.list_runs(task.id)
        assert run.status is RunStatus.LOST and run.ended_at is not None
        late = t0 + timedelta(seconds=12)
        with pytest.raises(LeaseLost):
            await store.pull_status(task.id, lease_of(task), now=late, lease_seconds=10, agent="w1")
        with pytest.raises(LeaseLost):
            await receipt(store, task, Outcome(success=True), agent="w1", now=late)
        # Back in the queue: taken again, with a new lease, as attempt 2.
        again = await store.dequeue("w2", ["claude"], lease_seconds=10, now=late)
        assert again is not None and again.id == task.id and again.attempt == 2
        assert again.lease_owner != task.lease_owner
        with pytest.raises(LeaseLost):  # the old holder still cannot report
            await store.pull_status(task.id, lease_of(task), now=late, lease_seconds=10, agent="w1")

    async def test_dequeue_takes_back_expired_leases_by_itself(self, store: Both) -> None:
        await pull_task(store)
        t0 = utcnow()
        first = await store.dequeue("w1", ["claude"], lease_seconds=1, now=t0)
        assert first is not None
        again = await store.dequeue(
            "w2", ["claude"], lease_seconds=1, now=t0 + timedelta(seconds=5)
        )
        assert again is not None and (again.id, again.attempt) == (first.id, 2)

    async def test_expiry_on_the_last_attempt_fails_the_task(self, store: Both) -> None:
        await store.add_task(
            TaskSpec(title="once", agent="claude", execution_mode=PULL), max_attempts=1
        )
        t0 = utcnow()
        task = await store.dequeue("w1", ["claude"], lease_seconds=1, now=t0)
        assert task is not None
        (gone,) = await store.expire_pull_leases(t0 + timedelta(seconds=2))
        assert gone.status is S.FAILED

    async def test_expiry_leaves_dispatched_tasks_alone(self, store: Both) -> None:
        local = await store.add_task(TaskSpec(title="local", agent="claude"), max_attempts=3)
        t0 = utcnow()
        assert await store.claim(local.id, owner="d", host="h", lease_seconds=1, now=t0)
        assert await store.expire_pull_leases(t0 + timedelta(seconds=60)) == []
        assert (await store.get_task(local.id)).status is S.RUNNING

    # -- receipts ----------------------------------------------------------------------
    async def test_a_successful_receipt_completes_the_task(self, store: Both) -> None:
        await pull_task(store, repo="app")
        task = await take(store)
        outcome = Outcome(
            success=True,
            summary="did it",
            session_id="sess-1",
            tokens_in=100,
            tokens_out=20,
            cost_usd=0.5,
        )
        done = await receipt(
            store,
            task,
            outcome,
            commits=["abc123", "def456"],
            branch="task/1-pull-me",
            exit_code=0,
            agent="w1",
        )
        assert done.status is S.COMPLETED
        assert (done.result_summary, done.session_id, done.branch) == (
            "did it",
            "sess-1",
            "task/1-pull-me",
        )
        assert (done.tokens_in, done.tokens_out, done.cost_usd) == (100, 20, 0.5)
        assert done.commits == ("abc123", "def456")
        assert (done.lease_owner, done.lease_expires_at, done.error) == (None, None, None)
        (run,) = await store.list_runs(task.id)
        assert (run.status, run.exit_code, run.tokens_in, run.session_id) == (
            RunStatus.SUCCEEDED,
            0,
            100,
            "sess-1",
        )
        assert run.ended_at is not None
        kinds = [e.kind for e in await store.events_since(0, task_id=task.id)]
        assert kinds[-2:] == ["run.finished", "task.status"]
        # Sent again (the answer was lost): the same task, nothing changes.
        assert await receipt(store, task, outcome, agent="w1") == done
        assert [e.kind for e in await store.events_since(0, task_id=task.id)] == kinds
        with pytest.raises(LeaseLost):
            await store.pull_status(
                task.id, lease_of(task), now=utcnow(), lease_seconds=LEASE, agent="w1"
            )

    async def test_a_reviewed_success_waits_for_its_review(self, store: Both) -> None:
        await pull_task(store, repo="app")
        task = await take(store)
        done = await receipt(store, task, Outcome(success=True), commits=["abc123"], review=True)
        assert done.status is S.REVIEW_PENDING and done.commits == ("abc123",)

    async def test_a_failed_receipt_retries_then_fails(self, store: Both) -> None:
        await store.add_task(
            TaskSpec(title="flaky", agent="claude", execution_mode=PULL), max_attempts=2
        )
        task = await take(store)
        now = utcnow()
        bad = Outcome(success=False, error_kind=ErrorKind.AGENT, error="exit 1", tokens_in=5)
        first = await receipt(store, task, bad, now=now, exit_code=1)
        assert first.status is S.QUEUED and first.error == "exit 1"
        assert first.not_before == now + timedelta(seconds=5)  # backoff_base
        assert first.tokens_in == 5
        assert await store.dequeue("w1", ["claude"], lease_seconds=LEASE, now=now) is None
        second = await store.dequeue(
            "w1", ["claude"], lease_seconds=LEASE, now=now + timedelta(seconds=6)
        )
        assert second is not None and second.attempt == 2
        final = await receipt(store, second, bad, now=now + timedelta(seconds=7))
        assert final.status is S.FAILED and final.tokens_in == 10
        assert [r.status for r in await store.list_runs(task.id)] == [RunStatus.FAILED] * 2

    async def test_auth_errors_are_not_retried_and_usage_limits_pause(self, store: Both) -> None:
        await pull_task(store, "auth")
        await pull_task(store, "limit")
        auth = await take(store)
        failed = await receipt(
            store, auth, Outcome(success=False, error_kind=ErrorKind.AUTH, error="401")
        )
        assert failed.status is S.FAILED
        assert failed.error == "agent claude on host pull:w1: 401"
        limit = await take(store)
        reset = utcnow() + timedelta(hours=3)
        paused = await receipt(
            store,
            limit,
            Outcome(success=False, error_kind=ErrorKind.USAGE_LIMIT, error="x", resume_at=reset),
        )
        assert paused.status is S.PAUSED and paused.not_before == reset

    async def test_a_cancelled_task_refuses_its_holder(self, store: Both) -> None:
        await pull_task(store)
        task = await take(store)
        await store.transition(task.id, S.CANCELLED, reason="cancelled by a user")
        with pytest.raises(LeaseLost, match="cancelled"):
            await store.pull_status(
                task.id, lease_of(task), now=utcnow(), lease_seconds=LEASE, agent="w1"
            )
        with pytest.raises(LeaseLost):
            await receipt(store, task, Outcome(success=True), agent="w1")
        assert (await store.get_task(task.id)).status is S.CANCELLED

    async def test_completion_unblocks_dependents(self, store: Both) -> None:
        first = await pull_task(store, "first")
        second = await pull_task(store, "second", depends_on=(first.id,))
        assert second.status is S.BLOCKED
        await receipt(store, await take(store), Outcome(success=True))
        assert (await store.get_task(second.id)).status is S.QUEUED
        assert (await take(store)).id == second.id

    async def test_only_one_of_two_racing_receipts_settles(
        self, store: Both, peer_store: Both
    ) -> None:
        await pull_task(store)
        task = await take(store)
        t0 = utcnow()
        results = await asyncio.gather(
            receipt(store, task, Outcome(success=True), now=t0),
            peer_store.expire_pull_leases(t0 + timedelta(seconds=LEASE + 1)),
            return_exceptions=True,
        )
        final = await store.get_task(task.id)
        settled, expired = results
        if isinstance(settled, LeaseLost):  # the expiry came first
            assert final.status is S.QUEUED and isinstance(expired, list) and len(expired) == 1
        else:
            assert final.status is S.COMPLETED and expired == []
        assert len(await store.list_runs(task.id)) == 1

    # -- the worker's mirror -----------------------------------------------------------
    async def test_mirror_task_writes_a_copy_under_its_id(self, store: Both) -> None:
        made = await pull_task(store, "origin side")
        copy = Task(**{**_fields(made), "id": 4242, "status": S.RUNNING, "attempt": 2})
        assert await store.mirror_task(copy) == copy
        assert await store.get_task(4242) == copy
        changed = Task(**{**_fields(copy), "title": "changed", "attempt": 3})
        assert await store.mirror_task(changed) == changed
        assert (await store.get_task(4242)).title == "changed"


def _fields(task: Task) -> dict[str, Any]:
    return {name: getattr(task, name) for name in Task.__slots__}
