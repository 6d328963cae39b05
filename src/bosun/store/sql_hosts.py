"""The host registry's part of ``SqlStore``: the ``hosts`` table (see ``HostStore``).

A row holds a host added at run time (``bosun hosts add`` / ``POST /api/v1/hosts``) with
its configuration, or only the state of a host of ``bosun.toml``: drained, detected
capabilities, health. Health changes append ``host.unhealthy`` / ``host.healthy`` events
in the same transaction, with a conditional update, so that several dispatchers checking
the same host record each change once.

The runs a host waits for (``bosun.hosts.waiting``) are read here too, and an operator's
``forget_runs`` checks that each run still waits and marks it, with its
``run.forgotten`` event, in one transaction (the runs' rows locked on PostgreSQL, in id
order, before anything else: a run's row comes before any task row in bosun's lock
order).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from bosun.errors import InputError, NotFound, StoreError
from bosun.hosts.records import HEALTH_STATES, SOURCES, HostRecord, has_control_characters
from bosun.hosts.waiting import ABANDONED, GOING, WaitingRun, describe, not_waiting, why_waiting
from bosun.models import ErrorKind, Event, NewEvent, Run, RunStatus, TaskStatus
from bosun.store.rows import (
    aware,
    event_from_row,
    json_object,
    new_event_values,
    run_from_row,
    run_values,
)
from bosun.store.schema import events, hosts, runs, tasks
from bosun.store.sql_base import SqlBase, Tx, shielded, utcnow

#: Columns ``update_host`` may set.
HOST_FIELDS = frozenset({"drained", "capabilities", "health", "health_error", "checked_at"})

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_BY_NAME = sa.select(hosts).where(hosts.c.name == sa.bindparam("name"))

#: At most this many runs forgotten in one call; ``by`` and ``note`` at most this long.
MAX_FORGET = 1000
MAX_BY = 200
MAX_NOTE = 1000

#: Runs that may be waiting for their host's reconcile, with their task's state. No ORDER
#: BY (the caller sorts the few rows): an ORDER BY id can make SQLite, once ANALYZE has
#: run, prefer a scan of every run in id order to ``ix_runs_status_host`` and a sort.
_MAYBE_WAITING = (
    sa.select(runs, tasks.c.status.label("task_status"), tasks.c.attempt.label("task_attempt"))
    .join(tasks, tasks.c.id == runs.c.task_id)
    .where(runs.c.status.in_([s.value for s in (RunStatus.LOST, *GOING)]))
)
#: When ``bosun cancel`` said it could not stop a run (``run.cancel_pending``).
_CANCEL_PENDING_AT = (
    sa.select(events.c.created_at)
    .where(
        events.c.task_id == sa.bindparam("task_id"),
        events.c.run_id == sa.bindparam("run_id"),
        events.c.kind == "run.cancel_pending",
    )
    .order_by(events.c.id.desc())
    .limit(1)
)
# FOR NO KEY UPDATE: the check that a run waits and its mark are one step; the task's
# state is read, not locked (a run nobody follows is never followed again).
_RUNS_TO_FORGET = (
    sa.select(runs)
    .where(runs.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(runs.c.id)
    .with_for_update(key_share=True)
)
_INSERT_EVENTS = sa.insert(events).returning(*events.c, sort_by_parameter_order=True)
_TASK_STATES = sa.select(tasks.c.id, tasks.c.status, tasks.c.attempt).where(
    tasks.c.id.in_(sa.bindparam("ids", expanding=True))
)


def maybe_waiting(hosts: Sequence[str] | None = None) -> sa.Select[Any]:
    """The runs of ``hosts`` (None: of every host) that may be waiting for their host's
    reconcile (status lost, starting or running), with their task's status and attempt
    (``task_status``, ``task_attempt``), in no particular order.
    ``bosun.hosts.waiting.why_waiting`` says which of them are. One range of the index
    ``ix_runs_status_host`` per status (and host)."""
    if hosts is None:
        return _MAYBE_WAITING
    return _MAYBE_WAITING.where(runs.c.host.in_(list(hosts)))


def host_from_row(row: RowMapping) -> HostRecord:
    return HostRecord(
        name=row["name"],
        source=row["source"],
        config=dict(row["config"] or {}),
        drained=bool(row["drained"]),
        capabilities=dict(row["capabilities"] or {}),
        health=row["health"],
        health_error=row["health_error"],
        checked_at=row["checked_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def check_host_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"invalid host name {name!r}",
            "start with a letter or digit; then letters, digits, '_' and '-' (max 128)",
        )
    return name


def _host_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - HOST_FIELDS)
    if unknown:
        raise InputError(
            f"cannot set host field(s) {', '.join(unknown)}",
            f"settable host fields: {', '.join(sorted(HOST_FIELDS))}",
        )
    values: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "drained":
            if not isinstance(value, bool):
                raise InputError(f"drained={value!r} is not a boolean")
        elif key == "capabilities":
            value = json_object(value, "capabilities")
        elif key == "health":
            if value not in HEALTH_STATES:
                raise InputError(
                    f"health={value!r} is not valid", f"use one of: {', '.join(HEALTH_STATES)}"
                )
        elif key == "health_error":
            if value is not None and not isinstance(value, str):
                raise InputError(f"health_error={value!r} is not a string")
        elif key == "checked_at" and value is not None:
            value = aware(value, "checked_at")
        values[key] = value
    return values


async def _retry_conflict(write: Callable[[], Awaitable[HostRecord]]) -> HostRecord:
    """Run ``write`` again once when it lost a race to create the same row (the second
    try sees the row the other writer made)."""
    try:
        return await write()
    except StoreError as exc:
        if not isinstance(exc.__cause__, IntegrityError):
            raise
    return await write()


class HostMethods(SqlBase):
    """``HostStore`` over the ``hosts`` table."""

    async def list_hosts(self) -> list[HostRecord]:
        """Every row, by name."""
        async with self._read() as conn:
            rows = (await conn.execute(sa.select(hosts).order_by(hosts.c.name))).mappings()
            return [host_from_row(r) for r in rows]

    async def get_host(self, name: str) -> HostRecord:
        async with self._read() as conn:
            row = (await conn.execute(_BY_NAME, {"name": name})).mappings().first()
        if row is None:
            raise _host_not_found(name)
        return host_from_row(row)

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
        """Register a host (``source`` "cli" or "api"). ``InputError`` when a registered
        host of that name exists; a state-only row of a ``bosun.toml`` host of that name
        (left behind when it was removed from the file) is replaced."""
        check_host_name(name)
        if source not in SOURCES or source == "config":
            raise InputError(f"source={source!r} is not valid for add_host", "use cli or api")
        state = _host_values(
            {
                "capabilities": capabilities or {},
                "health": health,
                "health_error": health_error,
                "checked_at": checked_at,
            }
        )
        config = json_object(config, "config")
        return await _retry_conflict(lambda: self._add_host(name, source, config, state))

    @shielded
    async def _add_host(
        self, name: str, source: str, config: dict[str, Any], state: dict[str, Any]
    ) -> HostRecord:
        now = utcnow()
        async with self._write() as tx:
            row = (await tx.conn.execute(_BY_NAME, {"name": name})).mappings().first()
            if row is not None and row["source"] != "config":
                raise InputError(
                    f"host {name!r} is already registered",
                    f"remove it first with `bosun hosts rm {name}`, or pick another name",
                )
            if row is not None:
                await tx.write(sa.delete(hosts).where(hosts.c.name == name))
            values = {
                "name": name,
                "source": source,
                "config": config,
                "drained": False,
                "created_at": now,
                "updated_at": now,
                **state,
            }
            await tx.write(sa.insert(hosts), values)
            tx.new_work()  # a new host may take queued tasks
            return await self._load(tx, name)

    @shielded
    async def remove_host(self, name: str) -> HostRecord:
        """Delete a host's row (a registered host, or a config host's state); returns it."""
        async with self._write() as tx:
            record = await self._load(tx, name)
            await tx.write(sa.delete(hosts).where(hosts.c.name == name))
            return record

    async def update_host(self, name: str, *, create: bool = False, **fields: Any) -> HostRecord:
        """Set ``fields`` (names from ``HOST_FIELDS``). With ``create`` a missing row is
        created as the state row of a ``bosun.toml`` host (source "config"); without it a
        missing host is ``NotFound``."""
        values = _host_values(fields)
        return await _retry_conflict(lambda: self._update_host(name, create, values))

    @shielded
    async def _update_host(self, name: str, create: bool, values: dict[str, Any]) -> HostRecord:
        now = utcnow()
        async with self._write() as tx:
            changed = await tx.write(
                sa.update(hosts).where(hosts.c.name == name).values(**values, updated_at=now)
            )
            if changed.rowcount == 0:
                if not create:
                    raise _host_not_found(name)
                await self._insert_state_row(tx, name, now, values)
            if values.get("drained") is False or values.get("health") == "healthy":
                tx.new_work()
            return await self._load(tx, name)

    async def record_health(
        self, name: str, *, healthy: bool, error: str | None = None, now: datetime | None = None
    ) -> HostRecord:
        """Store the result of a health check (creating a config host's state row when
        missing). A change to unhealthy appends ``host.unhealthy`` ``{host, error}``, a
        change from unhealthy to healthy ``host.healthy`` ``{host}``, in the same
        transaction; only the writer that made the change appends it."""
        when = aware(now or utcnow(), "now")
        return await _retry_conflict(lambda: self._record_health(name, healthy, error, when))

    @shielded
    async def _record_health(
        self, name: str, healthy: bool, error: str | None, now: datetime
    ) -> HostRecord:
        check_host_name(name)
        target = "healthy" if healthy else "unhealthy"
        error = None if healthy else (error or "health check failed")[:2000]
        state = {"health": target, "health_error": error, "checked_at": now, "updated_at": now}
        async with self._write() as tx:
            # only a host that was unhealthy "recovers"; unknown -> healthy is quiet
            was_down = hosts.c.health == "unhealthy"
            flip = was_down if healthy else sa.not_(was_down)
            flipped = await tx.write(
                sa.update(hosts).where(hosts.c.name == name, flip).values(**state)
            )
            changed = flipped.rowcount > 0
            if not changed:
                plain = await tx.write(sa.update(hosts).where(hosts.c.name == name).values(**state))
                if plain.rowcount == 0:
                    await self._insert_state_row(tx, name, now, state)
                    changed = not healthy
            if changed:
                kind = "host.healthy" if healthy else "host.unhealthy"
                data: dict[str, Any] = {"host": name}
                if not healthy:
                    data["error"] = error
                await self._ops.lock_event_log(tx.conn)
                await tx.write(sa.insert(events), [new_event_values(NewEvent(kind, data), now)])
                if healthy:
                    tx.new_work()
            return await self._load(tx, name)

    async def waiting_runs(self, host: str | None = None) -> list[WaitingRun]:
        """The runs ``host`` (None: every host) waits for before it gets new work (see
        ``bosun.hosts.waiting``), by id."""
        stmt = maybe_waiting(None if host is None else [host])
        found: list[WaitingRun] = []
        async with self._read(single=False) as conn:
            rows = sorted((await conn.execute(stmt)).mappings().all(), key=lambda r: r["id"])
            for row in rows:
                run = run_from_row(row)
                why = why_waiting(run, TaskStatus(row["task_status"]), row["task_attempt"])
                if why is None:
                    continue
                since: datetime | None = run.ended_at or run.started_at
                if why != ABANDONED:
                    ids = {"task_id": run.task_id, "run_id": run.id}
                    since = (await conn.execute(_CANCEL_PENDING_AT, ids)).scalar()
                found.append(WaitingRun(run, TaskStatus(row["task_status"]), why, since))
        return found

    async def waiting_counts(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        """How many runs each of ``hosts`` (None: every host) waits for: ``waiting_runs``
        counted, by the same rule (``why_waiting``), in one read and without the time
        since when each waits. A host that waits for no run is not in the result."""
        if isinstance(hosts, str):
            raise TypeError("hosts must be a sequence of host names, not one name")
        names = None if hosts is None else list(dict.fromkeys(hosts))
        if names == []:
            return {}
        counts: dict[str, int] = {}
        async with self._read() as conn:
            for row in (await conn.execute(maybe_waiting(names))).mappings():
                run = run_from_row(row)
                if why_waiting(run, TaskStatus(row["task_status"]), row["task_attempt"]):
                    counts[run.host] = counts.get(run.host, 0) + 1
        return counts

    async def mark_reconciled(
        self,
        run_id: int,
        *,
        fields: Mapping[str, Any] | None = None,
        ref: Mapping[str, Any] | None = None,
        event: NewEvent | None = None,
    ) -> Run | None:
        """A reconcile stopped run ``run_id`` (or found it gone): set ``fields`` (run
        columns but ``ref``), set the keys of ``ref`` in the run's reference as it is now,
        and append ``event``, in one transaction, but only if the run still waits for its
        host (``why_waiting``), which is checked there, the run's row locked (``event``
        is about the run: its task and run are set to the run's). A run that
        no longer waits (an operator forgot it, ``ref["forgotten"]``, since the reconcile
        read it; another reconcile recorded it; it ended) is left as it is, no event is
        appended, and the result is None; else the run as it is now. ``NotFound`` for an
        unknown run."""
        values = run_values(fields or {})
        if "ref" in values:
            raise InputError("mark_reconciled sets keys of the reference: pass them as ref=")
        changes = json_object(dict(ref or {}), "ref")
        stamped = None if event is None else new_event_values(event, utcnow())
        return await self._mark_reconciled(run_id, values, changes, stamped)

    @shielded
    async def _mark_reconciled(
        self,
        run_id: int,
        values: dict[str, Any],
        changes: dict[str, Any],
        event: dict[str, Any] | None,
    ) -> Run | None:
        async with self._write() as tx:
            # the run's row first (bosun's lock order), as forget_runs
            row = (await tx.conn.execute(_RUNS_TO_FORGET, {"ids": [run_id]})).mappings().first()
            if row is None:
                raise NotFound(f"run {run_id} does not exist")
            run = run_from_row(row)
            state = (await tx.conn.execute(_TASK_STATES, {"ids": [run.task_id]})).one()
            if why_waiting(run, TaskStatus(state.status), state.attempt) is None:
                return None
            if changes:
                values = {**values, "ref": {**run.ref, **changes}}
            if values:
                update = sa.update(runs).where(runs.c.id == run_id).returning(*runs.c)
                run = run_from_row((await tx.write(update, values)).mappings().one())
            if event is not None:
                await self._ops.lock_event_log(tx.conn)
                about = {**event, "task_id": run.task_id, "run_id": run_id}
                await tx.write(sa.insert(events), [about])
            return run

    async def forget_runs(
        self,
        host: str,
        run_ids: Collection[int],
        *,
        by: str,
        note: str | None = None,
        now: datetime | None = None,
    ) -> list[Event]:
        """An operator takes responsibility for runs ``host`` waits for: the reconcile no
        longer stops them, and the host gets new work at its next reconcile. Each run is
        marked (``ref["forgotten"]`` {by, at, note, why}; an abandoned run's
        ``ref["abandoned"]`` becomes ``"forgotten"``; one recorded as going is recorded
        ``lost``) and gets a ``run.forgotten`` event {run_id, host, why, reason,
        task_status, by, note}; their tasks are left as they are. All of them or none:
        ``NotFound`` for an unknown run, ``InputError`` for a run that is not waiting on
        ``host`` (another host's, one stopped or forgotten already, one a dispatcher
        follows, one that ended). Returns the events."""
        ids = sorted(set(run_ids))
        if not ids:
            raise InputError("no run to forget", "name at least one run id")
        if len(ids) > MAX_FORGET:
            raise InputError(
                f"{len(ids)} runs to forget at once; at most {MAX_FORGET}",
                "forget them in several calls",
            )
        if not _text(by, MAX_BY) or not by.strip():
            raise InputError(
                f"by={by!r} must name who forgets the runs",
                f"1-{MAX_BY} printable characters",
            )
        if note is not None and not _text(note, MAX_NOTE):
            raise InputError(
                f"the note is not a printable text of at most {MAX_NOTE} characters",
                "shorten it, on one line",
            )
        when = aware(now or utcnow(), "now")
        return await self._forget_runs(host, ids, by.strip(), note, when)

    @shielded
    async def _forget_runs(
        self, host: str, ids: list[int], by: str, note: str | None, now: datetime
    ) -> list[Event]:
        async with self._write() as tx:
            rows = (await tx.conn.execute(_RUNS_TO_FORGET, {"ids": ids})).mappings().all()
            found = {row["id"]: run_from_row(row) for row in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound(
                    f"run {missing[0]} does not exist",
                    f"`bosun hosts waiting {host}` lists the runs host {host} waits for",
                )
            task_ids = sorted({run.task_id for run in found.values()})
            states = {
                r.id: (TaskStatus(r.status), r.attempt)
                for r in await tx.conn.execute(_TASK_STATES, {"ids": task_ids})
            }
            new: list[NewEvent] = []
            for run_id in ids:
                run = found[run_id]
                status, attempt = states[run.task_id]
                why = why_waiting(run, status, attempt) if run.host == host else None
                if why is None:
                    raise not_waiting(run, status, attempt, host)
                mark = {"by": by, "at": now.isoformat(), "note": note, "why": why}
                values: dict[str, Any] = {"ref": {**run.ref, "forgotten": mark}}
                if why == ABANDONED:
                    values["ref"]["abandoned"] = "forgotten"
                else:  # nothing says it ended: bosun lost it
                    values.update(
                        status=RunStatus.LOST.value,
                        error_kind=ErrorKind.LOST.value,
                        error=f"forgotten by {by}: bosun no longer tries to stop it",
                        ended_at=now,
                    )
                await tx.write(sa.update(runs).where(runs.c.id == run_id).values(**values))
                data = {
                    "run_id": run_id,
                    "host": host,
                    "why": why,
                    "reason": describe(run, why),
                    "task_status": status.value,
                    "by": by,
                    "note": note,
                }
                new.append(NewEvent("run.forgotten", data, task_id=run.task_id, run_id=run_id))
            await self._ops.lock_event_log(tx.conn)
            values_list = [new_event_values(e, now) for e in new]
            stored = (await tx.write(_INSERT_EVENTS, values_list)).mappings()
            return [event_from_row(r) for r in stored]

    # -- helpers -------------------------------------------------------------------------
    async def _load(self, tx: Tx, name: str) -> HostRecord:
        row = (await tx.conn.execute(_BY_NAME, {"name": name})).mappings().first()
        if row is None:
            raise _host_not_found(name)
        return host_from_row(row)

    async def _insert_state_row(
        self, tx: Tx, name: str, now: datetime, values: Mapping[str, Any]
    ) -> None:
        check_host_name(name)
        row = {
            "name": name,
            "source": "config",
            "config": {},
            "drained": False,
            "capabilities": {},
            "health": "unknown",
            "health_error": None,
            "checked_at": None,
            "created_at": now,
            "updated_at": now,
            **values,
        }
        await tx.write(sa.insert(hosts), row)


def _text(value: object, limit: int) -> bool:
    """A printable one-line text of at most ``limit`` characters."""
    return isinstance(value, str) and len(value) <= limit and not has_control_characters(value)


def _host_not_found(name: str) -> NotFound:
    return NotFound(f"host {name!r} does not exist", "list hosts with `bosun hosts`")
