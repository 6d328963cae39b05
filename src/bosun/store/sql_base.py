"""The transaction plumbing shared by ``SqlStore`` and its parts (tokens, hosts, pulls).

``SqlBase`` owns the engine, the read and write transactions and the in-process wake-ups.
The store's methods are grouped by concern in classes that derive from it
(``bosun.store.sql`` for tasks, runs and events; ``bosun.store.sql_tokens``; ...), and
``SqlStore`` combines them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.engine import CursorResult, RowMapping
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from bosun.errors import InputError, NotFound, StoreError
from bosun.store.base import SubmitClaimer
from bosun.store.dialects import SqliteOps, ops_for

#: Execution option that makes the SQLite "begin" hook emit BEGIN IMMEDIATE.
WRITE_OPTION = "bosun_write"
#: Execution option for a read of one statement: no BEGIN needed on SQLite.
SINGLE_READ_OPTION = "bosun_single_read"


P = ParamSpec("P")
R = TypeVar("R")


def shielded(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a write to its end (commit or rollback) even when its caller is cancelled.

    A transaction abandoned half-way by a cancelled task would leave SQLite's write lock
    on a pooled connection, and every later write would fail with "database is locked".
    The caller still sees the cancellation at once; the write finishes in the background.
    """

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        inner = asyncio.ensure_future(method(*args, **kwargs))
        inner.add_done_callback(_retrieve)
        return await asyncio.shield(inner)

    return wrapper


def _retrieve(task: asyncio.Future[Any]) -> None:
    # The caller may be gone (cancelled); consume the outcome so nothing is logged as lost.
    if not task.cancelled():
        task.exception()


def utcnow() -> datetime:
    return datetime.now(UTC)


def not_found(what: str, ident: int) -> NotFound:
    hint = "list tasks with `bosun ls`" if what == "task" else f"check the {what} id"
    return NotFound(f"{what} {ident} does not exist", hint)


def positive(value: int, name: str) -> int:
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")
    return value


@dataclass
class Tx:
    """One write transaction; remembers whether it changed anything (to wake waiters)."""

    conn: AsyncConnection
    wrote: bool = False
    work: bool = False
    events_locked: bool = False  # the event-log lock is held (PostgreSQL: until COMMIT)

    async def write(self, stmt: Executable, params: Any = None) -> CursorResult[Any]:
        self.wrote = True
        return await self.conn.execute(stmt, params)

    def new_work(self) -> None:
        """Mark this transaction as one that may make a task claimable."""
        self.work = True


class SqlBase:
    """Engine, transactions and wake-ups; the methods live in the classes deriving from it."""

    def __init__(self, engine: AsyncEngine, *, poll_interval: float = 0.25) -> None:
        self._engine = engine
        self._poll_interval = poll_interval
        self._changed = asyncio.Event()
        self._work = asyncio.Event()
        self._seen_event_id = 0  # the newest event id this process has polled
        # Work notifications from other stores (PostgreSQL's LISTEN): how many arrived,
        # and how many wait_for_work had seen when it last returned.
        self._peer_work = 0
        self._peer_work_seen = 0
        self._ops = ops_for(engine)
        # a dispatcher of this process that claims in the submit's transaction
        self._claimer: SubmitClaimer | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for diagnostics and tests; not for writing)."""
        return self._engine

    async def aclose(self) -> None:
        """Close every pooled connection (and the LISTEN connection, if any)."""
        try:
            await self._ops.aclose()
        finally:
            await self._engine.dispose()

    # -- transactions --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _read(self, *, single: bool = True) -> AsyncIterator[AsyncConnection]:
        """A read transaction; ``single=False`` when it runs more than one statement."""
        try:
            async with self._engine.connect() as conn:
                if single:
                    await conn.execution_options(**{SINGLE_READ_OPTION: True})
                async with conn.begin():
                    yield conn
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise self._ops.describe(exc, "read") from exc

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Tx]:
        """A write transaction, in this process's writer slot from BEGIN to COMMIT. The
        connection goes back to the pool only after the slot is free: SQLAlchemy closes
        an ``AsyncConnection`` in a task of its own (a turn of the event loop, which is
        milliseconds on a busy loop), and with the close inside the slot every write of
        the process queued behind that turn."""
        try:
            # (exits in reverse: the slot is left, then the connection closed)
            async with contextlib.AsyncExitStack() as closing, self._ops.writer_slot():
                conn = await closing.enter_async_context(self._engine.connect())
                await conn.execution_options(**{WRITE_OPTION: True})
                async with conn.begin():
                    tx = Tx(conn)
                    yield tx
                    if tx.wrote:
                        # delivered at COMMIT to the other stores' LISTEN (PostgreSQL)
                        await self._ops.notify(conn, work=tx.work)
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise self._ops.describe(exc, "write") from exc
        if tx.wrote:
            self._poke()
        if tx.work:
            self._fire_work()

    def _poke(self) -> None:
        """Wake every ``wait_for_change`` of this process (a fresh Event per generation)."""
        fired, self._changed = self._changed, asyncio.Event()
        fired.set()

    def _fire_work(self) -> None:
        """Wake every ``wait_for_work`` of this process."""
        fired, self._work = self._work, asyncio.Event()
        fired.set()

    def _on_peer_write(self, work: bool) -> None:
        """Another store's write transaction committed (pushed by ``DialectOps.listen``)."""
        self._poke()
        if work:
            self._peer_work += 1
            self._fire_work()


def store_error(exc: DBAPIError, action: str) -> StoreError:
    """A SQLite driver error as a ``StoreError`` (``DialectOps.describe`` for any backend)."""
    return SqliteOps().describe(exc, action)


async def first(conn: AsyncConnection, stmt: Executable) -> RowMapping | None:
    return (await conn.execute(stmt)).mappings().first()
