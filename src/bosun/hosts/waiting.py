"""The runs a host waits for: what bosun must stop there before the host gets new work.

A run is *waiting* (for its host's reconcile, ``bosun.hosts.health.Fleet.reconcile``)
when

- bosun gave it up (``abandoned``): its status is ``lost`` and ``ref["abandoned"]`` is
  true (the host was unreachable for too long, or an attempt failed inside bosun and the
  run could not be stopped); its task was retried, waits to be, or was cancelled;
- nobody follows it any more (``cancel_pending``): it is recorded as going (``starting``
  or ``running``, with a run directory) but its task is not running that attempt: the
  task was cancelled (and maybe queued again) while ``bosun cancel`` could not stop it.

``why_waiting`` is that rule, in one place: the reconcile uses it to pick the runs it
stops, and the store to refuse to forget a run that is not waiting. An operator who
takes a run over (``bosun hosts forget``) leaves a mark in its reference
(``ref["forgotten"]``; an abandoned run's ``ref["abandoned"]`` becomes ``"forgotten"``,
as a stopped one's becomes ``"reconciled"``), and the run is no longer waiting.

Pure data and rules: no I/O, no import of the store (the store imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from bosun.errors import InputError
from bosun.models import ErrorKind, Event, Run, RunStatus, TaskStatus

__all__ = [
    "ABANDONED",
    "CANCEL_PENDING",
    "GOING",
    "WaitingRun",
    "Why",
    "describe",
    "followed",
    "forgotten_json",
    "not_waiting",
    "why_waiting",
]

Why = Literal["abandoned", "cancel_pending"]
ABANDONED: Why = "abandoned"
CANCEL_PENDING: Why = "cancel_pending"

#: Run statuses of a run recorded as going.
GOING = (RunStatus.STARTING, RunStatus.RUNNING)


def why_waiting(run: Run, task_status: TaskStatus, task_attempt: int) -> Why | None:
    """Why ``run`` (of a task now in ``task_status`` at ``task_attempt``) must be
    stopped before its host gets new work, or None when it need not be."""
    if run.status is RunStatus.LOST and run.ref.get("abandoned") is True:
        return ABANDONED
    going = run.status in GOING and "run_dir" in run.ref
    if going and not followed(run, task_status, task_attempt):
        return CANCEL_PENDING
    return None


def followed(run: Run, task_status: TaskStatus, task_attempt: int) -> bool:
    """Whether a dispatcher follows ``run``: it is the current attempt of a running task
    (a task's attempt only grows, so a run no one follows is never followed again)."""
    return task_status is TaskStatus.RUNNING and task_attempt == run.attempt


def describe(run: Run, why: Why) -> str:
    """Why the host waits for ``run``, in words."""
    if why == ABANDONED:
        if run.error_kind is ErrorKind.INTERNAL:
            return "given up after an internal error; it may still run on the host"
        return "given up while the host was unreachable; it may still run on the host"
    return "its task was cancelled while bosun could not stop it; it may still run"


@dataclass(frozen=True, slots=True)
class WaitingRun:
    """A run its host waits for, with what became of its task and since when it waits
    (``since``: when it was given up, or when its cancel could not stop it; None when
    nothing says)."""

    run: Run
    task_status: TaskStatus
    why: Why
    since: datetime | None

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "run_id": run.id,
            "task_id": run.task_id,
            "attempt": run.attempt,
            "host": run.host,
            "agent": run.agent,
            "status": run.status.value,
            "why": self.why,
            "reason": describe(run, self.why),
            "since": None if self.since is None else self.since.isoformat(),
            "task_status": self.task_status.value,
            "error": run.error,
            "run_dir": _text(run.ref.get("run_dir")),
            "pgid": _number(run.ref.get("pgid")),
        }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def forgotten_json(event: Event) -> dict[str, Any]:
    """A ``run.forgotten`` event as ``bosun hosts forget --json`` and the API show it."""
    return {
        **event.data,
        "task_id": event.task_id,
        "event_id": event.id,
        "at": event.created_at.isoformat(),
    }


def not_waiting(run: Run, task_status: TaskStatus, task_attempt: int, host: str) -> InputError:
    """The error for an attempt to forget ``run`` on ``host``, which is not waiting
    there: it ran elsewhere, was forgotten or stopped already, is followed, or ended."""
    listing = f"`bosun hosts waiting {host}` lists the runs host {host} waits for"
    if run.host != host:
        return InputError(
            f"run {run.id} ran on host {run.host}, not on {host}",
            f"name its own host: `bosun hosts waiting {run.host}`, then "
            f"`bosun hosts forget {run.host} {run.id}`",
        )
    forgotten = run.ref.get("forgotten")
    if isinstance(forgotten, dict):
        by, at = forgotten.get("by", "someone"), forgotten.get("at", "?")
        return InputError(
            f"run {run.id} on host {host} was forgotten already (by {by} at {at})",
            f"nothing to do; {listing}",
        )
    if run.ref.get("abandoned") == "reconciled":
        return InputError(
            f"run {run.id} on host {host} was stopped by a reconcile already: "
            "the host does not wait for it",
            f"nothing to do; {listing}",
        )
    if run.status in GOING and followed(run, task_status, task_attempt):
        return InputError(
            f"run {run.id} is the current run of task {run.task_id}, which is running: "
            "bosun follows it, and the host does not wait for it",
            f"to stop it, cancel its task: `bosun cancel {run.task_id}`",
        )
    return InputError(
        f"run {run.id} on host {host} is not waiting to be stopped (status "
        f"{run.status.value}): the host does not wait for it",
        f"only a run the host waits for can be forgotten; {listing}",
    )
