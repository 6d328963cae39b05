"""The PostgreSQL store: the Store contract unchanged, plus what only PostgreSQL has (URL
forms, connection errors, migrations, locks, event ids in commit order, LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from bosun.errors import InvalidTransition, StoreError
from bosun.models import NewEvent, Task, TaskSpec, TaskStatus
from bosun.store import SqlStore, dialects, open_store
from bosun.store.base import RunningTask, TaskFilter
from bosun.store.connect import alembic_config
from bosun.store.schema import metadata
from tests.contract_forge import ForgeStoreContract
from tests.contract_hosts import HostStoreContract
from tests.contract_tokens import TokenContract
from tests.pg import FreshDatabase, fresh_pg_database, pg_database, pg_server, pg_url
from tests.store_contract import (
    StoreContract,
    add,
    all_events,
    task_in,
    utcnow,
    wakes_on_peer_submit,
)
from tests.store_fixtures import ADD_TASK_SCRIPT, migrate_to, pg_peer_store, pg_store

__all__ = [
    "fresh_pg_database",
    "pg_database",
    "pg_peer_store",
    "pg_server",
    "pg_store",
    "pg_url",
]

pytestmark = pytest.mark.postgres


class TestPostgresStoreContract(StoreContract):
    """Every rule of the Store protocol, on PostgreSQL."""


class TestPostgresForgeStore(ForgeStoreContract):
    """The review loop's rows (``tests/contract_forge.py``) on PostgreSQL."""


class TestPostgresTokenContract(TokenContract):
    """API tokens (``bosun.store.sql_tokens``) on PostgreSQL."""


class TestPostgresHostStoreContract(HostStoreContract):
    """The host registry (``bosun.store.sql_hosts``) on PostgreSQL."""


# The pull protocol's contract runs on PostgreSQL in tests/test_pull_postgres.py, the
# review loop's in tests/test_review_store.py.


# -- URLs and connection errors ------------------------------------------------------------
def _with_scheme(url: str, scheme: str) -> str:
    return scheme + url.split("://", 1)[1]


@pytest.mark.parametrize(
    ("scheme", "query"),
    [
        ("postgresql://", ""),
        ("postgres://", ""),
        ("postgresql+asyncpg://", ""),
        ("postgresql://", "?timeout=30&command_timeout=60"),
    ],
)
async def test_every_postgres_url_form_opens_the_store(
    pg_url: str, scheme: str, query: str
) -> None:
    opened = await open_store(_with_scheme(pg_url, scheme) + query)
    try:
        assert opened.engine.url.drivername == "postgresql+asyncpg"
        task = await add(opened, scheme)
        assert (await opened.get_task(task.id)).title == scheme
        await opened.wait_for_change(0.01)  # the LISTEN connection takes the query too
        ops = opened._ops
        assert isinstance(ops, dialects.PostgresOps) and ops._listener is not None
    finally:
        await opened.aclose()


