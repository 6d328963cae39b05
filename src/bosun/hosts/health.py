"""The dispatcher's view of its hosts: registry snapshot, providers, health checks.

``Fleet`` belongs to one dispatcher. It

- reloads the registry (``bosun.toml`` hosts plus registered ones) every poll interval,
  so ``bosun hosts drain`` / ``add`` / ``rm`` from another process take effect at once,
  and opens a provider for each newly registered host;
- checks every host every ``heartbeat_seconds`` with a cheap ``true`` over its provider
  (after ``ensure_ready``, which for SSH reconnects a dropped connection). A failure
  marks the host unhealthy (in memory for scheduling, and in the store with the error and
  a ``host.unhealthy`` event); the first success after that marks it healthy again
  (``host.healthy``) and reconciles it;
- turns the snapshot into the scheduler's ``HostSlot`` values: a drained, disabled or
  unhealthy host gets no new work, and neither does an agent whose CLI the last
  ``bosun hosts check`` did not find on the host;
- reconciles a host: runs that bosun gave up on while the host was unreachable (their
  tasks were retried, or wait to be, or were cancelled; ``ref["abandoned"]`` is true) are
  killed if they still run, so that a task never runs twice; so are runs that no
  dispatcher follows any more because their task was cancelled while ``bosun cancel``
  could not reach the host (``run.cancel_pending``). A host with runs left to reconcile
  gets no new work until that is done (a task's retry must not start next to its old
  agent): the hosts found with such runs at start-up (``scan``), and every host that
  comes back, until its reconcile has ended. A run is taken as reconciled only once it
  is stopped or its provider finds it gone; a host that stops answering meanwhile is
  marked down, and the rest waits for its next reconcile, when it answers again. Which
  runs a host waits for is ``bosun.hosts.waiting``'s rule (read through
  ``HostStore.waiting_runs``); a run an operator took over (``bosun hosts forget``) is
  not among them any more, so the host's next reconcile lets it take work again. A stop
  is recorded only if the run still waits then (``HostStore.mark_reconciled``): a run
  forgotten while the reconcile stopped it keeps the operator's record.

Runs on a host that is unreachable for a while are handled by ``execution.Attempt``:
their follower waits, re-attaches when the host answers again, and gives up (the task is
retried at once, elsewhere) only once the host has been unreachable for
``unreachable_limit(settings)`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bosun import scheduler
from bosun.config import HostConfig, Settings
from bosun.errors import BosunError, ConfigError, HostKeyError, HostUnreachable, ProviderError
from bosun.hosts.capabilities import probe
from bosun.hosts.check import ProviderFactory
from bosun.hosts.registry import Host, Registry, merge, with_hosts
from bosun.hosts.waiting import ABANDONED
from bosun.models import ErrorKind, NewEvent, Run, RunStatus, Task, TaskStatus
from bosun.providers.base import Provider
from bosun.providers.local import redact
from bosun.store.base import HostStore, Store

log = logging.getLogger(__name__)

#: Seconds between two store writes of an unchanged healthy state (``checked_at``).
RECORD_EVERY = 30.0


def unreachable_limit(settings: Settings) -> float:
    """How long a host may be unreachable before its runs are given up and their tasks
    retried on another host: two heartbeat intervals (at least one second)."""
    return max(2 * settings.limits.heartbeat_seconds, 1.0)


def probe_timeout(settings: Settings) -> float:
    """How long one health check may take before it counts as failed."""
    return max(settings.limits.heartbeat_seconds, 1.0)


async def reachable(
    provider: Provider, timeout: float, *, connect_timeout: float | None = None
) -> str | None:
    """``None`` when the host answers ``true`` within ``timeout``, else why not. With
    ``connect_timeout`` the provider's ``ensure_ready`` (for SSH: connect, learn $HOME,
    create the work dir) runs first, with that much time (a first connection takes
    longer than a command on a live one); without it ``true`` runs on whatever connection
    the provider has or opens."""
    try:
        if connect_timeout is not None:
            async with asyncio.timeout(connect_timeout):
                await provider.ensure_ready()
        async with asyncio.timeout(timeout):
            await probe(provider, timeout=timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except BosunError as exc:
        return exc.message
    except Exception as exc:  # a provider's library error must not stop the dispatcher
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class _State:
    healthy: bool = True
    error: str | None = None
    recorded_at: float | None = None  # loop time of the last store write


class _HostLost(Exception):
    """The host stopped answering while a reconcile stopped a run there: the run is left
    as it was, for the next reconcile."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Gone(Exception):
    """The provider found no run to stop (its run directory is gone, or it never
    started): what it said."""


