"""The ``bosun`` command line (Typer + Rich).

Every read command takes ``--json`` and then prints machine-readable output only. Errors
print ``error: ...`` and ``fix: ...`` on stderr and exit with 2 (bad input or config),
3 (not found) or 1 (anything else).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bosun.agents import BUILTIN_AGENTS, AgentSpec
from bosun.config import Settings, load_settings, write_init
from bosun.errors import BosunError, ConfigError, InputError, InvalidTransition, NotFound
from bosun.models import Event, Task, TaskSpec, TaskStatus
from bosun.service import Service, dispatch_mode, make_providers
from bosun.store.base import TaskFilter

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
    mode: Annotated[str, typer.Option(help="dispatch or http_pull.")] = "dispatch",
    max_attempts: Annotated[int | None, typer.Option("--max-attempts")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queue a task."""
    settings = _settings(config)
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
        async with await Service.open(settings) as svc:
            return await svc.submit(spec)

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
    settings = _settings(config)

    async def go() -> list[Task]:
        flt = TaskFilter(
            statuses=_status_filter(status),
            repo=repo,
            agent=agent,
            label=label,
            after_id=after,
            limit=limit,
        )
        async with await Service.open(settings) as svc:
            return await svc.list_tasks(flt)

    tasks = _run(go)
    if as_json:
        _print_json([t.to_json() for t in tasks])
    else:
        out.print(task_table(tasks))


@app.command()
def show(task_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show one task and its runs."""
    settings = _settings(config)

    async def go() -> dict[str, Any]:
        async with await Service.open(settings) as svc:
            task = await svc.get(task_id)
            runs = await svc.runs(task_id)
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
    settings = _settings(config)

    async def go() -> None:
        async with await Service.open(settings) as svc:
            if follow:
                async for ev in svc.follow(task_id):
                    _emit(ev, as_json)
                return
            cursor = 0
            while batch := await svc.events(task_id, cursor):
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


@app.command()
def cancel(task_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a task (a running agent's whole process group is killed)."""
    settings = _settings(config)

    async def go() -> Task:
        async with await Service.open(settings) as svc:
            return await svc.cancel(task_id)

    task = _run(go)
    _print_json(task.to_json()) if as_json else out.print(f"task {task.id} cancelled")


@app.command()
def retry(task_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Queue a failed or cancelled task again."""
    settings = _settings(config)

    async def go() -> Task:
        async with await Service.open(settings) as svc:
            return await svc.retry(task_id)

    task = _run(go)
    _print_json(task.to_json()) if as_json else out.print(f"task {task.id} queued again")


@app.command()
def hosts(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List hosts with their caps and load."""
    settings = _settings(config)

    async def go() -> list[dict[str, Any]]:
        async with await Service.open(settings) as svc:
            return [h.to_json() for h in await svc.hosts()]

    rows = _run(go)
    if as_json:
        _print_json(rows)
        return
    table = Table()
    for col in ("name", "kind", "enabled", "healthy", "running", "agents", "labels"):
        table.add_column(col)
    for h in rows:
        table.add_row(
            h["name"],
            h["kind"],
            str(h["enabled"]),
            str(h["healthy"]),
            f"{h['running']}/{h['max_concurrent']}",
            ", ".join(h["agents"]),
            ", ".join(h["labels"]),
        )
    out.print(table)


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
) -> None:
    """Keep dispatching until SIGINT or SIGTERM; running agents keep running and are
    re-attached by the next bosun."""
    settings = _settings(config)
    _run(lambda: _dispatch(settings, burst=False, quiet=quiet))


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


@agents_app.command("list")
def agents_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List every agent: built in, or defined in bosun.toml."""
    settings = _settings(config)
    rows = [agent_json(s, builtin=n in BUILTIN_AGENTS) for n, s in sorted(settings.agents.items())]
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
    settings = _settings(config)
    spec = settings.agents.get(name)
    if spec is None:
        _fail(InputError(f"unknown agent {name!r}", "see `bosun agents list`"))
    data = agent_json(spec, builtin=name in BUILTIN_AGENTS)
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
        settings = _settings(config)
        if name not in settings.agents:
            _fail(
                InputError(
                    f"{name!r} is neither an agent nor a parser",
                    "known parsers: " + ", ".join(sorted(PARSERS)),
                )
            )
        parser = settings.agents[name].parser
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