@pytest.mark.parametrize(
    ("url", "message", "hint"),
    [
        ("postgresql+psycopg2://u:s3cret@127.0.0.1/db", "driver", "asyncpg"),
        ("postgresql+pg8000://u:s3cret@127.0.0.1/db", "driver", "asyncpg"),
        ("postgresql://u:s3cret@127.0.0.1", "names no database", "createdb"),
        ("postgres://u:s3cret@127.0.0.1:5432/", "names no database", "createdb"),
        ("postgresql://u:s3cret@127.0.0.1/db?timeout=soon", "positive number", "timeout=30"),
    ],
)
async def test_bad_postgres_urls_are_refused(url: str, message: str, hint: str) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        await open_store(url)
    assert hint in (caught.value.hint or "")
    assert "s3cret" not in str(caught.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_is_a_store_error_with_a_hint() -> None:
    port = _free_port()  # nothing listens there once the socket is closed
    with pytest.raises(
        StoreError, match=f"cannot reach the PostgreSQL server at 127.0.0.1:{port}"
    ) as caught:
        await open_store(f"postgresql://bosun:s3cret@127.0.0.1:{port}/bosun")
    assert "PostgreSQL is running" in (caught.value.hint or "")
    assert "s3cret" not in str(caught.value)


async def test_missing_database_is_a_store_error_with_a_hint(pg_server: str) -> None:
    url = make_url(pg_server).set(database="bosun_test_does_not_exist", password="s3cret")
    with pytest.raises(StoreError, match="does not exist") as caught:
        await open_store(url.render_as_string(hide_password=False))
    assert "createdb" in (caught.value.hint or "")
    assert "s3cret" not in str(caught.value)


async def test_failed_authentication_is_a_store_error_with_a_hint(pg_url: str) -> None:
    # The server trusts 127.0.0.1, so a role that does not exist is how authentication
    # fails here (a wrong password fails with SQLSTATE 28P01 and its own hint).
    url = make_url(pg_url).set(username="no_such_bosun_role", password="s3cret")
    with pytest.raises(StoreError, match="no_such_bosun_role") as caught:
        await open_store(url.render_as_string(hide_password=False))
    assert "user" in (caught.value.hint or "")
    assert "s3cret" not in str(caught.value)


async def test_connections_the_server_dropped_are_replaced(pg_url: str) -> None:
    """A restarted server (here: every bosun session on the database terminated) costs a
    reconnect, not an error: pooled connections are checked before use."""
    opened = await open_store(pg_url)
    try:
        await asyncio.gather(*(add(opened, f"before {i}") for i in range(4)))  # fill the pool
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(False)
        admin = await asyncpg.connect(dsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name LIKE 'bosun%'"
            )
        finally:
            await admin.close()
        assert killed >= 1
        task = await add(opened, "after")
        assert (await opened.get_task(task.id)).title == "after"
    finally:
        await opened.aclose()


# -- migrations -------------------------------------------------------------------------------
async def test_migrations_create_the_schema_on_a_fresh_database(
    fresh_pg_database: FreshDatabase,
) -> None:
    url = fresh_pg_database()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    first = await open_store(url)
    try:
        task = await add(first, "before reopening")
        async with first.engine.connect() as conn:
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
            columns = await conn.exec_driver_sql(
                "SELECT table_name, column_name, data_type, column_default"
                " FROM information_schema.columns WHERE table_schema = 'public'"
            )
            types: dict[str, str] = {}
            defaults: dict[str, str] = {}
            for table, column, data_type, default in map(tuple, columns.all()):
                types[f"{table}.{column}"] = str(data_type)
                if column == "id":
                    defaults[str(table)] = str(default)
    finally:
        await first.aclose()
    assert version == [(head,)]
    assert diff == []  # the migrations make exactly what bosun.store.schema describes
    assert types["tasks.labels"] == types["events.data"] == types["hosts.config"] == "json"
    assert types["tasks.not_before"] == "timestamp with time zone"
    assert types["tokens.created_at"] == "timestamp with time zone"
    for table in ("tasks", "runs", "events", "tokens"):
        assert "nextval(" in defaults[table], table  # a sequence: ids are never reused
    again = await open_store(url)
    try:
        assert await again.get_task(task.id) == task
    finally:
        await again.aclose()


async def _runs_indexes(store: SqlStore) -> tuple[str, dict[str, str]]:
    """The schema's revision, and the indexes of ``runs`` (name: definition)."""
    async with store.engine.connect() as conn:
        version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar()
        rows = await conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename = 'runs'"
        )
        return str(version), {str(n): str(d) for n, d in map(tuple, rows.all())}


async def test_migration_0004_adds_the_runs_index_and_its_downgrade_drops_it(
    fresh_pg_database: FreshDatabase,
) -> None:
    opened = await open_store(fresh_pg_database())
    try:
        version, found = await _runs_indexes(opened)
        assert version == "0004"
        assert found["ix_runs_status_host"].endswith("USING btree (status, host)")
        await migrate_to(opened, "0003")
        version, found = await _runs_indexes(opened)
        assert version == "0003" and "ix_runs_status_host" not in found
        assert "ix_runs_task_id_id" in found
        await migrate_to(opened, "head")
        version, found = await _runs_indexes(opened)
        assert version == "0004"
        assert found["ix_runs_status_host"].endswith("USING btree (status, host)")
        async with opened.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
        assert diff == []
    finally:
        await opened.aclose()


async def test_concurrent_first_open_creates_the_schema_once(
    fresh_pg_database: FreshDatabase,
) -> None:
    url = fresh_pg_database()
    stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
    try:
        tasks = [await add(s, f"from {i}") for i, s in enumerate(stores)]
        assert len({t.id for t in tasks}) == 4
    finally:
        for opened in stores:
            await opened.aclose()


async def test_a_database_from_a_newer_bosun_is_refused(fresh_pg_database: FreshDatabase) -> None:
    url = fresh_pg_database()
    first = await open_store(url)
    try:
        async with first.engine.begin() as conn:
            await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    finally:
        await first.aclose()
    with pytest.raises(StoreError, match="newer bosun"):
        await open_store(url)


