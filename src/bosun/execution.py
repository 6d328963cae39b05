"""One attempt of one task: prepare the worktree, launch the agent, follow, finish.

``Attempt.start`` runs a freshly claimed task; ``Attempt.resume`` re-attaches to a run that
a previous bosun process launched (after ``kill -9``, a reboot of bosun, or a lease
take-over). Both end in ``_finish``, where the parser's outcome and the lifecycle decide
the next state. Output is persisted with its byte offsets in one transaction, so a crash
at any point neither loses nor repeats a line.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from bosun import lifecycle
from bosun.agents import AgentSpec, get_parser
from bosun.agents.parsers import Parser
from bosun.agents.reset_time import parse_reset_time
from bosun.config import Settings
from bosun.errors import BosunError, ConfigError, InputError, LeaseLost, NotFound, ProviderError
from bosun.hosts.reach import HostDown, HostGone, HostWatch, Stopped
from bosun.models import ErrorKind, NewEvent, Outcome, Run, RunStatus, Task, TaskStatus
from bosun.preflight import check_agent
from bosun.prompt import build_prompt
from bosun.providers.base import OutputChunk, Provider, RunHandle, TmuxSession
from bosun.providers.tmux import session_for_run
from bosun.review import publish_for_run, reviewed
from bosun.store.base import RunUpdate, Store
from bosun.workspace import RepoSpec, Workspace, Worktree

#: Polling of a run's output starts fast (short agents finish in milliseconds) and backs
#: off while the agent is quiet.
POLL_MIN = 0.005
POLL_MAX = 0.25

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """What every attempt needs; one per dispatcher."""

    settings: Settings
    store: Store
    providers: Mapping[str, Provider]
    workspaces: Mapping[str, Workspace]
    owner: str
    clock: Callable[[], datetime] = utcnow
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    #: (host, agent) pairs whose program was found on the host (preflight done)
    checked: set[tuple[str, str]] = field(default_factory=set)
    #: host -> agent -> why it gets no new work there (until bosun restarts)
    unhealthy: dict[str, dict[str, str]] = field(default_factory=dict)
    #: told when an attempt finds its host unreachable (the dispatcher's host health)
    on_host_down: HostDown | None = None

    def workspace(self, host: str) -> Workspace:
        """The workspace of ``host``, made on first use (a remote host's root is known
        only once its provider is ready: ``ProviderError`` before that)."""
        found = self.workspaces.get(host)
        if found is None:
            found = make_workspace(self.providers[host], self.settings)
            if isinstance(self.workspaces, dict):
                self.workspaces[host] = found
        return found

    async def mark_unhealthy(self, host: str, agent: str, reason: str, task_id: int) -> None:
        await self.store.append_event(self.unhealthy_event(host, agent, reason, task_id))

    def unhealthy_event(self, host: str, agent: str, reason: str, task_id: int) -> NewEvent:
        """Take ``agent`` off ``host`` (in memory, at once) and return the event that says
        so, for the caller to write."""
        self.unhealthy.setdefault(host, {})[agent] = reason
        return NewEvent(
            "agent.unhealthy", {"host": host, "agent": agent, "reason": reason}, task_id=task_id
        )


class _Stop(Exception):
    """The lease was lost to another dispatcher: stop following without finishing."""


class Attempt:
    """Drives one run of one task on one host."""

    def __init__(self, ctx: Context, task: Task, host: str) -> None:
        self.ctx = ctx
        self.task = task
        self.host = host
        self.spec: AgentSpec = ctx.settings.agents[task.agent]
        self.provider = ctx.providers[host]
        self.parser: Parser = get_parser(self.spec.parser)
        self._cancel_requested = False
        self._lease_lost = False
        # rides out a host outage while following (see bosun.hosts.reach)
        self.watch = HostWatch(
            ctx.settings,
            ctx.store,
            self.provider,
            host,
            task.id,
            on_down=ctx.on_host_down,
            should_stop=lambda: self._lease_lost,
        )
        self._handle: RunHandle | None = None

    @property
    def workspace(self) -> Workspace:
        return self.ctx.workspace(self.host)

    async def _ready_workspace(self) -> Workspace:
        """The workspace, connecting to the host first if it was never ready."""
        if self.host not in self.ctx.workspaces:
            await self.provider.ensure_ready()
        return self.workspace

    # -- entry points ------------------------------------------------------------------
    async def start(self) -> None:
        """Run a task that this dispatcher has just claimed."""
        task = self.task
        store = self.ctx.store
        if not await self._wake():
            return
        if not await self._preflight():
            return
        key = run_key(task.id, task.attempt)
        prepared, made = await self._prepare_with_run_dir(key)
        if isinstance(prepared, BosunError):
            if not await self._host_failed(prepared):
                await self._fail_before_launch(ErrorKind.WORKSPACE, prepared)
            return
        wt = prepared
        resume_session = task.session_id if self._resuming_session() else None
        prompt = await self._prompt(wt)
        try:
            if isinstance(made, BosunError):
                raise made
            run_dir = made if made is not None else await self.provider.run_dir(key)
            command = self.spec.build(
                prompt=prompt,
                workdir=wt.path,
                run_dir=run_dir,
                session_id=resume_session,
                # a remote host's own PATH, not bosun's: its CLIs are installed there
                environ={**self.ctx.environ, **self.provider.host_env()},
            )
            if wt.repo is None:
                command = replace(command, make_cwd=True)
        except BosunError as exc:
            await self._fail_before_launch(ErrorKind.LAUNCH, exc)
            return
        if resume_session and self.spec.isolated_home:
            await self._carry_home(run_dir)
        try:
            handle = await self.provider.launch(command, run_dir)
        except BosunError as exc:
            if not await self._host_failed(exc, run_dir=run_dir):
                await self._fail_before_launch(ErrorKind.LAUNCH, exc)
            return
        # Recorded after the launch, off the path to the agent's start. A crash in between
        # loses nothing: the run key names the run directory, where ``adopt`` finds it.
        started = {
            "host": self.host,
            "agent": task.agent,
            "attempt": task.attempt,
            "argv0": command.argv[0],
            "workdir": wt.path,
            "branch": wt.branch,
            "base_sha": wt.base_sha,
            "resumed_session": resume_session,
        }
        run = await store.add_run(
            task.id,
            attempt=task.attempt,
            host=self.host,
            agent=task.agent,
            ref={**_wt_ref(wt), **handle.ref, **_tmux_ref(command.tmux)},
            status=RunStatus.RUNNING,
            # its event in the same transaction: it names the new run
            events=lambda run: [
                NewEvent(
                    "run.started",
                    {"run_id": run.id, **started},
                    task_id=task.id,
                    run_id=run.id,
                )
            ],
        )
        await self._follow_and_finish(run, handle, wt)

    async def _prepare_with_run_dir(
        self, key: str
    ) -> tuple[Worktree | BosunError, str | BosunError | None]:
        """The worktree and the run directory (each, or the ``BosunError`` that made it
        fail). They are independent, so on a host whose workspace is ready they are made
        at once; on a host not used yet the worktree comes first, alone (it connects to
        the host, or waits for it), and the run directory is left to the caller (None), so
        that a host that does not answer is told apart from a failed launch as before."""
        if self.host not in self.ctx.workspaces:
            try:
                return await self._prepare(), None
            except BosunError as exc:
                return exc, None
        if self.task.repo is None:
            # A scratch directory waits on nothing (the launch makes it): one after the
            # other, without the two tasks and the turn of the event loop of a gather.
            return await _outcome(self._prepare()), await _outcome(self.provider.run_dir(key))
        prepared, made = await asyncio.gather(
            self._prepare(), self.provider.run_dir(key), return_exceptions=True
        )
        return _failed(prepared), _failed(made)

    async def _wake(self) -> bool:
        """A host with a ``wake_command`` (bosun.toml only) may be asleep: ``ensure_ready``
        wakes it and waits for SSH. False (the attempt failed) when that does not work."""
        cfg = self.ctx.settings.hosts.get(self.host)
        if cfg is None or not cfg.wake_command:
            return True
        try:
            await self.provider.ensure_ready()
        except BosunError as exc:
            await self._fail_before_launch(ErrorKind.LAUNCH, exc)
            return False
        return True

    async def _preflight(self) -> bool:
        """Before an agent's first use on a host (once per dispatcher): the checks of
        ``bosun doctor``. A missing program or missing credentials fail this attempt with
        the fix and take the agent off the host; the version is recorded."""
        key = (self.host, self.task.agent)
        if key in self.ctx.checked:
            return True
        check = await check_agent(self.provider, self.host, self.spec, self.ctx.environ)
        await self.ctx.store.append_event(
            NewEvent("agent.preflight", check.to_json(), task_id=self.task.id)
        )
        # Only a missing program stops here: without credentials the CLI fails at once
        # with an auth error, which names host and agent too (and `doctor` reports it).
        if not check.installed:
            if await self._host_failed(ProviderError(f"agent {self.task.agent} not found")):
                return False  # not "missing": the host did not answer
            reason = "; ".join(check.problems)
            await self.ctx.mark_unhealthy(self.host, self.task.agent, reason, self.task.id)
            fix = check.fixes[0] if check.fixes else "see `bosun doctor`"
            await self._fail_before_launch(
                ErrorKind.CONFIG,
                ConfigError(
                    f"agent {self.task.agent} on host {self.host}: {reason}",
                    f"{fix}; then restart bosun and `bosun retry {self.task.id}`",
                ),
            )
            return False
        self.ctx.checked.add(key)
        return True

    async def _carry_home(self, run_dir: str) -> None:
        """A resumed session lives in the previous run's isolated HOME (the CLIs keep their
        sessions there): start the new run with a copy of it."""
        runs = await self.ctx.store.list_runs(self.task.id)
        previous = [r for r in runs if "run_dir" in r.ref and r.session_id == self.task.session_id]
        if not previous:
            return
        source = f"{previous[-1].ref['run_dir']}/home"
        await self.provider.makedirs(run_dir)  # (a launch creates it, but this comes first)
        result = await self.provider.exec(["cp", "-a", "--", source, f"{run_dir}/home"])
        if not result.ok:
            await self.ctx.store.append_event(
                NewEvent(
                    "run.home_not_carried",
                    {"error": result.stderr.strip()[-500:]},
                    task_id=self.task.id,
                )
            )

    async def adopt(self) -> bool:
        """Recovery of an attempt whose launch was never recorded (bosun died right after
        it): find the run by its key and follow it; False when it never started."""
        key = run_key(self.task.id, self.task.attempt)
        try:
            run_dir = await self.watch.call(lambda: self.provider.run_dir(key))
            handle = await self.watch.call(lambda: self.provider.attach({"run_dir": run_dir}))
        except HostGone as gone:
            # Whether it started is unknown: record it given up, so the host's
            # reconciliation stops it if it runs when the host is back; retry elsewhere.
            await self._record_abandoned({"run_key": key}, str(gone), gone.unreachable_for)
            return True
        except BosunError:
            return False
        wt = await self._prepare()  # the worktree exists: this finds it again
        task_id = self.task.id
        run = await self.ctx.store.add_run(
            task_id,
            attempt=self.task.attempt,
            host=self.host,
            agent=self.task.agent,
            ref={
                **_wt_ref(wt),
                **handle.ref,
                **_tmux_ref(session_for_run(run_dir) if self.spec.tmux else None),
            },
            status=RunStatus.RUNNING,
            events=lambda run: [
                NewEvent(
                    "run.reattached",
                    {"run_id": run.id, "host": self.host, "recorded_late": True},
                    task_id=task_id,
                    run_id=run.id,
                )
            ],
        )
        await self._follow_and_finish(run, handle, wt)
        return True

    async def resume(self, run: Run) -> None:
        """Re-attach to ``run`` (launched by an earlier bosun) and see it to the end."""
        await self.ctx.store.append_event(
            NewEvent(
                "run.reattached",
                {"run_id": run.id, "host": self.host},
                task_id=self.task.id,
                run_id=run.id,
            )
        )
        # The parser is pure: replaying the lines already stored restores its state.
        for ev in await _stored_output(self.ctx.store, self.task.id, run.id):
            self.parser.feed(ev[0], ev[1])
        # attached inside, so that a host that does not answer yet is waited for
        await self._follow_and_finish(run, None, _wt_from_ref(run.ref, self.task))

    # -- internals ---------------------------------------------------------------------
    async def _prompt(self, wt: Worktree) -> str:
        """The prompt of this attempt (the pull worker uses the one its server built)."""
        return await task_prompt(self.ctx.store, self.task, self.ctx.settings, branch=wt.branch)

    def _resuming_session(self) -> bool:
        return bool(self.task.session_id) and self.task.review_count > 0

    async def _base_for_prepare(self) -> str | None:
        return await base_for_prepare(self.ctx.store, self.task)

    async def _prepare(self) -> Worktree:
        task = self.task
        repo = None
        if task.repo is not None:
            cfg = self.ctx.settings.repos[task.repo]
            repo = RepoSpec(
                name=task.repo,
                url=cfg.url,
                default_branch=cfg.default_branch,
                copy_files=tuple(cfg.copy_files),
                setup=tuple(cfg.setup) if cfg.setup else None,
                push=cfg.push,
                transport=cfg.transport,
            )
        wt = await (await self._ready_workspace()).prepare(
            task.id,
            task.title,
            repo,
            base_branch=await self._base_for_prepare(),
            source_dir=str(self.ctx.settings.config_dir),
            create_scratch=False,  # a scratch directory is made by the launch (make_cwd)
        )
        if wt.branch and wt.branch != task.branch:
            self.task = await self.ctx.store.update_task(
                task.id, owner=self.ctx.owner, branch=wt.branch
            )
        return wt

    async def _follow_and_finish(self, run: Run, handle: RunHandle | None, wt: Worktree) -> None:
        beat = asyncio.create_task(self._heartbeat())
        self.watch.run_id = run.id
        try:
            if handle is None:
                handle = await self.watch.call(lambda: self.provider.attach(run.ref))
            code, kind = await self._follow(run, handle)
            if wt.repo is not None:
                await self.watch.call(self._ready_workspace)  # to commit and push the work
        except (_Stop, Stopped):
            return
        except HostGone as gone:
            await self._abandon(run, str(gone), gone.unreachable_for)
            return
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        await self._finish(run, code, kind, wt)

    async def _heartbeat(self) -> None:
        lim = self.ctx.settings.limits
        while True:
            await asyncio.sleep(lim.heartbeat_seconds)
            try:
                await self.ctx.store.heartbeat(
                    self.task.id, owner=self.ctx.owner, lease_seconds=lim.lease_seconds
                )
            except LeaseLost:
                current = await self.ctx.store.get_task(self.task.id)
                if current.status is TaskStatus.CANCELLED:
                    self._cancel_requested = True
                else:
                    self._lease_lost = True
                return

    async def _follow(self, run: Run, handle: RunHandle) -> tuple[int | None, ErrorKind | None]:
        store = self.ctx.store
        lim = self.ctx.settings.limits
        timeout = self.spec.timeout or lim.run_timeout
        stall = self.spec.stall_timeout or lim.stall_timeout
        out, err = run.stdout_offset, run.stderr_offset
        started = time.monotonic() - max(0.0, (self.ctx.clock() - run.started_at).total_seconds())
        last_output = time.monotonic()
        delay = POLL_MIN
        kind: ErrorKind | None = None
        self._handle = handle
        while True:
            code = await self._on_host(run, lambda h: h.exit_code())
            chunks = await self._read(run, out, err, final=code is not None)
            if chunks:
                events: list[NewEvent] = []
                for chunk in chunks:
                    for line in chunk.lines:
                        events.append(
                            NewEvent(
                                "run.output",
                                {"stream": chunk.stream, "line": line},
                                task_id=self.task.id,
                                run_id=run.id,
                            )
                        )
                        for ev in self.parser.feed(chunk.stream, line):
                            if ev.kind != "output":
                                events.append(
                                    NewEvent(
                                        f"agent.{ev.kind}",
                                        {"text": ev.text, **ev.data},
                                        task_id=self.task.id,
                                        run_id=run.id,
                                    )
                                )
                    if chunk.stream == "stdout":
                        out = chunk.end_offset
                    else:
                        err = chunk.end_offset
                await store.append_output(run.id, events, stdout_offset=out, stderr_offset=err)
                last_output = time.monotonic()
                delay = POLL_MIN
            if code is not None:
                return code, kind
            if self._lease_lost:
                raise _Stop
            now = time.monotonic()
            if kind is None:
                if self._cancel_requested:
                    kind = ErrorKind.CANCELLED
                elif now - started > timeout:
                    kind = ErrorKind.TIMEOUT
                elif now - max(last_output, self.watch.back_at or 0.0) > stall:
                    # (time the host was unreachable does not count as silence)
                    kind = ErrorKind.STALLED
                if kind is not None:
                    await store.append_event(
                        NewEvent(
                            "run.killing",
                            {"reason": kind.value},
                            task_id=self.task.id,
                            run_id=run.id,
                        )
                    )
                    await self._on_host(
                        run,
                        lambda h: h.cancel(lim.cancel_grace),
                        timeout=lim.cancel_grace + 10 + self.watch.call_timeout,
                    )
                    continue
            if not await self._on_host(run, lambda h: h.alive()) and (
                await self._on_host(run, lambda h: h.exit_code()) is None
            ):
                final = await self._read(run, out, err, final=True)
                if not final:
                    return None, kind or ErrorKind.LOST
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def _on_host(
        self, run: Run, op: Callable[[RunHandle], Awaitable[T]], timeout: float | None = None
    ) -> T:
        """``op(handle)`` through a host outage (``HostWatch.call``); the handle is rebuilt
        from the run's ref when the host answers but the call failed."""

        async def call() -> T:
            assert self._handle is not None
            return await op(self._handle)

        async def refresh() -> None:
            self._handle = await self.provider.attach(run.ref)

        return await self.watch.call(call, timeout=timeout, refresh=refresh)

    async def _read(self, run: Run, out: int, err: int, *, final: bool) -> list[OutputChunk]:
        return await self._on_host(run, lambda h: h.read(out, err, final=final))

    async def _finish(
        self, run: Run, code: int | None, kind: ErrorKind | None, wt: Worktree
    ) -> None:
        ctx, task = self.ctx, self.task
        outcome = self.parser.finish(code)
        if kind is None and not outcome.success:
            # A user's cancel may have killed the group before our heartbeat noticed it.
            current = await ctx.store.get_task(task.id)
            if current.status is TaskStatus.CANCELLED:
                kind = ErrorKind.CANCELLED
        if outcome.error_kind is ErrorKind.USAGE_LIMIT and outcome.resume_at is None:
            # Parsers have no clock: a relative hint ("resets 3pm", "retry in 20s") is
            # resolved here, against the time the run ended.
            when = parse_reset_time(outcome.error or "", ctx.clock())
            outcome = replace(outcome, resume_at=when)
        if kind is not None:
            outcome = replace(
                outcome, success=False, error_kind=kind, error=_kill_message(kind, self.spec, ctx)
            )
        commits: list[str] = []
        if outcome.success and wt.repo is not None:
            try:
                commits = await self.workspace.finish(
                    wt, task_id=task.id, title=task.title, push=self._push()
                )
            except BosunError as exc:
                outcome = replace(
                    outcome, success=False, error_kind=ErrorKind.WORKSPACE, error=exc.message
                )
        end = RunUpdate(
            run.id,
            lifecycle.run_end(outcome, code, ctx.clock()),
        )
        finished = NewEvent(
            "run.finished",
            {"run_id": run.id, "exit_code": code, "commits": commits, **outcome.to_json()},
            task_id=task.id,
            run_id=run.id,
        )
        await self._settle(outcome, commits, wt, run=end, events=[finished])

    async def _settle(
        self,
        outcome: Outcome,
        commits: list[str],
        wt: Worktree,
        override: Mapping[str, Any] | None = None,
        *,
        run: RunUpdate | None = None,
        events: Sequence[NewEvent] = (),
    ) -> None:
        """``override``: task fields that win over the lifecycle's (a host failure retries
        at once, and before a launch does not use up an attempt). ``run`` (the run's end)
        and ``events`` are written with the task's transition, in one transaction; when a
        pull request is published first, or the lease was lost, on their own."""
        ctx, task = self.ctx, self.task
        lim = ctx.settings.limits
        pending = list(events)
        if outcome.error_kind is ErrorKind.AUTH:
            # Name where it failed: a login is per agent and per host.
            message = f"agent {task.agent} on host {self.host}: {outcome.error}"
            outcome = replace(outcome, error=message)
            pending.append(ctx.unhealthy_event(self.host, task.agent, message, task.id))
        # a forge reviews the branch: a success waits for its pull request (bosun.review)
        review = outcome.success and reviewed(ctx.settings, task) and bool(commits)
        decision, fields = lifecycle.settlement(
            task,
            outcome,
            commits,
            now=ctx.clock(),
            backoff_base=lim.retry_backoff,
            backoff_cap=lim.retry_backoff_max,
            review=review,
        )
        fields.update(override or {})
        if decision.status is TaskStatus.REVIEW_PENDING:
            # The run's end is recorded before the forge is asked (its events come first).
            await self._record(run, pending)
            run, pending = None, []
            decision, pr_fields = await publish_for_run(
                ctx.settings, ctx.store, task, decision, fields, environ=ctx.environ
            )
            fields.update(pr_fields)
        try:
            await ctx.store.transition(
                task.id,
                decision.status,
                owner=ctx.owner,
                reason=decision.reason,
                events=pending,
                run=run,
                **fields,
            )
        except LeaseLost:
            # Cancelled (or taken over) while we finished, and nothing of that transaction
            # was written: record the run's end and what the run produced.
            await self._record(run, pending)
            try:
                await ctx.store.update_task(
                    task.id, **{k: v for k, v in fields.items() if k != "not_before"}
                )
            except NotFound:
                return
            return
        if decision.status is TaskStatus.COMPLETED and wt.repo is not None:
            kept = not await self.workspace.cleanup(wt, push=self._push())
            if kept:
                await ctx.store.append_event(
                    NewEvent(
                        "workspace.kept",
                        {"path": wt.path, "reason": "uncommitted or unpushed work"},
                        task_id=task.id,
                    )
                )

    async def _record(self, run: RunUpdate | None, events: Sequence[NewEvent]) -> None:
        """The run's end and its events, each on its own (when they cannot go with the
        task's transition)."""
        if run is not None:
            await self.ctx.store.update_run(run.run_id, **run.fields)
        for event in events:
            await self.ctx.store.append_event(event)

    def _push(self) -> bool:
        return self.task.repo is not None and self.ctx.settings.repos[self.task.repo].push

    # -- host failures (see bosun.hosts.reach) -------------------------------------------
    async def _host_failed(self, exc: BosunError, *, run_dir: str | None = None) -> bool:
        """After ``exc`` before the run was followed: if the host does not answer, give
        this attempt up (the task is queued again at once, without using up an attempt,
        and the dispatcher sends it elsewhere) and return True; else False. With
        ``run_dir`` the launch may have started the agent anyway: a lost run marked
        ``abandoned`` is recorded, so the host's reconciliation stops it once it is back."""
        problem = await self.watch.unreachable()
        if problem is None:
            return False
        reason = f"host {self.host} is unreachable ({problem}): {exc.message}"
        if self.ctx.on_host_down is not None:
            await self.ctx.on_host_down(self.host, problem)
        if run_dir is not None:
            await self._record_abandoned({"run_dir": run_dir}, reason, 0.0, bump=True)
            return True
        error = NewEvent(
            "run.error",
            {"error_kind": ErrorKind.LOST.value, "error": reason, "host": self.host},
            task_id=self.task.id,
        )
        await self._settle(
            Outcome(success=False, error_kind=ErrorKind.LOST, error=reason),
            [],
            Worktree(path="", branch=None, base_sha=None, repo=None),
            {"not_before": None, "max_attempts": self.task.max_attempts + 1},
            events=[error],
        )
        return True

    async def _record_abandoned(
        self, ref: dict[str, Any], reason: str, unreachable_for: float, *, bump: bool = False
    ) -> None:
        """A run that may or may not have started on an unreachable host: record it lost
        and ``abandoned`` (the host's reconciliation stops it if it is found running) and
        retry the task at once (``bump``: without using up an attempt)."""
        run = await self.ctx.store.add_run(
            self.task.id,
            attempt=self.task.attempt,
            host=self.host,
            agent=self.task.agent,
            ref={**ref, "abandoned": True},
            status=RunStatus.LOST,
        )
        await self._abandon(run, reason, unreachable_for, bump=bump)

    async def _abandon(
        self, run: Run, reason: str, unreachable_for: float, *, bump: bool = False
    ) -> None:
        """The host stayed unreachable past the limit: give the run up, retry the task at
        once (the scheduler prefers another host), and mark the run ``abandoned`` so that
        the host's reconciliation kills it if it still runs when the host is back."""
        end = RunUpdate(
            run.id,
            {
                "status": RunStatus.LOST,
                "error_kind": ErrorKind.LOST,
                "error": reason,
                "ended_at": self.ctx.clock(),
                "ref": {**run.ref, "abandoned": True},
            },
        )
        abandoned = NewEvent(
            "run.abandoned",
            {
                "run_id": run.id,
                "host": self.host,
                "reason": reason,
                "unreachable_for": round(unreachable_for, 3),
                "limit": self.watch.limit,
            },
            task_id=self.task.id,
            run_id=run.id,
        )
        override: dict[str, Any] = {"not_before": None}
        if bump:
            override["max_attempts"] = self.task.max_attempts + 1
        await self._settle(
            Outcome(success=False, error_kind=ErrorKind.LOST, error=reason),
            [],
            Worktree(path="", branch=None, base_sha=None, repo=None),
            override,
            run=end,
            events=[abandoned],
        )

    async def _fail_before_launch(self, kind: ErrorKind, exc: BosunError) -> None:
        if isinstance(exc, ConfigError | InputError):
            kind = ErrorKind.CONFIG  # the same spec and task would fail the same way again
        outcome = Outcome(
            success=False,
            error_kind=kind,
            error=exc.message + (f" ({exc.hint})" if exc.hint else ""),
        )
        error = NewEvent(
            "run.error", {"error_kind": kind.value, "error": outcome.error}, task_id=self.task.id
        )
        await self._settle(
            outcome, [], Worktree(path="", branch=None, base_sha=None, repo=None), events=[error]
        )


