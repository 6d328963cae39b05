"""SQLite's driver as SQLAlchemy sees it: aiosqlite, with one trip to its thread per statement.

aiosqlite runs a ``sqlite3`` connection in a thread of its own; every call is a trip there
and back (a queue put, a wake-up of the thread, a ``call_soon_threadsafe`` back to the
event loop). SQLAlchemy's stock adapter makes four per statement that returns rows (open a
cursor, execute, fetch, close) and three for one that does not, plus one for COMMIT and one
for the ROLLBACK that resets every connection returned to the pool. That, not SQLite, was
most of the cost of a store transaction (a one-statement write cost about 1 ms of CPU).

``AiosqliteDBAPI`` hands SQLAlchemy the same aiosqlite connections with a cursor that does
the whole statement (cursor, execute, fetch every row, close) in one trip, and a connection
that knows whether ``sqlite3`` is inside a transaction (read on the driver's thread after
each statement), so it skips the trips of a COMMIT or ROLLBACK that would do nothing: a
one-statement write is three trips (BEGIN IMMEDIATE, the statement, COMMIT), a single read
one. Results are fetched whole, as the stock adapter does for its default cursor.

Inside a write transaction every statement after ``BEGIN IMMEDIATE``, and the COMMIT or
ROLLBACK, run on the event loop's own thread, with no trip at all: the transaction holds
SQLite's only write lock, so nothing it does can wait for another connection (in WAL mode
readers never block a writer), and a statement there takes tens of microseconds. A trip
costs a turn of the event loop each way, and with many tasks in flight that turn is
milliseconds: a write transaction of five statements held the store's writer slot for
5-10 ms, every other write of the process waiting behind it. Now it yields at most once,
for a ``BEGIN IMMEDIATE`` that must wait for another process's write lock (on the thread).
When SQLite's write lock is free, even the ``BEGIN IMMEDIATE`` runs here (with the busy
timeout set to zero around it, so it never waits on this thread): an uncontended write
transaction then never yields. Reads, which may be large, stay on the thread. The
``sqlite3`` connections are opened with ``check_same_thread=False`` for this; one
statement at a time per connection still holds (the cursor's mutex), so the thread and
the loop never use a connection at once.

It relies on two internals of aiosqlite that SQLAlchemy's own adapter uses too
(``Connection._execute`` queues a function for the thread; ``Connection._conn`` is the
``sqlite3`` connection); without them, ``dbapi()`` returns the stock adapter.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

#: The busy timeout of bosun's SQLite connections (bosun.store.connect sets it).
BUSY_TIMEOUT_MS = 10_000

#: (description, rows, rowcount, lastrowid, in_transaction) of one executed statement.
_Outcome = tuple[Any, Sequence[Any], int, int | None, bool]


def _run(conn: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """On aiosqlite's thread: one statement from start to end."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else ()
        return description, rows, cursor.rowcount, cursor.lastrowid, conn.in_transaction
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement, rows included, comes back in one trip to the thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # no trip here: the sqlite3 cursor lives only within a statement's trip
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return None  # every row was fetched, and the sqlite3 cursor closed, in the trip

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            self._statement(operation, parameters, many=False)
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            self._statement(operation, seq_of_parameters, many=True)
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _inline(self, operation: str, parameters: Any, *, many: bool) -> None:
        """A statement of a write transaction, on this thread (see the module docstring).
        A coroutine that never suspends: SQLAlchemy wants to await something, and awaiting
        it costs no turn of the event loop."""
        self._keep(_run(self._connection._conn, operation, parameters, many), inline=True)

    def _keep(self, outcome: _Outcome, *, inline: bool = False) -> None:
        """What a statement returned, and whether its connection is in a transaction now
        (``inline``: and so still writing on this thread)."""
        adapt = self._adapt_connection
        assert isinstance(adapt, OneTripConnection)
        description, rows, self._rowcount, self._lastrowid, adapt._in_transaction = outcome
        if inline:
            adapt._writing = adapt._in_transaction
        self._description = description
        self._rows = collections.deque(rows)

    def _statement(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapt = self._adapt_connection
        assert isinstance(adapt, OneTripConnection)
        if adapt._writing and not adapt._execute_mutex.locked():
            await_(self._inline(operation, parameters, many=many))
            return
        if operation == "BEGIN IMMEDIATE" and not adapt._execute_mutex.locked():
            await_(self._begin_now())
            if adapt._writing:
                return  # the write lock was free: taken without a trip
        await_(self._trip(operation, parameters, many=many))
        if adapt._in_transaction and operation == "BEGIN IMMEDIATE":
            adapt._writing = True

    async def _begin_now(self) -> None:
        """``BEGIN IMMEDIATE`` on this thread if SQLite's write lock is free at once (no
        busy wait: that would stop the event loop); else leave it to a trip, whose busy
        handler waits for the other process's write on the driver's thread."""
        adapt = self._adapt_connection
        assert isinstance(adapt, OneTripConnection)
        conn: sqlite3.Connection = self._connection._conn
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return  # busy (or anything else: the trip will say)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._keep((None, (), -1, None, True), inline=True)

    async def _trip(self, operation: str, parameters: Any, *, many: bool) -> None:
        adapt = self._adapt_connection
        assert isinstance(adapt, OneTripConnection)
        async with adapt._execute_mutex:
            aconn = self._connection
            # Unknown until the trip returns: a statement cancelled on the way (its
            # function still runs on the thread) must not leave a transaction unseen.
            adapt._in_transaction = True
            self._keep(await aconn._execute(_run, aconn._conn, operation, parameters, many))

    def nextset(self) -> None:
        return None  # sqlite3 has no further result sets

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None  # sqlite3 takes no input sizes


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """An aiosqlite connection whose COMMIT and ROLLBACK cost nothing when ``sqlite3`` is
    outside a transaction (a single read; a connection going back to the pool)."""

    __slots__ = ("_in_transaction", "_writing")
    _cursor_cls = OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        # a new sqlite3 connection is outside any transaction; every statement updates it
        self._in_transaction = False
        self._writing = False  # inside BEGIN IMMEDIATE: statements run inline

    def commit(self) -> None:
        self._end_transaction(commit=True)

    def rollback(self) -> None:
        self._end_transaction(commit=False)

    def _end_transaction(self, *, commit: bool) -> None:
        """On this thread inside a write transaction, by a trip inside another one,
        nothing outside any."""
        if self._writing and not self._execute_mutex.locked():
            try:
                await_(self._end(commit))
            except Exception as error:
                self._handle_exception(error)
        elif self._in_transaction and commit:
            super().commit()
        elif self._in_transaction:
            super().rollback()
        self._in_transaction = self._writing = False

    async def _end(self, commit: bool) -> None:
        conn: sqlite3.Connection = self._connection._conn
        if commit:
            conn.commit()
        else:
            conn.rollback()


class AiosqliteDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite module, making ``OneTripConnection`` connections."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        stock = super().connect(*arg, **kw)
        return OneTripConnection(self, stock._connection)


def dbapi() -> AsyncAdapt_aiosqlite_dbapi:
    """The ``module`` to give ``create_async_engine`` for a SQLite URL."""
    if not (hasattr(aiosqlite.Connection, "_execute") and hasattr(aiosqlite.Connection, "_conn")):
        return AsyncAdapt_aiosqlite_dbapi(aiosqlite, sqlite3)
    return AiosqliteDBAPI(aiosqlite, sqlite3)
