"""The ``bosun`` command line (Typer + Rich).

Every read command takes ``--json`` and then prints machine-readable output only. Errors
print ``error: ...`` and ``fix: ...`` on stderr and exit with 2 (bad input or config),
3 (not found) or 1 (anything else).

The task commands (submit, ls, show, logs, cancel, retry, agents; hosts and attach in
their own modules) work on a ``Backend`` (``open_backend``): the store and bosun.toml here,
or a bosun server when ``--server URL`` (or ``BOSUN_SERVER``) is given, with ``--token``
(or ``BOSUN_TOKEN``). Their output is the same either way. ``run``, ``serve``, ``demo``,
``init``, ``doctor`` and ``token`` work here only (``LOCAL_ONLY``, ``require_local``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bosun.agents import BUILTIN_AGENTS
from bosun.backend import Backend, Cancellation
from bosun.cli_agent import agent_command
from bosun.cli_attach import attach
from bosun.cli_hosts import hosts_app
from bosun.cli_tokens import token_app
from bosun.config import Settings, load_settings, write_init
from bosun.errors import BosunError, ConfigError, InputError, InvalidTransition, NotFound
from bosun.models import Event, Task, TaskSpec, TaskStatus
from bosun.service import Service, agent_json, agent_rows, dispatch_mode, make_providers
from bosun.store.base import TaskFilter

__all__ = ["Remote", "agent_json", "app", "main", "open_backend", "remote", "require_local"]

T = TypeVar("T")

app = typer.Typer(
    name="bosun",
    help="Orchestrate AI coding agents: one task, one agent, one worktree, one branch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="BOSUN_CONFIG", help="Path to bosun.toml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _exit_code(exc: BosunError) -> int:
    if isinstance(exc, NotFound):
        return 3
    if isinstance(exc, ConfigError | InputError | InvalidTransition):
        return 2
    return 1


def _fail(exc: BosunError) -> NoReturn:
    """Print ``error: ...`` and ``fix: ...`` on stderr and exit with the error's code."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}")
    if exc.hint:
        err.print(f"  [bold]fix:[/] {escape(exc.hint)}")
    raise typer.Exit(_exit_code(exc)) from None


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run an async command body; turn bosun errors into a clear message and exit code."""
    try:
        return asyncio.run(fn())  # type: ignore[arg-type]
    except BosunError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except BosunError as exc:
        _fail(exc)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


STATUS_STYLE = {
    TaskStatus.QUEUED: "cyan",
    TaskStatus.RUNNING: "bold yellow",
    TaskStatus.REVIEW_PENDING: "magenta",
    TaskStatus.COMPLETED: "bold green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.CANCELLED: "dim",
    TaskStatus.PAUSED: "blue",
    TaskStatus.NEEDS_INPUT: "bold magenta",
    TaskStatus.BLOCKED: "dim cyan",
    TaskStatus.REWORK: "yellow",
}


def task_table(tasks: list[Task], *, title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    for col in ("id", "status", "title", "agent", "host", "branch", "try", "tokens", "cost"):
        table.add_column(col, overflow="fold")
    for t in tasks:
        style = STATUS_STYLE.get(t.status, "")
        table.add_row(
            str(t.id),
            f"[{style}]{t.status.value}[/]",
            escape(t.title),
            t.agent,
            t.assigned_host or "",
            t.branch or "",
            f"{t.attempt}/{t.max_attempts}",
            str(t.tokens_in + t.tokens_out),
            f"${t.cost_usd:.4f}" if t.cost_usd else "",
        )
    return table


# -- local or remote ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Remote:
    """The bosun server this invocation talks to (from ``--server`` / ``BOSUN_SERVER``)."""

    url: str
    token: str | None = field(repr=False)  # a secret: never in a repr, a message or a log
    source: str = "--server"  # how it was chosen, for messages: "--server" or "BOSUN_SERVER"


#: Set by the global options of each invocation (the callback runs before any command).
_chosen: Remote | None = None
#: Commands that act on this machine only: they refuse to run with --server.
LOCAL_ONLY = {
    "run": "dispatches agents on this machine",
    "serve": "runs the dispatcher and the API server on this machine",
    "demo": "builds a throwaway repository on this machine",
    "init": "writes a bosun.toml on this machine",
    "doctor": "checks the agent CLIs of the hosts in the local bosun.toml",
    "token": "manages the API tokens in the store on this machine",
}


@app.callback()
def _global_options(
    ctx: typer.Context,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="BOSUN_SERVER",
            metavar="URL",
            help="Talk to the bosun server at URL (e.g. http://host:8765) instead of the "
            "store and bosun.toml here.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="BOSUN_TOKEN",
            metavar="TOKEN",
            help="API token for --server (`bosun token create --admin` on the server); "
            "prefer the BOSUN_TOKEN variable: options are visible in `ps`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    global _chosen  # one invocation, one choice
    _chosen = None
    if server is None or not server.strip():
        return
    source = ctx.get_parameter_source("server")
    from_flag = source is not None and source.name == "COMMANDLINE"
    _chosen = Remote(
        url=server.strip(),
        token=token,
        source="--server" if from_flag else "BOSUN_SERVER",
    )
    if ctx.invoked_subcommand in LOCAL_ONLY:
        require_local(ctx.invoked_subcommand)
    # Commands with their own --server/--token (`bosun agent`) take the global ones as
    # defaults, so `bosun --server URL agent` works too.
    defaults = {"server": _chosen.url} | ({"token": token} if token else {})
    ctx.default_map = {**(ctx.default_map or {}), "agent": defaults}


def remote() -> Remote | None:
    """The server chosen with ``--server`` / ``BOSUN_SERVER``, or None to work locally."""
    return _chosen


def require_local(command: str, why: str | None = None) -> None:
    """Refuse to go on when a server was chosen: ``command`` works on this machine only."""
    chosen = remote()
    if chosen is None:
        return
    from bosun.client import redact

    why = why or LOCAL_ONLY.get(command, "works on this machine only")
    unset = "leave out --server" if chosen.source == "--server" else "unset BOSUN_SERVER"
    _fail(
        InputError(
            f"`bosun {command}` {why}; it cannot work through a bosun server "
            f"({chosen.source} is {redact(chosen.url)})",
            f"{unset}, and run it on the machine whose bosun.toml it is for",
        )
    )


def open_backend(config: Path | None) -> Callable[[], Awaitable[Backend]]:
    """How this command reaches bosun: the server chosen with ``--server``, or else the
    store and bosun.toml here. Settings are loaded (and checked) now; the backend is
    opened by the returned function, inside the command's event loop."""
    chosen = remote()
    if chosen is not None:
        from bosun.client import Client

        async def open_remote() -> Backend:
            return Client(chosen.url, chosen.token)

        return open_remote
    settings = _settings(config)

    async def open_local() -> Backend:
        return await Service.open(settings)

    return open_local