async def task_prompt(store: Store, task: Task, settings: Settings, *, branch: str | None) -> str:
    """The prompt of the task's current attempt, on ``branch``; the same for a local run
    and for a pull agent (``bosun.server.routes_pull``). A retry is told how the previous
    attempt failed (the claim cleared the task's error; its run keeps it)."""
    previous_error = None
    if task.attempt > 1:
        earlier = [r for r in await store.list_runs(task.id) if r.attempt < task.attempt]
        previous_error = earlier[-1].error if earlier else None
    base = None
    if task.repo is not None:
        base = task.base_branch or settings.repos[task.repo].default_branch
    return build_prompt(
        task.title,
        task.body,
        constraints=task.constraints,
        validation=task.validation,
        repo=task.repo,
        branch=branch,
        base_branch=base,
        scope=task.scope,
        attempt=task.attempt,
        previous_error=previous_error,
        # a rework run addresses the review that sent the task back (bosun.review)
        review=task.review_feedback if task.review_count > 0 else None,
    )


async def base_for_prepare(store: Store, task: Task) -> str | None:
    """The branch a task's worktree starts from: an explicit base branch wins; else a task
    builds on the branch of its last dependency in the same repository, so a chain of tasks
    sees each other's work; else None (the repository's default branch)."""
    if task.base_branch is not None or task.repo is None:
        return task.base_branch
    for dep_id in reversed(task.depends_on):
        dep = await store.get_task(dep_id)
        if dep.repo == task.repo and dep.branch and dep.commits:
            return dep.branch
    return None


