"""``SqlStore``: the ``Store`` protocol over SQLAlchemy Core (async), on SQLite or PostgreSQL.

Every method is one transaction. Writes go through ``_write`` (on SQLite a ``BEGIN
IMMEDIATE`` transaction, see ``bosun.store.connect``), so a read-check-write sequence such
as ``claim`` cannot interleave with another writer in this or any other process. Reads go
through ``_read`` (a plain deferred transaction: a consistent snapshot that never blocks).

On PostgreSQL writers run concurrently, so a write transaction locks what it reads in
order to change it: task rows with ``FOR NO KEY UPDATE`` (``_lock_task``, ``_load_task(
lock=True)``; nothing on SQLite), claims and dependency bookkeeping with advisory locks,
and the event log with an advisory lock taken right before the events are inserted, at the
end of the transaction (the lock order that keeps bosun's transactions free of deadlocks
is in ``bosun.store.dialects``).

The dispatch path is a few writes per attempt, each as small as it can be: the claim
(``claim_batch``: every claimed task and one insert of their events; or, for a submit in
the process of a running dispatcher, ``add_task`` itself: see ``claim_on_submit``), the
run and its
``run.started`` (``add_run(events=...)``), output (``append_output``), and the end: the
run's final fields, ``run.finished`` and the task's transition in one
(``transition(run=..., events=...)``). Writes read only what they decide on (a task's
status and lease owner, not its row) and let foreign keys check that the tasks and runs
they name exist; statements are built once and filled by parameters.

The few things that differ between SQLite and PostgreSQL live in ``bosun.store.dialects``;
everything here is portable Core.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable, Select

from bosun import lifecycle, scopes
from bosun.errors import InputError, LeaseLost, NotFound, StoreError
from bosun.models import (
    Event,
    ExecutionMode,
    NewEvent,
    Run,
    RunStatus,
    Task,
    TaskSpec,
    TaskStatus,
)
from bosun.scheduler import Occupant
from bosun.store.base import (
    Chooser,
    ClaimRequest,
    RunEvents,
    RunningTask,
    RunUpdate,
    SubmitClaimer,
    TaskFilter,
)
from bosun.store.rows import (
    aware,
    event_from_row,
    new_event_values,
    new_run_values,
    new_task_values,
    run_from_row,
    run_values,
    task_from_row,
    task_values,
)
from bosun.store.schema import events, runs, tasks
from bosun.store.sql_base import (
    SqlBase,
)
from bosun.store.sql_base import (
    Tx as _Tx,
)
from bosun.store.sql_base import (
    first as _first,
)
from bosun.store.sql_base import (
    not_found as _not_found,
)
from bosun.store.sql_base import (
    positive as _positive,
)
from bosun.store.sql_base import (
    shielded as _shielded,
)
from bosun.store.sql_base import (
    utcnow as _utcnow,
)
from bosun.store.sql_forge import ForgeMethods
from bosun.store.sql_hosts import HostMethods
from bosun.store.sql_pull import PullMethods
from bosun.store.sql_tokens import TokenMethods

_RUNNABLE = tuple(sorted(s.value for s in lifecycle.RUNNABLE))
_RUNNING = TaskStatus.RUNNING.value


class SqlStore(TokenMethods, HostMethods, PullMethods, ForgeMethods, SqlBase):
    """The ``Store`` protocol on a SQLAlchemy async engine. Open it with ``open_store``."""

    # -- tasks ---------------------------------------------------------------------------
    @_shielded
    async def add_task(self, spec: TaskSpec, *, max_attempts: int) -> Task:
        """Store ``spec`` as blocked (a dependency is not completed) or queued; claimed in
        the same transaction when a claimer asks for it (``claim_on_submit``)."""
        now = _utcnow()
        deps = tuple(dict.fromkeys(spec.depends_on))
        request: ClaimRequest | None = None
        claimed: list[Task] = []
        async with self._write() as tx:
            status = TaskStatus.QUEUED
            if deps:
                # a dependency completing right now either sees this task (and unblocks
                # it) or is seen completed here; never neither
                await self._ops.lock_dependencies(tx.conn)
                query = sa.select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(deps))
                found = {row.id: row.status for row in await tx.conn.execute(query)}
                missing = [d for d in deps if d not in found]
                if missing:
                    raise InputError(
                        f"depends on task(s) that do not exist: {', '.join(map(str, missing))}",
                        "check the ids with `bosun ls`; only existing tasks can be depended on",
                    )
                if any(s != TaskStatus.COMPLETED.value for s in found.values()):
                    status = TaskStatus.BLOCKED
            if (
                status is TaskStatus.QUEUED
                and self._claimer is not None
                and spec.execution_mode is ExecutionMode.DISPATCH
            ):
                request = self._claimer()
                if request is not None:
                    # the lock order of bosun.store.dialects: claims' lock before any row
                    await self._ops.lock_for_claim(tx.conn)
            values = new_task_values(spec, status, max_attempts, now)
            task = task_from_row((await tx.write(_INSERT_TASK, values)).mappings().one())
            data = {"title": task.title, "status": task.status.value}
            new = [NewEvent("task.submitted", data, task_id=task.id)]
            if request is not None:
                aware(request.now)
                chosen = request.choose

                def choose(
                    offered: Sequence[Task], running: Sequence[RunningTask]
                ) -> Sequence[tuple[int, str]]:
                    # A submit claims for itself, not for a backlog: when the new task is
                    # not placed, nothing is (the dispatcher's pass claims, in batches).
                    picks = chosen(offered, running)
                    return picks if any(i == task.id for i, _ in picks) else []

                claimed, taken = await self._claim_in(
                    tx,
                    choose,
                    owner=request.owner,
                    lease_seconds=request.lease_seconds,
                    now=request.now,
                    limit=_positive(request.limit, "limit"),
                )
                new += taken
            await self._add_events(tx, new, now, returning=False)
            mine = next((t for t in claimed if t.id == task.id), None)
            if status is TaskStatus.QUEUED and mine is None:
                tx.new_work()  # (a task claimed here is no work for any dispatcher)
        if claimed and request is not None:
            request.claimed(claimed)
        return task if mine is None else mine

    def claim_on_submit(self, claimer: SubmitClaimer) -> Callable[[], None]:
        """Set the claimer ``add_task`` asks (see the protocol)."""
        self._claimer = claimer

        def remove() -> None:
            if self._claimer is claimer:
                self._claimer = None

        return remove

    async def get_task(self, task_id: int) -> Task:
        """The task, or ``NotFound``."""
        async with self._read() as conn:
            return await self._load_task(conn, task_id)

    async def list_tasks(self, flt: TaskFilter | None = None) -> list[Task]:
        """Tasks matching ``flt`` by ascending id, at most ``flt.limit``."""
        flt = flt or TaskFilter()
        stmt = sa.select(tasks).order_by(tasks.c.id).limit(_positive(flt.limit, "limit"))
        if flt.statuses is not None:
            stmt = stmt.where(tasks.c.status.in_(sorted(TaskStatus(x) for x in flt.statuses)))
        if flt.repo is not None:
            stmt = stmt.where(tasks.c.repo == flt.repo)
        if flt.agent is not None:
            stmt = stmt.where(tasks.c.agent == flt.agent)
        if flt.label is not None:
            stmt = stmt.where(self._ops.has_label(flt.label))
        if flt.after_id is not None:
            stmt = stmt.where(tasks.c.id > flt.after_id)
        async with self._read() as conn:
            return await _tasks(conn, stmt)

    @_shielded
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
        """Move a task to ``target`` through the lifecycle, with a ``task.status`` event;
        with ``run`` and ``events``, the end of its run in the same transaction."""
        try:
            target = TaskStatus(target)
        except ValueError as exc:
            raise InputError(f"unknown task status {target!r}") from exc
        values = task_values(fields)
        run_params = None if run is None else _run_update_params(task_id, run)
        now = _utcnow()
        try:
            async with self._write() as tx:
                if target is TaskStatus.COMPLETED:
                    await self._ops.lock_dependencies(tx.conn)  # before any row lock
                if run_params is not None:
                    # the run's row before its task's, as append_output locks them
                    await self._end_run(tx, run_params)
                status, holder = await self._lock_task(tx.conn, task_id)
                _check_owner(task_id, holder, owner)
                lifecycle.check(task_id, status, target)
                values.update(status=target.value, updated_at=now)
                if status is TaskStatus.RUNNING and target is not TaskStatus.RUNNING:
                    values.update(lease_owner=None, lease_expires_at=None)
                updated = await self._set_task(tx, task_id, values)
                data = {"from": status.value, "to": target.value, "reason": reason}
                new = [*events, NewEvent("task.status", data, task_id=task_id)]
                if target is TaskStatus.COMPLETED:
                    new += await self._queue_dependents(tx, task_id, now)
                # last: see the module docstring
                await self._add_events(tx, new, now, returning=False)
                if target is not TaskStatus.RUNNING:
                    # queued / rework is new work; leaving running frees a slot and scope locks
                    tx.new_work()
                return updated
        except StoreError as exc:
            if not _foreign_key_failed(exc):
                raise
            named = [task_id, *(e.task_id for e in events)]
            raise await self._missing(named, [e.run_id for e in events]) from None

    @_shielded
    async def update_task(self, task_id: int, *, owner: str | None = None, **fields: Any) -> Task:
        """Set ``fields`` (names from ``TASK_FIELDS``) without a status change."""
        values = task_values(fields)
        async with self._write() as tx:
            _status, holder = await self._lock_task(tx.conn, task_id)
            _check_owner(task_id, holder, owner)
            return await self._set_task(tx, task_id, {**values, "updated_at": _utcnow()})

    def runnable_statement(self, now: datetime, limit: int) -> Select[Any]:
        """The query behind ``runnable``: one index range per runnable status, each cut at
        ``limit`` rows, merged. Public so tests and benchmarks can EXPLAIN it."""
        return _RUNNABLE_STMT.params(now=now, limit=limit)

    async def runnable(self, now: datetime, limit: int) -> list[Task]:
        """Due dispatch tasks in a runnable state, by priority (high first) then id."""
        params = {"now": aware(now), "limit": _positive(limit, "limit")}
        async with self._read() as conn:
            return await _tasks(conn, _RUNNABLE_STMT, params)

    @_shielded
    async def claim(
        self, task_id: int, *, owner: str, host: str, lease_seconds: float, now: datetime
    ) -> Task | None:
        """Atomically take a runnable, due, non-colliding task: ``running`` with a lease."""
        aware(now)
        # Racing dispatchers mostly lose: a lock-free look first spares them the write lock.
        if not _claimable(await self.get_task(task_id), now):
            return None
        async with self._write() as tx:
            await self._ops.lock_for_claim(tx.conn)
            task = await self._load_task(tx.conn, task_id, lock=True)
            if not _claimable(task, now) or await self._collides_with_running(tx.conn, task):
                return None
            claimed, event = await self._take_row(
                tx,
                task.id,
                task.status,
                task.attempt,
                owner=owner,
                host=host,
                lease_seconds=lease_seconds,
                now=now,
            )
            await self._add_events(tx, [event], now, returning=False)
            return claimed

    @_shielded
    async def claim_batch(
        self,
        choose: Chooser,
        *,
        owner: str,
        lease_seconds: float,
        now: datetime,
        limit: int,
    ) -> list[Task]:
        """Plan and claim in one write transaction (see the protocol)."""
        aware(now)
        limit = _positive(limit, "limit")
        async with self._write() as tx:
            await self._ops.lock_for_claim(tx.conn)
            claimed, new = await self._claim_in(
                tx, choose, owner=owner, lease_seconds=lease_seconds, now=now, limit=limit
            )
            await self._add_events(tx, new, now, returning=False)  # every claim's, at once
            return claimed

    async def _claim_in(
        self,
        tx: _Tx,
        choose: Chooser,
        *,
        owner: str,
        lease_seconds: float,
        now: datetime,
        limit: int,
    ) -> tuple[list[Task], list[NewEvent]]:
        """``claim_batch`` inside a write transaction that holds ``lock_for_claim``: the
        claimed tasks and their events, for the caller to insert with its own."""
        params = {"now": now, "limit": limit}
        # PostgreSQL: the candidates locked (SKIP LOCKED: a row another writer is
        # changing right now is left for the next pass), so none can change under us
        candidates = _CLAIMABLE_STMT if self._ops.row_locks else _RUNNABLE_STMT
        offered = await _tasks(tx.conn, candidates, params)
        if not offered:
            choose([], [])
            return [], []
        running = [
            RunningTask(r[0], r[1], r[2], r[3], tuple(r[4]), ExecutionMode(r[5]))
            for r in await tx.conn.execute(_RUNNING_OCCUPANTS)
        ]
        by_id = {t.id: t for t in offered}
        busy: list[Occupant] = list(running)
        claimed: list[Task] = []
        new: list[NewEvent] = []
        for task_id, host in choose(offered, running):
            task = by_id.pop(task_id, None)
            if task is None or any(
                scopes.collides(task.repo, task.scope, b.repo, b.scope) for b in busy
            ):
                continue
            taken, event = await self._take_row(
                tx,
                task.id,
                task.status,
                task.attempt,
                owner=owner,
                host=host,
                lease_seconds=lease_seconds,
                now=now,
            )
            busy.append(taken)
            claimed.append(taken)
            new.append(event)
        return claimed, new

    async def _take_row(
        self,
        tx: _Tx,
        task_id: int,
        status: TaskStatus,
        attempt_before: int,
        *,
        owner: str,
        host: str,
        lease_seconds: float,
        now: datetime,
    ) -> tuple[Task, NewEvent]:
        """Inside a claim transaction: the task (``status``, ``attempt_before`` as the
        caller read them under its lock) -> running with a lease; the updated task and its
        ``task.status`` event, for the caller to insert with its own."""
        lifecycle.check(task_id, status, TaskStatus.RUNNING)
        attempt = attempt_before + 1
        claimed = await self._set_task(
            tx,
            task_id,
            {
                "status": _RUNNING,
                "attempt": attempt,
                "assigned_host": host,
                "lease_owner": owner,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
                "not_before": None,
                "error": None,
                "error_kind": None,
                "updated_at": now,
            },
        )
        data = {
            "from": status.value,
            "to": _RUNNING,
            "reason": "claimed",
            "host": host,
            "attempt": attempt,
        }
        return claimed, NewEvent("task.status", data, task_id=task_id)

    @_shielded
    async def heartbeat(self, task_id: int, *, owner: str, lease_seconds: float) -> None:
        """Extend ``owner``'s lease; ``LeaseLost`` when someone else holds it."""
        now = _utcnow()
        async with self._write() as tx:
            status, holder = await self._lock_task(tx.conn, task_id)
            if status is not TaskStatus.RUNNING:
                raise LeaseLost(
                    f"task {task_id} is {status.value}, so nobody holds its lease",
                    "stop working on it; its run has already been settled",
                )
            _check_owner(task_id, holder, owner)
            expires = now + timedelta(seconds=lease_seconds)
            touch = {"_task_id": task_id, "lease_expires_at": expires, "updated_at": now}
            await tx.write(_TOUCH_TASK, touch)

    @_shielded
    async def take_over(
        self,
        task_id: int,
        *,
        owner: str,
        lease_seconds: float,
        now: datetime,
        force: bool = False,
    ) -> Task | None:
        """Take the expired (or, with ``force``, any) lease of a running task."""
        aware(now)
        async with self._write() as tx:
            task = await self._load_task(tx.conn, task_id, lock=True)
            if task.status is not TaskStatus.RUNNING:
                return None
            live = task.lease_expires_at is not None and task.lease_expires_at >= now
            if live and not force:
                return None
            taken = await self._set_task(
                tx,
                task_id,
                {
                    "lease_owner": owner,
                    "lease_expires_at": now + timedelta(seconds=lease_seconds),
                    "updated_at": now,
                },
            )
            data = {"from_owner": task.lease_owner, "to_owner": owner}
            await self._add_events(tx, [NewEvent("task.lease", data, task_id=task_id)], now)
            return taken

    async def running(
        self, *, mode: ExecutionMode | None = None, not_owned_by: str | None = None
    ) -> list[Task]:
        """Running tasks by id: all, or those of ``mode`` and/or not leased by
        ``not_owned_by`` (the dispatcher's recovery asks for what it may have to adopt)."""
        stmt = sa.select(tasks).where(tasks.c.status == _RUNNING).order_by(tasks.c.id)
        if mode is not None:
            stmt = stmt.where(tasks.c.execution_mode == ExecutionMode(mode).value)
        if not_owned_by is not None:
            stmt = stmt.where(
                sa.or_(tasks.c.lease_owner.is_(None), tasks.c.lease_owner != not_owned_by)
            )
        async with self._read() as conn:
            return await _tasks(conn, stmt)

    async def due_paused(self, now: datetime) -> list[Task]:
        """Paused tasks whose ``not_before`` has passed (or that have none), by id."""
        stmt = (
            sa.select(tasks)
            .where(
                tasks.c.status == TaskStatus.PAUSED.value,
                sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= aware(now)),
            )
            .order_by(tasks.c.id)
        )
        async with self._read() as conn:
            return await _tasks(conn, stmt)

    # -- runs ----------------------------------------------------------------------------
    @_shielded
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
        """A new run (offsets 0) of an existing task, with ``events(run)`` if given."""
        now = _utcnow()
        values = new_run_values(task_id, attempt, host, agent, ref, now)
        values["status"] = RunStatus(status).value
        new: list[NewEvent] = []
        try:
            async with self._write() as tx:
                # the task's foreign key says whether it exists (NotFound below)
                run = run_from_row((await tx.write(_INSERT_RUN, values)).mappings().one())
                if events is not None:
                    new.extend(events(run))
                    await self._add_events(tx, new, now, returning=False)
                return run
        except StoreError as exc:
            if not _foreign_key_failed(exc):
                raise
            named = [task_id, *(e.task_id for e in new)]
            raise await self._missing(named, [e.run_id for e in new]) from None

    async def get_run(self, run_id: int) -> Run:
        """The run, or ``NotFound``."""
        async with self._read() as conn:
            row = await _first(conn, sa.select(runs).where(runs.c.id == run_id))
        if row is None:
            raise _not_found("run", run_id)
        return run_from_row(row)

    async def list_runs(self, task_id: int) -> list[Run]:
        """Runs of an existing task by ascending id."""
        async with self._read(single=False) as conn:
            await self._load_task(conn, task_id)
            stmt = sa.select(runs).where(runs.c.task_id == task_id).order_by(runs.c.id)
            return [run_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    @_shielded
    async def update_run(self, run_id: int, **fields: Any) -> Run:
        """Set ``fields`` (names from ``RUN_FIELDS``) of a run."""
        values = run_values(fields)
        async with self._write() as tx:
            if values:
                params = {**values, "_run_id": run_id}
                row = (await tx.write(_UPDATE_RUN, params)).mappings().first()
            else:
                row = await _first(tx.conn, sa.select(runs).where(runs.c.id == run_id))
            if row is None:
                raise _not_found("run", run_id)
            return run_from_row(row)

    @_shielded
    async def append_output(
        self,
        run_id: int,
        events: Sequence[NewEvent],
        *,
        stdout_offset: int,
        stderr_offset: int,
    ) -> list[Event]:
        """Append the run's ``events`` and set its offsets in one transaction."""
        if stdout_offset < 0 or stderr_offset < 0:
            raise InputError(f"offsets must not be negative: {stdout_offset}, {stderr_offset}")
        now = _utcnow()
        async with self._write() as tx:
            offsets = {
                "_run_id": run_id,
                "stdout_offset": stdout_offset,
                "stderr_offset": stderr_offset,
            }
            task_id = (await tx.write(_SET_OFFSETS, offsets)).scalar_one_or_none()
            if task_id is None:
                raise _not_found("run", run_id)
            touch = {"_task_id": task_id, "last_activity_at": now, "updated_at": now}
            await tx.write(_TOUCH_TASK, touch)
            stamped = [NewEvent(e.kind, e.data, task_id=task_id, run_id=run_id) for e in events]
            return await self._add_events(tx, stamped, now)

    # -- events --------------------------------------------------------------------------
    @_shielded
    async def append_event(self, event: NewEvent) -> Event:
        """Append one event; its task and run, when given, must exist (their foreign keys
        say so: no read first)."""
        try:
            async with self._write() as tx:
                (stored,) = await self._add_events(tx, [event], _utcnow())
                return stored
        except StoreError as exc:
            if not _foreign_key_failed(exc):
                raise
            raise await self._missing([event.task_id], [event.run_id]) from None

    async def events_since(
        self, cursor: int = 0, *, task_id: int | None = None, limit: int = 1000
    ) -> list[Event]:
        """Events with ``id > cursor`` in id order, optionally for one task."""
        params = {"cursor": cursor, "limit": _positive(limit, "limit")}
        stmt = _EVENTS_SINCE
        if task_id is not None:
            stmt, params["task_id"] = _TASK_EVENTS_SINCE, task_id
        async with self._read() as conn:
            return [event_from_row(r) for r in (await conn.execute(stmt, params)).mappings()]

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a task may have become claimable: at once for a submit or status
        change by this process; for one by another process, within milliseconds on
        PostgreSQL (LISTEN/NOTIFY; also for one since the previous ``wait_for_work``
        returned), within the poll interval for any event on SQLite; else after
        ``timeout`` seconds."""
        fired = self._work  # taken before any await: a write from here on wakes us
        if await self._ops.listen(self._on_peer_write):
            if self._peer_work == self._peer_work_seen:
                await _until(fired, timeout)
            self._peer_work_seen = self._peer_work
            return
        # The last id this process polled is baseline enough: a spurious wake-up costs one
        # scheduling pass, while a query here would cost one on every wait.
        await self._wait(fired, timeout, self._seen_event_id)

    async def wait_for_change(self, timeout: float, *, after: int | None = None) -> None:
        """Return on a write by this process (at once), a write by another process (within
        milliseconds on PostgreSQL, within the poll interval on SQLite: a new event), or
        after ``timeout`` seconds. With ``after`` (an event id read before the caller's
        last read), also at once when an event newer than it exists already: no wake-up
        is lost to a write that landed between that read and this call."""
        fired = self._changed  # every write from now on sets it
        newest = await self._last_event_id() if after is not None else None
        if after is not None and newest is not None and newest > after:
            return
        if await self._ops.listen(self._on_peer_write):
            await _until(fired, timeout)
            return
        await self._wait(
            fired, timeout, newest if newest is not None else await self._last_event_id()
        )

    async def _wait(self, fired: asyncio.Event, timeout: float, baseline: int) -> None:
        """Until ``fired`` is set, the newest event id differs from ``baseline`` (polled),
        or ``timeout`` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            if await _until(fired, min(self._poll_interval, remaining)):
                return
            if await self._last_event_id() != baseline:
                return

    # -- helpers -------------------------------------------------------------------------
    async def last_event_id(self) -> int:
        """The newest event's id (0 when there is none)."""
        return await self._last_event_id()

    async def _last_event_id(self) -> int:
        async with self._read() as conn:
            last = int(await conn.scalar(sa.select(sa.func.max(events.c.id))) or 0)
        self._seen_event_id = last
        return last

    async def _load_task(self, conn: AsyncConnection, task_id: int, *, lock: bool = False) -> Task:
        """The task, or ``NotFound``; ``lock``: inside a write transaction that will change
        it (PostgreSQL locks the row until COMMIT; SQLite's write lock covers it)."""
        stmt = _TASK_BY_ID_FOR_UPDATE if lock else _TASK_BY_ID
        row = (await conn.execute(stmt, {"task_id": task_id})).mappings().first()
        if row is None:
            raise _not_found("task", task_id)
        return task_from_row(row)

    async def _lock_task(
        self, conn: AsyncConnection, task_id: int
    ) -> tuple[TaskStatus, str | None]:
        """Inside a write that will change the task: its status and lease owner (the row
        locked on PostgreSQL), without reading and converting the whole row."""
        row = (await conn.execute(_TASK_STATE_FOR_UPDATE, {"task_id": task_id})).first()
        if row is None:
            raise _not_found("task", task_id)
        return TaskStatus(row.status), row.lease_owner

    async def _set_task(self, tx: _Tx, task_id: int, values: dict[str, Any]) -> Task:
        params = {**values, "_task_id": task_id}
        return task_from_row((await tx.write(_UPDATE_TASK, params)).mappings().one())

    async def _end_run(self, tx: _Tx, params: dict[str, Any]) -> None:
        """``transition(run=...)``: set the run's fields; ``NotFound`` unless it is a run
        of the task."""
        stmt = _END_RUN if len(params) > 2 else _RUN_OF_TASK
        if (await tx.write(stmt, params)).first() is None:
            raise NotFound(
                f"run {params['_run_id']} does not exist or is not a run of task "
                f"{params['_task_id']}",
                "check the run id with `bosun show`",
            )

    async def _missing(
        self, task_ids: Sequence[int | None], run_ids: Sequence[int | None]
    ) -> NotFound:
        """After a foreign key refused an insert: the first of these tasks and runs that
        does not exist (they are never deleted, so it is still missing)."""
        async with self._read(single=False) as conn:
            for what, ids, stmt in (
                ("task", task_ids, _TASK_EXISTS),
                ("run", run_ids, _RUN_EXISTS),
            ):
                for ident in dict.fromkeys(i for i in ids if i is not None):
                    if await conn.scalar(stmt, {"id": ident}) is None:
                        return _not_found(what, ident)
        return NotFound(
            "a task or run named by this write does not exist", "check the ids with `bosun show`"
        )

    async def _add_events(
        self, tx: _Tx, new: Sequence[NewEvent], now: datetime, *, returning: bool = True
    ) -> list[Event]:
        """Insert ``new`` in one statement; the stored events (``returning=False``: none,
        for a caller that does not need them, which saves reading them back)."""
        if not new:
            return []
        rows = [new_event_values(event, now) for event in new]
        if not tx.events_locked:  # held until the transaction ends: once is enough
            await self._ops.lock_event_log(tx.conn)
            tx.events_locked = True
        if not returning:
            await tx.write(_INSERT_EVENTS_ONLY, rows)
            return []
        stmt = _INSERT_EVENTS
        return [event_from_row(r) for r in (await tx.write(stmt, rows)).mappings()]

    @functools.cached_property
    def _blocked_on(self) -> Select[Any]:
        """Blocked tasks that depend on ``:completed_id``, locked (built once per store:
        building it cost as much as running it)."""
        completed_id = sa.bindparam("completed_id", type_=sa.Integer)
        return (
            sa.select(tasks)
            .where(
                tasks.c.status == TaskStatus.BLOCKED.value,
                self._ops.json_array_has(tasks.c.depends_on, completed_id),
            )
            .order_by(tasks.c.id)
            .with_for_update(key_share=True)
        )

    async def _collides_with_running(self, conn: AsyncConnection, task: Task) -> bool:
        if task.repo is None or not task.scope:
            return False
        stmt = sa.select(tasks.c.scope).where(
            tasks.c.status == _RUNNING, tasks.c.repo == task.repo, tasks.c.id != task.id
        )
        for scope in (await conn.execute(stmt)).scalars():
            if scopes.collides(task.repo, task.scope, task.repo, scope):
                return True
        return False

    async def _unblock_dependents(self, tx: _Tx, completed_id: int, now: datetime) -> None:
        """``_queue_dependents`` and its events. On PostgreSQL the caller must hold
        ``lock_dependencies`` and must not have inserted events yet (lock order)."""
        await self._add_events(tx, await self._queue_dependents(tx, completed_id, now), now)

    async def _queue_dependents(self, tx: _Tx, completed_id: int, now: datetime) -> list[NewEvent]:
        """Queue the blocked tasks whose last pending dependency was ``completed_id``;
        returns their events for the caller to append (after its own). The caller holds
        ``lock_dependencies``: two dependencies completing at once are then serialised,
        and the second one sees the first completed."""
        new: list[NewEvent] = []
        for task in await _tasks(tx.conn, self._blocked_on, {"completed_id": completed_id}):
            if completed_id not in task.depends_on:
                continue
            pending = await tx.conn.scalar(
                sa.select(sa.func.count())
                .select_from(tasks)
                .where(
                    tasks.c.id.in_(task.depends_on),
                    tasks.c.status != TaskStatus.COMPLETED.value,
                )
            )
            if pending:
                continue
            lifecycle.check(task.id, task.status, TaskStatus.QUEUED)
            await self._set_task(tx, task.id, {"status": "queued", "updated_at": now})
            data = {"from": "blocked", "to": "queued", "reason": "dependencies completed"}
            new.append(NewEvent("task.status", data, task_id=task.id))
        return new


def _runnable_statement() -> Select[Any]:
    """Built once: constructing this union costs milliseconds; binding it costs nothing."""
    now = sa.bindparam("now", type_=tasks.c.not_before.type)
    limit = sa.bindparam("limit", type_=sa.Integer)
    branches = []
    for status in _RUNNABLE:
        branch = (
            sa.select(tasks)
            .where(
                tasks.c.status == status,
                tasks.c.execution_mode == ExecutionMode.DISPATCH.value,
                sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
            )
            .order_by(tasks.c.priority.desc(), tasks.c.id)
            .limit(limit)
            .subquery()
        )
        branches.append(sa.select(branch))
    merged = sa.union_all(*branches).subquery()
    return sa.select(merged).order_by(merged.c.priority.desc(), merged.c.id).limit(limit)


def _claimable_statement(runnable: Select[Any]) -> Select[Any]:
    """PostgreSQL's ``claim_batch`` candidates: the rows ``runnable`` picks, locked ``FOR
    NO KEY UPDATE SKIP LOCKED`` (a UNION cannot be locked, so the lock is on an outer
    SELECT of those ids). The conditions are repeated outside: a row changed and committed
    after the statement's snapshot is re-checked against them when it is locked."""
    picked = runnable.subquery()
    now = sa.bindparam("now", type_=tasks.c.not_before.type)
    return (
        sa.select(tasks)
        .where(
            tasks.c.id.in_(sa.select(picked.c.id)),
            tasks.c.status.in_(_RUNNABLE),
            tasks.c.execution_mode == ExecutionMode.DISPATCH.value,
            sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
        )
        .order_by(tasks.c.priority.desc(), tasks.c.id)
        .with_for_update(key_share=True, skip_locked=True)
    )


_RUNNABLE_STMT = _runnable_statement()
_CLAIMABLE_STMT = _claimable_statement(_RUNNABLE_STMT)
# Built once, filled by parameters: building an INSERT with .values(...) costs about a
# millisecond of Python per call, on the path of every submit and claim.
_INSERT_TASK = sa.insert(tasks).returning(*tasks.c)
_INSERT_RUN = sa.insert(runs).returning(*runs.c)
_INSERT_EVENTS = sa.insert(events).returning(*events.c, sort_by_parameter_order=True)
_INSERT_EVENTS_ONLY = sa.insert(events)
_UPDATE_TASK = sa.update(tasks).where(tasks.c.id == sa.bindparam("_task_id")).returning(*tasks.c)
_TOUCH_TASK = sa.update(tasks).where(tasks.c.id == sa.bindparam("_task_id"))
_UPDATE_RUN = sa.update(runs).where(runs.c.id == sa.bindparam("_run_id")).returning(*runs.c)
_END_RUN = (
    sa.update(runs)
    .where(runs.c.id == sa.bindparam("_run_id"), runs.c.task_id == sa.bindparam("_task_id"))
    .returning(runs.c.id)
)
_RUN_OF_TASK = sa.select(runs.c.id).where(
    runs.c.id == sa.bindparam("_run_id"), runs.c.task_id == sa.bindparam("_task_id")
)
_TASK_EXISTS = sa.select(tasks.c.id).where(tasks.c.id == sa.bindparam("id"))
_RUN_EXISTS = sa.select(runs.c.id).where(runs.c.id == sa.bindparam("id"))
_SET_OFFSETS = sa.update(runs).where(runs.c.id == sa.bindparam("_run_id")).returning(runs.c.task_id)
_TASK_BY_ID = sa.select(tasks).where(tasks.c.id == sa.bindparam("task_id"))
# FOR NO KEY UPDATE, not FOR UPDATE: it does not block the foreign-key checks (KEY SHARE)
# of concurrent inserts of this task's runs and events. SQLite renders no clause.
_TASK_BY_ID_FOR_UPDATE = _TASK_BY_ID.with_for_update(key_share=True)
_TASK_STATE_FOR_UPDATE = (
    sa.select(tasks.c.status, tasks.c.lease_owner)
    .where(tasks.c.id == sa.bindparam("task_id"))
    .with_for_update(key_share=True)
)
# what a claim's planner reads of the running tasks (RunningTask): a whole row cost 15 us
# to fetch and 7 to convert, 32 of them on every claim of a busy dispatcher
_RUNNING_OCCUPANTS = sa.select(
    tasks.c.id,
    tasks.c.agent,
    tasks.c.assigned_host,
    tasks.c.repo,
    tasks.c.scope,
    tasks.c.execution_mode,
).where(tasks.c.status == _RUNNING)
_EVENTS_SINCE = (
    sa.select(events)
    .where(events.c.id > sa.bindparam("cursor"))
    .order_by(events.c.id)
    .limit(sa.bindparam("limit"))
)
_TASK_EVENTS_SINCE = _EVENTS_SINCE.where(events.c.task_id == sa.bindparam("task_id"))


async def _until(fired: asyncio.Event, timeout: float) -> bool:
    """Wait for ``fired`` at most ``timeout`` seconds; whether it was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await fired.wait()
            return True
    return False


async def _tasks(
    conn: AsyncConnection, stmt: Executable, params: dict[str, Any] | None = None
) -> list[Task]:
    return [task_from_row(row) for row in (await conn.execute(stmt, params)).mappings()]


def _claimable(task: Task, now: datetime) -> bool:
    return (
        task.status in lifecycle.RUNNABLE
        and task.execution_mode is ExecutionMode.DISPATCH
        and (task.not_before is None or task.not_before <= now)
    )


def _check_owner(task_id: int, holder: str | None, owner: str | None) -> None:
    if owner is not None and holder != owner:
        raise LeaseLost(
            f"task {task_id}: lease is held by {holder or 'nobody'}, not {owner}",
            "another dispatcher took this task over; stop working on it",
        )


def _run_update_params(task_id: int, run: RunUpdate) -> dict[str, Any]:
    """``transition(run=...)``'s fields, checked, as parameters of ``_END_RUN``."""
    return {**run_values(run.fields), "_run_id": run.run_id, "_task_id": task_id}


def _foreign_key_failed(exc: StoreError) -> bool:
    """Whether a write failed because a foreign key named a task or run that is missing."""
    return isinstance(exc.__cause__, sa.exc.IntegrityError)
