"""``bosun hosts [list|add|rm|drain|enable|check|trust|waiting|forget]``: the host
registry.

Plain ``bosun hosts`` lists the hosts (as ``bosun hosts list``). ``list``, ``add``,
``rm``, ``drain``, ``enable``, ``check``, ``waiting`` and ``forget`` also work against a
bosun server (``--server``); ``trust`` records a host key in this machine's known_hosts
and so works here only.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from bosun.errors import BosunError, InputError

__all__ = ["host_rows", "host_table", "hosts_app"]

T = TypeVar("T")

hosts_app = typer.Typer(
    help="The machines that run agents: list, add, remove, drain, enable, check, trust; "
    "the runs a host waits for (waiting) and forgetting them (forget).",
    invoke_without_command=True,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="BOSUN_CONFIG", help="Path to bosun.toml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    from bosun import cli

    return cli._run(fn)


def _print_json(data: Any) -> None:
    from bosun import cli

    cli._print_json(data)


def _print(text: str | Table) -> None:
    from bosun import cli

    cli.out.print(text)


def _fail(exc: BosunError) -> None:
    from bosun import cli

    cli._fail(exc)


# -- listing ---------------------------------------------------------------------------
def host_rows(config: Path | None) -> list[dict[str, Any]]:
    """Every host as ``bosun hosts --json`` prints it (locally or from the server)."""
    from bosun import cli

    backend = cli.open_backend(config)

    async def go() -> list[dict[str, Any]]:
        async with await backend() as b:
            return [h.to_json() for h in await b.hosts()]

    return _run(go)


def _state(h: dict[str, Any]) -> str:
    if h.get("drained"):
        state = "[yellow]drained[/]"
    elif not h.get("enabled", True):
        state = "[dim]disabled[/]"
    else:
        state = "enabled"
    waiting = h.get("waiting_runs")
    if waiting:  # no new work there until they are stopped (`bosun hosts waiting`)
        state += f"\n[bold yellow]waits for {waiting} run(s)[/]"
    return state


def _health(h: dict[str, Any]) -> str:
    health = str(h.get("health", "unknown"))
    style = {"healthy": "green", "unhealthy": "bold red"}.get(health, "dim")
    text = f"[{style}]{escape(health)}[/]"
    if h.get("health_error"):
        text += f"\n[dim]{escape(str(h['health_error'])[:200])}[/]"
    return text


def _agents(h: dict[str, Any]) -> str:
    """The agents the host may run; after a check only those it found installed."""
    missing = set(h.get("missing_agents") or ())
    return ", ".join(escape(str(a)) for a in h.get("agents") or () if a not in missing)


def _where(kind: Any, address: Any) -> str:
    return f"{kind} {address}" if address else str(kind)


def host_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for col in ("name", "kind", "address", "state", "health", "running", "agents", "labels"):
        table.add_column(col, overflow="fold")
    for h in rows:
        table.add_row(
            escape(str(h.get("name", ""))),
            escape(str(h.get("kind", ""))),
            escape(str(h.get("address") or "")),
            _state(h),
            _health(h),
            f"{h.get('running', '?')}/{h.get('max_concurrent', '?')}",
            _agents(h),
            escape(", ".join(map(str, h.get("labels") or ()))),
        )
    return table


@hosts_app.callback()
def hosts_main(ctx: typer.Context, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List hosts with their state, health, load, agents and labels (`bosun hosts list`)."""
    if ctx.invoked_subcommand is not None:
        return
    _list(config, as_json)


