"""An index of runs by status and host, for the runs a host waits for.

``HostStore.waiting_runs`` (read by the dispatcher's reconcile of each host, and by
``bosun hosts waiting``) and ``HostStore.waiting_counts`` (``bosun hosts``) select the
runs in status lost, starting or running, of one host, of some, or of every host: with
this index that is one index range per status instead of a scan of every run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``ix_runs_status_host``."""
    op.create_index("ix_runs_status_host", "runs", ["status", "host"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_host", table_name="runs")
