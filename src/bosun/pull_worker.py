"""``bosun agent``: a pull worker that takes ``http_pull`` tasks from a bosun server.

It runs each task the way bosun runs a local one, with the same code: the dequeued task is
copied into a small store of the worker's own (``<state-dir>/agent.db``), and a normal
``execution.Attempt`` on a ``LocalProvider`` prepares the worktree (``workspace``), runs
the agent CLI with its ``AgentSpec`` and parser, commits what it left and pushes the
branch to the repository's URL. Meanwhile everything the attempt records is forwarded to
the server as status reports, which also extend the lease (at least every third of it);
when the attempt has settled, its result goes to the server as a receipt.

Durability:

- connection errors and 5xx answers are retried with backoff, so a server restart only
  delays reports; the agent keeps running meanwhile;
- a receipt is written to ``<state-dir>/receipts/`` before it is sent and removed once the
  server has it; a worker that starts again sends what is left there;
- the assignment being worked on is kept in ``<state-dir>/current.json``: a worker killed
  mid-run re-attaches to the agent (which runs detached) when it starts again, and sees it
  to the end if the lease is still valid.

A lease lost (the task was cancelled, or it expired while the server heard nothing)
stops the agent; its result is then not reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bosun import client
from bosun.agents import AgentSpec
from bosun.agents.builtin import resolve_agents
from bosun.config import Settings, settings_from_data
from bosun.dispatcher import new_owner
from bosun.errors import BosunError, ConfigError, InputError
from bosun.execution import Attempt, Context
from bosun.models import (
    ErrorKind,
    Event,
    ExecutionMode,
    RunStatus,
    Task,
    TaskStatus,
)
from bosun.preflight import program_of
from bosun.providers.local import LocalProvider
from bosun.store import open_store
from bosun.store.sql import SqlStore
from bosun.store.sql_pull import EVENT_KIND
from bosun.workspace import Workspace, Worktree

__all__ = ["PullWorker", "WorkerOptions", "default_agents", "task_from_json"]

#: Events a status report carries at most (the server takes up to 1000).
BATCH = 500
#: Backoff between retries of a request the server did not answer: start, cap (seconds).
RETRY_START = 0.5
RETRY_CAP = 10.0
#: Kinds of the local record that are not forwarded: the server writes its own.
_NOT_FORWARDED = ("task.", "run.finished")


@dataclass(frozen=True)
class WorkerOptions:
    server: str
    token: str
    state_dir: Path
    agents: tuple[str, ...] | None = None  # None: every agent installed here
    once: bool = False
    poll: float = 2.0  # seconds between dequeues when there is nothing to do
    config: Path | None = None  # a bosun.toml for [agents] and [limits]
    stop_grace: float = 10.0  # seconds to keep trying the last reports once stopped


class Stopped(Exception):
    """The worker was asked to stop while waiting for the server."""


class _LeaseGone(Exception):
    """The server refused a report with 409/403: the lease is no longer ours."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _PullAttempt(Attempt):
    """An ``Attempt`` that gives the agent the prompt the server built."""

    def __init__(self, ctx: Context, task: Task, host: str, prompt: str) -> None:
        super().__init__(ctx, task, host)
        self._server_prompt = prompt

    async def _prompt(self, wt: Worktree) -> str:
        return self._server_prompt or await super()._prompt(wt)


def default_agents(config: Path | None = None) -> list[str]:
    """The agents known here (built-in, and those of ``config``) whose program is installed."""
    agents = _agent_table(_read_toml(config), config)
    return sorted(name for name, spec in agents.items() if shutil.which(program_of(spec)))


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "fix or drop --config") from None


def _agent_table(data: dict[str, Any], config: Path | None) -> dict[str, AgentSpec]:
    """The built-in agents and those of ``[agents]`` in ``data`` (read from ``config``)."""
    if not data.get("agents"):
        return dict(resolve_agents({}))
    where = config or Path.cwd() / "bosun.toml"
    return dict(settings_from_data({"agents": data["agents"]}, where).agents)


