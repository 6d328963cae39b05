"""The Store protocol: everything bosun persists, behind one small async interface.

Every backend (SQLite now, PostgreSQL later) passes ``tests/store_contract.py`` unchanged.

Rules every implementation keeps:

- a status change goes through ``bosun.lifecycle.check`` in the same transaction that
  writes it, and appends a ``task.status`` event in that transaction too;
- ``claim`` is atomic: at most one caller gets a given task, and a task whose scope
  collides (``bosun.scopes.collides``) with a running task is never claimed;
- event ids are the cursor: strictly increasing in commit order, never reused;
- ``append_output`` writes events and the run's read offsets in one transaction, so a
  crash never loses or repeats an output line;
- an attempt's start is one transaction (``add_run`` with ``events``: the run and its
  ``run.started``) and so is its end (``transition`` with ``run`` and ``events``: the
  run's final fields, ``run.finished`` and the status change), all or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from bosun.hosts.records import HostRecord
from bosun.hosts.waiting import WaitingRun
from bosun.models import (
    Event,
    ExecutionMode,
    NewEvent,
    Outcome,
    Run,
    RunStatus,
    Task,
    TaskSpec,
    TaskStatus,
)


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A running task as ``claim_batch`` shows it to its planner: what placement and the
    scope locks read (``bosun.scheduler.Occupant``), not the whole row."""

    id: int
    agent: str
    assigned_host: str | None
    repo: str | None
    scope: tuple[str, ...]
    execution_mode: ExecutionMode


#: ``claim_batch``'s planner: (offered runnable tasks, running tasks) -> (task id, host) picks.
Chooser = Callable[[Sequence[Task], Sequence[RunningTask]], Sequence[tuple[int, str]]]

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
        "pr_number",
        "pr_url",
        "pr_head_sha",
        "review_feedback",
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
class RunUpdate:
    """The end of a run, written with its task's ``transition`` (``run=``): run ``run_id``
    of that task gets ``fields`` (names from ``RUN_FIELDS``, as ``update_run`` takes)."""

    run_id: int
    fields: Mapping[str, Any]


#: ``add_run``'s ``events``: the new run -> the events to append with it.
RunEvents = Callable[[Run], Sequence[NewEvent]]


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A claim that a submit makes in its own transaction, for a dispatcher of the same
    process (``Store.claim_on_submit``): what ``claim_batch`` takes, and ``claimed``,
    called after the COMMIT with what was claimed (never empty)."""

    choose: Chooser
    owner: str
    lease_seconds: float
    now: datetime
    limit: int
    claimed: Callable[[list[Task]], None]


#: Asked by each submit of a task that is claimable at once: a ``ClaimRequest``, or None
#: (no dispatcher, or it has no free slot).
SubmitClaimer = Callable[[], ClaimRequest | None]


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
        dependency ids raise ``InputError``. With a claimer set (``claim_on_submit``) and
        a queued dispatch task, the claimer's ``ClaimRequest`` (if any) is made in the
        same transaction, as ``claim_batch`` makes it, if its chooser places the new task
        (else nothing is claimed); the task is returned as it is then (``running`` when
        it was claimed)."""
        ...

    def claim_on_submit(self, claimer: SubmitClaimer) -> Callable[[], None]:
        """Set the claimer that ``add_task`` asks: a dispatcher of this process, so that a
        submit is claimed without waking it first. Returns what removes it again (unless
        another claimer was set since)."""
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
        events: Sequence[NewEvent] = (),
        run: RunUpdate | None = None,
        **fields: Any,
    ) -> Task:
        """Move a task to ``target`` (checked by the lifecycle), set ``fields`` (names from
        ``TASK_FIELDS``), append a ``task.status`` event ``{from, to, reason}``. With
        ``owner`` the caller must hold the lease (else ``LeaseLost``). Leaving ``running``
        clears the lease. Reaching ``completed`` moves dependents whose dependencies are
        all completed from ``blocked`` to ``queued`` in the same transaction.

        The end of an attempt is one transaction: ``run`` sets the final fields of one of
        the task's runs (``NotFound`` if it is not one of them) and ``events`` (e.g.
        ``run.finished``; their tasks and runs must exist) are appended before the
        ``task.status`` event. All or nothing: when the transition is refused
        (``LeaseLost``, ``InvalidTransition``, ``NotFound``, ``InputError``) neither the
        run nor any event is written."""
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

    async def running(
        self, *, mode: ExecutionMode | None = None, not_owned_by: str | None = None
    ) -> list[Task]:
        """The tasks in ``running``, by id (for load, scope locks and recovery): every one,
        or only those of execution mode ``mode`` and/or whose lease ``not_owned_by`` does
        not hold (no lease counts as not held)."""
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
        events: RunEvents | None = None,
    ) -> Run:
        """A new run of an existing task, offsets 0 (``NotFound`` for an unknown task).
        ``events(run)``: events to append in the same transaction (``run.started``, which
        names the new run); nothing is written if one of them is refused."""
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

    async def wait_for_change(self, timeout: float, *, after: int | None = None) -> None:
        """Return when something was written (by this process: at once; by another
        process: within the poll interval) or after ``timeout`` seconds. With ``after``
        (``last_event_id()`` read before the caller's own read), at once when a newer
        event exists: a reader that reads ``last_event_id``, then its events, then waits
        with ``after`` never sleeps through an event written in between."""
        ...


