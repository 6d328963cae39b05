"""Plain-value builders shared by the pure tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bosun.models import ExecutionMode, Run, RunStatus, Task, TaskStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_task(task_id: int = 1, **overrides: Any) -> Task:
    values: dict[str, Any] = {
        "id": task_id,
        "title": f"task {task_id}",
        "body": "",
        "status": TaskStatus.QUEUED,
        "repo": "app",
        "agent": "echo",
        "base_branch": None,
        "branch": None,
        "constraints": (),
        "validation": (),
        "labels": (),
        "priority": 0,
        "scope": (),
        "depends_on": (),
        "execution_mode": ExecutionMode.DISPATCH,
        "host": None,
        "assigned_host": None,
        "attempt": 0,
        "max_attempts": 3,
        "review_count": 0,
        "session_id": None,
        "result_summary": None,
        "error": None,
        "error_kind": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "commits": (),
        "not_before": None,
        "lease_owner": None,
        "lease_expires_at": None,
        "created_at": T0,
        "updated_at": T0,
        "last_activity_at": None,
    }
    values.update(overrides)
    return Task(**values)


def make_run(run_id: int = 1, **overrides: Any) -> Run:
    """A running first attempt of task 1 on host ``local``."""
    values: dict[str, Any] = {
        "id": run_id,
        "task_id": 1,
        "attempt": 1,
        "host": "local",
        "agent": "echo",
        "status": RunStatus.RUNNING,
        "ref": {},
        "stdout_offset": 0,
        "stderr_offset": 0,
        "exit_code": None,
        "error_kind": None,
        "error": None,
        "session_id": None,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "started_at": T0,
        "ended_at": None,
    }
    values.update(overrides)
    return Run(**values)
