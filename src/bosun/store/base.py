"""The Store protocol: everything bosun persists, behind one small async interface.

Every backend (SQLite now, PostgreSQL later) passes ``tests/store_contract.py`` unchanged.

Rules every implementation keeps:

- a status change goes through ``bosun.lifecycle.check`` in the same transaction that
  writes it, and appends a ``task.status`` event in that transaction too;
- ``claim`` is atomic: at most one caller gets a given task, and a task whose scope
  collides (``bosun.scopes.collides``) with a running task is never claimed;
- event ids are the cursor: strictly increasing in commit order, never reused;
- ``append_output`` writes events and the run's read offsets in one transaction, so a
  crash never loses or repeats an output line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from bosun.models import Event, NewEvent, Run, RunStatus, Task, TaskSpec, TaskStatus

#: ``claim_batch``'s planner: (offered runnable tasks, running tasks) -> (task id, host) picks.
Chooser = Callable[[Sequence[Task], Sequence[Task]], Sequence[tuple[int, str]]]

#: Task columns that ``transition`` / ``update_task`` may set.
TASK_FIELDS = frozenset(
    {
        "assigned_host",
        "branch",
        "attempt",
        "max_attempts",
        "review_count",
        "session_id",
        "result_summary",
        "error",
        "error_kind",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "commits",
        "not_before",
        "lease_owner",
        "lease_expires_at",
        "last_activity_at",
    }
)

#: Run columns that ``update_run`` may set.
RUN_FIELDS = frozenset(
    {
        "status",
        "ref",
        "exit_code",
        "error_kind",
        "error",
        "session_id",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "ended_at",
    }
)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    statuses: frozenset[TaskStatus] | None = None
    repo: str | None = None
    agent: str | None = None
    label: str | None = None
    after_id: int | None = None  # cursor pagination: ids greater than this
    limit: int = 100


@runtime_checkable
class Store(Protocol):
    """Persistence for tasks, runs and events."""

    async def aclose(self) -> None: ...

    # -- tasks -------------------------------------------------------------------------
    async def add_task(self, spec: TaskSpec, *, max_attempts: int) -> Task:
        """Store a validated spec: ``blocked`` if a dependency is not completed, else
        ``queued``; a ``task.submitted`` event in the same transaction. Unknown
        dependency ids raise ``InputError``."""
        ...

    async def get_task(self, task_id: int) -> Task:
        """Raise ``NotFound`` when there is no such task."""
        ...

    async def list_tasks(self, flt: TaskFilter | None = None) -> list[Task]:
        """Tasks by ascending id."""
        ...

    async def transition(
        self,
        task_id: int,
        target: TaskStatus,
        *,
        owner: str | None = None,
        reason: str | None = None,
        **fields: Any,
    ) -> Task:
        """Move a task to ``target`` (checked by the lifecycle), set ``fields`` (names from
        ``TASK_FIELDS``), append a ``task.status`` event ``{from, to, reason}``. With
        ``owner`` the caller must hold the lease (else ``LeaseLost``). Leaving ``running``
        clears the lease. Reaching ``completed`` moves dependents whose dependencies are
        all completed from ``blocked`` to ``queued`` in the same transaction."""
        ...

    async def update_task(self, task_id: int, *, owner: str | None = None, **fields: Any) -> Task:
        """Set ``fields`` without a status change (``LeaseLost`` when ``owner`` mismatches)."""
        ...

    async def runnable(self, now: datetime, limit: int) -> list[Task]:
        """Tasks in a runnable state (queued, rework) whose ``not_before`` has passed,
        ``execution_mode`` dispatch, by priority (high first) then id. Must stay cheap
        with 100,000 queued tasks (an index, not a scan)."""
        ...

    async def claim(
        self, task_id: int, *, owner: str, host: str, lease_seconds: float, now: datetime
    ) -> Task | None:
        """Atomically move one runnable task to ``running`` with a lease for ``owner`` on
        ``host`` and ``attempt + 1``. ``None`` when it is no longer runnable, not yet due,
        or its scope collides with a running task."""
        ...

    async def claim_batch(
        self,
        choose: Chooser,
        *,
        owner: str,
        lease_seconds: float,
        now: datetime,
        limit: int,
    ) -> list[Task]:
        """Plan and claim in one atomic step: read up to ``limit`` runnable tasks (as
        ``runnable``) and every running task, call ``choose(offered, running)`` — pure, no
        I/O, e.g. ``scheduler.plan`` — and claim each ``(task_id, host)`` it returns, in
        order, as ``claim`` would. A pick whose scope collides with a running or an
        earlier-claimed task, or that was not offered, is skipped. ``choose`` is called
        exactly once (with empty lists when nothing is runnable). Returns what was claimed."""
        ...

    async def heartbeat(self, task_id: int, *, owner: str, lease_seconds: float) -> None:
        """Extend the lease; ``LeaseLost`` when ``owner`` no longer holds it."""
        ...

    async def take_over(
        self,
        task_id: int,
        *,
        owner: str,
        lease_seconds: float,
        now: datetime,
        force: bool = False,
    ) -> Task | None:
        """Take the lease of a ``running`` task whose lease expired (or any running task
        with ``force``, used when its previous owner is known dead). Status and attempt
        stay as they are; ``None`` if it is not running or the lease is still live."""
        ...

    async def running(self) -> list[Task]:
        """Every task in ``running`` (for load, scope locks and recovery)."""
        ...

    async def due_paused(self, now: datetime) -> list[Task]:
        """Paused tasks whose ``not_before`` has passed."""
        ...

    # -- runs --------------------------------------------------------------------------
    async def add_run(
        self,
        task_id: int,
        *,
        attempt: int,
        host: str,
        agent: str,
        ref: dict[str, Any],
        status: RunStatus = RunStatus.STARTING,
    ) -> Run:
        """A new run of an existing task, offsets 0 (``NotFound`` for an unknown task)."""
        ...

    async def get_run(self, run_id: int) -> Run: ...

    async def list_runs(self, task_id: int) -> list[Run]:
        """Runs of a task by ascending id."""
        ...

    async def update_run(self, run_id: int, **fields: Any) -> Run: ...

    async def append_output(
        self,
        run_id: int,
        events: Sequence[NewEvent],
        *,
        stdout_offset: int,
        stderr_offset: int,
    ) -> list[Event]:
        """Append ``events`` and set the run's offsets in one transaction; also sets the
        task's ``last_activity_at``."""
        ...

    # -- events ------------------------------------------------------------------------
    async def append_event(self, event: NewEvent) -> Event: ...

    async def events_since(
        self, cursor: int = 0, *, task_id: int | None = None, limit: int = 1000
    ) -> list[Event]:
        """Events with ``id > cursor`` in id order, optionally for one task."""
        ...

    async def last_event_id(self) -> int:
        """The newest event's id (0 when there is none): a cursor for "from now on"."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a task may have become claimable (submitted, re-queued, or a running
        task left ``running``): by this process, at once; by another process, within the
        poll interval (spurious wake-ups allowed); else after ``timeout`` seconds. The
        dispatcher's idle wait: cheaper than ``wait_for_change``, which also wakes on every
        output line."""
        ...

    async def wait_for_change(self, timeout: float) -> None:
        """Return when something was written (by this process: at once; by another
        process: within the poll interval) or after ``timeout`` seconds."""
        ...


__all__ = ["RUN_FIELDS", "TASK_FIELDS", "Chooser", "RunStatus", "Store", "TaskFilter"]
