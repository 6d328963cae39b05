"""``bosun cancel`` of a task whose agent runs on a host that does not answer.

The task is cancelled at once (nothing is lost), and the answer says plainly that the agent
is not stopped yet and why: in the CLI's text, in its JSON, through the HTTP API and
through ``--server`` alike, with exit code 4. bosun then stops the agent once the host
answers again: the dispatcher that followed the run gives it up and reconciles the host
when it is back, and one started later reconciles it too.

Real sshd hosts (``tests/sshd.py``), every packet to and from a host dropped with nftables
(``host.block()``), a real SQLite store, the dispatcher in this process and the CLI as a
real ``python -m bosun`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from bosun.config import Settings, load_settings
from bosun.models import RunStatus, TaskSpec, TaskStatus
from bosun.server.app import create_app
from bosun.service import Service
from bosun.store.sql import SqlStore
from tests.conftest import FAST_LIMITS
from tests.serverkit import serving as api_serving
from tests.sshd import SshdFleet, SshHost
from tests.test_cli import BOSUN
from tests.test_fleet_faults import toml_text
from tests.test_hosts_dispatch import _has_output, events, serving, until

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_client_home")]

#: What ``bosun cancel`` exits with when an agent could not be stopped yet.
PENDING = 4


def write_config(cfg: Path, sshd: SshdFleet, host: SshHost) -> Settings:
    """``cfg/bosun.toml`` with one agent that runs until it is killed, on ``host``."""
    data: dict[str, Any] = {
        "agents": {"slow": {"command": ["sh", "-c", "echo started; exec sleep 300"]}},
        "hosts": {host.name: sshd.host_table(host, connect_timeout=2.0, max_concurrent=3)},
        "limits": FAST_LIMITS,
    }
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "bosun.toml").write_text(toml_text(data))
    return load_settings(cfg / "bosun.toml")


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``bosun ARGS`` as a process of its own (same network namespace, same HOME)."""
    return subprocess.run(
        [*BOSUN, *args],
        cwd=cfg,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml"), "COLUMNS": "300"},
        check=False,
    )


def group_alive(host: SshHost, pgid: int) -> bool:
    return any(g == pgid for _pid, g, _argv in host.processes())


def agents(host: SshHost) -> list[int]:
    """The pids of the agents (``sleep``) still running on ``host``."""
    return [pid for pid, _g, argv in host.processes() if argv[:1] == ["sleep"]]


async def started(svc: Service, *titles: str) -> list[tuple[int, int, int]]:
    """Submit one task per title; wait until each agent runs: (task id, run id, pgid)."""
    ids = [(await svc.submit(TaskSpec(title=t, agent="slow"))).id for t in titles]
    for task_id in ids:

        async def up(t: int = task_id) -> bool:
            return await _has_output(svc, t, "started")

        await until(up)
    found = []
    for task_id in ids:
        (run,) = await svc.runs(task_id)
        found.append((task_id, run.id, int(run.ref["pgid"])))
    return found


async def ended(svc: Service, task_id: int) -> bool:
    return all(r.ended_at is not None for r in await svc.runs(task_id))


async def stray_killed(svc: Service, task_id: int) -> bool:
    return any(e.task_id == task_id for e in await events(svc, "run.stray_killed"))


def pending_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    pending = answer["cancel_pending"]
    assert isinstance(pending, list)
    return pending


