"""The one facade every front end calls: submit, inspect, cancel, retry, follow.

The CLI (and later the HTTP API and the MCP server) never touch the store directly; input
is validated here, once, into clear ``InputError``s before anything is written.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bosun import lifecycle, scopes
from bosun.agents import BUILTIN_AGENTS, AgentSpec
from bosun.backend import Cancellation, Unstopped
from bosun.config import Settings
from bosun.errors import BosunError, HostUnreachable, InputError
from bosun.hosts.check import CheckResult
from bosun.hosts.manage import HostManager
from bosun.hosts.registry import HostInfo
from bosun.hosts.waiting import WaitingRun
from bosun.models import (
    ErrorKind,
    Event,
    ExecutionMode,
    NewEvent,
    Run,
    RunStatus,
    Task,
    TaskSpec,
    TaskStatus,
)
from bosun.providers.base import Provider
from bosun.providers.local import LocalProvider
from bosun.store import open_store
from bosun.store.base import Store, TaskFilter

MAX_TITLE = 300
MAX_BODY = 200_000
_REF_BAD = re.compile(r"(^[-/.])|(\.\.)|(//)|(@\{)|([\x00-\x20\x7f~^:?*\[\\])|(\.lock$)|([/.]$)")
_LABEL = re.compile(r"^[^\s\x00-\x1f]{1,64}$")

#: States in which ``bosun logs -f`` stops following.
SETTLED = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.REVIEW_PENDING,
        TaskStatus.NEEDS_INPUT,
        TaskStatus.PAUSED,
        TaskStatus.BLOCKED,
    }
)


def agent_json(spec: AgentSpec, *, builtin: bool) -> dict[str, Any]:
    """An agent spec as data (never the values of env variables: they may be secrets)."""
    return {
        "name": spec.name,
        "builtin": builtin,
        "description": spec.description,
        "command": list(spec.command),
        "prompt": spec.prompt.value,
        "parser": spec.parser,
        "env_allow": list(spec.env_allow),
        "env": sorted(spec.env),
        "resume": list(spec.resume),
        "resume_command": list(spec.resume_command),
        "isolated_home": spec.isolated_home,
        "timeout": spec.timeout,
        "stall_timeout": spec.stall_timeout,
        "files": sorted(spec.files),
    }


def agent_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every configured agent by name, as ``bosun agents list --json`` prints them."""
    return [agent_json(s, builtin=n in BUILTIN_AGENTS) for n, s in sorted(settings.agents.items())]


def make_providers(settings: Settings) -> dict[str, Provider]:
    """One provider per configured host: ``local`` hosts run here, ``ssh`` hosts over one
    SSH connection each (connected on first use, not here)."""
    providers: dict[str, Provider] = {}
    for name, host in settings.hosts.items():
        if host.kind == "local":
            providers[name] = LocalProvider(name, str(settings.state_dir))
        elif host.kind == "ssh":
            # asyncssh is imported only when an SSH host is configured.
            from bosun.providers.ssh import SshProvider

            providers[name] = SshProvider(name, host, str(settings.state_dir))
    return providers


def validate_spec(spec: TaskSpec, settings: Settings) -> TaskSpec:
    """Check a submitted task against the configuration; return it normalised."""
    title = spec.title.strip()
    if not title:
        raise InputError("the task has no title", "give a short title with --title")
    if len(title) > MAX_TITLE:
        raise InputError(
            f"the title is {len(title)} characters long (max {MAX_TITLE})",
            "put the details in the body",
        )
    if "\x00" in spec.title or "\x00" in spec.body:
        raise InputError("the title or body contains a NUL byte", "remove it")
    if len(spec.body) > MAX_BODY:
        raise InputError(
            f"the body is {len(spec.body)} characters long (max {MAX_BODY})",
            "shorten it or link to a file in the repository",
        )
    if spec.repo is not None and spec.repo not in settings.repos:
        known = ", ".join(sorted(settings.repos)) or "none configured"
        raise InputError(
            f"unknown repo {spec.repo!r} (known: {known})",
            f"add [repos.{_safe(spec.repo)}] to {settings.config_path} or pick a known one",
        )
    if spec.agent not in settings.agents:
        known = ", ".join(sorted(settings.agents))
        raise InputError(
            f"unknown agent {spec.agent!r} (known: {known})",
            f"add [agents.{_safe(spec.agent)}] to {settings.config_path} or pick a known one",
        )
    if spec.host is not None and spec.host not in settings.hosts:
        known = ", ".join(sorted(settings.hosts))
        raise InputError(f"unknown host {spec.host!r} (known: {known})", "pick a configured host")
    if spec.base_branch is not None and _REF_BAD.search(spec.base_branch):
        raise InputError(
            f"{spec.base_branch!r} is not a valid branch name",
            "give a branch name such as main or release/1.2",
        )
    if spec.base_branch is not None and spec.repo is None:
        raise InputError("a base branch was given for a task without a repo", "add --repo")
    if not -1000 <= spec.priority <= 1000:
        raise InputError(f"priority {spec.priority} is out of range", "use -1000..1000")
    for label in spec.labels:
        if not _LABEL.match(label):
            raise InputError(
                f"label {label!r} is empty, too long or contains white space",
                "use short labels such as bug or host:gpu",
            )
    if spec.max_attempts is not None and not 1 <= spec.max_attempts <= 100:
        raise InputError(f"max_attempts {spec.max_attempts} is out of range", "use 1..100")
    if len(set(spec.depends_on)) != len(spec.depends_on) or any(d <= 0 for d in spec.depends_on):
        raise InputError(
            "depends_on has duplicate or non-positive task ids", "list each task id once"
        )
    scope = tuple(dict.fromkeys(scopes.normalize(p) for p in spec.scope))
    if scope and spec.repo is None:
        raise InputError("scope paths were given for a task without a repo", "add --repo")
    return replace(
        spec,
        title=title,
        scope=scope,
        constraints=tuple(c.strip() for c in spec.constraints if c.strip()),
        validation=tuple(v.strip() for v in spec.validation if v.strip()),
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40] or "name"


