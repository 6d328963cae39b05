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
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from bosun import lifecycle, scheduler
from bosun.config import Settings
from bosun.execution import Attempt, Context, make_workspace, utcnow, workspace_root
from bosun.hosts.check import ProviderFactory
from bosun.hosts.health import Fleet, probe_timeout
from bosun.models import ErrorKind, ExecutionMode, NewEvent, Outcome, RunStatus, Task, TaskStatus
from bosun.providers.base import Provider
from bosun.store.base import Chooser, ClaimRequest, PullStore, RunningTask, Store

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
        provider_factory: ProviderFactory | None = None,
    ) -> None:
        """``providers``: one per host of ``settings``; hosts registered at run time
        (``bosun hosts add``) get theirs from ``provider_factory`` (by default
        ``service.make_providers``)."""
        if provider_factory is None:
            from bosun.service import make_providers

            provider_factory = make_providers
        self.settings = settings
        self.store = store
        self.owner = owner or new_owner()
        own_providers = dict(providers)
        # a remote host's workspace is made once its provider is ready (Context.workspace)
        workspaces = {
            name: make_workspace(provider, settings)
            for name, provider in own_providers.items()
            if workspace_root(provider, settings) is not None
        }
        self.ctx = Context(settings, store, own_providers, workspaces, self.owner, clock)

        def add_workspace(name: str, provider: Provider) -> None:
            workspaces.pop(name, None)  # (a re-registered host's old one)
            if workspace_root(provider, settings) is not None:
                workspaces[name] = make_workspace(provider, settings)

        self.fleet = Fleet(
            settings,
            store,
            own_providers,
            factory=provider_factory,
            on_provider=add_workspace,
            cancel_grace=settings.limits.cancel_grace,
        )
        self.ctx.on_host_down = self.fleet.mark_down
        self._watcher: asyncio.Task[None] | None = None
        self._first: asyncio.Task[None] | None = None
        self._active: dict[int, asyncio.Task[None]] = {}
        self._active_hosts: dict[int, str] = {}  # task id -> the host of its attempt
        # the last pass skipped a task: the next one looks at a whole batch (_schedule)
        self._wide = True
        self._stopping = False
        self._slot_freed = asyncio.Event()
        self._unplaceable: dict[int, str] = {}
        self._on_event = on_event

    # -- public ------------------------------------------------------------------------
    async def run(self, *, burst: bool = False, stop: asyncio.Event | None = None) -> None:
        """Dispatch until ``stop`` is set, or (``burst``) until nothing is left to do."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        unregister: Callable[[], None] | None = None
        try:
            await self._start_hosts()
            await self.recover()
            recovered_at = unpaused_at = hosts_at = loop.time()
            await self._unpause()
            # a submit in this process claims in its own transaction (_submit_claim)
            unregister = self.store.claim_on_submit(self._submit_claim)
            while not stop.is_set():
                now = loop.time()
                if now - hosts_at >= self.settings.limits.poll_interval:
                    # `bosun hosts drain / add / rm` from another process
                    await self.fleet.refresh()
                    hosts_at = now
                if now - recovered_at >= self.settings.limits.heartbeat_seconds:
                    # another dispatcher on this database may have died: adopt its runs
                    await self.recover()
                    recovered_at = now
                if now - unpaused_at >= self.settings.limits.poll_interval:
                    # kept off the hot path: a submit should reach claim_batch directly
                    await self._unpause()
                    unpaused_at = now
                placed, waiting, again = await self._schedule()
                idle = burst and not (self._active or placed or await self._pending(waiting))
                # A burst ends when idle, but not before the first host check and its
                # reconciles are done (else _shutdown cancels them, and a stray run they
                # were to stop goes on). When they end, _watch_hosts sets _slot_freed and
                # the loop looks once more.
                if idle and not self._first_check_going():
                    break
                if again:
                    continue  # a full batch: there may be more to place right away
                await self._wait(stop)
        finally:
            self._stopping = True
            if unregister is not None:
                unregister()
            await self._shutdown()

    async def recover(self) -> None:
        """Adopt running tasks whose owner is gone: re-attach to live runs, collect ended ones.
        Tasks of pull agents are never adopted; those whose lease expired are taken back."""
        now = self.ctx.clock()
        if isinstance(self.store, PullStore):
            await self.store.expire_pull_leases(now)
        # Pull agents' tasks are not asked for (expire_pull_leases takes them back), nor
        # this dispatcher's own: usually nothing comes back.
        others = await self.store.running(mode=ExecutionMode.DISPATCH, not_owned_by=self.owner)
        for task in others:
            if task.id in self._active:
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

    # -- hosts -------------------------------------------------------------------------
    async def _start_hosts(self) -> None:
        """Load the registry and check every host (a host that does not answer is
        unhealthy, not fatal). Start-up waits for that first round only briefly: a host
        still connecting is treated as healthy until its check says otherwise, but one
        with runs to reconcile (``Fleet.scan``) gets no work before its reconcile is done.
        Then the checks go on every heartbeat interval. A burst ``run`` does not end
        before the first round and its reconciles have (``_first_check_going``)."""
        await self.fleet.refresh(strict=True)
        await self.fleet.scan()
        self._first = asyncio.create_task(self._first_check(), name="bosun-host-first-check")
        await asyncio.wait({self._first}, timeout=probe_timeout(self.settings))
        self._watcher = asyncio.create_task(self._watch_hosts(), name="bosun-host-health")

    def _first_check_going(self) -> bool:
        """Whether the first check of the hosts (and its reconciles) is still running.
        It is bounded: a host that does not answer fails its check after its
        ``connect_timeout`` plus twice ``probe_timeout``, and is then not reconciled; each
        run a reconcile stops takes at most ``2 x probe_timeout + cancel_grace + 5``
        seconds (the host is asked ``true`` after a failure)."""
        return self._first is not None and not self._first.done()

    async def _first_check(self) -> None:
        try:
            await self.fleet.check_all()
            # what is left of runs given up on while a host was unreachable (bosun may
            # have stopped before the host came back), on the hosts that answer
            for name in self.fleet.due():
                await self.fleet.reconcile(name)
        except Exception:
            log.exception("first host health check failed")

    async def _watch_hosts(self) -> None:
        if self._first is not None:
            await self._first
            # the hosts' health is known and their runs reconciled: a pass may place more
            # (and a burst that waited for this looks again, then may end)
            self._slot_freed.set()
        while True:
            await asyncio.sleep(self.settings.limits.heartbeat_seconds)
            try:
                _down, back = await self.fleet.check_all()
                # the hosts that came back, and any whose reconcile is not done yet
                due = self.fleet.due()
                for name in due:
                    await self.fleet.reconcile(name)
            except Exception:  # a failed round must not end the health checks
                log.exception("host health check failed")
                continue
            if back or due:
                self._slot_freed.set()  # a host came back: queued work may fit now

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
                self._active_hosts.pop(task.id, None)
                self._slot_freed.set()

        if task.assigned_host is not None:
            self._active_hosts[task.id] = task.assigned_host
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
            stopped = "run_dir" in run.ref and await self.fleet.stop_now(run.host, run)
            # Not stopped: the host's reconciliation kills it (its host gets no new work
            # until then), so the retry is never doubled by a stray run.
            await self.store.update_run(
                run.id,
                status=RunStatus.LOST,
                error_kind=ErrorKind.INTERNAL,
                error=message,
                ended_at=now,
                **({} if stopped else {"ref": {**run.ref, "abandoned": True}}),
            )
            if not stopped:
                self.fleet.given_up(run.host)
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
        return self.fleet.slots(self.ctx.unhealthy)

    def _chooser(self, hosts: Sequence[scheduler.HostSlot], seen: list[scheduler.Plan]) -> Chooser:
        """``claim_batch``'s planner on ``hosts``; each plan made is appended to ``seen``."""
        lim = self.settings.limits
        caps = scheduler.Caps(lim.max_concurrent, dict(lim.per_agent))

        def choose(
            candidates: Sequence[Task], running: Sequence[RunningTask]
        ) -> list[tuple[int, str]]:
            # Pull agents' tasks use no host or cap of this dispatcher (claim_batch still
            # keeps their scope locks).
            mine = [t for t in running if t.execution_mode is ExecutionMode.DISPATCH]
            plan = scheduler.plan(candidates, mine, hosts, caps)
            seen.append(plan)
            return [(p.task.id, p.host) for p in plan.placements]

        return choose

    def _free_slots(self, hosts: Sequence[scheduler.HostSlot]) -> int:
        """At most how many tasks could start now: the free slots of the healthy hosts and
        under the global cap, counting only the attempts this dispatcher follows. Other
        dispatchers' runs only make it smaller (the plan counts them), and an attempt
        still settling is counted until it ends, which sets ``_slot_freed``."""
        on_host = Counter(self._active_hosts.values())
        free = sum(
            max(0, h.max_concurrent - on_host[h.name])
            for h in hosts
            if h.enabled and h.healthy and not h.reconciling
        )
        return min(free, self.settings.limits.max_concurrent - len(self._active))

    def _submit_claim(self) -> ClaimRequest | None:
        """A submit in this process claims in its own transaction (``Store.add_task``),
        as a pass would, when the plan places the new task; the attempts start the moment
        it commits, without a wake-up of this loop. None when no slot is free. A submit
        that claims nothing wakes the loop, whose pass decides (a backlog is claimed
        there, in batches, not by one submit after another). Only while fewer slots are
        taken than are free: a claim per submit costs more CPU per task than the loop's
        passes, which take the submits that came in meanwhile together (P2 submitting
        while running: 3.9 against 3.5 ms of bosun's CPU per task, measured), so a busy
        dispatcher is left to batch; an idle one is where the latency shows."""
        if self._stopping:
            return None
        hosts = self._hosts()
        free = self._free_slots(hosts)
        if free <= len(self._active):
            return None
        return ClaimRequest(
            choose=self._chooser(hosts, []),
            owner=self.owner,
            lease_seconds=self.settings.limits.lease_seconds,
            now=self.ctx.clock(),
            limit=min(BATCH, free),
            claimed=self._start_claimed,
        )

    def _start_claimed(self, claimed: list[Task]) -> None:
        if self._stopping:
            return  # their leases run out (a restart on this machine takes them at once)
        for task in claimed:
            assert task.assigned_host is not None
            self._spawn(task, Attempt(self.ctx, task, task.assigned_host).start())

    async def _schedule(self) -> tuple[int, int, bool]:
        """One pass: plan and claim in one store transaction, then start what was claimed.
        Returns (tasks started, tasks waiting on capacity, whether to pass again at once).

        A pass looks at as many runnable tasks as there are free slots (reading and
        planning a batch of 64 for the one slot a finished run frees cost more than the
        claim), and at a whole batch after a pass that skipped a task (one that cannot
        run now may hide runnable ones behind it). With no free slot it claims nothing:
        the end of an attempt of this dispatcher sets ``_slot_freed``, and a pass follows."""
        hosts = self._hosts()
        free = self._free_slots(hosts)
        if free <= 0 and self._active:
            return 0, 0, False
        limit = BATCH if self._wide else max(1, min(BATCH, free))
        seen: list[scheduler.Plan] = []
        lim = self.settings.limits
        claimed = await self.store.claim_batch(
            self._chooser(hosts, seen),
            owner=self.owner,
            lease_seconds=lim.lease_seconds,
            now=self.ctx.clock(),
            limit=limit,
        )
        self._start_claimed(claimed)
        plan = seen[0] if seen else None
        offered = 0 if plan is None else len(plan.placements) + len(plan.skipped)
        skipped = plan is not None and bool(plan.skipped)
        narrow, self._wide = limit < BATCH, skipped
        waiting = sum(1 for s in plan.skipped if s.waiting) if plan is not None else 0
        if plan is not None:
            await self._report_unplaceable(plan.skipped)
        full = offered == limit
        return len(claimed), waiting, full and (bool(claimed) or (narrow and skipped))

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
        tasks += [t for t in (self._watcher, self._first) if t is not None]
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
        for provider in [*self.ctx.providers.values(), *self.fleet.retired]:
            await provider.aclose()
