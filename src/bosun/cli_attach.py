"""``bosun attach TASK [--follow-only]``: the command line side of :mod:`bosun.attach`.

Registered in :mod:`bosun.cli` with ``app.command()(attach)``. Attaching replaces this
process with ``tmux attach-session`` (or ``ssh -t HOST tmux attach-session``), so the
terminal belongs to tmux until the user detaches (``Ctrl-b d``); following prints the
task's events as ``bosun logs -f`` does, until the task settles. Through a bosun server
(``--server``) the command follows only: the hosts' settings are where bosun.toml is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from bosun.attach import AttachPlan, close_all, plan_attach
from bosun.errors import ProviderError
from bosun.hosts.registry import Registry
from bosun.providers.base import Provider
from bosun.service import Service, make_providers
from bosun.store.base import HostStore

__all__ = ["attach"]


def attach(
    task_id: int,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="BOSUN_CONFIG", help="Path to bosun.toml."),
    ] = None,
    follow_only: Annotated[
        bool,
        typer.Option(
            "--follow-only", help="Do not attach to tmux: follow the output like `logs -f`."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Follow only, printing one JSON event per line.")
    ] = False,
) -> None:
    """Attach to a running task's tmux session (tmux mode), or follow its output live."""
    # cli imports this module to register the command: its helpers are imported late.
    from bosun.cli import _emit, _fail, _run, _settings, open_backend, remote

    backend = open_backend(config)
    settings = None if remote() is not None else _settings(config)
    tty = sys.stdin.isatty() and sys.stdout.isatty() and not as_json

    async def decide() -> AttachPlan:
        effective = settings
        async with await backend() as b:
            task = await b.get(task_id)
            runs = await b.runs(task_id)
            if isinstance(b, Service) and isinstance(b.store, HostStore) and settings:
                # hosts added with `bosun hosts add` live in the store, not in bosun.toml
                effective = await Registry(settings, b.store).effective_settings()
        providers: dict[str, Provider] = {} if effective is None else make_providers(effective)
        try:
            return await plan_attach(
                task,
                runs,
                hosts=None if effective is None else effective.hosts,
                providers=providers,
                follow_only=follow_only,
                tty=tty,
                agents_tmux=None
                if effective is None
                else {name: spec.tmux for name, spec in effective.agents.items()},
                state_dir="." if effective is None else str(effective.state_dir),
            )
        finally:
            await close_all(providers)

    plan = _run(decide)
    if plan.argv is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            # an argv list from plan_attach, never a shell string
            os.execv(plan.argv[0], list(plan.argv))  # noqa: S606
        except OSError as exc:
            _fail(
                ProviderError(
                    f"cannot run {plan.argv[0]}: {exc.strerror}",
                    "check the installation of tmux / ssh, or use --follow-only",
                )
            )
    if plan.note:
        sys.stderr.write(f"note: {plan.note}\n")
        sys.stderr.flush()

    async def follow() -> None:
        async with await backend() as b:
            async for ev in b.follow(task_id):
                _emit(ev, as_json)

    try:
        _run(follow)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
