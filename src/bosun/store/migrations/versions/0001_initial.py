"""Initial schema: tasks, runs, events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bosun.store.schema import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the three tables and the indexes the store's queries rely on."""
    op.create_table(
        "tasks",
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
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_tasks_runnable",
        "tasks",
        ["status", "execution_mode", sa.text("priority DESC"), "id"],
    )
    op.create_index("ix_tasks_status_not_before", "tasks", ["status", "not_before"])
    op.create_index("ix_tasks_status_lease_expires_at", "tasks", ["status", "lease_expires_at"])
    op.create_index("ix_tasks_repo_id", "tasks", ["repo", "id"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.Integer, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_runs_task_id_tasks"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_runs_task_id_id", "runs", ["task_id", "id"])

    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.Integer, nullable=True),
        sa.Column("run_id", sa.Integer, nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name="fk_events_task_id_tasks"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_events_run_id_runs"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_task_id_id", "events", ["task_id", "id"])


def downgrade() -> None:
    """Drop everything (the data goes with it)."""
    op.drop_table("events")
    op.drop_table("runs")
    op.drop_table("tasks")
