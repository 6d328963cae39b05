"""Shared plumbing for the tests that run the real agent CLIs through bosun.

Every such test module sets ``pytestmark = pytest.mark.realcli`` and uses the fixtures
here (re-exported by ``tests/conftest.py``):

- ``loopback_only``: fails (in CI) or skips (elsewhere) unless this process runs in a
  network namespace whose only interface is ``lo`` — ``scripts/check`` runs pytest under
  ``unshare -n`` so that no CLI can reach anything but the fake model server;
- ``fake``: a ``FakeModelServer`` on 127.0.0.1, stopped after the test;
- ``cli_path``: puts the pinned CLIs (``scripts/install-agent-clis``) on PATH.

``run_task`` submits one task and dispatches it in burst mode, returning the final task
and its events, so each CLI's test reads as: script the fake, run, assert.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bosun.agents.parsers import parse_capture
from bosun.config import Settings
from bosun.dispatcher import Dispatcher
from bosun.models import Event, Outcome, Run, Task, TaskSpec
from bosun.providers.base import Command
from bosun.providers.local import LocalProvider
from bosun.service import Service, make_providers
from tests.agent_clis import bin_dir, in_ci, require_cli
from tests.fakes import FakeModelServer


def interfaces() -> list[str]:
    """Network interfaces of this process's namespace (``/sys`` may show the host's)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]


@pytest.fixture
def loopback_only() -> None:
    names = interfaces()
    if names != ["lo"]:
        message = (
            f"real agent CLIs run only in a loopback-only network namespace (here: {names}); "
            "run the suite through scripts/check, which uses `unshare -n`"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def fake(loopback_only: None) -> Iterator[FakeModelServer]:
    with FakeModelServer() as server:
        yield server


@pytest.fixture
def cli_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the installed CLIs first on PATH (bosun passes PATH through to agents)."""
    monkeypatch.setenv("PATH", f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}")


def need(name: str) -> None:
    """Fail (CI) or skip (elsewhere) when CLI ``name`` is not installed."""
    require_cli(name)


@dataclass(frozen=True)
class Finished:
    task: Task
    runs: list[Run]
    events: list[Event]

    def output(self, stream: str = "stdout") -> list[str]:
        return [
            str(e.data["line"])
            for e in self.events
            if e.kind == "run.output" and e.data["stream"] == stream
        ]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


async def run_task(settings: Settings, spec: TaskSpec, *, timeout: float = 180) -> Finished:
    """Submit ``spec`` and dispatch until nothing is runnable (burst mode)."""
    async with await Service.open(settings) as svc:
        task = await svc.submit(spec)
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        await asyncio.wait_for(dispatcher.run(burst=True), timeout)
        return Finished(await svc.get(task.id), await svc.runs(task.id), await svc.events(task.id))


async def run_more(settings: Settings, *, timeout: float = 180) -> None:
    """Dispatch again (burst) on the same database: e.g. after re-queueing a task."""
    async with await Service.open(settings) as svc:
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        await asyncio.wait_for(dispatcher.run(burst=True), timeout)


@dataclass(frozen=True)
class Resumed:
    command: Command
    exit_code: int | None
    stdout: str
    stderr: str
    outcome: Outcome


async def resume_in_place(
    settings: Settings, agent: str, first: Finished, prompt: str, *, timeout: float = 120
) -> Resumed:
    """Continue ``first``'s session the way bosun's rework run does: a new run directory
    whose HOME starts as a copy of the first run's (the CLIs keep sessions there), in the
    same worktree path (re-created: it was removed when the task completed)."""
    spec = settings.agents[agent]
    ref = first.runs[0].ref
    assert first.task.session_id, "the first run recorded no session id"
    provider = LocalProvider("local", str(settings.state_dir))
    try:
        run_dir = await provider.run_dir(f"resume-{first.task.id}")
        shutil.copytree(Path(ref["run_dir"]) / "home", Path(run_dir) / "home")
        Path(ref["workdir"]).mkdir(parents=True, exist_ok=True)
        command = spec.build(
            prompt=prompt,
            workdir=str(ref["workdir"]),
            run_dir=run_dir,
            session_id=first.task.session_id,
            environ=os.environ,
        )
        handle = await provider.launch(command, run_dir)
        try:
            async with asyncio.timeout(timeout):
                while await handle.exit_code() is None:
                    await asyncio.sleep(0.02)
        finally:
            await handle.cancel(0.5)  # a no-op once it has ended
    finally:
        await provider.aclose()
    code = await handle.exit_code()
    out, err = (Path(run_dir, name).read_text() for name in ("stdout", "stderr"))
    _, outcome = parse_capture(spec.parser, out, err, code)
    return Resumed(command, code, out, err, outcome)
