"""``bosun agent``: run this machine as a pull agent of a bosun server.

See ``bosun.pull_worker`` for what it does and docs/pull-agents.md for how to use it.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bosun.errors import BosunError, ConfigError, InputError
from bosun.pull_worker import PullWorker, WorkerOptions

__all__ = ["agent_command"]

_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    _err.print(f"[dim]{stamp}[/] bosun agent: {escape(message)}")


def agent_command(
    server: Annotated[
        str,
        typer.Option(
            "--server",
            envvar="BOSUN_SERVER",
            help="Base URL of the bosun server, e.g. http://bosun.lan:8765.",
        ),
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar="BOSUN_TOKEN",
            help="An agent token (`bosun token create --agent NAME` on the server). "
            "Prefer the BOSUN_TOKEN variable: options show in the process list.",
            show_default=False,
        ),
    ],
    agents: Annotated[
        str | None,
        typer.Option(
            "--agents",
            metavar="NAMES",
            help="Agents to offer, comma-separated (default: every known agent whose "
            "program is installed here).",
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option(
            "--once", help="Run at most one task, then exit (0 also when none was available)."
        ),
    ] = False,
    state_dir: Annotated[
        Path,
        typer.Option(
            "--state-dir",
            help="Where the worker keeps its repository caches, worktrees, runs and "
            "undelivered receipts.",
        ),
    ] = Path("~/.bosun/agent"),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="A bosun.toml whose agents and limits tables this worker uses."
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option("--poll", min=0.1, help="Seconds between asks when there is no work."),
    ] = 2.0,
    stop_grace: Annotated[
        float,
        typer.Option(
            "--stop-grace",
            min=0.0,
            help="On SIGINT/SIGTERM: seconds to keep trying to hand in the last result "
            "(a second signal gives up at once; an undelivered result is sent at the next "
            "start).",
        ),
    ] = 10.0,
) -> None:
    """Take http_pull tasks from a bosun server and run them here, until SIGINT/SIGTERM."""
    try:
        offered = None
        if agents is not None:
            offered = tuple(a.strip() for a in agents.split(",") if a.strip())
            if not offered:
                raise InputError("--agents is empty", "name agents, e.g. --agents claude,codex")
        if not server.startswith(("http://", "https://")):
            raise ConfigError(
                f"--server {server!r} is not an http(s) URL",
                "give the server's base URL, e.g. --server http://127.0.0.1:8765",
            )
        if not token.strip():
            raise ConfigError("--token is empty", "give an agent token with --token or BOSUN_TOKEN")
        options = WorkerOptions(
            server=server,
            token=token.strip(),
            state_dir=state_dir.expanduser(),
            agents=offered,
            once=once,
            poll=poll,
            config=config,
            stop_grace=stop_grace,
        )
        asyncio.run(_main(options))
    except BosunError as exc:
        from bosun import cli

        cli._fail(exc)


async def _main(options: WorkerOptions) -> None:
    worker = PullWorker(options, _log)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    try:
        done = await worker.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    _log(f"stopped after {done} task(s)")