class Service:
    """Front-end facade over one store and one configuration."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    @classmethod
    async def open(cls, settings: Settings) -> Service:
        return cls(settings, await open_store(settings.database_url))

    async def aclose(self) -> None:
        await self.store.aclose()

    async def __aenter__(self) -> Service:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- tasks -------------------------------------------------------------------------
    async def submit(self, spec: TaskSpec) -> Task:
        settings = self.settings
        if spec.host is not None and spec.host not in settings.hosts:
            settings = await self._hosts().effective_settings()  # a registered host?
        spec = validate_spec(spec, settings)
        return await self.store.add_task(spec, max_attempts=self.settings.limits.max_attempts)

    async def get(self, task_id: int) -> Task:
        return await self.store.get_task(task_id)

    async def list_tasks(self, flt: TaskFilter | None = None) -> list[Task]:
        return await self.store.list_tasks(flt)

    async def runs(self, task_id: int) -> list[Run]:
        await self.store.get_task(task_id)
        return await self.store.list_runs(task_id)

    async def cancel(self, task_id: int) -> Cancellation:
        """Cancel a task; if it is running, kill its run's whole process group too.

        The task is cancelled in any case. A run whose host does not answer (or answers
        with an error) is not stopped now: it is in the answer's ``pending`` and gets a
        ``run.cancel_pending`` event, and the dispatcher stops it once the host answers
        again (``Fleet.reconcile``: the host's health check passes, or a dispatcher
        starts)."""
        task = await self.store.get_task(task_id)
        lifecycle.check(task.id, task.status, TaskStatus.CANCELLED)
        was_running = task.status is TaskStatus.RUNNING
        task = await self.store.transition(
            task_id, TaskStatus.CANCELLED, reason="cancelled by a user"
        )
        pending = await self._kill_active_run(task) if was_running else ()
        return Cancellation(task, pending)

    async def _kill_active_run(self, task: Task) -> tuple[Unstopped, ...]:
        runs = [
            r
            for r in await self.store.list_runs(task.id)
            if r.status in (RunStatus.STARTING, RunStatus.RUNNING) and "pgid" in r.ref
        ]
        if not runs:
            return ()
        try:
            settings = await self._hosts().effective_settings()  # registered hosts too
        except BosunError:
            settings = self.settings
        providers = make_providers(settings)
        grace = self.settings.limits.cancel_grace
        pending: list[Unstopped] = []
        try:
            for run in runs:
                provider = providers.get(run.host)
                if provider is None:
                    error = f"host {run.host} is no longer configured"
                    pending.append(
                        Unstopped(run.id, run.host, error, unreachable=False, will_retry=False)
                    )
                    await self._cancel_event("run.cancel_failed", run, error, unreachable=False)
                    continue
                # connecting, TERM, the grace, KILL; a link that dies half-way is noticed
                # by keepalive, so the whole of it is bounded too
                limit = settings.hosts[run.host].connect_timeout + grace + 30
                try:
                    async with asyncio.timeout(limit):
                        handle = await provider.attach(run.ref)
                        await handle.cancel(grace)
                        code = await handle.exit_code()
                except (BosunError, TimeoutError) as exc:
                    unreachable = not isinstance(exc, BosunError) or isinstance(
                        exc, HostUnreachable
                    )
                    error = (
                        exc.message
                        if isinstance(exc, BosunError)
                        else f"host {run.host} did not answer within {limit:g}s"
                    )
                    pending.append(
                        Unstopped(run.id, run.host, error, unreachable=unreachable, will_retry=True)
                    )
                    await self._cancel_event(
                        "run.cancel_pending", run, error, unreachable=unreachable
                    )
                    continue
                # Record the end here too: no dispatcher may be following this run.
                await self.store.update_run(
                    run.id,
                    status=RunStatus.CANCELLED,
                    exit_code=code,
                    error_kind=ErrorKind.CANCELLED,
                    error="cancelled by a user",
                    ended_at=datetime.now(UTC),
                )
        finally:
            for p in providers.values():
                await p.aclose()
        return tuple(pending)

    async def _cancel_event(self, kind: str, run: Run, error: str, *, unreachable: bool) -> None:
        data = {"run_id": run.id, "host": run.host, "error": error, "unreachable": unreachable}
        await self.store.append_event(NewEvent(kind, data, task_id=run.task_id, run_id=run.id))

    async def retry(self, task_id: int) -> Task:
        """Queue a failed or cancelled task again, with a fresh budget of attempts."""
        task = await self.store.get_task(task_id)
        lifecycle.check(task.id, task.status, TaskStatus.QUEUED)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise InputError(
                f"task {task_id} is {task.status.value}; only failed or cancelled "
                "tasks can be retried",
                "wait for it to finish, or cancel it first",
            )
        return await self.store.transition(
            task_id,
            TaskStatus.QUEUED,
            reason="retried by a user",
            max_attempts=task.attempt + self.settings.limits.max_attempts,
            not_before=None,
            error=None,
            error_kind=None,
        )

    # -- events ------------------------------------------------------------------------
    async def events(self, task_id: int, cursor: int = 0, limit: int = 1000) -> list[Event]:
        await self.store.get_task(task_id)
        return await self.store.events_since(cursor, task_id=task_id, limit=limit)

    async def follow(
        self, task_id: int, cursor: int = 0, *, until_settled: bool = True, poll: float = 0.5
    ) -> AsyncIterator[Event]:
        """Every event of a task from ``cursor`` on, then live ones as they are written;
        ends once the task has settled (and every event up to then was yielded)."""
        await self.store.get_task(task_id)
        while True:
            batch = await self.store.events_since(cursor, task_id=task_id, limit=1000)
            for ev in batch:
                cursor = ev.id
                yield ev
            if batch:
                continue
            if until_settled:
                task = await self.store.get_task(task_id)
                if task.status in SETTLED:
                    tail = await self.store.events_since(cursor, task_id=task_id, limit=1000)
                    if not tail:
                        return
                    continue
            seen = await self.store.last_event_id()  # see Store.wait_for_change
            if await self.store.events_since(cursor, task_id=task_id, limit=1):
                continue
            await self.store.wait_for_change(poll, after=seen)

    # -- agents and hosts --------------------------------------------------------------
    async def agents(self) -> list[dict[str, Any]]:
        """Every configured agent (see ``agent_json``)."""
        return agent_rows(self.settings)

    async def hosts(self) -> list[HostInfo]:
        """Every host (bosun.toml and registered) with its state and load."""
        return await self._hosts().infos()

    async def host(self, name: str) -> HostInfo:
        return await self._hosts().info(name)

    async def add_host(
        self, name: str, fields: Mapping[str, Any], *, source: str = "cli", check: bool = True
    ) -> HostInfo:
        """Register a host (``HostConfig`` fields); with ``check`` it must answer first."""
        return await self._hosts().add(name, fields, source=source, check=check)

    async def remove_host(self, name: str, *, force: bool = False) -> HostInfo:
        return await self._hosts().remove(name, force=force)

    async def drain_host(self, name: str) -> HostInfo:
        return await self._hosts().drain(name)

    async def enable_host(self, name: str) -> HostInfo:
        return await self._hosts().enable(name)

    async def check_host(self, name: str) -> CheckResult:
        return await self._hosts().check(name)

    async def waiting_runs(self, name: str) -> list[WaitingRun]:
        """The runs host ``name`` waits for: bosun stops them before it gets new work."""
        return await self._hosts().waiting(name)

    async def forget_runs(
        self,
        name: str,
        run_ids: Collection[int],
        *,
        every: bool = False,
        by: str,
        note: str | None = None,
    ) -> list[Event]:
        """``by`` takes over runs host ``name`` waits for (``every``: all of them): bosun
        stops trying to stop them, and the host takes work again at its next reconcile
        (a running dispatcher's next health check). Their tasks keep their state."""
        return await self._hosts().forget(name, run_ids, every=every, by=by, note=note)

    def _hosts(self) -> HostManager:
        return HostManager(self.settings, self.store, make_providers)


def dispatch_mode(mode: str) -> ExecutionMode:
    try:
        return ExecutionMode(mode)
    except ValueError:
        raise InputError(
            f"unknown execution mode {mode!r}", "use " + " or ".join(m.value for m in ExecutionMode)
        ) from None
