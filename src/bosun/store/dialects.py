"""What differs between database backends of ``SqlStore``, behind one small protocol.

``SqlStore`` is portable SQLAlchemy Core except for these few operations:

- **SQLite** admits one writer at a time (``BEGIN IMMEDIATE``), so every write transaction
  is serialised with every other one, in this and in every other process: the locks are
  free, and other processes' writes are noticed by polling the event log.
- **PostgreSQL** runs writers concurrently (READ COMMITTED), so what must not interleave
  takes a transaction-level advisory lock (released by COMMIT or ROLLBACK, never leaked by
  a crash): claims (the scope check must see every running task), dependency bookkeeping
  (a task must not stay blocked on a dependency completed at the same moment) and the
  event log (ids from a sequence are handed out in INSERT order, not COMMIT order; holding
  the lock from the INSERT to the COMMIT makes the two the same). Rows a transaction reads
  and then changes are locked with ``SELECT ... FOR NO KEY UPDATE`` (``SKIP LOCKED`` when
  picking claimable tasks). Writes ``NOTIFY`` a channel in their transaction, and each
  store LISTENs on one connection of its own, so waiters in other processes wake within
  milliseconds of the COMMIT. See docs/postgres.md.

Lock order, which keeps PostgreSQL free of deadlocks between bosun's own transactions:
advisory locks for claims or dependencies first, then task rows, the event-log lock last.
A dispatched run's row comes before its task's (``append_output`` updates the run, then
touches the task; the end of a run, ``transition(run=...)``, does the same); the pull
protocol's transactions lock a pull task before its run, rows no dispatch transaction
touches. After taking the event-log lock a transaction waits for no other transaction: it
inserts its events as its last statement (``NOTIFY`` and COMMIT follow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from bosun.errors import StoreError
from bosun.store.schema import tasks

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

#: Called with ``work`` (the write may have made a task claimable) when another store's
#: write transaction committed.
Wake = Callable[[bool], None]

#: LISTEN/NOTIFY channel of every bosun store on a PostgreSQL database (channels are per
#: database, so two bosun databases on one server do not hear each other).
CHANNEL = "bosun"
#: Seconds a PostgreSQL connection attempt may take before it fails.
CONNECT_TIMEOUT = 10.0
#: What bosun's sessions show in ``pg_stat_activity``.
SERVER_SETTINGS = {"application_name": "bosun"}
#: After a failed LISTEN connection, wait this long before trying again (polling meanwhile).
LISTEN_RETRY_SECONDS = 5.0
#: Write transactions of one process at a time (the rest wait here, not for a pool slot).
MAX_PG_WRITERS = 8
#: asyncpg keyword arguments that are numbers, though a URL's query gives them as text.
NUMERIC_CONNECT_ARGS = ("timeout", "command_timeout")


def coerce_connect_args(params: MutableMapping[str, Any]) -> None:
    """Turn the numeric connection parameters of a URL's query into numbers (in place)."""
    for name in NUMERIC_CONNECT_ARGS:
        if isinstance(params.get(name), str):
            params[name] = float(params[name])


def _advisory_key(n: int) -> int:
    # b"bosun" in the high bytes, so bosun's keys do not collide with small numbers other
    # programs on the same database may use; advisory locks are per database anyway.
    return int.from_bytes(b"bosun\x00\x00" + bytes([n]), "big", signed=True)


#: Advisory lock keys (transaction-level: ``pg_advisory_xact_lock``).
CLAIM_LOCK = _advisory_key(1)
EVENT_LOG_LOCK = _advisory_key(2)
DEPENDENCY_LOCK = _advisory_key(3)
MIGRATION_LOCK = _advisory_key(4)

_XACT_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")
_NOTIFY = sa.select(sa.func.pg_notify(sa.bindparam("channel"), sa.bindparam("payload")))


class DialectOps(Protocol):
    """The backend-specific part of ``SqlStore``."""

    #: Whether transactions lock the rows they read to change (``SELECT ... FOR NO KEY
    #: UPDATE``); without row locks (SQLite) every write transaction excludes all others.
    row_locks: bool

    def writer_slot(self) -> AbstractAsyncContextManager[object]:
        """Entered around every write transaction of this process."""
        ...

    async def lock_for_claim(self, conn: AsyncConnection) -> None:
        """Serialise claims, so the scope check of one claim sees every running task."""
        ...

    async def lock_event_log(self, conn: AsyncConnection) -> None:
        """Make event ids increase in commit order (the cursor must never skip back).
        Take it right before inserting events, as the last lock of the transaction."""
        ...

    async def lock_dependencies(self, conn: AsyncConnection) -> None:
        """Serialise the dependency bookkeeping: a submit that reads its dependencies'
        statuses, and a completion that unblocks the dependents. Taken first."""
        ...

    async def lock_for_migration(self, conn: AsyncConnection) -> None:
        """Serialise schema upgrades of processes opening the same database at once."""
        ...

    def has_label(self, label: str) -> ColumnElement[bool]:
        """``label`` is one of a task's labels (exact match in the JSON array)."""
        ...

    def json_array_has(self, column: sa.ColumnElement[Any], value: Any) -> ColumnElement[bool]:
        """``value`` (a string or an integer, or a typed bound parameter of one: a statement
        built once) is an element of the JSON array ``column``."""
        ...

    async def notify(self, conn: AsyncConnection, *, work: bool) -> None:
        """Inside a write transaction that changed something: tell the other stores on
        this database when it commits."""
        ...

    async def listen(self, wake: Wake) -> bool:
        """Make sure other stores' writes reach ``wake(work)``; ``False`` when they cannot
        (SQLite; or the LISTEN connection failed): the caller polls instead."""
        ...

    async def aclose(self) -> None:
        """Release what ``listen`` holds."""
        ...

    def describe(self, exc: BaseException, action: str) -> StoreError:
        """A driver or connection error, as a ``StoreError`` with a hint."""
        ...


