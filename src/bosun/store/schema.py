"""The database schema of the SQL stores: tables ``tasks``, ``runs`` and ``events``.

Written in SQLAlchemy Core so that SQLite and PostgreSQL share it; the Alembic migrations in
``bosun.store.migrations`` create exactly these tables (a test compares the two).

Column conventions:

- ids are INTEGER with AUTOINCREMENT, so an id (above all ``events.id``, the cursor) is
  never reused, even after a row is deleted;
- tuples and free-form data are JSON;
- enums are their string values;
- datetimes are timezone-aware UTC (``UTCDateTime``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no datetime type, so there the value is fixed-width ISO 8601 text in UTC
    (``2024-05-01T12:00:00.000000+00:00``): text order is then time order, which keeps
    ``not_before <= :now`` and the indexes on these columns correct. PostgreSQL uses
    ``timestamp with time zone``. Naive datetimes are refused: they are always a bug.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(32))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: bosun stores aware UTC datetimes only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.isoformat(timespec="microseconds")
        return value

    def process_literal_param(self, value: datetime | None, dialect: Dialect) -> str:
        # The impl's literal processor quotes the returned text.
        bound = self.process_bind_param(value, dialect)
        if bound is None:
            return "NULL"
        return bound if isinstance(bound, str) else str(bound.isoformat())

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
        assert isinstance(parsed, datetime)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    }
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("repo", sa.Text, nullable=True),
    sa.Column("agent", sa.String(128), nullable=False),
    sa.Column("base_branch", sa.Text, nullable=True),
    sa.Column("branch", sa.Text, nullable=True),
    sa.Column("constraints", sa.JSON, nullable=False),
    sa.Column("validation", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("scope", sa.JSON, nullable=False),
    sa.Column("depends_on", sa.JSON, nullable=False),
    sa.Column("execution_mode", sa.String(32), nullable=False),
    sa.Column("host", sa.Text, nullable=True),
    sa.Column("assigned_host", sa.Text, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("review_count", sa.Integer, nullable=False),
    sa.Column("session_id", sa.Text, nullable=True),
    sa.Column("result_summary", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("error_kind", sa.String(32), nullable=True),
    sa.Column("tokens_in", sa.BigInteger, nullable=False),
    sa.Column("tokens_out", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("commits", sa.JSON, nullable=False),
    sa.Column("not_before", UTCDateTime, nullable=True),
    sa.Column("lease_owner", sa.Text, nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_activity_at", UTCDateTime, nullable=True),
    # the task's pull request (migration 0003, see bosun.review)
    sa.Column("pr_number", sa.Integer, nullable=True),
    sa.Column("pr_url", sa.Text, nullable=True),
    sa.Column("pr_head_sha", sa.String(64), nullable=True),
    sa.Column("review_feedback", sa.Text, nullable=True),
    sqlite_autoincrement=True,
)

# runnable(): one ordered index range per runnable status, stopping after `limit` rows,
# so the cost does not grow with the number of queued tasks.
sa.Index(
    "ix_tasks_runnable",
    tasks.c.status,
    tasks.c.execution_mode,
    tasks.c.priority.desc(),
    tasks.c.id,
)
# due_paused(): paused tasks by resume time.
sa.Index("ix_tasks_status_not_before", tasks.c.status, tasks.c.not_before)
# Recovery: running tasks by lease expiry.
sa.Index("ix_tasks_status_lease_expires_at", tasks.c.status, tasks.c.lease_expires_at)
# list_tasks(repo=...) pages by id within one repository.
sa.Index("ix_tasks_repo_id", tasks.c.repo, tasks.c.id)
# A forge event names a pull request: its task.
sa.Index("ix_tasks_repo_pr_number", tasks.c.repo, tasks.c.pr_number)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("agent", sa.String(128), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("ref", sa.JSON, nullable=False),
    sa.Column("stdout_offset", sa.BigInteger, nullable=False),
    sa.Column("stderr_offset", sa.BigInteger, nullable=False),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("error_kind", sa.String(32), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("session_id", sa.Text, nullable=True),
    sa.Column("tokens_in", sa.BigInteger, nullable=False),
    sa.Column("tokens_out", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sqlite_autoincrement=True,
)
sa.Index("ix_runs_task_id_id", runs.c.task_id, runs.c.id)
# waiting_runs() / waiting_counts(): the runs that may keep a host waiting (status lost,
# starting or running), of one host, of some, or of every host: one index range per status.
sa.Index("ix_runs_status_host", runs.c.status, runs.c.host)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,
)
# events_since(task_id=...): one task's events in cursor order.
sa.Index("ix_events_task_id_id", events.c.task_id, events.c.id)

# API tokens: only a SHA-256 of the secret is stored (tokens are 256-bit random, so a
# plain hash is enough); ``prefix`` is the first characters, to tell tokens apart in lists.
tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # "admin" | "agent"
    sa.Column("agent", sa.String(128), nullable=True),  # pull-agent identity (kind agent)
    sa.Column("capabilities", sa.JSON, nullable=False),  # agent names it may run
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sqlite_autoincrement=True,
)

# Hosts added with `bosun hosts add` (those of bosun.toml are not copied here) and the
# state of every host: drained or not, detected capabilities, last health check.
hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("source", sa.String(16), nullable=False),  # "config" | "cli" | "api"
    sa.Column("config", sa.JSON, nullable=False),  # HostConfig fields (source cli/api)
    sa.Column("drained", sa.Boolean, nullable=False),
    sa.Column("capabilities", sa.JSON, nullable=False),  # detected: agents, os, cpus, ...
    sa.Column("health", sa.String(16), nullable=False),  # "unknown" | "healthy" | "unhealthy"
    sa.Column("health_error", sa.Text, nullable=True),
    sa.Column("checked_at", UTCDateTime, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Forge webhook deliveries already handled (and review ids the polling fallback handled),
# so that a delivery the forge sends again changes nothing the second time.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("delivery_id", sa.String(200), primary_key=True),  # "<forge>:<id>"
    sa.Column("forge", sa.String(16), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("repo", sa.Text, nullable=True),  # the bosun repo it was for
    sa.Column("task_id", sa.Integer, nullable=True),
    sa.Column("outcome", sa.Text, nullable=True),  # what bosun did with it
    sa.Column("received_at", UTCDateTime, nullable=False),
)

# Outgoing notifications: one row per (task status change, target); ``key`` makes each one
# go out once however many bosun processes follow the event log.
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("event_id", sa.Integer, nullable=False),  # the task.status event
    sa.Column("task_id", sa.Integer, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # "sending" | "sent" | "failed"
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("sent_at", UTCDateTime, nullable=True),
)
sa.Index("ix_notifications_event_id", notifications.c.event_id)

__all__ = [
    "UTCDateTime",
    "events",
    "hosts",
    "metadata",
    "notifications",
    "runs",
    "tasks",
    "tokens",
    "webhook_deliveries",
]