@hosts_app.command("list")
def hosts_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List hosts with their state, health, load, agents and labels."""
    _list(config, as_json)


def _list(config: Path | None, as_json: bool) -> None:
    rows = host_rows(config)
    if as_json:
        _print_json(rows)
    else:
        _print(host_table(rows))


# -- changing --------------------------------------------------------------------------
def _act(
    config: Path | None,
    local: Callable[[Any], Awaitable[Any]],
    method: str,
    path: str,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> Any:
    """Run ``local(service)`` here, or the API call on the server chosen with --server.
    Returns what the command prints as JSON."""
    from bosun import cli

    chosen = cli.remote()
    if chosen is not None:
        from bosun.client import Client

        async def remote() -> Any:
            async with Client(chosen.url, chosen.token) as client:
                return await client._call(method, path, body=body, params=params)

        return _run(remote)
    settings = cli._settings(config)

    async def here() -> Any:
        from bosun.service import Service

        async with await Service.open(settings) as svc:
            result = await local(svc)
            return result.to_json() if hasattr(result, "to_json") else result

    return _run(here)


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


@hosts_app.command("add")
def hosts_add(
    name: Annotated[str, typer.Argument(help="A name for the host (letters, digits, _ and -).")],
    address: Annotated[
        str | None,
        typer.Option(help="[user@]host[:port] or a Host alias of the ssh config (kind ssh)."),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="ssh (default with --address) or local.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Runs at once on the host.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A label (repeatable).")
    ] = None,
    agents: Annotated[
        str | None, typer.Option(help="Agents the host may run, comma-separated (default: all).")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Higher is preferred.")] = None,
    strict_host_keys: Annotated[
        bool,
        typer.Option(
            "--strict-host-keys/--no-strict-host-keys",
            help="Refuse unknown SSH host keys (the default; opting out is per host).",
        ),
    ] = True,
    work_dir: Annotated[
        str | None, typer.Option("--work-dir", help="bosun's directory on the host.")
    ] = None,
    max_channels: Annotated[
        int | None,
        typer.Option("--max-channels", min=3, help="SSH channels at once (at least 3)."),
    ] = None,
    connect_timeout: Annotated[
        float | None,
        typer.Option("--connect-timeout", help="Seconds to wait for an SSH connection."),
    ] = None,
    identity_file: Annotated[
        str | None, typer.Option("--identity-file", help="SSH private key to log in with.")
    ] = None,
    known_hosts: Annotated[
        str | None,
        typer.Option("--known-hosts", help="An extra known_hosts file to trust keys from."),
    ] = None,
    ssh_config: Annotated[
        str | None,
        typer.Option(
            "--ssh-config",
            help="ssh config file (default ~/.ssh/config, then /etc/ssh/ssh_config).",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Connect and detect capabilities first.")
    ] = True,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a host. It is checked first (connection, host key, capabilities) unless
    --no-check; a host that fails the check is not added."""
    fields: dict[str, Any] = {}
    if kind is not None:
        fields["kind"] = kind
    if address is not None:
        fields["address"] = address
    if max_concurrent is not None:
        fields["max_concurrent"] = max_concurrent
    if label:
        fields["labels"] = list(label)
    if agents is not None:
        fields["agents"] = _csv(agents)
    if priority is not None:
        fields["priority"] = priority
    if not strict_host_keys:
        fields["strict_host_keys"] = False
    if work_dir is not None:
        fields["work_dir"] = work_dir
    if max_channels is not None:
        fields["max_channels"] = max_channels
    if connect_timeout is not None:
        fields["connect_timeout"] = connect_timeout
    for key, value in (
        ("identity_file", identity_file),
        ("known_hosts", known_hosts),
        ("ssh_config", ssh_config),
    ):
        if value is not None:
            fields[key] = str(Path(value).expanduser().absolute())
    row = _act(
        config,
        lambda svc: svc.add_host(name, fields, check=check),
        "POST",
        "/api/v1/hosts",
        {"name": name, "check": check, **fields},
    )
    if as_json:
        _print_json(row)
        return
    caps = row.get("capabilities") or {}
    found = [a for a, c in (caps.get("agents") or {}).items() if c.get("installed")]
    detail = f"; agents found: {', '.join(found) or 'none'}" if caps else ""
    _print(escape(f"host {name} added ({_where(row.get('kind'), row.get('address'))}){detail}"))