def workspace_root(provider: Provider, settings: Settings) -> str | None:
    """Where the workspaces of ``provider``'s host live: its own ``root`` (a remote host's
    work_dir, known once the provider is ready; None before), else bosun's state dir."""
    if not hasattr(type(provider), "root"):
        return str(settings.state_dir)
    try:
        root = provider.root  # type: ignore[attr-defined]
    except BosunError:
        return None
    return str(root)


def make_workspace(provider: Provider, settings: Settings) -> Workspace:
    """The ``Workspace`` of a provider's host; ``ProviderError`` while it is not ready."""
    root = workspace_root(provider, settings)
    if root is None:
        raise ProviderError(
            f"host {provider.name} is not ready yet (bosun has not connected to it)",
            "wait for the host to answer: `bosun hosts check` shows why it does not",
        )
    return Workspace(provider, root, local_root=str(settings.state_dir))


def run_key(task_id: int, attempt: int) -> str:
    """The run directory's name: one per attempt, known before anything is recorded."""
    return f"task-{task_id}-attempt-{attempt}"


async def _outcome(step: Awaitable[T]) -> T | BosunError:
    """What ``step`` returns, or the ``BosunError`` that failed it."""
    try:
        return await step
    except BosunError as exc:
        return exc


def _failed(outcome: T | BaseException) -> T | BosunError:
    """One result of ``gather(..., return_exceptions=True)``: a value, or the
    ``BosunError`` that failed it; anything else (a bug, a cancellation) is raised."""
    if isinstance(outcome, BosunError) or not isinstance(outcome, BaseException):
        return outcome
    raise outcome