def task_from_json(data: dict[str, Any]) -> Task:
    """A ``Task`` from the server's ``Task.to_json()``; a clear error when unreadable."""
    try:
        return client.task_from_json(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(
            f"the server sent a task this worker cannot read: {exc!r}",
            "use a bosun agent of the same version as the server",
        ) from None


class Server:
    """The server's pull routes, with retries on connection errors and 5xx answers."""

    def __init__(
        self, url: str, token: str, log: Callable[[str], None], stop: asyncio.Event
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        self._log = log
        self._stop = stop
        self._down_since: float | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(
        self, path: str, body: dict[str, Any] | None, *, give_up: asyncio.Event | None = None
    ) -> httpx.Response:
        """POST until the server answers with something other than a 5xx. Raises
        ``Stopped`` when ``give_up`` (default: the worker's stop) is set meanwhile, and a
        ``ConfigError`` for a refused token."""
        give_up = give_up or self._stop
        delay = RETRY_START
        while True:
            problem: str
            try:
                resp = await self._client.post(path, json=body)
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 500:
                    self._back()
                    if resp.status_code == 401:
                        raise ConfigError(
                            f"the server {self.url} refused the token: {_message(resp)}",
                            "check --token (or BOSUN_TOKEN); an agent token is made with "
                            "`bosun token create --agent NAME` on the server",
                        )
                    return resp
                problem = f"{self.url} answered {resp.status_code}: {_message(resp)}"
            loop = asyncio.get_running_loop()
            if self._down_since is None:
                self._down_since = loop.time()
                self._log(f"{problem}; retrying")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await give_up.wait()
            if give_up.is_set():
                raise Stopped
            delay = min(delay * 2, RETRY_CAP)

    def _back(self) -> None:
        if self._down_since is not None:
            self._down_since = None
            self._log(f"{self.url} answers again")


def _message(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        text = str(err["message"])
        return text + (f" (fix: {err['hint']})" if err.get("hint") else "")
    except (ValueError, KeyError, TypeError):
        return resp.text[:300] or resp.reason_phrase


class PullWorker:
    """Dequeues, runs and reports tasks until stopped (or after one, with ``once``)."""

    def __init__(self, options: WorkerOptions, log: Callable[[str], None]) -> None:
        self.options = options
        self.log = log
        self.state_dir = options.state_dir.expanduser().absolute()
        self.stop_event = asyncio.Event()
        self.owner = new_owner()
        self._toml = _read_toml(options.config)
        self._agents = _agent_table(self._toml, options.config)
        offered = options.agents if options.agents is not None else default_agents(options.config)
        unknown = [a for a in offered if a not in self._agents]
        if unknown:
            raise ConfigError(
                f"unknown agent(s) in --agents: {', '.join(unknown)}",
                f"use agents known here: {', '.join(sorted(self._agents))} "
                "(or define them in a bosun.toml given with --config)",
            )
        if not offered:
            raise ConfigError(
                "no agent to offer: none of the known agents is installed here",
                "install an agent CLI, or name agents with --agents",
            )
        self.agents = tuple(offered)
        self._checked: set[tuple[str, str]] = set()
        self._store: SqlStore | None = None
        self._server: Server | None = None
        self._stopping_run = False
        self._give_up = asyncio.Event()  # set stop_grace seconds after stop()

    def stop(self) -> None:
        """Stop: no new task; the running agent is stopped and reported as lost, and the
        last reports are tried for ``stop_grace`` seconds. Called again: give up at once
        (an undelivered receipt stays on disk)."""
        if self.stop_event.is_set():
            self._give_up.set()
            return
        self.stop_event.set()
        asyncio.get_running_loop().call_later(self.options.stop_grace, self._give_up.set)

    # -- main loop -----------------------------------------------------------------------
    async def run(self) -> int:
        """Work until stopped (or one task with ``once``); the number of tasks run."""
        for sub in ("receipts", "runs"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._store = await open_store(f"sqlite:///{self.state_dir / 'agent.db'}")
        self._server = Server(self.options.server, self.options.token, self.log, self.stop_event)
        done = 0
        try:
            self.log(f"offering agents {', '.join(self.agents)} to {self._server.url}")
            await self._deliver_pending()
            if await self._recover():
                done += 1
                if self.options.once:
                    return done
            while not self.stop_event.is_set():
                assignment = await self._dequeue()
                if assignment is None:
                    if self.options.once:
                        self.log("no task available")
                        return done
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.options.poll):
                            await self.stop_event.wait()
                    continue
                await self._work(assignment)
                done += 1
                if self.options.once:
                    break
        except Stopped:
            pass
        finally:
            await self._server.aclose()
            await self._store.aclose()
        return done

    async def _dequeue(self) -> dict[str, Any] | None:
        assert self._server is not None
        resp = await self._server.post("/api/v1/tasks/dequeue", {"agents": list(self.agents)})
        if resp.status_code == 204:
            return None
        if resp.status_code != 200:
            raise ConfigError(
                f"the server refused to hand out tasks ({resp.status_code}): {_message(resp)}",
                "check that the token is an agent token whose capabilities include the "
                "offered agents (--agents)",
            )
        data: dict[str, Any] = resp.json()
        return data

    # -- one task ------------------------------------------------------------------------
    async def _work(self, assignment: dict[str, Any]) -> None:
        assert self._store is not None
        task = task_from_json(assignment["task"])
        self.log(f"task {task.id}: dequeued ({task.agent}, attempt {task.attempt}): {task.title}")
        try:
            ctx, local = self._context(assignment, task)
            if task.agent not in ctx.settings.agents:
                raise ConfigError(
                    f"agent {task.agent} is not known to this pull worker",
                    "offer only agents it knows (--agents), or define it with --config",
                )
        except BosunError as exc:
            await self._cannot_run(assignment, exc)
            return
        now = datetime.now(UTC)
        local = replace(
            local,
            status=TaskStatus.RUNNING,
            depends_on=(),  # the worker has no copy of them; the server resolved the base
            base_branch=assignment.get("base_branch") if task.repo else None,
            execution_mode=ExecutionMode.DISPATCH,
            assigned_host="local",
            lease_owner=self.owner,
            lease_expires_at=now + timedelta(days=365),
        )
        await self._store.mirror_task(local)
        cursor = await self._store.last_event_id()
        current = {"assignment": assignment, "cursor": cursor}
        _write_json(self.state_dir / "current.json", current)
        attempt = _PullAttempt(ctx, local, "local", str(assignment.get("prompt") or ""))
        await self._drive(assignment, cursor, attempt.start())

    async def _cannot_run(self, assignment: dict[str, Any], exc: BosunError) -> None:
        """Hand the task back at once as a failed launch (retried by the server's rules,
        perhaps by another agent)."""
        task_id = int(assignment["task"]["id"])
        error = exc.message + (f" ({exc.hint})" if exc.hint else "")
        self.log(f"task {task_id}: cannot run it here: {error}")
        receipt = {
            "task_id": task_id,
            "lease": str(assignment["lease"]["id"]),
            "success": False,
            "error": error,
            "error_kind": ErrorKind.LAUNCH.value,
        }
        path = self.state_dir / "receipts" / f"{task_id}-{assignment['task']['attempt']}.json"
        _write_json(path, receipt)
        await self._deliver(path)

    async def _recover(self) -> bool:
        """A worker killed mid-run left ``current.json``: re-attach to its agent run (or
        report it lost) and see the task through. True when there was one."""
        assert self._store is not None
        path = self.state_dir / "current.json"
        if not _exists(path):
            return False
        saved = _read_json(path)
        assignment: dict[str, Any] = saved["assignment"]
        task = task_from_json(assignment["task"])
        self.log(f"task {task.id}: resuming after a restart of this worker")
        ctx, _ = self._context(assignment, task)
        local = await self._store.get_task(task.id)
        if local.status is TaskStatus.RUNNING:
            # Another process of ours: take the local lease over.
            local = await self._store.mirror_task(replace(local, lease_owner=self.owner))
            runs = [r for r in await self._store.list_runs(task.id) if r.attempt == local.attempt]
            attempt = _PullAttempt(ctx, local, "local", str(assignment.get("prompt") or ""))
            work: Coroutine[Any, Any, Any] = (
                attempt.resume(runs[-1]) if runs else self._adopt_or_fail(attempt)
            )
        else:
            work = asyncio.sleep(0)  # settled locally; only the receipt is missing
        await self._drive(assignment, int(saved.get("cursor", 0)), work)
        return True

    async def _adopt_or_fail(self, attempt: _PullAttempt) -> None:
        if not await attempt.adopt():
            assert self._store is not None
            await self._store.transition(
                attempt.task.id,
                TaskStatus.QUEUED,
                owner=self.owner,
                reason="the pull worker stopped before the agent started",
                error="the pull worker stopped before the agent started",
                error_kind=ErrorKind.LOST,
            )

    def _context(self, assignment: dict[str, Any], task: Task) -> tuple[Context, Task]:
        assert self._store is not None
        settings = self._settings(task, assignment)
        provider = LocalProvider("local", str(self.state_dir))
        workspaces = {"local": Workspace(provider, str(self.state_dir))}
        providers = {"local": provider}
        ctx = Context(settings, self._store, providers, workspaces, self.owner)
        ctx.checked = self._checked  # preflight once per agent for the worker's lifetime
        return ctx, task

    def _settings(self, task: Task, assignment: dict[str, Any]) -> Settings:
        data = {k: v for k, v in self._toml.items() if k in ("agents", "limits")}
        limits = {"heartbeat_seconds": 1.0, "lease_seconds": 30.0, **data.get("limits", {})}
        repos: dict[str, Any] = {}
        if task.repo and assignment.get("repo_url"):
            repos[task.repo] = {
                "url": str(assignment["repo_url"]),
                "default_branch": str(assignment.get("base_branch") or "main"),
            }
        elif task.repo:
            raise InputError(
                f"task {task.id} names repository {task.repo!r} but the server sent no URL",
                "configure the repository in the server's bosun.toml",
            )
        data.update(
            state_dir=str(self.state_dir),
            database={"url": f"sqlite:///{self.state_dir / 'agent.db'}"},
            repos=repos,
            hosts={"local": {"kind": "local", "max_concurrent": 1}},
            limits=limits,
        )
        return settings_from_data(data, self.options.config or self.state_dir / "bosun.toml")

    async def _drive(
        self, assignment: dict[str, Any], cursor: int, work: Coroutine[Any, Any, Any]
    ) -> None:
        """Run ``work`` (the local attempt) while forwarding its record as status reports;
        then send the receipt."""
        assert self._store is not None
        task_id = int(assignment["task"]["id"])
        lease = str(assignment["lease"]["id"])
        seconds = float(assignment["lease"].get("seconds") or 60.0)
        pump = _Pump(self, task_id, lease, cursor)
        running = asyncio.ensure_future(work)
        reporter = asyncio.create_task(pump.every(max(0.2, min(1.0, seconds / 3)), running))
        stopper = asyncio.create_task(self.stop_event.wait())
        lost: str | None = None
        fatal: BaseException | None = None
        try:
            await asyncio.wait({running, reporter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reporter.done() and not running.done():
                exc = reporter.exception()
                if isinstance(exc, _LeaseGone):
                    lost = exc.message
                elif exc is not None and not isinstance(exc, Stopped):
                    fatal = exc
            if not running.done():
                if lost is not None:
                    reason = lost
                elif fatal is not None:
                    reason = f"reports to the server failed: {fatal}"
                else:
                    self._stopping_run = True
                    reason = "this worker is stopping"
                self.log(f"task {task_id}: stopping the agent: {reason}")
                await self._cancel_local(task_id, reason)
            await running  # the attempt ends once the agent is gone
        finally:
            stopper.cancel()
            reporter.cancel()
            await asyncio.gather(stopper, reporter, return_exceptions=True)
        if fatal is not None:
            raise fatal
        if lost is not None:
            _remove(self.state_dir / "current.json")
            return
        receipt = await self._receipt(task_id, lease, pump.seq_start_cursor)
        path = self.state_dir / "receipts" / f"{task_id}-{assignment['task']['attempt']}.json"
        _write_json(path, receipt)
        _remove(self.state_dir / "current.json")
        try:
            await pump.flush(give_up=self._give_up)
        except _LeaseGone as exc:
            self.log(f"task {task_id}: {exc.message}")
        except Stopped:
            pass
        await self._deliver(path)

    async def _cancel_local(self, task_id: int, reason: str) -> None:
        """Stop the local run: the attempt's heartbeat sees the cancel and kills the agent's
        process group, then settles."""
        assert self._store is not None
        with contextlib.suppress(BosunError):
            await self._store.transition(task_id, TaskStatus.CANCELLED, reason=reason)

    async def _receipt(self, task_id: int, lease: str, cursor: int) -> dict[str, Any]:
        """The receipt of the attempt that just ended, from the local record."""
        assert self._store is not None
        task = await self._store.get_task(task_id)
        runs = [r for r in await self._store.list_runs(task_id) if r.attempt == task.attempt]
        run = runs[-1] if runs else None
        finished: dict[str, Any] = {}
        for ev in await self._store.events_since(cursor, task_id=task_id, limit=100_000):
            if ev.kind == "run.finished" and (run is None or ev.run_id == run.id):
                finished = ev.data
        success = run is not None and run.status is RunStatus.SUCCEEDED
        error_kind = (run.error_kind if run else None) or task.error_kind
        error = (run.error if run else None) or task.error
        if self._stopping_run and not success:
            error_kind, error = ErrorKind.LOST, "the pull worker was stopped during the run"
        if not success and error_kind is None:
            error_kind = ErrorKind.AGENT
        return {
            "task_id": task_id,
            "lease": lease,
            "success": success,
            "summary": str(finished.get("summary") or task.result_summary or ""),
            "error": None if success else (error or "the run failed"),
            "error_kind": None if success or error_kind is None else error_kind.value,
            "exit_code": run.exit_code if run else None,
            "session_id": run.session_id if run else None,
            "tokens_in": run.tokens_in if run else 0,
            "tokens_out": run.tokens_out if run else 0,
            "cost_usd": run.cost_usd if run and run.cost_usd else None,
            "commits": list(finished.get("commits") or []),
            "branch": task.branch,
            "resume_at": finished.get("resume_at"),
        }

    async def _deliver_pending(self) -> None:
        for path in sorted((self.state_dir / "receipts").glob("*.json")):
            self.log(f"sending the receipt kept in {path.name}")
            await self._deliver(path)

    async def _deliver(self, path: Path) -> None:
        """Send a kept receipt; remove it once the server has it (or refuses it for good)."""
        assert self._server is not None
        body = _read_json(path)
        task_id = body["task_id"]
        try:
            resp = await self._server.post("/api/v1/receipts", body, give_up=self._give_up)
        except Stopped:
            self.log(f"task {task_id}: the receipt is kept in {path} and sent at the next start")
            raise
        if resp.status_code == 200:
            settled = resp.json()
            commits = len(settled.get("commits") or [])
            branch = settled.get("branch") or "no branch"
            self.log(f"task {task_id}: {settled.get('status')} ({commits} commit(s), {branch})")
        elif resp.status_code == 409:
            self.log(f"task {task_id}: the server no longer takes this result: {_message(resp)}")
        else:
            failed = path.parent / "refused"
            failed.mkdir(exist_ok=True)
            os.replace(path, failed / path.name)
            self.log(
                f"task {task_id}: the server refused the receipt ({resp.status_code}): "
                f"{_message(resp)}; kept in {failed / path.name}"
            )
            return
        _remove(path)


class _Pump:
    """Forwards the local record of one task to the server as status reports."""

    def __init__(self, worker: PullWorker, task_id: int, lease: str, cursor: int) -> None:
        self.worker = worker
        self.task_id = task_id
        self.lease = lease
        self.cursor = cursor
        self.seq_start_cursor = cursor
        self.seq = 0

    async def every(self, interval: float, running: asyncio.Future[Any]) -> None:
        """Report every ``interval`` seconds until ``running`` is done; raises
        ``_LeaseGone`` when the server refuses the lease."""
        while not running.done():
            try:
                await self.flush()
            except InputError as exc:  # a report the server took as malformed: go on
                self.worker.log(f"task {self.task_id}: {exc.message}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await asyncio.shield(running)

    async def flush(self, give_up: asyncio.Event | None = None) -> None:
        """Send everything recorded since the last report (at least one report)."""
        store, server = self.worker._store, self.worker._server
        assert store is not None and server is not None
        while True:
            batch = await store.events_since(self.cursor, task_id=self.task_id, limit=BATCH)
            events = _wire(batch)
            body = {"lease": self.lease, "seq": self.seq, "events": events}
            resp = await server.post(f"/api/v1/tasks/{self.task_id}/status", body, give_up=give_up)
            if resp.status_code in (403, 404, 409):
                raise _LeaseGone(f"the lease was lost: {_message(resp)}")
            if resp.status_code != 200:
                raise InputError(
                    f"the server refused a status report ({resp.status_code}): {_message(resp)}",
                    "this is a bug in bosun's pull worker or server",
                )
            self.seq += len(events)
            if batch:
                self.cursor = batch[-1].id
            if len(batch) < BATCH:
                return


def _wire(batch: Sequence[Event]) -> list[dict[str, Any]]:
    """Local events as the server takes them: bosun's own kinds left out, local run ids
    (meaningless to the server) dropped."""
    out = []
    for ev in batch:
        if ev.kind.startswith(_NOT_FORWARDED) or not EVENT_KIND.fullmatch(ev.kind):
            continue
        data = {k: v for k, v in ev.data.items() if k != "run_id"}
        out.append({"kind": ev.kind, "data": data})
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _exists(path: Path) -> bool:
    return path.exists()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