#: The kinds of API token: ``admin`` may do everything; ``agent`` is one pull agent.
TOKEN_KINDS = ("admin", "agent")


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A stored API token (never its secret: only a SHA-256 of it is stored)."""

    id: int
    name: str
    kind: str  # "admin" | "agent"
    agent: str | None  # the pull-agent identity of an ``agent`` token
    capabilities: tuple[str, ...]  # agent names (claude, codex, ...) it may run
    prefix: str  # the secret's first characters, to tell tokens apart in lists
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "agent": self.agent,
            "capabilities": list(self.capabilities),
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "last_used_at": None if self.last_used_at is None else self.last_used_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


@runtime_checkable
class TokenStore(Protocol):
    """API tokens of the HTTP server (``bosun.store.sql_tokens``)."""

    async def create_token(
        self,
        name: str,
        kind: str,
        *,
        agent: str | None = None,
        capabilities: Sequence[str] = (),
    ) -> tuple[ApiToken, str]:
        """Store a new token and return it with its secret: the only time the secret is
        seen. Names are unique among tokens that are not revoked (``InputError``)."""
        ...

    async def list_tokens(self, *, include_revoked: bool = False) -> list[ApiToken]:
        """Tokens by ascending id."""
        ...

    async def get_token(self, ident: int | str) -> ApiToken:
        """A token by id or by name (the live one of that name); ``NotFound`` if none."""
        ...

    async def revoke_token(self, ident: int | str) -> ApiToken:
        """Revoke a token by id or name (idempotent); ``NotFound`` if there is none."""
        ...

    async def authenticate_token(self, secret: str) -> ApiToken | None:
        """The live token whose secret this is, else ``None``; records ``last_used_at``
        (at most about once a minute per token)."""
        ...


@runtime_checkable
class HostStore(Protocol):
    """The host registry's rows (``bosun.store.sql_hosts``): hosts added at run time and
    the state (drained, capabilities, health) of every host. Suite:
    ``tests/contract_hosts.py``."""

    async def list_hosts(self) -> list[HostRecord]:
        """Every row, by name."""
        ...

    async def get_host(self, name: str) -> HostRecord:
        """``NotFound`` when there is no row."""
        ...

    async def add_host(
        self,
        name: str,
        *,
        source: str,
        config: dict[str, Any],
        capabilities: dict[str, Any] | None = None,
        health: str = "unknown",
        health_error: str | None = None,
        checked_at: datetime | None = None,
    ) -> HostRecord:
        """Register a host (source "cli" or "api"); ``InputError`` when one of that name is
        registered already. A state-only row (source "config") of that name is replaced."""
        ...

    async def remove_host(self, name: str) -> HostRecord:
        """Delete a row and return it; ``NotFound`` when there is none."""
        ...

    async def update_host(self, name: str, *, create: bool = False, **fields: Any) -> HostRecord:
        """Set drained, capabilities, health, health_error or checked_at. ``create``: make
        a missing row as a config host's state row (else ``NotFound``)."""
        ...

    async def record_health(
        self, name: str, *, healthy: bool, error: str | None = None, now: datetime | None = None
    ) -> HostRecord:
        """Store a health check's result; a change to unhealthy appends ``host.unhealthy``,
        from unhealthy to healthy ``host.healthy``, once, in the same transaction."""
        ...

    async def waiting_runs(self, host: str | None = None) -> list[WaitingRun]:
        """The runs ``host`` (None: every host) waits for before it gets new work: given
        up (``abandoned``), or recorded as going while their task does not run them
        (``cancel_pending``), by id (``bosun.hosts.waiting``)."""
        ...

    async def waiting_counts(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        """How many runs each of ``hosts`` (None: every host) waits for, by the rule of
        ``waiting_runs``, in one read: {host: count}, without the hosts that wait for
        none."""
        ...

    async def mark_reconciled(
        self,
        run_id: int,
        *,
        fields: Mapping[str, Any] | None = None,
        ref: Mapping[str, Any] | None = None,
        event: NewEvent | None = None,
    ) -> Run | None:
        """Record that a reconcile stopped a run its host waits for (or found it gone):
        set ``fields`` (run columns but ``ref``) and the keys of ``ref`` in its reference
        as it is now, and append ``event`` (about the run), in one transaction, only if
        the run still waits (checked under the write lock). A run that no longer waits,
        above all one an operator forgot meanwhile (``ref["forgotten"]``), is left as it
        is, with no event: None. ``NotFound`` for an unknown run."""
        ...

    async def forget_runs(
        self,
        host: str,
        run_ids: Collection[int],
        *,
        by: str,
        note: str | None = None,
        now: datetime | None = None,
    ) -> list[Event]:
        """Mark runs ``host`` waits for as taken over by an operator (``by``), so that
        they are waited for no more, each with a ``run.forgotten`` event, all in one
        transaction; their tasks are left as they are. ``NotFound`` for an unknown run,
        ``InputError`` (saying why) for one that is not waiting on ``host``; then nothing
        is changed."""
        ...


@runtime_checkable
class PullStore(Protocol):
    """The pull protocol (``bosun.store.sql_pull``): agents outside bosun take
    ``http_pull`` tasks, report progress under a lease and hand in the result."""

    async def dequeue(
        self,
        agent: str,
        capabilities: Collection[str],
        *,
        lease_seconds: float,
        now: datetime,
    ) -> Task | None:
        """Atomically take the first runnable (queued or rework, ``not_before`` passed)
        ``http_pull`` task whose agent is in ``capabilities`` and whose scope does not
        collide with a running task, by priority then id: ``running``, ``attempt + 1``,
        ``assigned_host`` ``pull:<agent>``, a lease whose id (``pull:<agent>:<random>``)
        is the returned ``lease_owner``, a pull run and a ``task.status`` event. Each task
        goes to exactly one caller however many dequeue at once; ``None`` when none fits."""
        ...

    async def pull_status(
        self,
        task_id: int,
        lease: str,
        *,
        now: datetime,
        lease_seconds: float,
        events: Sequence[NewEvent] = (),
        first_seq: int | None = None,
        agent: str | None = None,
    ) -> Task:
        """Extend the lease to ``now + lease_seconds`` and append ``events`` (kinds
        ``run.*``, ``agent.*``, ``workspace.*``, ``pull.*``; else ``InputError``) to the
        task and its pull run; with ``first_seq`` events already received are skipped.
        ``LeaseLost`` when the lease no longer holds the task (expired, cancelled,
        settled); ``Forbidden`` for a dispatch-mode task or one ``agent`` never held."""
        ...

    async def pull_receipt(
        self,
        task_id: int,
        lease: str,
        outcome: Outcome,
        *,
        now: datetime,
        backoff_base: float,
        backoff_cap: float,
        commits: Sequence[str] = (),
        branch: str | None = None,
        exit_code: int | None = None,
        agent: str | None = None,
        review: bool = False,
    ) -> Task:
        """Settle the task like a local run (``lifecycle.settlement``; ``review``: a
        success goes to ``review_pending``) with usage, cost,
        commits, branch and session; end the pull run; clear the lease. Errors as
        ``pull_status``; a receipt already recorded for this lease returns the task."""
        ...

    async def expire_pull_leases(self, now: datetime) -> list[Task]:
        """Running ``http_pull`` tasks whose lease expired before ``now`` settle as a lost
        run (``queued`` again, or ``failed`` after the last attempt), with an event."""
        ...

    async def mirror_task(self, task: Task) -> Task:
        """Write a copy of another store's task under its own id (the pull worker's)."""
        ...


@runtime_checkable
class ForgeStore(Protocol):
    """The review loop's rows (``bosun.store.sql_forge``): forge webhook deliveries already
    handled, tasks by pull request, and outgoing notifications sent once."""

    async def record_delivery(
        self,
        delivery_id: str,
        *,
        forge: str,
        event: str,
        repo: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Remember a delivery id; ``False`` when it was recorded before. Of concurrent
        callers with one id exactly one gets ``True``."""
        ...

    async def finish_delivery(
        self, delivery_id: str, *, outcome: str, task_id: int | None = None
    ) -> None:
        """Note what a recorded delivery did."""
        ...

    async def forget_delivery(self, delivery_id: str) -> None:
        """Drop a recorded delivery (its handling failed: the forge's retry must count)."""
        ...

    async def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """A recorded delivery (its forge, event, repo, task_id, outcome), or None."""
        ...

    async def task_for_pull(self, repo: str, number: int) -> Task | None:
        """The task whose pull request on bosun repo ``repo`` has number ``number``."""
        ...

    async def claim_notification(self, key: str, *, event_id: int, task_id: int | None) -> bool:
        """Take the sending of the notification ``key``; ``False`` when it is taken."""
        ...

    async def finish_notification(self, key: str, *, sent: bool, error: str | None = None) -> None:
        """Record one attempt at sending a claimed notification."""
        ...

    async def notification_cursor(self) -> int:
        """The newest event id any notification was made for (0: none yet)."""
        ...


__all__ = [
    "RUN_FIELDS",
    "TASK_FIELDS",
    "TOKEN_KINDS",
    "ApiToken",
    "Chooser",
    "ClaimRequest",
    "ForgeStore",
    "HostRecord",
    "HostStore",
    "PullStore",
    "RunEvents",
    "RunStatus",
    "RunUpdate",
    "RunningTask",
    "Store",
    "SubmitClaimer",
    "TaskFilter",
    "TokenStore",
]