class Fleet:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: MutableMapping[str, Provider],
        *,
        factory: ProviderFactory | None,
        on_provider: Callable[[str, Provider], None],
        cancel_grace: float,
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = providers
        self.factory = factory
        self.on_provider = on_provider
        self.cancel_grace = cancel_grace
        self.host_store: HostStore | None = store if isinstance(store, HostStore) else None
        self.hosts: list[Host] = merge(settings, [])
        self.state: dict[str, _State] = {}
        self.ready: set[str] = set()  # hosts whose ensure_ready succeeded once
        self.built: dict[str, HostConfig] = {}  # registered hosts: the settings built from
        self.retired: list[Provider] = []  # providers replaced by a re-registration
        # hosts that may have runs to reconcile: no new work there until that is done
        self.unreconciled: set[str] = set()
        # hosts whose last reconcile left runs it could not stop (said once per streak)
        self.failing: set[str] = set()

    # -- registry --------------------------------------------------------------------------
    async def refresh(self, *, strict: bool = False) -> None:
        """Reload the registry; open providers for new hosts. ``strict``: a name clash
        between bosun.toml and a registered host raises (at start-up), else it is logged
        and the previous snapshot kept."""
        if self.host_store is None:
            return
        try:
            hosts = await Registry(self.settings, self.host_store).hosts()
        except ConfigError:
            if strict:
                raise
            log.warning("host registry not reloaded", exc_info=True)
            return
        for host in hosts:
            if host.problem is not None or self.factory is None:
                continue
            built = self.built.get(host.name)
            if host.name in self.providers and (built is None or built == host.config):
                continue  # a config host (given), or a registered one built as it is now
            try:
                made = self.factory(with_hosts(self.settings, [host]))
            except BosunError as exc:
                await self._record(host.name, exc.message)
                continue
            provider = made.get(host.name)
            if provider is not None:
                # re-registered with other settings: new attempts use the new provider;
                # the old one stays open for runs still followed through it
                old = self.providers.get(host.name)
                if old is not None:
                    self.retired.append(old)
                    self.ready.discard(host.name)
                self.providers[host.name] = provider
                self.built[host.name] = host.config
                self.on_provider(host.name, provider)
        self.hosts = hosts

    def slots(self, unhealthy_agents: Mapping[str, Mapping[str, str]]) -> list[scheduler.HostSlot]:
        """The scheduler's view of every host that has a provider."""
        return [
            scheduler.HostSlot(
                name=h.name,
                max_concurrent=h.config.max_concurrent,
                agents=frozenset(h.config.agents),
                labels=h.labels,
                priority=h.config.priority,
                enabled=h.enabled,
                healthy=self.healthy(h.name),
                reconciling=self.reconciling(h.name),
                unhealthy_agents=frozenset(unhealthy_agents.get(h.name, ())) | h.missing_agents(),
            )
            for h in self.hosts
            if h.name in self.providers
        ]

    def healthy(self, name: str) -> bool:
        """May get new work as far as health goes. A host with a ``wake_command`` that does
        not answer is asleep, not broken: it stays eligible, and the attempt placed there
        wakes it (``ensure_ready``)."""
        state = self.state.get(name)
        if state is None or state.healthy:
            return True
        host = next((h for h in self.hosts if h.name == name), None)
        return host is not None and bool(host.config.wake_command)

    def reconciling(self, name: str) -> bool:
        """Whether ``name`` must wait for its reconcile before it gets new work: it may
        have runs to stop that bosun gave up on (or that nobody follows), and it answers
        (or has not been checked yet). One that does not answer is unhealthy anyway, but
        for a host asleep (``wake_command``): nothing can be stopped there before it
        wakes, and the attempt placed there wakes it (its next check then finds it back)."""
        if name not in self.unreconciled:
            return False
        state = self.state.get(name)
        return state is None or state.healthy

    def due(self) -> list[str]:
        """The hosts to reconcile now: runs may be left to stop there, and they answer."""
        return [
            h.name
            for h in self.hosts
            if h.name in self.unreconciled
            and h.name in self.providers
            and (state := self.state.get(h.name)) is not None
            and state.healthy
        ]

    # -- health ----------------------------------------------------------------------------
    async def mark_down(self, name: str, error: str) -> None:
        """An attempt found ``name`` unreachable: no new work there until a check passes."""
        state = self.state.setdefault(name, _State())
        if not state.healthy:
            return
        state.healthy, state.error = False, error
        await self._record(name, error)

    async def check_all(self) -> tuple[list[str], list[str]]:
        """Check every host once (at the same time); returns (hosts that went down, hosts
        that came back)."""
        hosts = [h for h in self.hosts if h.name in self.providers]
        names = [h.name for h in hosts]
        timeout = probe_timeout(self.settings)

        async def check(host: Host) -> str | None:
            # ensure_ready until it worked once (never for a host that it would wake up)
            first = host.name not in self.ready and not host.config.wake_command
            connect = host.config.connect_timeout + timeout if first else None
            error = await reachable(self.providers[host.name], timeout, connect_timeout=connect)
            if error is None and first:
                self.ready.add(host.name)
            return error

        errors = await asyncio.gather(*(check(h) for h in hosts), return_exceptions=True)
        down: list[str] = []
        back: list[str] = []
        for name, error in zip(names, errors, strict=True):
            text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
            state = self.state.setdefault(name, _State())
            was = state.healthy
            state.healthy, state.error = text is None, text
            if was and text is not None:
                down.append(name)
            elif not was and text is None:
                back.append(name)
                # no new work before its reconcile (set before anything else can run)
                self.unreconciled.add(name)
            await self._record(name, text, changed=was != state.healthy)
        return down, back

    async def _record(self, name: str, error: str | None, *, changed: bool = True) -> None:
        if self.host_store is None:
            return
        state = self.state.setdefault(name, _State(healthy=error is None, error=error))
        now = asyncio.get_running_loop().time()
        if (
            not changed
            and state.recorded_at is not None
            and now - state.recorded_at < (RECORD_EVERY)
        ):
            return
        try:
            await self.host_store.record_health(name, healthy=error is None, error=error)
        except BosunError:
            log.warning("could not record the health of host %s", name, exc_info=True)
            return
        state.recorded_at = now

    # -- reconciliation --------------------------------------------------------------------
    async def scan(self) -> None:
        """At start-up, before the first check: note the hosts that have runs to
        reconcile. They get no new work until their reconcile is done; the others get
        work at once, before their first check has ended."""
        if self.host_store is None:
            return
        names = [h.name for h in self.hosts if h.name in self.providers]
        counts = await self.host_store.waiting_counts(names)  # one read for every host
        self.unreconciled.update(name for name in names if counts.get(name))

    async def reconcile(self, name: str) -> int:
        """Kill what is left of the runs bosun gave up on while ``name`` was unreachable,
        and of runs no dispatcher follows because their task was cancelled while nothing
        could reach the host to stop them. Returns how many were still running.

        The host gets new work again once this is done (``reconciling``). A run is
        recorded as reconciled only once it is stopped, or its provider finds it gone. If
        the host stops answering meanwhile it is marked down, and the runs left wait for
        its next reconcile, when a check finds it back; a run that could not be stopped
        although the host answers, or a failed store read, leaves the host to be
        reconciled again at the next check. Never raises (but ``CancelledError``)."""
        provider = self.providers.get(name)
        if provider is None or self.host_store is None:
            self.unreconciled.discard(name)
            return 0
        stopped: list[bool | None] = []  # per run: killed, was not running, left as it is
        problems: list[str] = []  # why runs were left as they are
        try:
            # what an operator forgot (`bosun hosts forget`) is not here any more
            strays = await self.host_store.waiting_runs(name)
            if strays:
                self.unreconciled.add(name)  # (for the start-up scan's hosts, already)
            for stray in strays:
                if stray.why == ABANDONED:
                    done = await self._reconcile_abandoned(name, provider, stray.run, problems)
                else:
                    done = await self._reconcile_orphan(
                        name, provider, stray.run, stray.task_status, problems
                    )
                stopped.append(done)
        except _HostLost as lost:
            log.warning(
                "host %s stopped answering while bosun stopped runs there (%s); "
                "the rest waits until it answers again",
                name,
                lost.reason,
            )
            await self.mark_down(name, lost.reason)
            return stopped.count(True)
        except Exception as exc:
            log.warning(
                "reconciling host %s failed; tried again at its next check", name, exc_info=True
            )
            await self._reconcile_failed(name, [f"{type(exc).__name__}: {exc}"])
            return stopped.count(True)
        if None in stopped:  # tried again at the host's next check
            await self._reconcile_failed(name, problems)
        else:
            self.unreconciled.discard(name)
            self.failing.discard(name)
        return stopped.count(True)

    async def _reconcile_failed(self, name: str, problems: list[str]) -> None:
        """Say (once, until a reconcile of ``name`` succeeds) that runs there could not be
        stopped although the host answers: it gets no new work until they are."""
        if name in self.failing:
            return
        self.failing.add(name)
        with contextlib.suppress(BosunError):
            await self.store.append_event(
                NewEvent(
                    "host.reconcile_failed",
                    {
                        "host": name,
                        "error": redact("; ".join(problems))[:500],
                        "hint": "the host gets no new work until these runs are stopped; "
                        "bosun tries again at every check. A process in uninterruptible "
                        "sleep must be stopped on the host; once you have seen to a run, "
                        f"`bosun hosts forget {name} RUN_ID` (`bosun hosts waiting {name}` "
                        "lists them) tells bosun to stop trying",
                    },
                )
            )

    async def stop_now(self, name: str, run: Run) -> bool:
        """Stop ``run`` on host ``name`` now, for an attempt that failed inside bosun:
        True when it is stopped, or its provider finds it gone. Else (False) the caller
        records it given up (``abandoned``) and then calls :meth:`given_up`; a host that
        does not answer is marked down here, so that its return is noticed (and the run
        stopped then) however short its outage. Never raises (but ``CancelledError``)."""
        provider = self.providers.get(name)
        if provider is None:
            return False
        try:
            return await self._try_stop(name, provider, run, [], with_code=False) is not None
        except _HostLost as lost:
            await self.mark_down(name, lost.reason)
            return False

    def given_up(self, name: str) -> None:
        """A run on ``name`` was recorded given up (after :meth:`stop_now` failed): no new
        work there until a reconcile has stopped it (at the host's next check when it
        answers, else when it is back)."""
        if name in self.providers:
            self.unreconciled.add(name)

    async def _try_stop(
        self, name: str, provider: Provider, run: Run, problems: list[str], *, with_code: bool
    ) -> tuple[bool, int | None] | None:
        """``_stop_run``, or None (logged, and said in ``problems``) when the run could not
        be stopped although the host answers; ``_HostLost`` when it does not."""
        try:
            return await self._stop_run(provider, run.ref, with_code=with_code)
        except _HostLost:
            raise
        except Exception as exc:
            log.warning("could not stop run %s on %s", run.id, name, exc_info=True)
            problems.append(f"run {run.id} (task {run.task_id}): {exc}")
            return None

    async def _reconcile_abandoned(
        self, name: str, provider: Provider, run: Run, problems: list[str]
    ) -> bool | None:
        """Stop a run given up on; whether it was still running, None when it could not
        be stopped (it is left as it is). ``_HostLost`` when the host does not answer."""
        stopped = await self._try_stop(name, provider, run, problems, with_code=False)
        if stopped is None:
            return None
        alive, _ = stopped
        event = None
        if alive:
            reason = (
                "given up after an internal error"
                if run.error_kind is ErrorKind.INTERNAL
                else "given up while the host was unreachable"
            )
            with contextlib.suppress(BosunError):
                task = await self.store.get_task(run.task_id)
                reason = f"{reason}; {_since(task, run, name)}"
            event = _stray_killed(run, name, reason)
        await self._mark(name, run, ref={"abandoned": "reconciled"}, event=event)
        return alive

    async def _reconcile_orphan(
        self, name: str, provider: Provider, run: Run, task_status: TaskStatus, problems: list[str]
    ) -> bool | None:
        """Stop a run no dispatcher follows (its task is now in ``task_status``) and record
        its end; whether it was still running, None when it could not be stopped.
        ``_HostLost`` when the host does not answer."""
        stopped = await self._try_stop(name, provider, run, problems, with_code=True)
        if stopped is None:
            return None
        alive, code = stopped
        cancelled = task_status is TaskStatus.CANCELLED
        ended = {
            "status": RunStatus.CANCELLED if cancelled else RunStatus.LOST,
            "exit_code": code,
            "error_kind": ErrorKind.CANCELLED if cancelled else ErrorKind.LOST,
            "error": "cancelled by a user"
            if cancelled
            else "stopped by bosun: its task had moved on (cancelled, then retried)",
            "ended_at": datetime.now(UTC),
        }
        reason = "its task was cancelled while bosun could not reach the host"
        await self._mark(
            name, run, fields=ended, event=_stray_killed(run, name, reason) if alive else None
        )
        return alive

    async def _mark(
        self,
        name: str,
        run: Run,
        *,
        fields: Mapping[str, Any] | None = None,
        ref: Mapping[str, Any] | None = None,
        event: NewEvent | None,
    ) -> None:
        """Record ``run`` stopped (with ``event``, when it was still running), unless it
        no longer waits: an operator may have forgotten it (``bosun hosts forget``) while
        it was being stopped, and what they recorded stays. A store error is logged: the
        run stays recorded as waiting until a later reconcile of the host records it."""
        if self.host_store is None:
            return
        try:
            marked = await self.host_store.mark_reconciled(
                run.id, fields=fields, ref=ref, event=event
            )
        except BosunError:
            log.warning("could not record run %s on %s as stopped", run.id, name, exc_info=True)
            return
        if marked is None:
            log.info(
                "run %s on host %s no longer waits (forgotten by an operator meanwhile?): "
                "bosun stopped it and leaves its record as it is",
                run.id,
                name,
            )

    async def _stop_run(
        self, provider: Provider, run_ref: Mapping[str, Any], *, with_code: bool
    ) -> tuple[bool, int | None]:
        """Stop a run if it still runs: (whether it was alive, its exit code when
        ``with_code``). A run its provider finds no trace of (no run directory: removed,
        or it never started) was not alive.

        Whenever something fails, the host is asked ``true``: when it does not answer,
        ``_HostLost`` (the run must be left as it is: nothing says it is stopped, or
        gone); when it does, the error is raised (the run is there but could not be
        stopped), but for the provider's "nothing there": (False, None)."""
        timeout = probe_timeout(self.settings)
        try:
            async with asyncio.timeout(timeout + self.cancel_grace + 5):
                return await self._stop(provider, run_ref, with_code=with_code)
        except Exception as exc:
            problem = await reachable(provider, timeout)
            if problem is not None:
                raise _HostLost(problem) from exc
            if isinstance(exc, _Gone):
                return False, None
            raise

    async def _stop(
        self, provider: Provider, run_ref: Mapping[str, Any], *, with_code: bool
    ) -> tuple[bool, int | None]:
        ref = dict(run_ref)
        try:
            if "run_dir" not in ref and isinstance(ref.get("run_key"), str):
                ref["run_dir"] = await provider.run_dir(ref["run_key"])
            handle = await provider.attach(ref)
        except (HostUnreachable, HostKeyError):
            raise
        except ProviderError as exc:
            raise _Gone(exc.message) from exc
        alive = await handle.alive()
        if alive:
            await handle.cancel(self.cancel_grace)
            if await handle.alive():
                raise ProviderError(
                    f"run {ref.get('run_dir')} still has processes after SIGKILL",
                    hint="look at the host: a process in uninterruptible sleep cannot be killed",
                )
        code: int | None = None
        if with_code:
            try:
                code = await handle.exit_code()
            except (HostUnreachable, HostKeyError):
                raise
            except ProviderError:
                code = None  # stopped; an unreadable exit file only loses the code
        return alive, code


def _stray_killed(run: Run, host: str, reason: str) -> NewEvent:
    """The ``run.stray_killed`` event of ``run``, which a reconcile of ``host`` killed."""
    return NewEvent(
        "run.stray_killed",
        {"run_id": run.id, "host": host, "reason": reason},
        task_id=run.task_id,
        run_id=run.id,
    )


def _since(task: Task, run: Run, host: str) -> str:
    """What became of the task of ``run`` (given up on ``host``), for ``run.stray_killed``."""
    if task.status is TaskStatus.CANCELLED:
        return "its task was cancelled meanwhile"
    if task.attempt > run.attempt and task.assigned_host is not None:
        where = "on this host" if task.assigned_host == host else f"on host {task.assigned_host}"
        return f"its task was retried {where}"
    if task.status is TaskStatus.QUEUED:
        return "its task was queued to be retried"
    return f"its task is {task.status.value}"