def _json_array_has_sqlite(column: sa.ColumnElement[Any], value: Any) -> ColumnElement[bool]:
    items = sa.func.json_each(column).table_valued("value")
    return sa.select(sa.literal(1)).select_from(items).where(items.c.value == value).exists()


class SqliteOps:
    """SQLite: one writer at a time (``BEGIN IMMEDIATE``), so the locks are free."""

    row_locks = False

    def __init__(self) -> None:
        self._writer = asyncio.Lock()

    def writer_slot(self) -> AbstractAsyncContextManager[object]:
        # SQLite admits one writer anyway: queue this process's writers on an asyncio
        # lock rather than in SQLite's busy handler (which holds a thread per waiter).
        # Other processes still wait in the busy handler.
        return self._writer

    async def lock_for_claim(self, conn: AsyncConnection) -> None:
        # The transaction's BEGIN IMMEDIATE already holds the database's only write lock.
        return None

    async def lock_event_log(self, conn: AsyncConnection) -> None:
        # One writer at a time: AUTOINCREMENT ids are in commit order already.
        return None

    async def lock_dependencies(self, conn: AsyncConnection) -> None:
        return None

    async def lock_for_migration(self, conn: AsyncConnection) -> None:
        return None  # the upgrade runs in a BEGIN IMMEDIATE transaction

    def has_label(self, label: str) -> ColumnElement[bool]:
        return _json_array_has_sqlite(tasks.c.labels, label)

    def json_array_has(self, column: sa.ColumnElement[Any], value: Any) -> ColumnElement[bool]:
        return _json_array_has_sqlite(column, value)

    async def notify(self, conn: AsyncConnection, *, work: bool) -> None:
        return None  # other processes poll the event log

    async def listen(self, wake: Wake) -> bool:
        return False

    async def aclose(self) -> None:
        return None

    def describe(self, exc: BaseException, action: str) -> StoreError:
        detail = _detail(exc)
        if "locked" in detail or "busy" in detail:
            hint = (
                "another program held the database's write lock too long; "
                "retry, and check for a stuck process using the same database file"
            )
        else:
            hint = "check that the database file is readable and writable and the disk is not full"
        return StoreError(f"database {action} failed: {detail}", hint)


