"""The pull protocol's store methods: agents outside bosun dequeue ``http_pull`` tasks.

A pull agent (``bosun agent``, or any program speaking the HTTP API) takes a task with
``dequeue`` and holds it under a lease named ``pull:<agent>:<random>``: it reports progress
with ``pull_status`` (which extends the lease) and the result with ``pull_receipt``, which
settles the task through ``bosun.lifecycle`` exactly as a run bosun dispatched itself.
A lease that is not extended in time is taken back by ``expire_pull_leases``; the old
holder's late reports are then refused with ``LeaseLost``.

Every dequeue also records a run (host ``pull:<agent>``) whose ``ref`` keeps a SHA-256 of
the lease (never the lease itself: runs are shown to users), so a late report can be told
from a report by an agent that never held the task (``Forbidden``), and a receipt sent
twice (its answer lost on the way) is answered again instead of refused.

``mirror_task`` is for the other side: the pull worker keeps a copy of the task it runs
in a store of its own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable, Select

from bosun import lifecycle, scopes
from bosun.errors import Forbidden, InputError, LeaseLost
from bosun.models import (
    ErrorKind,
    Event,
    ExecutionMode,
    NewEvent,
    Outcome,
    Run,
    RunStatus,
    Task,
    TaskStatus,
)
from bosun.store.rows import (
    aware,
    new_run_values,
    run_from_row,
    run_values,
    task_from_row,
    task_values,
)
from bosun.store.schema import runs, tasks
from bosun.store.sql_base import SqlBase, Tx, shielded

__all__ = ["EVENT_KIND", "MAX_STATUS_EVENTS", "PullMethods", "lease_hash", "pull_host"]

#: Kinds of event a pull agent may report (``task.*`` and the rest are bosun's own).
EVENT_KIND = re.compile(r"(run|agent|workspace|pull)\.[a-z0-9_.-]{1,50}")
#: Events one status report may carry.
MAX_STATUS_EVENTS = 1000
#: Runnable tasks one dequeue looks at (the first whose scope is free wins).
_BATCH = 32
_RUNNING = TaskStatus.RUNNING.value
_PULL = ExecutionMode.HTTP_PULL.value
_RUNNABLE = tuple(sorted(s.value for s in lifecycle.RUNNABLE))


def pull_host(agent: str) -> str:
    """The ``assigned_host`` of a task a pull agent holds."""
    return f"pull:{agent}"


def lease_hash(lease: str) -> str:
    return hashlib.sha256(lease.encode()).hexdigest()


def _candidates_statement() -> Select[Any]:
    """Runnable pull tasks of some agents, by priority then id; built once, bound per call
    (``now``, ``caps``, ``limit``)."""
    now = sa.bindparam("now", type_=tasks.c.not_before.type)
    return (
        sa.select(tasks)
        .where(
            tasks.c.status.in_(_RUNNABLE),
            tasks.c.execution_mode == _PULL,
            tasks.c.agent.in_(sa.bindparam("caps", expanding=True)),
            sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
        )
        .order_by(tasks.c.priority.desc(), tasks.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )


_CANDIDATES = _candidates_statement()
#: FOR UPDATE SKIP LOCKED on PostgreSQL (rows another dequeue is taking are skipped, not
#: waited for); SQLite omits it: BEGIN IMMEDIATE serialises writers. Only the columns the
#: choice needs: the task taken comes back whole from its UPDATE ... RETURNING.
_TAKE = _CANDIDATES.with_only_columns(
    tasks.c.id, tasks.c.status, tasks.c.attempt, tasks.c.repo, tasks.c.scope
).with_for_update(key_share=True, skip_locked=True)
#: The scopes of the running tasks of one repository (the scope check of a candidate).
_BUSY_SCOPES = sa.select(tasks.c.scope).where(
    tasks.c.status == _RUNNING, tasks.c.repo == sa.bindparam("repo")
)
_INSERT_RUN = sa.insert(runs).returning(runs.c.id)
_EXPIRED = (
    sa.select(tasks)
    .where(
        tasks.c.status == _RUNNING,
        tasks.c.lease_expires_at < sa.bindparam("now", type_=tasks.c.lease_expires_at.type),
        tasks.c.execution_mode == _PULL,
    )
    .order_by(tasks.c.id)
)

_FIRST_EXPIRED = _EXPIRED.with_only_columns(tasks.c.id).limit(1)
#: The lock-free look of ``dequeue``: (an expired pull lease?, a candidate?) in one query.
_LOOK = sa.select(
    _FIRST_EXPIRED.scalar_subquery().label("expired"),
    _CANDIDATES.with_only_columns(tasks.c.id).scalar_subquery().label("found"),
)


class PullMethods(SqlBase):
    """``PullStore`` (see ``bosun.store.base``) for ``SqlStore``."""

    # -- provided by SqlStore (bosun.store.sql), which combines this class with its own --
    async def _load_task(self, conn: AsyncConnection, task_id: int, *, lock: bool = False) -> Task:
        raise NotImplementedError

    async def _set_task(self, tx: Tx, task_id: int, values: dict[str, Any]) -> Task:
        raise NotImplementedError

    async def _add_events(
        self, tx: Tx, new: Sequence[NewEvent], now: datetime, *, returning: bool = True
    ) -> list[Event]:
        raise NotImplementedError

    async def _queue_dependents(self, tx: Tx, completed_id: int, now: datetime) -> list[NewEvent]:
        raise NotImplementedError

    async def _take_row(
        self,
        tx: Tx,
        task_id: int,
        status: TaskStatus,
        attempt_before: int,
        *,
        owner: str,
        host: str,
        lease_seconds: float,
        now: datetime,
    ) -> tuple[Task, NewEvent]:
        raise NotImplementedError

    # -- the pull protocol ---------------------------------------------------------------
    @shielded
    async def dequeue(
        self,
        agent: str,
        capabilities: Collection[str],
        *,
        lease_seconds: float,
        now: datetime,
    ) -> Task | None:
        """Take the first runnable ``http_pull`` task (priority, then id) whose agent is in
        ``capabilities`` and whose scope is free: ``running``, ``attempt + 1``, a lease
        (its id is the returned task's ``lease_owner``) and a run on ``pull:<agent>``.
        Exactly one caller gets a task, however many dequeue at once."""
        aware(now)
        if not agent or not isinstance(agent, str):
            raise InputError("a pull agent needs a name", "give the agent token an agent name")
        if lease_seconds <= 0:
            raise InputError(f"lease_seconds must be positive, got {lease_seconds}")
        caps = sorted({c for c in capabilities if isinstance(c, str) and c})
        if not caps:
            return None
        # A lock-free look first: idle agents poll, and most polls find nothing.
        async with self._read() as conn:
            look = (await conn.execute(_LOOK, {"now": now, "caps": caps, "limit": 1})).one()
        if look.expired is not None:
            await self.expire_pull_leases(now)
        elif look.found is None:
            return None
        async with self._write() as tx:
            await self._ops.lock_for_claim(tx.conn)
            params = {"now": now, "caps": caps, "limit": _BATCH}
            busy: dict[str, list[list[str]]] = {}  # repo -> scopes of its running tasks
            for row in (await tx.conn.execute(_TAKE, params)).all():
                repo, scope = row.repo, row.scope
                if repo is not None and scope:
                    if repo not in busy:
                        found = await tx.conn.execute(_BUSY_SCOPES, {"repo": repo})
                        busy[repo] = list(found.scalars())
                    if any(scopes.collides(repo, scope, repo, other) for other in busy[repo]):
                        continue
                lease = f"{pull_host(agent)}:{secrets.token_urlsafe(12)}"
                host = pull_host(agent)
                taken, status_event = await self._take_row(
                    tx,
                    row.id,
                    TaskStatus(row.status),
                    row.attempt,
                    owner=lease,
                    host=host,
                    lease_seconds=lease_seconds,
                    now=now,
                )
                ref = {"pull": True, "agent_identity": agent, "lease_sha256": lease_hash(lease)}
                values = new_run_values(taken.id, taken.attempt, host, taken.agent, ref, now)
                values["status"] = RunStatus.RUNNING.value
                run_id = (await tx.write(_INSERT_RUN, values)).scalar_one()
                data = {
                    "run_id": run_id,
                    "agent_identity": agent,
                    "attempt": taken.attempt,
                    "lease_expires_at": _iso(taken.lease_expires_at),
                }
                event = NewEvent("pull.dequeued", data, task_id=taken.id, run_id=run_id)
                # Both events in one statement, after the run (the event log's lock last).
                await self._add_events(tx, [status_event, event], now, returning=False)
                return taken
            return None

    @shielded
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
        """Extend the lease of the task's holder and append its ``events`` (stamped with
        the task and the pull run). ``first_seq`` numbers the first event of this report
        (the next ones follow on): events already received are dropped, so a report sent
        again after a lost answer adds nothing twice. ``LeaseLost`` when ``lease`` is no
        longer the task's lease; ``Forbidden`` when ``agent`` never held it."""
        aware(now)
        if len(events) > MAX_STATUS_EVENTS:
            raise InputError(
                f"{len(events)} events in one status report (at most {MAX_STATUS_EVENTS})",
                "send them in several reports",
            )
        for ev in events:
            if not isinstance(ev.kind, str) or not EVENT_KIND.fullmatch(ev.kind):
                raise InputError(
                    f"event kind {ev.kind!r} cannot be reported by a pull agent",
                    "use kinds like run.output, agent.text, agent.tool_use or workspace.*",
                )
        async with self._write() as tx:
            task = await self._load_task(tx.conn, task_id, lock=True)
            _, run = await self._held(tx.conn, task, lease, agent)
            expires = now + timedelta(seconds=lease_seconds)
            touch: dict[str, Any] = {"lease_expires_at": expires, "updated_at": now}
            seq = int(run.ref.get("seq", 0))
            fresh = list(events)
            if first_seq is not None:
                if first_seq < 0:
                    raise InputError(f"seq must not be negative, got {first_seq}")
                fresh = fresh[max(0, seq - first_seq) :]
                seq = max(seq, first_seq + len(events))
            else:
                seq += len(events)
            if fresh:
                touch["last_activity_at"] = now
            await tx.write(
                sa.update(runs).where(runs.c.id == run.id).values(ref={**run.ref, "seq": seq})
            )
            held = await self._set_task(tx, task_id, touch)
            stamped = [NewEvent(e.kind, e.data, task_id=task_id, run_id=run.id) for e in fresh]
            # last: the lock order of bosun.store.sql
            await self._add_events(tx, stamped, now, returning=False)
            return held

    @shielded
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
        """Settle the task with the holder's final result, as a local run is settled
        (``lifecycle.settlement``): success -> completed (``review_pending`` with
        ``review``: a forge reviews its pull request), a failure retried or failed by the
        same rules, a usage limit -> paused. Records usage, cost, commits, branch and
        session, ends the pull run and clears the lease. A receipt already recorded for
        this lease is answered with the task as it is now (nothing changes)."""
        aware(now)
        if branch is not None and not branch.strip():
            branch = None
        async with self._write() as tx:
            if outcome.success:  # it may complete: serialise with dependency bookkeeping
                await self._ops.lock_dependencies(tx.conn)  # before any row lock
            task = await self._load_task(tx.conn, task_id, lock=True)
            _check_pull(task)
            run = await _run_of_lease(tx.conn, task_id, lease)
            if (
                run is not None
                and run.ref.get("receipt")
                and (agent is None or run.host == pull_host(agent))
            ):
                return task
            task, run = await self._held(tx.conn, task, lease, agent)
            if outcome.error_kind is ErrorKind.AUTH and outcome.error:
                # As for local runs: name where it failed, a login is per agent and host.
                message = f"agent {task.agent} on host {run.host}: {outcome.error}"
                outcome = replace(outcome, error=message)
            decision, fields = lifecycle.settlement(
                task,
                outcome,
                commits,
                now=now,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                review=review,
            )
            if branch is not None:
                fields["branch"] = branch
            values = task_values(fields)
            lifecycle.check(task.id, task.status, decision.status)
            values.update(
                status=decision.status.value,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            updated = await self._set_task(tx, task_id, values)
            ended = lifecycle.run_end(outcome, exit_code, now)
            run_update = run_values({**ended, "ref": {**run.ref, "receipt": True}})
            await tx.write(sa.update(runs).where(runs.c.id == run.id).values(**run_update))
            finished = {
                "run_id": run.id,
                "exit_code": exit_code,
                "commits": list(commits),
                "branch": branch,
                **outcome.to_json(),
            }
            moved = {"from": task.status.value, "to": decision.status.value}
            new = [
                NewEvent("run.finished", finished, task_id=task_id, run_id=run.id),
                NewEvent("task.status", {**moved, "reason": decision.reason}, task_id=task_id),
            ]
            if decision.status is TaskStatus.COMPLETED:
                new += await self._queue_dependents(tx, task_id, now)
            # last: the lock order of bosun.store.sql
            await self._add_events(tx, new, now, returning=False)
            tx.new_work()
            return updated

    @shielded
    async def expire_pull_leases(self, now: datetime) -> list[Task]:
        """Take back every running ``http_pull`` task whose lease expired: its run is
        marked lost and the task settles as a lost run does (back to ``queued`` at once,
        or ``failed`` after its last attempt), with a ``task.status`` event naming the
        agent. Returns the tasks as they are now."""
        aware(now)
        settled: list[Task] = []
        async with self._read() as conn:  # lock-free: called often, rarely finds any
            if await conn.scalar(_FIRST_EXPIRED, {"now": now}) is None:
                return settled
        async with self._write() as tx:
            # Locked (skipping rows a receipt is settling right now: seen next time).
            locked = _EXPIRED.with_for_update(key_share=True, skip_locked=True)
            expired = [
                task_from_row(r)
                for r in (await tx.conn.execute(locked, {"now": now})).mappings().all()
            ]
            new: list[NewEvent] = []
            for task in expired:
                holder = task.assigned_host or "a pull agent"
                when = _iso(task.lease_expires_at)
                message = f"{holder} stopped reporting: its lease expired at {when}"
                outcome = Outcome(success=False, error_kind=ErrorKind.LOST, error=message)
                decision, fields = lifecycle.settlement(
                    task, outcome, (), now=now, backoff_base=0.0, backoff_cap=0.0
                )
                lifecycle.check(task.id, task.status, decision.status)
                values = task_values(fields)
                values.update(
                    status=decision.status.value,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
                settled.append(await self._set_task(tx, task.id, values))
                run = await _run_of_lease(tx.conn, task.id, task.lease_owner or "")
                run_id = None
                if run is not None and run.ended_at is None:
                    run_id = run.id
                    lost = run_values(
                        {
                            "status": RunStatus.LOST,
                            "error_kind": ErrorKind.LOST,
                            "error": message,
                            "ended_at": now,
                        }
                    )
                    await tx.write(sa.update(runs).where(runs.c.id == run.id).values(**lost))
                data = {
                    "from": task.status.value,
                    "to": decision.status.value,
                    "reason": f"lease of {holder} expired; {decision.reason}",
                    "run_id": run_id,
                }
                new.append(NewEvent("task.status", data, task_id=task.id))
            # last: the lock order of bosun.store.sql
            await self._add_events(tx, new, now, returning=False)
            if expired:
                tx.new_work()
        return settled

    # -- the pull worker's side ------------------------------------------------------------
    @shielded
    async def mirror_task(self, task: Task) -> Task:
        """Write ``task`` (from another bosun's store) under its own id, replacing a copy
        written before: the pull worker runs its dequeued task from such a copy."""
        values = _row_of(task)
        async with self._write() as tx:
            exists = await tx.conn.scalar(sa.select(tasks.c.id).where(tasks.c.id == task.id))
            stmt: Executable
            if exists is None:
                stmt = sa.insert(tasks).values(id=task.id, **values).returning(*tasks.c)
            else:
                where = tasks.c.id == task.id
                stmt = sa.update(tasks).where(where).values(**values).returning(*tasks.c)
            return task_from_row((await tx.write(stmt)).mappings().one())

    # -- internals -----------------------------------------------------------------------
    async def _held(
        self, conn: AsyncConnection, task: Task, lease: str, agent: str | None
    ) -> tuple[Task, Run]:
        """``task`` (loaded with its row locked) and its pull run when ``lease`` holds it
        (and ``agent``, when given, is the holder); else ``LeaseLost`` (a lease this agent
        held once) or ``Forbidden`` (a task this agent never held, or one bosun
        dispatches)."""
        task_id = task.id
        _check_pull(task)
        run = await _run_of_lease(conn, task_id, lease)
        mine = run is not None and (agent is None or run.host == pull_host(agent))
        if task.status is TaskStatus.RUNNING and task.lease_owner == lease and run is not None:
            if not mine:
                raise Forbidden(
                    f"task {task_id} is held by {run.host}, not by pull agent {agent}",
                    "report only on tasks your own agent token dequeued",
                )
            return task, run
        if not mine or run is None:
            raise Forbidden(
                f"task {task_id} was not given to pull agent {agent or '(unknown)'} "
                "under this lease",
                "report only on tasks you dequeued, with the lease the dequeue returned",
            )
        if run.status is RunStatus.LOST:
            why = f"the lease expired and the task went back to the queue ({run.error})"
        elif task.status is TaskStatus.CANCELLED:
            why = "the task was cancelled"
        else:
            why = f"the task is now {task.status.value}"
        raise LeaseLost(
            f"task {task_id}: this lease is no longer valid: {why}",
            "stop working on this task and dequeue the next one; its result is not recorded",
        )


def _check_pull(task: Task) -> None:
    if task.execution_mode is not ExecutionMode.HTTP_PULL:
        raise Forbidden(
            f"task {task.id} is run by bosun's dispatcher (execution_mode "
            f"{task.execution_mode.value}), not by pull agents",
            "pull agents report only on http_pull tasks they dequeued",
        )


async def _run_of_lease(conn: AsyncConnection, task_id: int, lease: str) -> Run | None:
    """The pull run that was started with ``lease`` (newest runs first)."""
    wanted = lease_hash(lease)
    stmt = sa.select(runs).where(runs.c.task_id == task_id).order_by(runs.c.id.desc())
    for row in (await conn.execute(stmt)).mappings():
        run = run_from_row(row)
        if run.ref.get("lease_sha256") == wanted:
            return run
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _row_of(task: Task) -> dict[str, Any]:
    """Every column of ``task`` but its id, as ``tasks`` stores them."""
    return {
        "title": task.title,
        "body": task.body,
        "status": task.status.value,
        "repo": task.repo,
        "agent": task.agent,
        "base_branch": task.base_branch,
        "branch": task.branch,
        "constraints": list(task.constraints),
        "validation": list(task.validation),
        "labels": list(task.labels),
        "priority": task.priority,
        "scope": list(task.scope),
        "depends_on": list(task.depends_on),
        "execution_mode": task.execution_mode.value,
        "host": task.host,
        "assigned_host": task.assigned_host,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "review_count": task.review_count,
        "session_id": task.session_id,
        "result_summary": task.result_summary,
        "error": task.error,
        "error_kind": task.error_kind.value if task.error_kind else None,
        "tokens_in": task.tokens_in,
        "tokens_out": task.tokens_out,
        "cost_usd": task.cost_usd,
        "commits": list(task.commits),
        "not_before": task.not_before,
        "lease_owner": task.lease_owner,
        "lease_expires_at": task.lease_expires_at,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "last_activity_at": task.last_activity_at,
    }
