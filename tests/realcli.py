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
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bosun.config import Settings
from bosun.dispatcher import Dispatcher
from bosun.models import Event, Run, Task, TaskSpec
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
    import os

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