class PostgresOps:
    """PostgreSQL: advisory and row locks where SQLite's single writer did the work,
    ``jsonb`` containment for JSON arrays, LISTEN/NOTIFY for wake-ups."""

    row_locks = True

    def __init__(self, engine: AsyncEngine) -> None:
        self._writers = asyncio.Semaphore(MAX_PG_WRITERS)
        self._engine = engine
        self._token = secrets.token_hex(8)  # tells this store's notifications apart
        self._listener: asyncpg.Connection | None = None
        self._listen_lock: asyncio.Lock | None = None
        self._retry_at = 0.0
        self._wake: Wake | None = None

    def writer_slot(self) -> AbstractAsyncContextManager[object]:
        # PostgreSQL runs writers concurrently; the semaphore only keeps a burst of writes
        # (many runs' output at once) from taking every pooled connection from the reads.
        return self._writers

    async def lock_for_claim(self, conn: AsyncConnection) -> None:
        await conn.execute(_XACT_LOCK, {"key": CLAIM_LOCK})

    async def lock_event_log(self, conn: AsyncConnection) -> None:
        await conn.execute(_XACT_LOCK, {"key": EVENT_LOG_LOCK})

    async def lock_dependencies(self, conn: AsyncConnection) -> None:
        await conn.execute(_XACT_LOCK, {"key": DEPENDENCY_LOCK})

    async def lock_for_migration(self, conn: AsyncConnection) -> None:
        await conn.execute(_XACT_LOCK, {"key": MIGRATION_LOCK})

    def has_label(self, label: str) -> ColumnElement[bool]:
        return self.json_array_has(tasks.c.labels, label)

    def json_array_has(self, column: sa.ColumnElement[Any], value: Any) -> ColumnElement[bool]:
        # The columns are ``json`` (shared DDL with SQLite); ``jsonb`` has containment.
        if isinstance(value, sa.ColumnElement):  # a bound parameter: an array of it
            return sa.cast(column, JSONB).contains(sa.func.jsonb_build_array(value))
        return sa.cast(column, JSONB).contains([value])

    async def notify(self, conn: AsyncConnection, *, work: bool) -> None:
        payload = ("w" if work else "c") + self._token
        await conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})

    async def listen(self, wake: Wake) -> bool:
        self._wake = wake
        listener = self._listener
        if listener is not None and not listener.is_closed():
            return True
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return False
        if self._listen_lock is None:
            self._listen_lock = asyncio.Lock()
        async with self._listen_lock:
            listener = self._listener
            if listener is not None and not listener.is_closed():
                return True
            try:
                self._listener = await self._connect_listener()
            except (OSError, TimeoutError, sa.exc.SQLAlchemyError, _asyncpg_error()) as exc:
                self._retry_at = loop.time() + LISTEN_RETRY_SECONDS
                log.warning(
                    "cannot LISTEN on %s (%s); polling for other processes' writes",
                    self._engine.url.render_as_string(hide_password=True),
                    _detail(exc),
                )
                return False
        return True

    async def _connect_listener(self) -> asyncpg.Connection:
        import asyncpg

        _args, kwargs = self._engine.dialect.create_connect_args(self._engine.url)
        for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            kwargs.pop(adapter_only, None)
        coerce_connect_args(kwargs)
        kwargs.setdefault("timeout", CONNECT_TIMEOUT)
        kwargs.setdefault("server_settings", {"application_name": "bosun (listen)"})
        conn: asyncpg.Connection = await asyncpg.connect(**kwargs)
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_termination)
        return conn

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str) or payload[1:] == self._token or self._wake is None:
            return  # this store's own commits woke its waiters already
        self._wake(payload.startswith("w"))

    def _on_termination(self, conn: object) -> None:
        if conn is self._listener:
            self._listener = None
        if self._wake is not None:
            # Wake every waiter: each one comes back, finds no listener, and polls.
            self._wake(True)

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5)
            if not listener.is_closed():
                listener.terminate()

    def describe(self, exc: BaseException, action: str) -> StoreError:
        return describe_postgres_error(exc, self._engine.url, action)


def _asyncpg_error() -> type[Exception]:
    import asyncpg

    return asyncpg.PostgresError


def _detail(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return text or type(exc).__name__


#: SQLSTATE classes and codes of the errors a user can fix, with how.
_SQLSTATE_HINTS = {
    "3D000": "create the database (e.g. `createdb NAME`), or fix the name in [database] url",
    "28000": "check the user name in [database] url and the server's pg_hba.conf",
    "28P01": "check the user and password in [database] url (or in ~/.pgpass)",
    "42501": "grant the user the rights bosun needs (CREATE on the schema, to migrate)",
    "53300": "the server has no connection slot left: raise max_connections or use fewer",
    "57P03": "the server is starting up or shutting down; retry in a moment",
}


def describe_postgres_error(exc: BaseException, url: sa.URL, action: str) -> StoreError:
    """A PostgreSQL driver or connection error as a ``StoreError`` naming the server and
    what to do (the URL's password is never shown)."""
    shown = url.render_as_string(hide_password=True)
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    detail = _detail(exc)
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None) or orig or exc
    sqlstate = getattr(cause, "sqlstate", None) or getattr(orig, "sqlstate", None)
    if isinstance(exc, TimeoutError | OSError) and not isinstance(exc, sa.exc.SQLAlchemyError):
        return StoreError(
            f"cannot reach the PostgreSQL server at {where} ({shown}): {detail}",
            "check that PostgreSQL is running and accepts TCP connections there "
            "(listen_addresses, port, firewall), and the host and port in [database] url",
        )
    if sqlstate in _SQLSTATE_HINTS:
        return StoreError(
            f"PostgreSQL {action} failed ({shown}): {detail}", _SQLSTATE_HINTS[str(sqlstate)]
        )
    if sqlstate == "40P01":
        hint = "two transactions deadlocked; retry (and report it: bosun should not deadlock)"
    elif sqlstate is not None and str(sqlstate).startswith("08"):
        hint = "the connection to PostgreSQL broke; check the server, then retry"
    else:
        hint = f"check the PostgreSQL server at {where} and its log"
    return StoreError(f"database {action} failed: {detail}", hint)


def ops_for(engine: AsyncEngine) -> DialectOps:
    """The ``DialectOps`` of an engine's dialect."""
    name = engine.dialect.name
    if name == "sqlite":
        return SqliteOps()
    if name == "postgresql":
        return PostgresOps(engine)
    raise StoreError(
        f"the {name} backend is not supported",
        "use sqlite:///path/to/bosun.db or postgresql://user@host/dbname",
    )