@hosts_app.command("rm")
def hosts_rm(
    name: str,
    force: Annotated[
        bool, typer.Option(help="Remove it even while tasks run there (they are retried).")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget a host added with `bosun hosts add` (hosts of bosun.toml are edited there)."""
    row = _act(
        config,
        lambda svc: svc.remove_host(name, force=force),
        "DELETE",
        f"/api/v1/hosts/{name}",
        params={"force": "true"} if force else None,
    )
    _print_json(row) if as_json else _print(escape(f"host {name} removed"))


@hosts_app.command("drain")
def hosts_drain(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """No new work for the host; runs already there go on to their end."""
    row = _act(config, lambda svc: svc.drain_host(name), "POST", f"/api/v1/hosts/{name}/drain")
    if as_json:
        _print_json(row)
    else:
        running = row.get("running", 0)
        _print(escape(f"host {name} drained ({running} run(s) still going there)"))


@hosts_app.command("enable")
def hosts_enable(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Undo `drain`: the host takes new work again."""
    row = _act(config, lambda svc: svc.enable_host(name), "POST", f"/api/v1/hosts/{name}/enable")
    _print_json(row) if as_json else _print(escape(f"host {name} enabled"))


@hosts_app.command("check")
def hosts_check(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Connect to a host, verify its key, and detect its OS, CPUs, memory and agent CLIs;
    say which runs it waits for (`bosun hosts waiting`), if any.

    Exits 1 when the host cannot be reached or its key is not trusted (the message shows
    the key's fingerprint and the command that trusts it); runs it waits for do not
    change the exit code."""
    result = _act(config, lambda svc: svc.check_host(name), "POST", f"/api/v1/hosts/{name}/check")
    if as_json:
        _print_json(result)
    else:
        _print_check(result)
    if not result.get("ok"):
        raise typer.Exit(1)


def _print_check(r: dict[str, Any]) -> None:
    caps = r.get("capabilities") or {}
    rows: list[tuple[str, str]] = [
        ("host", f"{r.get('host')} ({_where(r.get('kind'), r.get('address'))})"),
        ("connection", "[green]ok[/]" if r.get("reachable") else "[bold red]failed[/]"),
        ("host key", str(r.get("host_key", ""))),
    ]
    if r.get("fingerprint"):
        rows.append(("fingerprint", str(r["fingerprint"])))
    if caps:
        os_text = " ".join(str(caps[k]) for k in ("os", "os_release", "machine") if caps.get(k))
        rows.append(("os", os_text))
        rows.append(("cpus", str(caps.get("cpus") or "?")))
        memory = caps.get("memory_bytes")
        rows.append(("memory", f"{memory / 2**30:.1f} GiB" if memory else "?"))
    rows.append(("labels", ", ".join(map(str, r.get("labels") or ()))))
    table = Table(show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value if key in ("connection",) else escape(value))
    _print(table)
    agents = caps.get("agents") or {}
    if agents:
        at = Table()
        for col in ("agent", "program", "installed", "version"):
            at.add_column(col, overflow="fold")
        for agent, a in sorted(agents.items()):
            at.add_row(
                escape(agent),
                escape(str(a.get("program") or "")),
                "[green]yes[/]" if a.get("installed") else "[red]no[/]",
                escape(str(a.get("version") or a.get("error") or "")),
            )
        _print(at)
    waiting = r.get("waiting") or []
    if waiting:
        _print(_waiting_note(str(r.get("host")), waiting))
    if r.get("error"):
        from bosun import cli

        cli.err.print(f"[bold red]error:[/] {escape(str(r['error']))}")
        if r.get("hint"):
            cli.err.print(f"  [bold]fix:[/] {escape(str(r['hint']))}")


#: At most this many runs are named in `bosun hosts check`'s note (then "and N more").
_NAMED = 10
_WHY = {"abandoned": "given up", "cancel_pending": "its cancel could not reach the host"}


def _waiting_note(name: str, runs: list[dict[str, Any]]) -> str:
    """`bosun hosts check`'s note on the runs host ``name`` waits for."""

    def one(r: dict[str, Any]) -> str:
        why = str(r.get("why"))
        return f"run {r.get('run_id')} (task {r.get('task_id')}, {_WHY.get(why, why)})"

    named = ", ".join(one(r) for r in runs[:_NAMED])
    if len(runs) > _NAMED:
        named += f" and {len(runs) - _NAMED} more"
    return f"[bold yellow]waits for {len(runs)} run(s)[/]: " + escape(
        f"{named}\n  no new work there until bosun has stopped them (it tries at every "
        f"health check): see `bosun hosts waiting {name}`; `bosun hosts forget {name} "
        "RUN_ID` once you have stopped them by hand"
    )


@hosts_app.command("waiting")
def hosts_waiting(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The runs a host waits for: until bosun has stopped them (it tries at every health
    check) the host gets no new work. They are runs bosun gave up on (the host was
    unreachable, or an attempt failed inside bosun) and runs whose cancel could not reach
    the host."""

    async def local(svc: Any) -> dict[str, Any]:
        return {"host": name, "runs": [w.to_json() for w in await svc.waiting_runs(name)]}

    result = _act(config, local, "GET", f"/api/v1/hosts/{name}/waiting")
    if as_json:
        _print_json(result)
        return
    runs = result.get("runs") or []
    if not runs:
        _print(escape(f"host {name} waits for no run"))
        return
    table = Table()
    for col in ("run", "task", "why", "since", "task now", "agent", "on the host"):
        table.add_column(col, overflow="fold")
    for r in runs:
        where = " ".join(f"{k} {r[k]}" for k in ("run_dir", "pgid") if r.get(k) is not None)
        table.add_row(
            str(r.get("run_id")),
            str(r.get("task_id")),
            escape(str(r.get("reason") or r.get("why"))),
            escape(_when(r.get("since"))),
            escape(str(r.get("task_status", ""))),
            escape(str(r.get("agent", ""))),
            escape(where),
        )
    _print(table)
    _print(
        escape(
            f"host {name} gets no new work until bosun has stopped these {len(runs)} run(s); "
            "it tries again at every health check.\n"
            "A run you have stopped yourself, or that you take responsibility for: "
            f"`bosun hosts forget {name} RUN_ID` (or --all)."
        )
    )


def _when(iso: Any) -> str:
    """An ISO timestamp as ``2024-05-01 12:00:00 UTC``; "?" when there is none."""
    from datetime import UTC, datetime

    if not isinstance(iso, str):
        return "?"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def _who() -> str:
    """Who forgets runs from this machine, for the ``run.forgotten`` event (through a
    server, the event names the API token instead)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no user database entry
        user = "unknown"
    return f"cli {user}@{socket.gethostname()}"


@hosts_app.command("forget")
def hosts_forget(
    name: str,
    run_ids: Annotated[
        list[int] | None,
        typer.Argument(
            help="Ids of runs the host waits for (`bosun hosts waiting NAME`).", show_default=False
        ),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every run the host waits for now.")] = False,
    note: Annotated[
        str | None,
        typer.Option(help="What you did about them (kept in each run.forgotten event)."),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop waiting for runs bosun cannot stop on a host, because you stopped them or
    take responsibility for them: bosun no longer tries to stop them, a run.forgotten
    event records who did it and when, and the host takes new work again at its next
    health check (no restart). The runs' tasks keep their state (retried, waiting or
    cancelled). All or none: an unknown run, or one the host does not wait for, is an
    error and nothing is forgotten."""
    ids = list(run_ids or ())
    by = _who()

    async def local(svc: Any) -> dict[str, Any]:
        from bosun.hosts.waiting import forgotten_json

        events = await svc.forget_runs(name, ids, every=every, by=by, note=note)
        return {"host": name, "forgotten": [forgotten_json(e) for e in events]}

    body: dict[str, Any] = {"runs": ids, "all": every}
    if note is not None:
        body["note"] = note
    result = _act(config, local, "POST", f"/api/v1/hosts/{name}/forget", body)
    if as_json:
        _print_json(result)
        return
    forgotten = result.get("forgotten") or []
    if not forgotten:
        _print(escape(f"host {name} waits for no run: nothing to forget"))
        return
    for f in forgotten:
        _print(
            escape(
                f"run {f.get('run_id')} (task {f.get('task_id')}, {f.get('task_status')}) "
                f"on host {name} forgotten: bosun no longer tries to stop it"
            )
        )
    _print(
        escape(
            f"host {name} takes new work again at its next health check, unless it waits "
            f"for other runs (`bosun hosts waiting {name}`)"
        )
    )


@hosts_app.command("trust")
def hosts_trust(
    name: str,
    fingerprint: Annotated[
        str | None,
        typer.Option(
            help="Trust the key only if it has this fingerprint (SHA256:...), as the host's "
            "administrator told you."
        ),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            help="The host's key changed (reinstalled host): replace the key bosun recorded."
        ),
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch an SSH host's key, show its fingerprint and add it to bosun's known_hosts
    (<state_dir>/known_hosts). A key that differs from a recorded one is refused unless
    --replace."""
    from bosun import cli

    cli.require_local("hosts trust", "records a host key in the known_hosts of this machine")
    settings = cli._settings(config)

    async def go() -> dict[str, Any]:
        from bosun.providers import ssh
        from bosun.service import Service

        async with await Service.open(settings) as svc:
            host = await svc._hosts().registry.get(name)
        if host.kind != "ssh":
            raise InputError(
                f"host {name} is a {host.kind} host: it has no SSH host key",
                'trust applies to kind = "ssh" hosts only',
            )
        key = await ssh.fetch_host_key(host.config, name=name)
        if fingerprint is not None and fingerprint.strip() != key.fingerprint:
            raise InputError(
                f"host {name} offers {key.key_type} key {key.fingerprint}, not {fingerprint}",
                "nothing was trusted; check the fingerprint with the host's administrator",
            )
        key = await ssh.trust_host_key(
            host.config, str(settings.state_dir), replace=replace, name=name
        )
        where = settings.state_dir / "known_hosts"
        return {
            "host": name,
            "key_type": key.key_type,
            "fingerprint": key.fingerprint,
            "known_hosts": str(where),
        }

    done = _run(go)
    if as_json:
        _print_json(done)
        return
    _print(
        escape(
            f"host {name}: {done['key_type']} key {done['fingerprint']}\n"
            f"trusted: added to {done['known_hosts']}"
        )
    )
    sys.stdout.flush()