@pytest.mark.parametrize(("when", "form"), [("followed", "text"), ("nobody_follows", "json")])
async def test_cancel_on_an_unreachable_host_says_so_and_bosun_stops_the_agent_later(
    sshd: SshdFleet, tmp_path: Path, when: str, form: str
) -> None:
    """``followed``: a dispatcher follows the run when its host stops answering; it gives
    the run up and kills it once the host is back. ``nobody_follows``: no dispatcher runs
    while the host is away; the next one kills it."""
    (h1,) = sshd.start(1)
    sshd.trust(h1)
    cfg = tmp_path / "cfg"
    settings = write_config(cfg, sshd, h1)
    async with await Service.open(settings) as svc, contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serving(svc))
        ((task_id, run_id, pgid),) = await started(svc, "outlives its link")
        if when == "nobody_follows":
            await stack.aclose()  # a graceful stop: the agent goes on, followed by nobody
        h1.block()
        flags = ["--json"] if form == "json" else []
        done = await asyncio.to_thread(cli, cfg, "cancel", str(task_id), *flags)

        # the answer: cancelled, but the agent is not stopped, because h1 does not answer
        assert done.returncode == PENDING, done.stderr + done.stdout
        if form == "json":
            answer = json.loads(done.stdout)
            assert answer["id"] == task_id and answer["status"] == "cancelled"
            (pending,) = pending_of(answer)
            assert pending["run_id"] == run_id and pending["host"] == "h1"
            assert pending["unreachable"] is True and pending["will_retry"] is True
            assert "unreachable" in pending["error"]
        else:
            assert done.stdout == f"task {task_id} cancelled, but its agent is not stopped yet\n"
            assert f"the agent of run {run_id} on host h1 could not be stopped" in done.stderr
            assert "it is unreachable" in done.stderr
            assert "bosun stops it" in done.stderr and "when h1 answers again" in done.stderr
        # ... which is true: the task is cancelled in the store, its agent still runs
        assert (await svc.get(task_id)).status is TaskStatus.CANCELLED
        assert group_alive(h1, pgid)
        (event,) = [e for e in await svc.events(task_id) if e.kind == "run.cancel_pending"]
        assert event.run_id == run_id
        assert event.data["host"] == "h1" and event.data["unreachable"] is True

        if when == "followed":
            # the follower gives the run up (the host stays away past the limit) ...
            await until(lambda: ended(svc, task_id), timeout=60)
            assert group_alive(h1, pgid)
        h1.unblock()
        if when == "nobody_follows":
            await stack.enter_async_context(serving(svc))
        # ... and the host's reconciliation stops it once the host answers again (and
        # then says so: the run's end is recorded first)
        await until(lambda: stray_killed(svc, task_id), timeout=60)
        await stack.aclose()
        assert not group_alive(h1, pgid)
        task = await svc.get(task_id)
        runs = await svc.runs(task_id)
        killed = [e for e in await events(svc, "run.stray_killed") if e.task_id == task_id]
    assert task.status is TaskStatus.CANCELLED and task.attempt == 1  # not run again
    (run,) = runs
    if when == "followed":
        assert run.status is RunStatus.LOST and run.ref["abandoned"] == "reconciled"
    else:
        assert run.status is RunStatus.CANCELLED and run.error == "cancelled by a user"
    (stray,) = killed
    assert stray.data["host"] == "h1" and "cancelled" in stray.data["reason"]
    assert agents(h1) == []


async def test_the_api_and_a_remote_cli_say_the_same(sshd: SshdFleet, tmp_path: Path) -> None:
    """``POST /api/v1/tasks/{id}/cancel`` carries ``cancel_pending`` (empty when the agent
    was stopped), and ``bosun --server`` says what the local CLI says, with exit code 4."""
    (h1,) = sshd.start(1)
    sshd.trust(h1)
    cfg = tmp_path / "cfg"
    settings = write_config(cfg, sshd, h1)
    async with await Service.open(settings) as svc:
        async with serving(svc):
            runs = await started(svc, "reachable", "over http", "over the remote cli")
        (near, _, near_group), (far, far_run, far_group), (cli_task, cli_run, cli_group) = runs
        store = svc.store
        assert isinstance(store, SqlStore)
        _, token = await store.create_token("admin", "admin")
        app = create_app(settings, store)
        async with api_serving(app) as url:
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as http:
                stopped = await http.post(f"/api/v1/tasks/{near}/cancel")
                assert stopped.status_code == 200
                assert stopped.json()["status"] == "cancelled"
                assert pending_of(stopped.json()) == []
                assert not group_alive(h1, near_group)

                h1.block()
                answer = await http.post(f"/api/v1/tasks/{far}/cancel")
                assert answer.status_code == 200
                assert answer.json()["status"] == "cancelled"
                (pending,) = pending_of(answer.json())
                assert {k: v for k, v in pending.items() if k != "error"} == {
                    "run_id": far_run,
                    "host": "h1",
                    "unreachable": True,
                    "will_retry": True,
                }
                assert "unreachable" in pending["error"]

            remote = ["--server", url, "--token", token, "cancel", str(cli_task)]
            text = await asyncio.to_thread(cli, cfg, *remote)
        assert text.returncode == PENDING, text.stderr + text.stdout
        assert text.stdout == f"task {cli_task} cancelled, but its agent is not stopped yet\n"
        assert f"the agent of run {cli_run} on host h1 could not be stopped" in text.stderr
        assert "when h1 answers again" in text.stderr
        assert group_alive(h1, far_group) and group_alive(h1, cli_group)

        h1.unblock()
        async with serving(svc):  # a dispatcher reconciles h1: both agents are stopped
            await until(lambda: stray_killed(svc, far), timeout=60)
            await until(lambda: stray_killed(svc, cli_task), timeout=60)
        assert not (group_alive(h1, far_group) or group_alive(h1, cli_group))
        statuses = [(await svc.get(t)).status for t in (near, far, cli_task)]
        ends = [r.status for t in (near, far, cli_task) for r in await svc.runs(t)]
    assert statuses == [TaskStatus.CANCELLED] * 3
    assert ends == [RunStatus.CANCELLED] * 3
    assert agents(h1) == []
