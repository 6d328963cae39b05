"""The review loop's rows (the ``ForgeStore`` protocol): webhook deliveries already
handled, tasks by pull request, and outgoing notifications.

Both de-duplications (a delivery the forge sends again, a notification two bosun
processes would both send) are an ``INSERT ... ON CONFLICT DO NOTHING`` on a primary key:
of any number of concurrent callers exactly one gets ``True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Insert

from bosun.errors import InputError
from bosun.models import Task
from bosun.store.rows import task_from_row
from bosun.store.schema import notifications, tasks, webhook_deliveries
from bosun.store.sql_base import SqlBase, first, shielded, utcnow

__all__ = ["ForgeMethods", "Notification"]

_MAX_KEY = 200


def _key(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_KEY:
        raise InputError(f"{what} must be 1-{_MAX_KEY} characters, got {len(str(value))}")
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL character")
    return value


class Notification:
    """A notification row: ``key``, the ``task.status`` event it is about, its state."""

    __slots__ = ("attempts", "error", "event_id", "key", "status", "task_id")

    def __init__(self, row: Any) -> None:
        self.key: str = row["key"]
        self.event_id: int = row["event_id"]
        self.task_id: int | None = row["task_id"]
        self.status: str = row["status"]
        self.attempts: int = row["attempts"]
        self.error: str | None = row["error"]


class ForgeMethods(SqlBase):
    """Webhook deliveries, tasks by pull request and notifications."""

    def _insert_ignore(self, table: sa.Table, values: Mapping[str, Any]) -> Insert:
        if self._engine.dialect.name == "postgresql":
            return postgresql.insert(table).values(**values).on_conflict_do_nothing()
        return sqlite.insert(table).values(**values).on_conflict_do_nothing()

    # -- webhook deliveries ----------------------------------------------------------------
    @shielded
    async def record_delivery(
        self,
        delivery_id: str,
        *,
        forge: str,
        event: str,
        repo: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Remember a delivery; ``False`` when it was recorded before (a replay)."""
        values = {
            "delivery_id": _key(delivery_id, "delivery id"),
            "forge": forge[:16],
            "event": event[:64],
            "repo": repo,
            "task_id": None,
            "outcome": None,
            "received_at": now or utcnow(),
        }
        async with self._write() as tx:
            result = await tx.write(self._insert_ignore(webhook_deliveries, values))
            return bool(result.rowcount)

    @shielded
    async def finish_delivery(
        self, delivery_id: str, *, outcome: str, task_id: int | None = None
    ) -> None:
        """Note what a recorded delivery did (for `bosun` diagnostics and tests)."""
        async with self._write() as tx:
            await tx.write(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.delivery_id == delivery_id)
                .values(outcome=outcome[:2000], task_id=task_id)
            )

    @shielded
    async def forget_delivery(self, delivery_id: str) -> None:
        """Drop a delivery whose handling failed, so that the forge's retry is handled."""
        async with self._write() as tx:
            await tx.write(
                sa.delete(webhook_deliveries).where(webhook_deliveries.c.delivery_id == delivery_id)
            )

    async def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """A recorded delivery as a dict, or None."""
        async with self._read() as conn:
            row = await first(
                conn,
                sa.select(webhook_deliveries).where(
                    webhook_deliveries.c.delivery_id == delivery_id
                ),
            )
        return None if row is None else dict(row)

    async def count_deliveries(self) -> int:
        async with self._read() as conn:
            value = (
                await conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries))
            ).scalar_one()
        return int(value)

    # -- tasks by pull request -------------------------------------------------------------
    async def task_for_pull(self, repo: str, number: int) -> Task | None:
        """The task whose pull request on ``repo`` is ``number`` (the newest such)."""
        if not 0 < number < 2**31:
            return None
        async with self._read() as conn:
            row = await first(
                conn,
                sa.select(tasks)
                .where(tasks.c.repo == repo, tasks.c.pr_number == number)
                .order_by(tasks.c.id.desc())
                .limit(1),
            )
        return None if row is None else task_from_row(row)

    # -- notifications ---------------------------------------------------------------------
    @shielded
    async def claim_notification(self, key: str, *, event_id: int, task_id: int | None) -> bool:
        """Take the sending of one notification; ``False`` when someone already has."""
        values = {
            "key": _key(key, "notification key"),
            "event_id": event_id,
            "task_id": task_id,
            "status": "sending",
            "attempts": 0,
            "error": None,
            "created_at": utcnow(),
            "sent_at": None,
        }
        async with self._write() as tx:
            result = await tx.write(self._insert_ignore(notifications, values))
            return bool(result.rowcount)

    @shielded
    async def finish_notification(self, key: str, *, sent: bool, error: str | None = None) -> None:
        """Record one attempt at sending: sent, or failed with ``error``."""
        async with self._write() as tx:
            await tx.write(
                sa.update(notifications)
                .where(notifications.c.key == key)
                .values(
                    status="sent" if sent else "failed",
                    attempts=notifications.c.attempts + 1,
                    error=None if sent else (error or "failed")[:2000],
                    sent_at=utcnow() if sent else None,
                )
            )

    async def get_notification(self, key: str) -> Notification | None:
        async with self._read() as conn:
            row = await first(conn, sa.select(notifications).where(notifications.c.key == key))
        return None if row is None else Notification(row)

    async def notification_cursor(self) -> int:
        """The newest event id a notification was made for (0 when there is none)."""
        async with self._read() as conn:
            value = (await conn.execute(sa.select(sa.func.max(notifications.c.event_id)))).scalar()
        return int(value or 0)