# -- concurrency: what SQLite's single writer gave for free ----------------------------------
async def test_event_ids_are_in_commit_order(store: SqlStore, peer_store: SqlStore) -> None:
    """A follower reading ``events_since(cursor)`` while eight writers in two stores append
    concurrently sees every event: an id never becomes visible after a higher one."""
    done = asyncio.Event()

    async def writer(s: SqlStore, name: str) -> list[int]:
        ids = []
        for i in range(40):
            ids.append((await s.append_event(NewEvent("tick", {"w": name, "i": i}))).id)
        return ids

    async def follower() -> list[int]:
        seen: list[int] = []
        while True:
            finished = done.is_set()
            while batch := await store.events_since(seen[-1] if seen else 0, limit=1000):
                seen.extend(e.id for e in batch)
            if finished:
                return seen

    following = asyncio.ensure_future(follower())
    try:
        written = await asyncio.gather(
            *(writer(s, f"{s is store}-{i}") for i in range(4) for s in (store, peer_store))
        )
    finally:
        done.set()
    seen = await asyncio.wait_for(following, 30)
    everything = sorted(i for ids in written for i in ids)
    assert seen == everything  # in order, none skipped, none twice
    assert all(ids == sorted(ids) for ids in written)


async def test_scope_locks_hold_across_stores(store: SqlStore, peer_store: SqlStore) -> None:
    """Claims from two stores at once never run two tasks with colliding scopes, though
    no two of them lock the same task row."""
    for _ in range(3):
        cursor = await store.last_event_id()
        colliding = [
            (await add(store, f"src {i}", repo="r", scope=("src/x",) if i % 2 else ("src",))).id
            for i in range(12)
        ]

        def take_all(
            offered: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            return [(t.id, "h") for t in offered]

        async def batch(s: SqlStore) -> None:
            await s.claim_batch(take_all, owner="b", lease_seconds=60, now=utcnow(), limit=2)

        async def singles(s: SqlStore, ids: list[int]) -> None:
            for task_id in ids:
                await s.claim(task_id, owner="s", host="h", lease_seconds=60, now=utcnow())

        await asyncio.gather(
            singles(store, colliding[-4:]), singles(peer_store, colliding[-8:-4]), batch(store)
        )
        running = await store.running()
        assert len(running) == 1
        claims = [
            e
            for e in await store.events_since(cursor)
            if e.kind == "task.status" and e.data["to"] == "running"
        ]
        assert [e.task_id for e in claims] == [running[0].id]  # claimed once
        for task_id in colliding:
            await store.transition(task_id, TaskStatus.CANCELLED)


async def test_dependencies_completed_at_once_unblock_the_dependent(
    store: SqlStore, peer_store: SqlStore
) -> None:
    for _ in range(10):
        a = await task_in(store, TaskStatus.RUNNING)
        b = await task_in(store, TaskStatus.RUNNING)
        c = await add(store, "after a and b", depends_on=(a.id, b.id))
        assert c.status is TaskStatus.BLOCKED
        await asyncio.gather(
            store.transition(a.id, TaskStatus.COMPLETED),
            peer_store.transition(b.id, TaskStatus.COMPLETED),
        )
        assert (await store.get_task(c.id)).status is TaskStatus.QUEUED


async def test_a_submit_racing_its_dependency_is_never_left_blocked(
    store: SqlStore, peer_store: SqlStore
) -> None:
    for _ in range(10):
        a = await task_in(store, TaskStatus.RUNNING)
        submit = asyncio.ensure_future(add(peer_store, "after a", depends_on=(a.id,)))
        await store.transition(a.id, TaskStatus.COMPLETED)
        c = await submit
        assert (await store.get_task(c.id)).status is TaskStatus.QUEUED


async def test_concurrent_writers_lose_no_update(store: SqlStore, peer_store: SqlStore) -> None:
    """Cancels, claims, unblocking and output from two stores at once: every task's last
    ``task.status`` event names the status it has, and nothing deadlocks."""
    parents = [await task_in(store, TaskStatus.RUNNING) for _ in range(6)]
    children = [
        (await add(store, f"child {i}", depends_on=(p.id,))).id for i, p in enumerate(parents)
    ]
    queued = [(await add(store, f"q{i}")).id for i in range(30)]
    runs = [await store.add_run(p.id, attempt=1, host="h", agent="a", ref={}) for p in parents]

    def take_two(offered: Sequence[Task], running: Sequence[RunningTask]) -> list[tuple[int, str]]:
        return [(t.id, "h") for t in offered[:2]]

    async def claimer(s: SqlStore) -> None:
        for _ in range(12):
            await s.claim_batch(take_two, owner="w", lease_seconds=60, now=utcnow(), limit=4)

    async def canceller(s: SqlStore, ids: list[int]) -> None:
        for task_id in ids:
            with contextlib.suppress(InvalidTransition):
                await s.transition(task_id, TaskStatus.CANCELLED, reason="user")

    async def completer() -> None:
        for p in parents:
            await peer_store.transition(p.id, TaskStatus.COMPLETED)

    async def output() -> None:
        for n in range(1, 11):
            for r in runs:
                await store.append_output(
                    r.id, [NewEvent("run.output", {"n": n})], stdout_offset=n, stderr_offset=0
                )

    await asyncio.wait_for(
        asyncio.gather(
            claimer(store),
            claimer(peer_store),
            canceller(peer_store, queued[::2]),
            canceller(store, children),
            completer(),
            output(),
        ),
        60,
    )
    last_status: dict[int, str] = {}
    for event in await all_events(store):
        if event.kind == "task.status" and event.task_id is not None:
            last_status[event.task_id] = event.data["to"]
    for task in await store.list_tasks(TaskFilter(limit=1000)):
        assert last_status[task.id] == task.status.value, task
        assert (task.lease_owner is not None) == (task.status is TaskStatus.RUNNING), task
    for child in children:
        assert (await store.get_task(child)).status is TaskStatus.CANCELLED


# -- LISTEN / NOTIFY ----------------------------------------------------------------------------


@pytest.fixture
async def deaf_store(pg_url: str) -> AsyncIterator[SqlStore]:
    """A store that would poll once an hour: only a notification can wake it in time."""
    opened = await open_store(pg_url, poll_interval=3600)
    yield opened
    await opened.aclose()


async def _child_submits(url: str) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", ADD_TASK_SCRIPT, url)
    try:
        assert await asyncio.wait_for(child.wait(), 60) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


@pytest.mark.parametrize("wait", ["wait_for_change", "wait_for_work"])
async def test_a_write_by_another_process_is_pushed(
    deaf_store: SqlStore, pg_url: str, wait: str
) -> None:
    await add(deaf_store, "mine")
    await deaf_store.wait_for_change(0.01)  # LISTENing from here on
    waiter = asyncio.ensure_future(getattr(deaf_store, wait)(600))
    try:
        await _child_submits(pg_url)
        await asyncio.wait_for(waiter, 30)  # the poll would come after an hour
    finally:
        waiter.cancel()
    titles = [t.title for t in await deaf_store.list_tasks()]
    assert titles == ["mine", "from another process"]


async def test_output_of_another_store_is_no_work(deaf_store: SqlStore, pg_url: str) -> None:
    peer = await open_store(pg_url)
    try:
        task = await add(peer, "running elsewhere")
        run = await peer.add_run(task.id, attempt=1, host="h", agent="a", ref={})
        await deaf_store.wait_for_work(0.01)  # listening, and any earlier work consumed
        work = asyncio.ensure_future(deaf_store.wait_for_work(600))
        change = asyncio.ensure_future(deaf_store.wait_for_change(600))
        try:
            await asyncio.sleep(0.05)
            await peer.append_output(
                run.id, [NewEvent("run.output", {"line": "x"})], stdout_offset=2, stderr_offset=0
            )
            await asyncio.wait_for(change, 30)  # the output is a change ...
            assert not work.done()  # ... but no work: the dispatcher sleeps on
            await add(peer, "new work")
            await asyncio.wait_for(work, 30)
        finally:
            work.cancel()
            change.cancel()
    finally:
        await peer.aclose()


async def test_work_pushed_between_two_waits_is_not_missed(
    deaf_store: SqlStore, pg_url: str
) -> None:
    """A submit by another store while the dispatcher is busy (not waiting) ends its next
    wait at once, as a poll would have."""
    peer = await open_store(pg_url)
    try:
        await deaf_store.wait_for_work(0.01)  # listening
        await add(peer, "while nobody waits")
        for _ in range(100):  # until the notification has arrived
            if deaf_store._peer_work != deaf_store._peer_work_seen:
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(deaf_store.wait_for_work(600), 30)
    finally:
        await peer.aclose()


async def test_a_lost_listen_connection_falls_back_to_polling(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialects, "LISTEN_RETRY_SECONDS", 0.2)
    watched = await open_store(pg_url, poll_interval=0.05)
    peer = await open_store(pg_url)
    try:
        await watched.wait_for_change(0.01)
        ops = watched._ops
        assert isinstance(ops, dialects.PostgresOps)
        listener = ops._listener
        assert listener is not None
        async with peer.engine.connect() as conn:
            await conn.execute(
                sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": listener.get_server_pid()}
            )
        for _ in range(100):  # the termination reaches the listener's connection
            if ops._listener is None:
                break
            await asyncio.sleep(0.05)
        assert ops._listener is None
        # waits still see other stores' writes (by polling, then by LISTEN again)
        for i in range(3):
            await wakes_on_peer_submit(watched.wait_for_change(600), peer)
            await asyncio.sleep(0.25 * i)
        assert ops._listener is not None and not ops._listener.is_closed()
    finally:
        await peer.aclose()
        await watched.aclose()


# -- two replicas ---------------------------------------------------------------------------
#: The agent of the replica test: appends the prompt's first line ("# Task: <title>") and
#: its run directory to a file shared by every run, in one write.
MARK = 'read -r line; echo "$line|$2" >> "$1"'
TASKS = 1000


def _replica_config(cfg: Path, url: str, host: str, log: Path) -> None:
    cfg.mkdir()
    command = json.dumps(["sh", "-c", MARK, "sh", str(log), "{run_dir}"])
    (cfg / "bosun.toml").write_text(
        f"""
[database]
url = "{url}"

[agents.mark]
command = {command}

[hosts.{host}]
kind = "local"
max_concurrent = 8

[limits]
max_concurrent = 16
heartbeat_seconds = 2
lease_seconds = 30
poll_interval = 0.5
"""
    )


_FINISHED = sa.text("SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed')")


async def test_two_serve_processes_share_the_queue_and_run_each_task_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Two ``bosun serve`` replicas on one database take 1,000 queued tasks between them;
    every task runs exactly once (runs, events, and the agent's own record agree)."""
    log = tmp_path / "runs.log"
    for host in ("a", "b"):
        _replica_config(tmp_path / host, pg_url, host, log)
    store = await open_store(pg_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for start in range(0, TASKS, 50):
            await asyncio.gather(
                *(
                    store.add_task(TaskSpec(title=f"t{i}", agent="mark"), max_attempts=1)
                    for i in range(start, start + 50)
                )
            )
        for host in ("a", "b"):
            cfg = tmp_path / host
            with (tmp_path / f"{host}.err").open("wb") as err:
                procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 (started once; waited for in a thread)
                        [sys.executable, "-m", "bosun", "serve", "--port", "0", "--quiet"],
                        cwd=cfg,
                        env={**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")},
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240  # a hang detector, not a speed check
        while loop.time() < deadline and all(p.poll() is None for p in procs):
            async with store.engine.connect() as conn:
                finished = await conn.scalar(_FINISHED)
            if finished == TASKS:
                break
            await asyncio.sleep(0.5)
        for proc in procs:
            assert proc.poll() is None, (tmp_path / "a.err").read_text() + (
                tmp_path / "b.err"
            ).read_text()
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert await asyncio.to_thread(proc.wait, 60) == 0
        tasks = await store.list_tasks(TaskFilter(limit=TASKS + 1))
        assert [t.status for t in tasks] == [TaskStatus.COMPLETED] * TASKS
        runs = [run for t in tasks for run in await store.list_runs(t.id)]
        events = await all_events(store)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await store.aclose()
    assert sorted(r.task_id for r in runs) == [t.id for t in tasks]  # one run each
    assert {r.attempt for r in runs} == {1}
    by_host = Counter(r.host for r in runs)
    assert set(by_host) == {"a", "b"}, by_host  # both replicas took a share
    claims = [
        e.task_id or 0 for e in events if e.kind == "task.status" and e.data["to"] == "running"
    ]
    assert sorted(claims) == [t.id for t in tasks]  # each claimed once
    lines = log.read_text().splitlines()
    titles = Counter(line.split("|")[0] for line in lines)
    assert titles == Counter(f"# Task: t{i}" for i in range(TASKS))  # each ran exactly once
    assert len({line.split("|")[1] for line in lines}) == TASKS  # in run dirs of their own
