"""Values that flow through bosun: tasks, runs, events, outcomes and the enums they use.

Everything here is a frozen dataclass or an enum and does no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JSON = dict[str, Any]


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    REVIEW_PENDING = "review_pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    NEEDS_INPUT = "needs_input"
    BLOCKED = "blocked"
    REWORK = "rework"


class ExecutionMode(enum.StrEnum):
    DISPATCH = "dispatch"  # bosun runs the agent itself (local, ssh)
    HTTP_PULL = "http_pull"  # an external agent pulls the task over HTTP


class RunStatus(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # the process vanished without leaving an exit code


class ErrorKind(enum.StrEnum):
    """Why a run failed; drives the next lifecycle state."""

    AGENT = "agent"  # the agent said it failed, or exited non-zero
    AUTH = "auth"
    USAGE_LIMIT = "usage_limit"
    SERVER = "server"
    TIMEOUT = "timeout"  # wall-clock limit
    STALLED = "stalled"  # no output for too long
    MAX_TURNS = "max_turns"
    PERMISSION = "permission"
    LAUNCH = "launch"  # could not start the process at all
    WORKSPACE = "workspace"  # git failed before or after the run
    LOST = "lost"
    CANCELLED = "cancelled"
    CONFIG = "config"  # the agent spec or the task cannot make a valid command: not retried
    INTERNAL = "internal"  # a bug in bosun while running the attempt


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a user submits. Validated by ``service.validate_spec`` before it is stored."""

    title: str
    body: str = ""
    repo: str | None = None
    agent: str = "echo"
    base_branch: str | None = None
    constraints: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    priority: int = 0
    scope: tuple[str, ...] = ()
    depends_on: tuple[int, ...] = ()
    execution_mode: ExecutionMode = ExecutionMode.DISPATCH
    host: str | None = None  # pin to one host (optional)
    max_attempts: int | None = None  # None: the config's [limits] retries


@dataclass(frozen=True, slots=True)
class Task:
    id: int
    title: str
    body: str
    status: TaskStatus
    repo: str | None
    agent: str
    base_branch: str | None
    branch: str | None
    constraints: tuple[str, ...]
    validation: tuple[str, ...]
    labels: tuple[str, ...]
    priority: int
    scope: tuple[str, ...]
    depends_on: tuple[int, ...]
    execution_mode: ExecutionMode
    host: str | None
    assigned_host: str | None
    attempt: int
    max_attempts: int
    review_count: int
    session_id: str | None
    result_summary: str | None
    error: str | None
    error_kind: ErrorKind | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    commits: tuple[str, ...]
    not_before: datetime | None  # do not run before (retry backoff, paused until reset)
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime | None
    # the task's pull request on its repository's forge (see bosun.review)
    pr_number: int | None = None
    pr_url: str | None = None
    pr_head_sha: str | None = None
    review_feedback: str | None = None  # the review the next (rework) run addresses

    def to_json(self) -> JSON:
        """The machine-readable form printed by ``--json`` and served by the API."""
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "status": self.status.value,
            "repo": self.repo,
            "agent": self.agent,
            "base_branch": self.base_branch,
            "branch": self.branch,
            "constraints": list(self.constraints),
            "validation": list(self.validation),
            "labels": list(self.labels),
            "priority": self.priority,
            "scope": list(self.scope),
            "depends_on": list(self.depends_on),
            "execution_mode": self.execution_mode.value,
            "host": self.host,
            "assigned_host": self.assigned_host,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "review_count": self.review_count,
            "session_id": self.session_id,
            "result_summary": self.result_summary,
            "error": self.error,
            "error_kind": self.error_kind.value if self.error_kind else None,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens": self.tokens_in + self.tokens_out,
            "cost_usd": self.cost_usd,
            "commits": list(self.commits),
            "not_before": _iso(self.not_before),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_activity_at": _iso(self.last_activity_at),
            "pr_number": self.pr_number,
            "pr_url": self.pr_url,
            "pr_head_sha": self.pr_head_sha,
            "review_feedback": self.review_feedback,
        }


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt of one task on one host."""

    id: int
    task_id: int
    attempt: int
    host: str
    agent: str
    status: RunStatus
    ref: JSON  # provider's handle to re-attach: run_dir, pgid, ...
    stdout_offset: int
    stderr_offset: int
    exit_code: int | None
    error_kind: ErrorKind | None
    error: str | None
    session_id: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    started_at: datetime
    ended_at: datetime | None

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "host": self.host,
            "agent": self.agent,
            "status": self.status.value,
            "ref": self.ref,
            "exit_code": self.exit_code,
            "error_kind": self.error_kind.value if self.error_kind else None,
            "error": self.error,
            "session_id": self.session_id,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only event log. ``id`` is the cursor: strictly increasing."""

    id: int
    task_id: int | None
    run_id: int | None
    kind: str  # "task.submitted", "task.status", "run.output", "agent.text", ...
    data: JSON
    created_at: datetime

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "kind": self.kind,
            "data": self.data,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event before the store gives it a cursor."""

    kind: str
    data: JSON = field(default_factory=dict)
    task_id: int | None = None
    run_id: int | None = None


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Something a parser found in an agent's output: text, a tool call, a file change..."""

    kind: str  # "text" | "tool_use" | "file_change" | "error" | "output"
    text: str = ""
    data: JSON = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished run amounts to, derived by a parser from output + exit code."""

    success: bool
    summary: str = ""
    session_id: str | None = None
    turns: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None
    resume_at: datetime | None = None  # usage limit: when to try again

    def to_json(self) -> JSON:
        return {
            "success": self.success,
            "summary": self.summary,
            "session_id": self.session_id,
            "turns": self.turns,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost_usd,
            "error_kind": self.error_kind.value if self.error_kind else None,
            "error": self.error,
            "resume_at": _iso(self.resume_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
