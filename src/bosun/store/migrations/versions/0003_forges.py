"""Pull requests of tasks, webhook deliveries and notifications (the review loop).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bosun.store.schema import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the pull-request columns of ``tasks``; create ``webhook_deliveries`` and
    ``notifications``."""
    op.add_column("tasks", sa.Column("pr_number", sa.Integer, nullable=True))
    op.add_column("tasks", sa.Column("pr_url", sa.Text, nullable=True))
    op.add_column("tasks", sa.Column("pr_head_sha", sa.String(64), nullable=True))
    op.add_column("tasks", sa.Column("review_feedback", sa.Text, nullable=True))
    op.create_index("ix_tasks_repo_pr_number", "tasks", ["repo", "pr_number"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("delivery_id", sa.String(200), nullable=False),
        sa.Column("forge", sa.String(16), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("repo", sa.Text, nullable=True),
        sa.Column("task_id", sa.Integer, nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name="pk_webhook_deliveries"),
    )
    op.create_table(
        "notifications",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("event_id", sa.Integer, nullable=False),
        sa.Column("task_id", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("sent_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_notifications"),
    )
    op.create_index("ix_notifications_event_id", "notifications", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_event_id", table_name="notifications")
    op.drop_table("notifications")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_tasks_repo_pr_number", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for column in ("review_feedback", "pr_head_sha", "pr_url", "pr_number"):
            batch.drop_column(column)