def _kill_message(kind: ErrorKind, spec: AgentSpec, ctx: Context) -> str:
    lim = ctx.settings.limits
    if kind is ErrorKind.TIMEOUT:
        return f"killed after the wall-clock limit of {spec.timeout or lim.run_timeout:g}s"
    if kind is ErrorKind.STALLED:
        return f"killed after {spec.stall_timeout or lim.stall_timeout:g}s without output"
    if kind is ErrorKind.CANCELLED:
        return "cancelled by a user"
    return "the run's processes vanished without an exit code"


def _wt_ref(wt: Worktree) -> dict[str, Any]:
    return {"workdir": wt.path, "branch": wt.branch, "base_sha": wt.base_sha, "repo": wt.repo}


def _tmux_ref(session: TmuxSession | None) -> dict[str, Any]:
    """``{"tmux": {"session", "socket"}}`` for a run in tmux mode (read by bosun attach)."""
    return {} if session is None else {"tmux": session.to_json()}


def _wt_from_ref(ref: Mapping[str, Any], task: Task) -> Worktree:
    return Worktree(
        path=str(ref.get("workdir", "")),
        branch=ref.get("branch") or task.branch,
        base_sha=ref.get("base_sha"),
        repo=ref.get("repo", task.repo),
    )


async def _stored_output(store: Store, task_id: int, run_id: int) -> list[tuple[Any, str]]:
    lines: list[tuple[Any, str]] = []
    cursor = 0
    while True:
        batch = await store.events_since(cursor, task_id=task_id, limit=1000)
        if not batch:
            return lines
        for ev in batch:
            if ev.run_id == run_id and ev.kind == "run.output":
                lines.append((ev.data.get("stream", "stdout"), str(ev.data.get("line", ""))))
        cursor = batch[-1].id
