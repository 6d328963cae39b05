"""Conversion between database rows and bosun's models, and checking of written values.

The SQL store keeps models out of SQL and SQL out of models: rows become ``Task``, ``Run``
and ``Event`` here, and every value a caller asks to write (``transition(**fields)``,
``update_run(**fields)``, event data) is checked and normalised here, so that a bad value
is an ``InputError`` naming the field instead of a driver error or a silently stored mess.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Set
from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping

from bosun.errors import InputError
from bosun.models import (
    ErrorKind,
    Event,
    ExecutionMode,
    NewEvent,
    Run,
    RunStatus,
    Task,
    TaskSpec,
    TaskStatus,
)
from bosun.store.base import RUN_FIELDS, TASK_FIELDS

# What each settable column holds; every name in TASK_FIELDS / RUN_FIELDS has an entry.
_KINDS: Mapping[str, str] = {
    "assigned_host": "str?",
    "branch": "str?",
    "attempt": "int",
    "max_attempts": "int",
    "review_count": "int",
    "session_id": "str?",
    "result_summary": "str?",
    "error": "str?",
    "error_kind": "error_kind?",
    "tokens_in": "int",
    "tokens_out": "int",
    "cost_usd": "float",
    "commits": "strs",
    "not_before": "datetime?",
    "lease_owner": "str?",
    "lease_expires_at": "datetime?",
    "last_activity_at": "datetime?",
    "pr_number": "int?",
    "pr_url": "str?",
    "pr_head_sha": "str?",
    "review_feedback": "str?",
    "status": "run_status",
    "ref": "json",
    "exit_code": "int?",
    "ended_at": "datetime?",
}


def aware(value: datetime, name: str = "now") -> datetime:
    """``value`` if it is timezone-aware, else ``InputError`` (naive times are a bug)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InputError(
            f"{name} must be a timezone-aware datetime, got {value!r}",
            "use datetime.now(UTC) or attach a tzinfo",
        )
    return value


def json_object(data: Any, what: str) -> dict[str, Any]:
    """``data`` if it is a JSON object that every backend can store, else ``InputError``."""
    if not isinstance(data, dict):
        raise InputError(f"{what} must be a JSON object (dict), got {type(data).__name__}")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{what} is not JSON-serialisable: {exc}",
            "use only dicts, lists, strings, numbers, booleans and None",
        ) from exc
    return data


def _coerce(name: str, value: Any) -> Any:
    kind = _KINDS[name]
    if value is None and kind.endswith("?"):
        return None
    base = kind.rstrip("?")
    ok = True
    if base == "str":
        ok = isinstance(value, str)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif base == "strs":
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    elif base == "datetime":
        return aware(value, name)
    elif base == "json":
        return json_object(value, name)
    elif base in ("error_kind", "run_status"):
        enum = ErrorKind if base == "error_kind" else RunStatus
        try:
            return enum(value).value
        except ValueError:
            ok = False
    if not ok:
        raise InputError(f"{name}={value!r} is not a valid value ({base})")
    return value


def field_values(fields: Mapping[str, Any], allowed: Set[str], what: str) -> dict[str, Any]:
    """Check the names and values of ``fields`` and return them ready for an UPDATE."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InputError(
            f"cannot set {what} field(s) {', '.join(unknown)}",
            f"settable {what} fields: {', '.join(sorted(allowed))}",
        )
    return {name: _coerce(name, value) for name, value in fields.items()}


def task_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``field_values`` for the task columns in ``TASK_FIELDS``."""
    return field_values(fields, TASK_FIELDS, "task")