def _agents(config: Path | None) -> list[dict[str, Any]]:
    """The agents, as ``agents list --json`` prints them (locally without the store)."""
    if remote() is None:
        return agent_rows(_settings(config))
    backend = open_backend(config)

    async def go() -> list[dict[str, Any]]:
        async with await backend() as b:
            return await b.agents()

    return _run(go)


# -- commands ------------------------------------------------------------------------------
@app.command()
def init(
    path: Annotated[Path, typer.Option(help="Where to write the file.")] = Path("bosun.toml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented bosun.toml to start from."""
    try:
        write_init(path, force=force)
    except BosunError as exc:
        _fail(exc)
    out.print(f"wrote {path}; edit it, then: bosun submit --title ... && bosun run")


@app.command()
def submit(
    title: Annotated[str, typer.Option(help="A short title (also names the branch).")],
    config: ConfigOpt = None,
    repo: Annotated[str | None, typer.Option(help="Repo name from bosun.toml.")] = None,
    agent: Annotated[str, typer.Option(help="Agent name.")] = "echo",
    body: Annotated[str, typer.Option(help="The task text (Markdown).")] = "",
    body_file: Annotated[
        Path | None, typer.Option("--body-file", help="Read the body from a file ('-': stdin).")
    ] = None,
    constraint: Annotated[list[str] | None, typer.Option(help="A constraint (repeatable).")] = None,
    validation: Annotated[list[str] | None, typer.Option(help="A check (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option(help="A label (repeatable).")] = None,
    scope: Annotated[
        list[str] | None, typer.Option(help="A path the task may change (repeatable).")
    ] = None,
    depends_on: Annotated[
        list[int] | None, typer.Option("--depends-on", help="A task id this one waits for.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    base_branch: Annotated[
        str | None, typer.Option("--base-branch", help="Branch to start from.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Pin the task to one host.")] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="dispatch (bosun runs the agent on a host) or http_pull (a pull agent, "
            "`bosun agent`, fetches it over HTTP)."
        ),
    ] = "dispatch",
    max_attempts: Annotated[int | None, typer.Option("--max-attempts")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a task."""
    backend = open_backend(config)
    if body_file is not None:
        try:
            text = (
                sys.stdin.read() if str(body_file) == "-" else body_file.read_text(encoding="utf-8")
            )
        except (OSError, UnicodeDecodeError) as exc:
            _fail(InputError(f"cannot read --body-file {body_file}: {exc}", "check the path"))
        body = f"{body}\n\n{text}" if body else text

    async def go() -> Task:
        spec = TaskSpec(
            title=title,
            body=body,
            repo=repo,
            agent=agent,
            base_branch=base_branch,
            constraints=tuple(constraint or ()),
            validation=tuple(validation or ()),
            labels=tuple(label or ()),
            priority=priority,
            scope=tuple(scope or ()),
            depends_on=tuple(depends_on or ()),
            execution_mode=dispatch_mode(mode),
            host=host,
            max_attempts=max_attempts,
        )
        async with await backend() as b:
            return await b.submit(spec)

    task = _run(go)
    if as_json:
        _print_json(task.to_json())
    else:
        out.print(f"task {task.id} {task.status.value}: {escape(task.title)}")


def _status_filter(status: list[str] | None) -> frozenset[TaskStatus] | None:
    if not status:
        return None
    try:
        return frozenset(TaskStatus(s) for s in status)
    except ValueError:
        raise InputError(
            f"unknown status in {status}", "use: " + ", ".join(s.value for s in TaskStatus)
        ) from None


@app.command("ls")
def ls_(
    config: ConfigOpt = None,
    status: Annotated[
        list[str] | None, typer.Option(help="Only these statuses (repeatable).")
    ] = None,
    repo: Annotated[str | None, typer.Option()] = None,
    agent: Annotated[str | None, typer.Option()] = None,
    label: Annotated[str | None, typer.Option()] = None,
    after: Annotated[int | None, typer.Option(help="Only ids greater than this (paging).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List tasks."""
    backend = open_backend(config)

    async def go() -> list[Task]:
        flt = TaskFilter(
            statuses=_status_filter(status),
            repo=repo,
            agent=agent,
            label=label,
            after_id=after,
            limit=limit,
        )
        async with await backend() as b:
            return await b.list_tasks(flt)

    tasks = _run(go)
    if as_json:
        _print_json([t.to_json() for t in tasks])
    else:
        out.print(task_table(tasks))


@app.command()
def show(task_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one task and its runs."""
    backend = open_backend(config)

    async def go() -> dict[str, Any]:
        async with await backend() as b:
            task = await b.get(task_id)
            runs = await b.runs(task_id)
            return {**task.to_json(), "runs": [r.to_json() for r in runs]}

    data = _run(go)
    if as_json:
        _print_json(data)
        return
    for key in (
        "id",
        "title",
        "status",
        "repo",
        "agent",
        "branch",
        "assigned_host",
        "attempt",
        "max_attempts",
        "session_id",
        "result_summary",
        "error",
        "error_kind",
        "tokens",
        "cost_usd",
        "commits",
        "depends_on",
        "scope",
        "labels",
        "priority",
        "created_at",
        "updated_at",
        "last_activity_at",
    ):
        value = data[key]
        if value in (None, [], ""):
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else value
        out.print(f"[bold]{key:>16}[/]: {escape(str(text))}")
    for run in data["runs"]:
        out.print(
            f"[dim]  run {run['id']}: attempt {run['attempt']} on {run['host']} "
            f"{run['status']} exit={run['exit_code']} {escape(run['error'] or '')}[/]"
        )


def format_event(ev: Event) -> str | None:
    """A human line for an event, or None to skip it in plain logs."""
    d = ev.data
    if ev.kind == "run.output":
        return (
            str(d.get("line", ""))
            if d.get("stream") != "stderr"
            else f"[stderr] {d.get('line', '')}"
        )
    if ev.kind == "task.status":
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"--- {d.get('from') or 'new'} -> {d.get('to')}{reason}"
    if ev.kind == "run.started":
        return f"--- run {d.get('run_id')} started on {d.get('host')} (attempt {d.get('attempt')})"
    if ev.kind == "run.finished":
        return f"--- run {d.get('run_id')} finished: exit {d.get('exit_code')}" + (
            f", {d['error']}" if d.get("error") else ""
        )
    if ev.kind.startswith("agent.") and ev.kind != "agent.output":
        return f"[{ev.kind[6:]}] {d.get('text', '')}"
    return None


@app.command()
def logs(
    task_id: int,
    config: ConfigOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the task settles.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print a task's output and events (every line once, in order)."""
    backend = open_backend(config)

    async def go() -> None:
        async with await backend() as b:
            if follow:
                async for ev in b.follow(task_id):
                    _emit(ev, as_json)
                return
            cursor = 0
            while batch := await b.events(task_id, cursor):
                for ev in batch:
                    _emit(ev, as_json)
                cursor = batch[-1].id

    _run(go)


def _emit(ev: Event, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(ev.to_json(), sort_keys=True) + "\n")
    else:
        line = format_event(ev)
        if line is not None:
            sys.stdout.write(line + "\n")
    sys.stdout.flush()


#: ``bosun cancel``: the task is cancelled, but an agent could not be stopped yet.
EXIT_CANCEL_PENDING = 4


@app.command()
def cancel(task_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a task (a running agent's whole process group is killed).

    Exits 4 when the task is cancelled but its agent could not be stopped yet (its host
    does not answer): bosun stops it once the host answers again."""
    backend = open_backend(config)

    async def go() -> Cancellation:
        async with await backend() as b:
            return await b.cancel(task_id)

    done = _run(go)
    if as_json:
        _print_json(done.to_json())
    elif not done.pending:
        out.print(f"task {done.task.id} cancelled")
    else:
        _print_cancel_pending(done)
    if done.pending:
        raise typer.Exit(EXIT_CANCEL_PENDING)


def _print_cancel_pending(done: Cancellation) -> None:
    out.print(f"task {done.task.id} cancelled, but its agent is not stopped yet")
    for u in done.pending:
        why = "it is unreachable" if u.unreachable else "it answered with an error"
        err.print(
            f"[bold yellow]warning:[/] the agent of run {u.run_id} on host {escape(u.host)} "
            f"could not be stopped, {why}: {escape(u.error)}"
        )
        if u.will_retry:
            err.print(
                f"  [bold]then:[/] bosun stops it (TERM, then KILL to its process group) "
                f"when {escape(u.host)} answers again: a running `bosun serve` or `bosun run` "
                "does so once the host's health check passes, or when it starts; the task "
                "stays cancelled meanwhile"
            )
        else:
            err.print(
                f"  [bold]fix:[/] nothing in bosun can reach it any more: stop the process "
                f"group on {escape(u.host)} yourself (its run directory is in `bosun show "
                f"{done.task.id} --json`)"
            )


@app.command()
def retry(task_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Queue a failed or cancelled task again."""
    backend = open_backend(config)

    async def go() -> Task:
        async with await backend() as b:
            return await b.retry(task_id)

    task = _run(go)
    _print_json(task.to_json()) if as_json else out.print(f"task {task.id} queued again")


async def _dispatch(settings: Settings, *, burst: bool, quiet: bool) -> None:
    from bosun.dispatcher import Dispatcher

    async with await Service.open(settings) as svc:
        stop = asyncio.Event()
        if not burst:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        reporter = None if quiet else Reporter(svc, await svc.store.last_event_id())
        watching = None if reporter is None else asyncio.create_task(reporter.follow(stop))
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        try:
            await dispatcher.run(burst=burst, stop=stop)
        finally:
            stop.set()
            if watching is not None and reporter is not None:
                await asyncio.gather(watching, return_exceptions=True)
                await reporter.drain()


class Reporter:
    """Prints status changes (and why a task cannot be placed) as the dispatcher works."""

    def __init__(self, svc: Service, cursor: int) -> None:
        self.svc = svc
        self.cursor = cursor

    async def follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.drain()
            await self.svc.store.wait_for_change(0.5)

    async def drain(self) -> None:
        while batch := await self.svc.store.events_since(self.cursor, limit=1000):
            for ev in batch:
                self.cursor = ev.id
                d = ev.data
                if ev.kind == "task.status":
                    reason = f" ({d['reason']})" if d.get("reason") else ""
                    line = f"task {ev.task_id}: {d.get('from') or 'new'} -> {d.get('to')}{reason}"
                elif ev.kind == "task.unplaceable":
                    line = f"task {ev.task_id}: cannot be placed: {d.get('reason')}"
                else:
                    continue
                out.print(escape(line))


@app.command()
def run(
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Dispatch until no runnable task is left (burst mode), then exit."""
    settings = _settings(config)
    _run(lambda: _dispatch(settings, burst=True, quiet=quiet))


@app.command()
def serve(
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    bind: Annotated[
        str | None,
        typer.Option(
            "--bind",
            metavar="ADDR",
            help="Default: bind in the \\[server] table of bosun.toml (127.0.0.1).",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Default: port in the \\[server] table (8765); 0: any free port.",
        ),
    ] = None,
) -> None:
    """Run the HTTP API and keep dispatching until SIGINT or SIGTERM; running agents keep
    running and are re-attached by the next bosun."""
    from bosun.server.run import serve as serve_api

    settings = _settings(config)
    _run(
        lambda: serve_api(
            settings,
            bind=bind,
            port=port,
            say=lambda line: out.print(escape(line)),
            reporter=None if quiet else Reporter,
        )
    )


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the throwaway directory.")] = False,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to build the demo.")
    ] = None,
) -> None:
    """The whole story on a throwaway repo with a built-in demo agent; no API keys needed."""
    from bosun.demo import run_demo

    _run(lambda: run_demo(out, keep=keep, directory=directory))


agents_app = typer.Typer(help="Inspect the configured agents.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(token_app, name="token")
app.add_typer(hosts_app, name="hosts")
app.command("agent")(agent_command)
app.command()(attach)


@agents_app.command("list")
def agents_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List every agent: built in, or defined in bosun.toml (or the server's)."""
    rows = _agents(config)
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for col in ("name", "command", "prompt", "parser", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["name"],
            escape(" ".join(r["command"])),
            r["prompt"],
            r["parser"],
            escape(r["description"]),
        )
    out.print(table)


@agents_app.command("show")
def agents_show(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one agent's spec."""
    data = next((r for r in _agents(config) if r.get("name") == name), None)
    if data is None:
        _fail(InputError(f"unknown agent {name!r}", "see `bosun agents list`"))
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        text = " ".join(map(str, value)) if isinstance(value, list) else value
        out.print(f"[bold]{key:>15}[/]: {escape(str(text))}")


@agents_app.command("parse")
def agents_parse(
    name: Annotated[str, typer.Argument(help="An agent name, or a parser name.")],
    stdout_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Captured stdout ('-': stdin).")
    ],
    stderr_file: Annotated[Path | None, typer.Option("--stderr", help="Captured stderr.")] = None,
    exit_code: Annotated[
        int | None, typer.Option("--exit-code", help="The process's exit code.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the outcome bosun derives from a captured output ("why did this run fail?")."""
    from bosun.agents.parsers import PARSERS, parse_capture

    parser = name
    if name not in PARSERS:
        row = next((r for r in _agents(config) if r.get("name") == name), None)
        if row is None:
            _fail(
                InputError(
                    f"{name!r} is neither an agent nor a parser",
                    "known parsers: " + ", ".join(sorted(PARSERS)),
                )
            )
        parser = str(row["parser"])
    try:
        stdout = (
            sys.stdin.read()
            if str(stdout_file) == "-"
            else stdout_file.read_text("utf-8", "replace")
        )
        stderr = stderr_file.read_text("utf-8", "replace") if stderr_file else ""
    except OSError as exc:
        _fail(InputError(f"cannot read the capture: {exc}", "check the file paths"))
    events, outcome = parse_capture(parser, stdout, stderr, exit_code)
    if as_json:
        _print_json(
            {
                "parser": parser,
                "outcome": outcome.to_json(),
                "events": [{"kind": e.kind, "text": e.text, "data": e.data} for e in events],
            }
        )
        return
    for ev in events:
        if ev.kind != "output":
            out.print(escape(f"[{ev.kind}] {ev.text}"))
    verdict = "success" if outcome.success else f"failure ({outcome.error_kind})"
    out.print(escape(f"{parser}: {verdict}: {outcome.error or outcome.summary}"))


@app.command()
def doctor(
    config: ConfigOpt = None,
    agent: Annotated[
        list[str] | None, typer.Option(help="Check only this agent (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check each agent on each host: installed, version, credentials; print the fixes.

    Exits 1 when a checked agent has a problem. Without --agent, built-in agents that are
    not installed are listed but do not count (you may not use them)."""
    from bosun.preflight import check_agent

    settings = _settings(config)
    chosen = agent or sorted(settings.agents)
    unknown = [a for a in chosen if a not in settings.agents]
    if unknown:
        _fail(InputError(f"unknown agent(s): {', '.join(unknown)}", "see `bosun agents list`"))

    async def go() -> list[Any]:
        providers = make_providers(settings)
        try:
            return [
                await check_agent(providers[host], host, settings.agents[name], os.environ)
                for host in providers
                for name in chosen
                if not settings.hosts[host].agents or name in settings.hosts[host].agents
            ]
        finally:
            for provider in providers.values():
                await provider.aclose()

    checks = _run(go)

    def counts(c: Any) -> bool:
        optional = not agent and c.agent in BUILTIN_AGENTS and not c.installed
        return not c.ok and not optional

    failed = [c for c in checks if counts(c)]
    if as_json:
        _print_json([{**c.to_json(), "counts": counts(c)} for c in checks])
    else:
        table = Table()
        for col in ("host", "agent", "installed", "version", "credentials", "problem / fix"):
            table.add_column(col, overflow="fold")
        for c in checks:
            status = "[green]yes[/]" if c.installed else "[red]no[/]"
            notes = "\n".join(f"{p}\n  fix: {f}" for p, f in zip(c.problems, c.fixes, strict=False))
            table.add_row(
                c.host,
                c.agent,
                status,
                escape(c.version or ""),
                escape(c.credentials or ("missing" if c.installed else "")),
                escape(notes or "ok"),
            )
        out.print(table)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()
