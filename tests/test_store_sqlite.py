"""The SQLite store: the Store contract, plus what only SQLite has (pragmas, BEGIN
IMMEDIATE, migrations on open, the runnable index, several processes on one file)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection

from bosun.errors import StoreError
from bosun.models import ExecutionMode, TaskStatus
from bosun.store import SqlStore, Store, open_store
from bosun.store.connect import HEAD_REVISION, alembic_config
from bosun.store.schema import metadata
from bosun.store.sql_base import WRITE_OPTION
from bosun.store.sql_hosts import maybe_waiting
from tests.store_contract import StoreContract, add, utcnow
from tests.store_fixtures import (
    ADD_TASK_SCRIPT,
    db_path,
    migrate_to,
    migrated_db,
    peer_store,
    store,
    used_db_path,
)

__all__ = ["db_path", "migrated_db", "peer_store", "store", "used_db_path"]


class TestSqliteStoreContract(StoreContract):
    """Every rule of the Store protocol, on a SQLite file."""


def _as_store(store: SqlStore) -> Store:
    return store  # mypy checks here that SqlStore implements the protocol


async def test_sql_store_is_a_store(store: SqlStore) -> None:
    assert isinstance(_as_store(store), Store)


async def test_pragmas_are_set_on_every_connection(store: SqlStore) -> None:
    async with store.engine.connect() as conn:
        values = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert values == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 10_000,
        "synchronous": 1,
    }


async def test_writes_begin_immediate_and_reads_do_not(store: SqlStore) -> None:
    seen: list[str] = []

    def record(conn: Connection, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("BEGIN"):
            seen.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        task = await add(store)
        assert seen == ["BEGIN IMMEDIATE"]
        await store.list_runs(task.id)  # two statements: one deferred read transaction
        assert seen == ["BEGIN IMMEDIATE", "BEGIN"]
        await store.get_task(task.id)  # one statement: its own snapshot, no BEGIN
        assert seen == ["BEGIN IMMEDIATE", "BEGIN"]
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


async def test_a_held_write_lock_makes_other_writers_wait(
    store: SqlStore, peer_store: SqlStore
) -> None:
    task = await add(store)
    async with store.engine.connect() as conn:
        await conn.execution_options(**{WRITE_OPTION: True})
        async with conn.begin():
            # This transaction holds the write lock: the peer's claim must wait for it.
            claim = asyncio.ensure_future(
                peer_store.claim(task.id, owner="p", host="h", lease_seconds=60, now=utcnow())
            )
            await asyncio.sleep(0.2)
            assert not claim.done()
            # and reads are not blocked by a writer (WAL)
            assert (await peer_store.get_task(task.id)).status is TaskStatus.QUEUED
    claimed = await asyncio.wait_for(claim, 10)
    assert claimed is not None
    assert claimed.lease_owner == "p"


async def test_migrations_run_on_open_and_reopen_is_a_no_op(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head == HEAD_REVISION  # the fast path of open_store skips alembic at this revision
    first = await open_store(url)
    task = await add(first)
    await first.aclose()
    again = await open_store(url)
    try:
        assert await again.get_task(task.id) == task
    finally:
        await again.aclose()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        ddl = dict(raw.execute("SELECT name, sql FROM sqlite_master WHERE type='table'"))
    for table in ("tasks", "runs", "events"):
        assert "AUTOINCREMENT" in ddl[table], table  # ids are never reused


async def test_schema_module_matches_the_migrations(store: SqlStore) -> None:
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []


async def test_migration_0004_adds_the_runs_index_and_its_downgrade_drops_it(
    store: SqlStore,
) -> None:
    async def state() -> tuple[str, set[str]]:
        async with store.engine.connect() as conn:
            version_row = await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            version = version_row.scalar()
            names = await conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'"
            )
            return str(version), {str(n) for (n,) in names}

    assert await state() == ("0004", {"ix_runs_task_id_id", "ix_runs_status_host"})
    await migrate_to(store, "0003")
    assert await state() == ("0003", {"ix_runs_task_id_id"})
    await migrate_to(store, "head")
    assert await state() == ("0004", {"ix_runs_task_id_id", "ix_runs_status_host"})
    async with store.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert diff == []


async def test_the_runs_a_host_may_wait_for_are_index_ranges(store: SqlStore) -> None:
    """``waiting_runs`` (the reconcile of each host) and ``waiting_counts`` (``bosun
    hosts``) read only the runs in a status that may keep a host waiting, of the hosts
    asked about: not every run ever made."""
    task = await add(store)
    ended = [{"status": "succeeded", "host": f"h{i % 20}"} for i in range(5000)]
    maybe = [
        {"status": s, "host": h} for s in ("lost", "starting", "running") for h in ["h1", "h2"]
    ]
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO runs (task_id, attempt, host, agent, status, ref, stdout_offset,"
                " stderr_offset, tokens_in, tokens_out, cost_usd, started_at) VALUES (:task,"
                " 1, :host, 'echo', :status, '{}', 0, 0, 0, 0, 0, :now)"
            ),
            [{**r, "task": task.id, "now": utcnow().isoformat()} for r in ended + maybe * 10],
        )

    async def plan_of(hosts: list[str] | None, found: int) -> list[str]:
        statement = maybe_waiting(hosts)
        sql = str(
            statement.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
        )
        async with store.engine.connect() as conn:
            assert len((await conn.execute(statement)).all()) == found, hosts
            result = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            return [str(tuple(row)[3]) for row in result if " runs " in f"{tuple(row)[3]} "]

    # bosun never runs ANALYZE: the planner's default estimates
    by_host = ["SEARCH runs USING INDEX ix_runs_status_host (status=? AND host=?)"]
    assert await plan_of(["h1"], 30) == by_host
    assert await plan_of(["h1", "h2", "h3"], 60) == by_host
    assert await plan_of(None, 60) == ["SEARCH runs USING INDEX ix_runs_status_host (status=?)"]
    # statistics that say a status is a quarter of the runs still leave one host's read,
    # the reconcile's, on the index (an ORDER BY id would make it a scan)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("ANALYZE")
    assert await plan_of(["h1"], 30) == by_host


async def test_concurrent_first_open_creates_the_schema_once(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
    try:
        tasks = [await add(s, f"from {i}") for i, s in enumerate(stores)]
        assert len({t.id for t in tasks}) == 4
    finally:
        for opened in stores:
            await opened.aclose()


async def test_runnable_is_an_index_range_scan(store: SqlStore) -> None:
    rows = [{"status": "queued", "priority": i % 7, "mode": "dispatch"} for i in range(5000)] + [
        {"status": s, "priority": 9, "mode": "dispatch"} for s in ("running", "failed")
    ] * 500
    rows += [{"status": "queued", "priority": 50, "mode": "http_pull"}] * 100
    rows += [{"status": "rework", "priority": 6, "mode": "dispatch"}] * 100
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO tasks (title, body, status, agent, constraints, validation, labels,"
                " priority, scope, depends_on, execution_mode, attempt, max_attempts,"
                " review_count, tokens_in, tokens_out, cost_usd, commits, created_at,"
                " updated_at) VALUES ('t', '', :status, 'echo', '[]', '[]', '[]', :priority,"
                " '[]', '[]', :mode, 0, 3, 0, 0, 0, 0, '[]', :now, :now)"
            ),
            [{**r, "now": utcnow().isoformat()} for r in rows],
        )
        await conn.exec_driver_sql("ANALYZE")
    now = utcnow()
    top = await store.runnable(now, 10)
    assert [t.priority for t in top] == [6] * 10
    assert [t.id for t in top] == sorted(t.id for t in top)
    assert all(t.execution_mode is ExecutionMode.DISPATCH for t in top)
    assert {t.status for t in top} == {TaskStatus.QUEUED}  # lower ids than the rework ones
    sql = str(
        store.runnable_statement(now, 10).compile(
            dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    async with store.engine.connect() as conn:
        result = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
        plan = [(int(row[0]), int(row[1]), str(row[3])) for row in map(tuple, result)]
    details = {node: detail for node, _parent, detail in plan}
    on_tasks = [d for d in details.values() if " tasks " in f"{d} "]
    index_range = "SEARCH tasks USING INDEX ix_tasks_runnable (status=? AND execution_mode=?)"
    assert on_tasks == [index_range] * 2, plan  # one range per runnable status, no scan
    # Inside each branch the index gives the order: no sort over the matching rows.
    for _node, parent, detail in plan:
        if details.get(parent, "").startswith("CO-ROUTINE"):
            assert "TEMP B-TREE" not in detail, plan


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "cannot parse"),
        ("postgresql+psycopg2://bosun:s3cret@db.example/bosun", "not supported"),
        ("mysql://localhost/bosun", "not supported"),
        ("sqlite+pysqlite:///x.db", "driver"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
async def test_bad_urls_are_store_errors(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        await open_store(url)
    assert caught.value.hint is not None
    assert "s3cret" not in str(caught.value)


async def test_unusable_files_are_store_errors(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just some bytes" * 200)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path in (tmp_path / "adir", garbage, blocker / "sub" / "bosun.db"):
        with pytest.raises(StoreError) as caught:
            await open_store(f"sqlite:///{path}")
        assert caught.value.hint is not None, path


async def test_a_database_from_a_newer_bosun_is_refused(db_path: Path) -> None:
    first = await open_store(f"sqlite:///{db_path}")
    await first.aclose()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(StoreError, match="newer bosun"):
        await open_store(f"sqlite:///{db_path}")


async def test_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "bosun.db"
    opened = await open_store(f"sqlite:///{path}")
    await opened.aclose()
    assert path.is_file()


async def test_a_write_by_another_process_wakes_a_waiter(
    store: SqlStore, used_db_path: Path
) -> None:
    await add(store, "mine")
    waiter = asyncio.ensure_future(store.wait_for_change(60))
    await asyncio.sleep(0.1)  # let the waiter take its baseline before the child starts
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ADD_TASK_SCRIPT, f"sqlite:///{used_db_path}"
    )
    try:
        await asyncio.wait_for(waiter, 30)
        assert await asyncio.wait_for(child.wait(), 30) == 0
    finally:
        waiter.cancel()
        if child.returncode is None:
            child.kill()
            await child.wait()
    titles = [t.title for t in await store.list_tasks()]
    assert titles == ["mine", "from another process"]
