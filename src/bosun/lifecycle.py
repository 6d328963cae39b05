"""The task state machine: every allowed transition lives in ``TRANSITIONS``.

Nothing changes a task's status without ``check``; the store calls it inside the same
transaction that writes the new status, so an invalid change never reaches the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bosun.errors import InvalidTransition
from bosun.models import ErrorKind, Outcome, RunStatus, Task, TaskStatus

S = TaskStatus

TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    S.QUEUED: frozenset({S.RUNNING, S.BLOCKED, S.PAUSED, S.CANCELLED}),
    S.BLOCKED: frozenset({S.QUEUED, S.CANCELLED}),
    S.RUNNING: frozenset(
        {
            S.QUEUED,  # retry after a failed attempt, or a lease taken over
            S.REVIEW_PENDING,
            S.COMPLETED,
            S.FAILED,
            S.CANCELLED,
            S.PAUSED,
            S.NEEDS_INPUT,
        }
    ),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.REVIEW_PENDING: frozenset({S.COMPLETED, S.REWORK, S.CANCELLED, S.NEEDS_INPUT}),
    # rework -> completed / needs_input -> completed: the pull request was merged anyway
    S.REWORK: frozenset({S.RUNNING, S.CANCELLED, S.COMPLETED}),
    S.NEEDS_INPUT: frozenset({S.QUEUED, S.REWORK, S.CANCELLED, S.REVIEW_PENDING, S.COMPLETED}),
    S.FAILED: frozenset({S.QUEUED}),  # bosun retry
    # bosun retry; or its pull request was reopened (bosun.review)
    S.CANCELLED: frozenset({S.QUEUED, S.REVIEW_PENDING}),
    S.COMPLETED: frozenset(),
}

#: States the dispatcher may claim.
RUNNABLE: frozenset[TaskStatus] = frozenset({S.QUEUED, S.REWORK})
#: States a task never leaves without a user asking (retry).
FINAL: frozenset[TaskStatus] = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})
#: States where a live run may exist.
ACTIVE: frozenset[TaskStatus] = frozenset({S.RUNNING})


def allowed(current: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[current]


def check(task_id: int, current: TaskStatus, target: TaskStatus) -> None:
    """Raise ``InvalidTransition`` unless ``current -> target`` is in the table."""
    if allowed(current, target):
        return
    options = sorted(t.value for t in TRANSITIONS[current])
    hint = (
        f"from {current.value} a task can go to: {', '.join(options)}"
        if options
        else f"{current.value} is final; submit a new task instead"
    )
    raise InvalidTransition(
        f"task {task_id} cannot go from {current.value} to {target.value}", hint
    )


# -- what happens after a run --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The next state of a task after one of its runs ended, and why."""

    status: TaskStatus
    reason: str
    not_before: datetime | None = None


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff in seconds before attempt ``attempt + 1``: base, 2*base, ... cap."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def after_run(
    outcome: Outcome,
    *,
    attempt: int,
    max_attempts: int,
    now: datetime,
    backoff_base: float,
    backoff_cap: float,
    review: bool = False,
) -> Decision:
    """Decide where a task goes once a run has ended (pure).

    success -> review_pending (when a forge reviews it) or completed; usage limit ->
    paused until the reset time (else backoff); auth and permission errors are not retried;
    anything else is retried with exponential backoff until ``max_attempts``.
    """
    if outcome.success:
        if review:
            return Decision(S.REVIEW_PENDING, "run succeeded; waiting for review")
        return Decision(S.COMPLETED, "run succeeded")
    kind = outcome.error_kind
    if kind is ErrorKind.CANCELLED:
        return Decision(S.CANCELLED, "cancelled")
    if kind is ErrorKind.USAGE_LIMIT:
        wait = outcome.resume_at or now + timedelta(
            seconds=backoff(attempt, backoff_base, backoff_cap)
        )
        return Decision(S.PAUSED, "usage limit reached", not_before=wait)
    if kind in (ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.CONFIG):
        return Decision(S.FAILED, f"{kind.value} error; not retried")
    if attempt >= max_attempts:
        return Decision(S.FAILED, f"failed after {attempt} attempt(s)")
    delay = backoff(attempt, backoff_base, backoff_cap)
    return Decision(
        S.QUEUED,
        f"attempt {attempt} of {max_attempts} failed; retrying in {delay:g}s",
        not_before=now + timedelta(seconds=delay),
    )


def settlement(
    task: Task,
    outcome: Outcome,
    commits: Sequence[str],
    *,
    now: datetime,
    backoff_base: float,
    backoff_cap: float,
    review: bool = False,
) -> tuple[Decision, dict[str, Any]]:
    """Where ``task`` goes after its run ended with ``outcome`` and the task fields to
    write with that transition (pure): usage and cost added up, new commits appended,
    the session kept for a resume, the summary, and the error set or cleared.

    Every run is settled through this, whether bosun ran it (``execution.Attempt``) or a
    pull agent reported it (``PullStore.pull_receipt``). ``review``: a success waits for
    the review of its pull request (``review_pending``) instead of completing."""
    decision = after_run(
        outcome,
        attempt=task.attempt,
        max_attempts=task.max_attempts,
        now=now,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        review=review,
    )
    fields: dict[str, Any] = {
        "tokens_in": task.tokens_in + outcome.tokens_in,
        "tokens_out": task.tokens_out + outcome.tokens_out,
        "cost_usd": task.cost_usd + (outcome.cost_usd or 0.0),
        "commits": tuple(task.commits) + tuple(c for c in commits if c not in task.commits),
        "not_before": decision.not_before,
    }
    if outcome.session_id:
        fields["session_id"] = outcome.session_id
    if outcome.success:
        fields.update(result_summary=outcome.summary, error=None, error_kind=None)
    else:
        fields.update(error=outcome.error, error_kind=outcome.error_kind)
        if outcome.summary:
            fields["result_summary"] = outcome.summary
    return decision, fields


def run_end(outcome: Outcome, exit_code: int | None, ended_at: datetime) -> dict[str, Any]:
    """The fields of a run that ended with ``outcome``: its status (succeeded, cancelled,
    lost or failed), exit code, error, session and usage. The same for a run bosun
    followed and for a pull agent's receipt."""
    if outcome.success:
        status = RunStatus.SUCCEEDED
    elif outcome.error_kind is ErrorKind.CANCELLED:
        status = RunStatus.CANCELLED
    elif outcome.error_kind is ErrorKind.LOST:
        status = RunStatus.LOST
    else:
        status = RunStatus.FAILED
    return {
        "status": status,
        "exit_code": exit_code,
        "error_kind": outcome.error_kind,
        "error": outcome.error,
        "session_id": outcome.session_id,
        "tokens_in": outcome.tokens_in,
        "tokens_out": outcome.tokens_out,
        "cost_usd": outcome.cost_usd or 0.0,
        "ended_at": ended_at,
    }
