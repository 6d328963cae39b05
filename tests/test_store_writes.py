"""What the store's hot writes cost on SQLite, counted (never timed): write transactions,
statements, and trips to aiosqlite's thread (``bosun.store.sqlite_driver``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from bosun.models import NewEvent, RunStatus, TaskStatus
from bosun.store import SqlStore
from bosun.store.base import RunUpdate
from tests.store_contract import add, utcnow
from tests.store_fixtures import db_path, migrated_db, store, used_db_path

__all__ = ["db_path", "migrated_db", "store", "used_db_path"]


@contextlib.contextmanager
def statements(store: SqlStore) -> Iterator[list[str]]:
    """The SQL statements ``store`` sends while the block runs (their first three words)."""
    seen: list[str] = []

    def record(_conn: Connection, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(" ".join(statement.split()[:3]))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


async def test_a_run_starts_and_ends_in_one_write_each(store: SqlStore) -> None:
    task = await add(store)
    await store.claim(task.id, owner="a", host="h", lease_seconds=60, now=utcnow())
    with statements(store) as started:
        run = await store.add_run(
            task.id,
            attempt=1,
            host="h",
            agent="a",
            ref={},
            status=RunStatus.RUNNING,
            events=lambda r: [NewEvent("run.started", {"run_id": r.id}, task_id=task.id)],
        )
    # no read first: the foreign key checks that the task exists
    assert started == ["BEGIN IMMEDIATE", "INSERT INTO runs", "INSERT INTO events"]
    end = RunUpdate(run.id, {"status": RunStatus.SUCCEEDED, "exit_code": 0})
    finished = NewEvent("run.finished", {"run_id": run.id}, task_id=task.id, run_id=run.id)
    with statements(store) as ended:
        await store.transition(
            task.id, TaskStatus.FAILED, owner="a", events=[finished], run=end, error="x"
        )
    assert ended == [
        "BEGIN IMMEDIATE",
        "UPDATE runs SET",
        "SELECT tasks.status, tasks.lease_owner",  # the lease and lifecycle checks only
        "UPDATE tasks SET",
        "INSERT INTO events",  # run.finished and task.status together
    ]


async def test_an_event_is_appended_without_reading_first(store: SqlStore) -> None:
    task = await add(store)
    run = await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
    with statements(store) as seen:
        await store.append_event(NewEvent("note", {"n": 1}, task_id=task.id, run_id=run.id))
    assert seen == ["BEGIN IMMEDIATE", "INSERT INTO events"]


def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every function aiosqlite's thread is given from now on, by name."""
    sent: list[str] = []
    queue: Callable[..., Awaitable[Any]] = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await queue(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return sent


async def test_a_statement_is_one_trip_to_the_driver_thread(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await add(store)
    await store.get_task(task.id)  # a pooled connection exists
    sent = trips(monkeypatch)
    await store.get_task(task.id)
    assert sent == ["_run"]  # the SELECT; no BEGIN, and no COMMIT or ROLLBACK with nothing open
    sent.clear()
    await store.update_task(task.id, branch="b")
    # none: with SQLite's write lock free, a write transaction (BEGIN IMMEDIATE, SELECT,
    # UPDATE, COMMIT) runs on the event loop's thread (see the contended case below)
    assert sent == []
    assert (await store.get_task(task.id)).branch == "b"  # committed


async def test_cancelled_reads_leave_no_transaction_open(store: SqlStore) -> None:
    # A read cancelled while its BEGIN or a SELECT is on the driver's thread must not hand
    # its connection back to the pool inside a transaction: the next BEGIN on it would
    # fail ("cannot start a transaction within a transaction").
    task = await add(store)
    await store.add_run(task.id, attempt=1, host="h", agent="a", ref={})
    for step in range(60):
        job = asyncio.ensure_future(store.list_runs(task.id))  # BEGIN and two SELECTs
        await asyncio.sleep(step * 0.0001)
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
    for _ in range(3):  # many at once: every pooled connection is used again
        listed = await asyncio.gather(*(store.list_runs(task.id) for _ in range(15)))
        assert all(len(runs) == 1 for runs in listed)
    assert (await store.update_task(task.id, branch="after")).branch == "after"
