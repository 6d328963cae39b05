"""The dispatch loop: recover, claim, place, run; until stopped or (burst) idle.

One ``Dispatcher`` per bosun process. Its identity (``owner``) is
``hostname:pid:random``, so a restarted bosun on the same machine can tell that the
previous owner of a lease is dead and take its runs over at once instead of waiting for
the lease to expire. Several dispatchers may share one database: ``Store.claim`` is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from bosun import lifecycle, scheduler
from bosun.config import Settings
from bosun.execution import Attempt, Context, utcnow
from bosun.models import ErrorKind, NewEvent, Outcome, RunStatus, Task, TaskStatus
from bosun.providers.base import Provider
from bosun.store.base import Store
from bosun.workspace import Workspace

log = logging.getLogger(__name__)

#: How many runnable tasks one scheduling pass looks at.
BATCH = 64


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` names a bosun process on this machine that no longer exists."""
    if not owner:
        return True
    parts = owner.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: Mapping[str, Provider],
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner or new_owner()
        workspaces = {
            name: Workspace(provider, str(settings.state_dir))
            for name, provider in providers.items()
        }
        self.ctx = Context(settings, store, providers, workspaces, self.owner, clock)
        self._active: dict[int, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._unplaceable: dict[int, str] = {}
        self._on_event = on_event

    # -- public ------------------------------------------------------------------------
    async def run(self, *, burst: bool = False, stop: asyncio.Event | None = None) -> None:
        """Dispatch until ``stop`` is set, or (``burst``) until nothing is left to do."""
        stop = stop or asyncio.Event()
        for provider in self.ctx.providers.values():
            await provider.ensure_ready()
        loop = asyncio.get_running_loop()
        try:
            await self.recover()
            recovered_at = unpaused_at = loop.time()
            await self._unpause()
            while not stop.is_set():
                now = loop.time()
                if now - recovered_at >= self.settings.limits.heartbeat_seconds:
                    # another dispatcher on this database may have died: adopt its runs
                    await self.recover()
                    recovered_at = now
                if now - unpaused_at >= self.settings.limits.poll_interval:
                    # kept off the hot path: a submit should reach claim_batch directly
                    await self._unpause()
                    unpaused_at = now
                placed, waiting, full = await self._schedule()
                if burst and not self._active and not placed and not await self._pending(waiting):
                    break
                if placed and full:
                    continue  # a full batch: there may be more to place right away
                await self._wait(stop)
        finally:
            await self._shutdown()

    async def recover(self) -> None:
        """Adopt running tasks whose owner is gone: re-attach to live runs, collect ended ones."""
        now = self.ctx.clock()
        for task in await self.store.running():
            if task.lease_owner == self.owner or task.id in self._active:
                continue
            dead = owner_is_dead(task.lease_owner)
            taken = await self.store.take_over(
                task.id,
                owner=self.owner,
                lease_seconds=self.settings.limits.lease_seconds,
                now=now,
                force=dead,
            )
            if taken is None:
                continue
            self._adopt(taken)

    # -- internals ---------------------------------------------------------------------
    def _adopt(self, task: Task) -> None:
        host = task.assigned_host
        if host is None or host not in self.ctx.providers or task.agent not in self.settings.agents:
            self._spawn(
                task,
                self._requeue(task, f"host {host} or agent {task.agent} is no longer configured"),
            )
            return
        self._spawn(task, self._reattach(task, host))

    async def _reattach(self, task: Task, host: str) -> None:
        runs = [r for r in await self.store.list_runs(task.id) if r.attempt == task.attempt]
        attempt = Attempt(self.ctx, task, host)
        if not runs:
            # Launched but not recorded, or never launched: the run key tells which.
            if not await attempt.adopt():
                await self._requeue(task, "bosun stopped before the run was launched")
            return
        # Whatever the run's state (even ended, if bosun died while settling it), following
        # it from its stored offsets finishes the attempt exactly once.
        await attempt.resume(runs[-1])

    async def _requeue(self, task: Task, reason: str) -> None:
        await self.store.transition(task.id, TaskStatus.QUEUED, owner=self.owner, reason=reason)

    def _spawn(self, task: Task, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the loop nor strand the task
                log.exception("task %s: attempt crashed", task.id)
                with contextlib.suppress(Exception):
                    await self._after_crash(task, exc)
            finally:
                self._active.pop(task.id, None)
                self._slot_freed.set()

        self._active[task.id] = asyncio.create_task(guarded(), name=f"bosun-task-{task.id}")

    async def _after_crash(self, task: Task, exc: Exception) -> None:
        """An attempt failed inside bosun (a bug, or a run that cannot be re-attached):
        stop its run if one is known, record it, and let the lifecycle retry or fail the
        task, so it never stays ``running`` under a lease nobody follows."""
        message = f"internal error: {type(exc).__name__}: {exc}"
        await self.store.append_event(
            NewEvent("dispatcher.error", {"error": message}, task_id=task.id)
        )
        now = self.ctx.clock()
        for run in await self.store.list_runs(task.id):
            if run.attempt != task.attempt or run.ended_at is not None:
                continue
            provider = self.ctx.providers.get(run.host)
            if provider is not None and "run_dir" in run.ref:
                with contextlib.suppress(Exception):
                    handle = await provider.attach(run.ref)
                    await handle.cancel(self.settings.limits.cancel_grace)
            await self.store.update_run(
                run.id,
                status=RunStatus.LOST,
                error_kind=ErrorKind.INTERNAL,
                error=message,
                ended_at=now,
            )
        current = await self.store.get_task(task.id)
        if current.status is not TaskStatus.RUNNING or current.lease_owner != self.owner:
            return
        lim = self.settings.limits
        decision = lifecycle.after_run(
            Outcome(success=False, error_kind=ErrorKind.INTERNAL, error=message),
            attempt=current.attempt,
            max_attempts=current.max_attempts,
            now=now,
            backoff_base=lim.retry_backoff,
            backoff_cap=lim.retry_backoff_max,
        )
        await self.store.transition(
            task.id,
            decision.status,
            owner=self.owner,
            reason=decision.reason,
            error=message,
            error_kind=ErrorKind.INTERNAL,
            not_before=decision.not_before,
        )

    async def _report_unplaceable(self, skipped: Sequence[scheduler.Skip]) -> None:
        """Say once (per reason) why a task can never be placed as configured."""
        for skip in skipped:
            if skip.waiting or self._unplaceable.get(skip.task.id) == skip.reason:
                continue
            self._unplaceable[skip.task.id] = skip.reason
            await self.store.append_event(
                NewEvent("task.unplaceable", {"reason": skip.reason}, task_id=skip.task.id)
            )

    def _hosts(self) -> list[scheduler.HostSlot]:
        return [
            scheduler.HostSlot(
                name=name,
                max_concurrent=h.max_concurrent,
                agents=frozenset(h.agents),
                labels=frozenset(h.labels),
                priority=h.priority,
                enabled=h.enabled,
                unhealthy_agents=frozenset(self.ctx.unhealthy.get(name, ())),
            )
            for name, h in self.settings.hosts.items()
            if name in self.ctx.providers
        ]

    async def _schedule(self) -> tuple[int, int, bool]:
        """One pass: plan and claim in one store transaction, then start what was claimed.
        Returns (tasks started, tasks waiting on capacity, whether the batch was full)."""
        lim = self.settings.limits
        hosts = self._hosts()
        caps = scheduler.Caps(lim.max_concurrent, dict(lim.per_agent))
        seen: list[scheduler.Plan] = []
        offered = 0

        def choose(candidates: Sequence[Task], running: Sequence[Task]) -> list[tuple[int, str]]:
            nonlocal offered
            offered = len(candidates)
            plan = scheduler.plan(candidates, running, hosts, caps)
            seen.append(plan)
            return [(p.task.id, p.host) for p in plan.placements]

        claimed = await self.store.claim_batch(
            choose,
            owner=self.owner,
            lease_seconds=lim.lease_seconds,
            now=self.ctx.clock(),
            limit=BATCH,
        )
        for task in claimed:
            assert task.assigned_host is not None
            self._spawn(task, Attempt(self.ctx, task, task.assigned_host).start())
        waiting = sum(1 for s in seen[0].skipped if s.waiting) if seen else 0
        if seen:
            await self._report_unplaceable(seen[0].skipped)
        return len(claimed), waiting, offered == BATCH

    async def _pending(self, waiting: int) -> bool:
        """Burst mode: is there anything worth waiting for?"""
        if waiting:
            return True
        horizon = self.ctx.clock() + timedelta(seconds=self.settings.limits.retry_backoff_max + 1)
        soon = await self.store.runnable(horizon, 1)
        return bool(soon) and any(t.not_before is not None for t in soon)

    async def _unpause(self) -> None:
        for task in await self.store.due_paused(self.ctx.clock()):
            with contextlib.suppress(Exception):
                await self.store.transition(
                    task.id, TaskStatus.QUEUED, reason="usage limit reset time reached"
                )

    async def _wait(self, stop: asyncio.Event) -> None:
        self._slot_freed.clear()
        waiters = [
            asyncio.create_task(self.store.wait_for_work(self.settings.limits.poll_interval)),
            asyncio.create_task(self._slot_freed.wait()),
            asyncio.create_task(stop.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _shutdown(self) -> None:
        """Stop following runs. The agents keep running (they are detached); their leases
        are released so the next bosun re-attaches at once."""
        tasks = list(self._active.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = self.ctx.clock()
        for task in await self.store.running():
            if task.lease_owner == self.owner:
                with contextlib.suppress(Exception):
                    await self.store.update_task(task.id, owner=self.owner, lease_expires_at=now)
                    await self.store.append_event(
                        NewEvent("task.released", {"owner": self.owner}, task_id=task.id)
                    )
        for provider in self.ctx.providers.values():
            await provider.aclose()