def run_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``field_values`` for the run columns in ``RUN_FIELDS``."""
    return field_values(fields, RUN_FIELDS, "run")


def new_task_values(
    spec: TaskSpec, status: TaskStatus, max_attempts: int, now: datetime
) -> dict[str, Any]:
    """The row of a newly submitted task; ``spec.max_attempts`` wins over the default."""
    return {
        "title": spec.title,
        "body": spec.body,
        "status": status.value,
        "repo": spec.repo,
        "agent": spec.agent,
        "base_branch": spec.base_branch,
        "branch": None,
        "constraints": list(spec.constraints),
        "validation": list(spec.validation),
        "labels": list(spec.labels),
        "priority": spec.priority,
        "scope": list(spec.scope),
        "depends_on": list(dict.fromkeys(spec.depends_on)),
        "execution_mode": ExecutionMode(spec.execution_mode).value,
        "host": spec.host,
        "attempt": 0,
        "max_attempts": max_attempts if spec.max_attempts is None else spec.max_attempts,
        "review_count": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "commits": [],
        "created_at": now,
        "updated_at": now,
    }


def new_event_values(event: NewEvent, now: datetime) -> dict[str, Any]:
    """The row of a new event; ``InputError`` for a bad kind or non-JSON data."""
    if not isinstance(event.kind, str) or not 0 < len(event.kind) <= 64:
        raise InputError(f"event kind must be 1-64 characters, got {event.kind!r}")
    return {
        "task_id": event.task_id,
        "run_id": event.run_id,
        "kind": event.kind,
        "data": json_object(event.data, f"data of event {event.kind!r}"),
        "created_at": now,
    }


def new_run_values(
    task_id: int, attempt: int, host: str, agent: str, ref: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The row of a new run: ``starting``, nothing read from its output yet."""
    return {
        "task_id": task_id,
        "attempt": attempt,
        "host": host,
        "agent": agent,
        "status": RunStatus.STARTING.value,
        "ref": json_object(ref, "ref"),
        "stdout_offset": 0,
        "stderr_offset": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost_usd": 0.0,
        "started_at": now,
    }


def task_from_row(row: RowMapping) -> Task:
    """A ``Task`` from a row of ``tasks``."""
    error_kind = row["error_kind"]
    return Task(
        id=row["id"],
        title=row["title"],
        body=row["body"],
        status=TaskStatus(row["status"]),
        repo=row["repo"],
        agent=row["agent"],
        base_branch=row["base_branch"],
        branch=row["branch"],
        constraints=tuple(row["constraints"]),
        validation=tuple(row["validation"]),
        labels=tuple(row["labels"]),
        priority=row["priority"],
        scope=tuple(row["scope"]),
        depends_on=tuple(int(d) for d in row["depends_on"]),
        execution_mode=ExecutionMode(row["execution_mode"]),
        host=row["host"],
        assigned_host=row["assigned_host"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        review_count=row["review_count"],
        session_id=row["session_id"],
        result_summary=row["result_summary"],
        error=row["error"],
        error_kind=ErrorKind(error_kind) if error_kind is not None else None,
        tokens_in=row["tokens_in"],
        tokens_out=row["tokens_out"],
        cost_usd=float(row["cost_usd"]),
        commits=tuple(row["commits"]),
        not_before=row["not_before"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_activity_at=row["last_activity_at"],
        pr_number=row["pr_number"],
        pr_url=row["pr_url"],
        pr_head_sha=row["pr_head_sha"],
        review_feedback=row["review_feedback"],
    )


def run_from_row(row: RowMapping) -> Run:
    """A ``Run`` from a row of ``runs``."""
    error_kind = row["error_kind"]
    return Run(
        id=row["id"],
        task_id=row["task_id"],
        attempt=row["attempt"],
        host=row["host"],
        agent=row["agent"],
        status=RunStatus(row["status"]),
        ref=dict(row["ref"]),
        stdout_offset=row["stdout_offset"],
        stderr_offset=row["stderr_offset"],
        exit_code=row["exit_code"],
        error_kind=ErrorKind(error_kind) if error_kind is not None else None,
        error=row["error"],
        session_id=row["session_id"],
        tokens_in=row["tokens_in"],
        tokens_out=row["tokens_out"],
        cost_usd=float(row["cost_usd"]),
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )


def event_from_row(row: RowMapping) -> Event:
    """An ``Event`` from a row of ``events``."""
    return Event(
        id=row["id"],
        task_id=row["task_id"],
        run_id=row["run_id"],
        kind=row["kind"],
        data=dict(row["data"]),
        created_at=row["created_at"],
    )
