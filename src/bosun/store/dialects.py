"""What differs between database backends of ``SqlStore``, behind one small protocol.

``SqlStore`` is portable SQLAlchemy Core except for these few operations. A PostgreSQL
backend adds a ``PostgresOps`` (advisory locks for claims and the event log, ``jsonb`` for
labels, no in-process writer queue) and an engine setup in ``bosun.store.connect``.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from bosun.errors import StoreError
from bosun.store.schema import tasks


class DialectOps(Protocol):
    """The backend-specific part of ``SqlStore``."""

    def writer_slot(self) -> AbstractAsyncContextManager[object]:
        """Entered around every write transaction of this process."""
        ...

    async def lock_for_claim(self, conn: AsyncConnection) -> None:
        """Serialise claims, so the scope check of one claim sees every running task."""
        ...

    async def lock_event_log(self, conn: AsyncConnection) -> None:
        """Make event ids increase in commit order (the cursor must never skip back)."""
        ...

    def has_label(self, label: str) -> ColumnElement[bool]:
        """``label`` is one of a task's labels (exact match in the JSON array)."""
        ...


class SqliteOps:
    """SQLite: one writer at a time (``BEGIN IMMEDIATE``), so the locks are free."""

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

    def has_label(self, label: str) -> ColumnElement[bool]:
        items = sa.func.json_each(tasks.c.labels).table_valued("value")
        return sa.select(sa.literal(1)).select_from(items).where(items.c.value == label).exists()


def ops_for(dialect_name: str) -> DialectOps:
    """The ``DialectOps`` of a SQLAlchemy dialect name."""
    if dialect_name == "sqlite":
        return SqliteOps()
    raise StoreError(
        f"the {dialect_name} backend is not supported yet",
        "use a SQLite URL: sqlite:///path/to/bosun.db",
    )
