"""A host's reconciliation under faults: the host goes away again while it runs, and new
work waits for it.

When a host answers again after bosun gave up its runs (or at start-up), bosun stops
what is left of them there (``Fleet.reconcile``) so that no task runs twice:

- a host that stops answering in the middle of that must leave the run it was stopping
  as it was (given up, ``abandoned``), to be stopped the next time the host answers; only
  a run its provider finds gone may be taken as reconciled;
- a run that bosun could not stop when an attempt failed inside bosun is given up too,
  and stopped by its host's next reconciliation;
- the host gets no new work until its reconciliation is over, so a task's retry never
  starts there next to the old agent of the same task (at start-up, and when the host
  comes back while bosun serves);
- a run that cannot be stopped keeps its host waiting until an operator takes it over
  (``bosun hosts forget``): the host then takes work at its next check.

Real sshd hosts (``tests/sshd.py``), every packet to and from a host dropped with nftables
(``host.block()``), a real SQLite store, dispatchers in this process. The first attempt's
agent notes the SIGTERM it is sent (in a file of its run directory) and goes on, so that
stopping it takes ``cancel_grace`` seconds and ends with a SIGKILL. A retry's agent looks
on its host, when it starts, for live processes of the first attempt's process group (in
/proc, zombies not counted) and prints how many it found: what the host itself says about
the order of the old agent's death and the new run's start.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bosun.errors import ProviderError
from bosun.execution import Attempt
from bosun.models import ErrorKind, Event, Run, RunStatus, TaskSpec, TaskStatus
from bosun.providers.base import RunHandle
from bosun.providers.ssh_run import SshRun
from bosun.scheduler import Caps, HostSlot, plan
from bosun.service import Service
from tests.conftest import SettingsFactory
from tests.factories import make_task
from tests.sshd import SshdFleet, SshHost
from tests.test_dispatch_burst import burst, group_alive
from tests.test_hosts_dispatch import _has_output, events, serving, settled, until

#: ``$0`` is the run directory (``.../runs/task-N-attempt-K``). Attempt 1 writes ``got-term``
#: there on SIGTERM and runs on; a later attempt prints ``group PGID: N alive`` for the
#: process group of attempt 1 of the same task on the same host (PGID empty elsewhere).
#: (Braces are doubled: the command is a template of bosun's.)
AGENT = r"""case "$0" in
*-attempt-1)
  trap 'echo term >"$0/got-term"' TERM
  echo started
  while :; do sleep 0.1; done;;
*)
  old=$(cat "${{0%-attempt-*}}-attempt-1/pid" 2>/dev/null)
  n=0
  for f in /proc/[0-9]*/stat; do
    {{ read -r s <"$f"; }} 2>/dev/null || continue
    set -- ${{s##*) }}
    if [ -n "$old" ] && [ "$1" != Z ] && [ "$3" = "$old" ]; then n=$((n + 1)); fi
  done
  echo "group $old: $n alive";;
esac"""

#: Seconds the reconciliation waits between SIGTERM and SIGKILL: longer than start-up waits
#: for the first round of host checks (``probe_timeout``: 1 s here), and than a dropped
#: link takes to be noticed (keepalive 0.5 s x 2).
CANCEL_GRACE = 4

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_client_home")]


def tables(sshd: SshdFleet, hosts: list[SshHost]) -> dict[str, dict[str, Any]]:
    """Host tables with a dropped link noticed within about a second; h1 first choice."""
    found = {
        h.name: sshd.host_table(
            h, connect_timeout=3.0, keepalive_interval=0.5, keepalive_count_max=2
        )
        for h in hosts
    }
    found["h1"]["priority"] = 10
    return found


def _one_host(sshd: SshdFleet, make_settings: SettingsFactory) -> tuple[SshHost, Any]:
    """One host, h1, running ``AGENT`` as agent ``slow``."""
    (h1,) = sshd.start(1)
    sshd.trust(h1)
    settings = make_settings(
        agents={"slow": {"command": ["sh", "-c", AGENT, "{run_dir}"]}},
        hosts=tables(sshd, [h1]),
        limits={"cancel_grace": CANCEL_GRACE},
    )
    return h1, settings


async def for_task(svc: Service, kind: str, task_id: int) -> list[Event]:
    return [e for e in await events(svc, kind) if e.task_id == task_id]


async def went_down(svc: Service, host: str) -> int:
    """How often ``host`` was recorded unhealthy."""
    return sum(e.data["host"] == host for e in await events(svc, "host.unhealthy"))


async def exists(path: Path) -> bool:
    return path.exists()


async def test_a_host_lost_again_during_its_reconcile_keeps_the_run_for_the_next_one(
    sshd: SshdFleet, make_settings: SettingsFactory
) -> None:
    """h1 comes back, its reconciliation sends the abandoned agent SIGTERM and waits; h1
    drops every packet again before the agent is stopped. The run stays given up (not
    ``reconciled``: nothing was stopped) and the agent goes on; when h1 answers again, the
    next reconciliation kills it."""
    hosts = sshd.start(2)
    h1 = hosts[0]
    sshd.trust(*hosts)
    settings = make_settings(
        agents={"slow": {"command": ["sh", "-c", AGENT, "{run_dir}"]}},
        hosts=tables(sshd, hosts),
        limits={"cancel_grace": CANCEL_GRACE},
    )
    async with await Service.open(settings) as svc, serving(svc):
        task = await svc.submit(TaskSpec(title="outlives its link twice", agent="slow"))
        await until(lambda: _has_output(svc, task.id, "started"))
        (first,) = await svc.runs(task.id)
        assert first.host == "h1"
        pgid = int(first.ref["pgid"])
        h1.block()
        await until(lambda: settled(svc, task.id), timeout=60)  # retried on h2
        downs = await went_down(svc, "h1")
        h1.unblock()
        # h1 answers: its reconciliation sends SIGTERM (noted, ignored) and waits...
        await until(lambda: exists(Path(first.ref["run_dir"]) / "got-term"), timeout=60)
        h1.block()  # ...and h1 is gone again before the agent is stopped

        async def down_again() -> bool:
            return await went_down(svc, "h1") > downs

        await until(down_again, timeout=60)
        # the run stays given up (nothing was stopped), and its agent goes on
        (meanwhile, _retry) = await svc.runs(task.id)
        assert meanwhile.id == first.id and meanwhile.ref["abandoned"] is True, meanwhile.ref
        assert group_alive(h1, pgid)
        assert await for_task(svc, "run.stray_killed", task.id) == []
        h1.unblock()

        async def killed() -> bool:
            return bool(await for_task(svc, "run.stray_killed", task.id))

        await until(killed, timeout=60)
        alive_after = group_alive(h1, pgid)
        runs = await svc.runs(task.id)
        (stray,) = await for_task(svc, "run.stray_killed", task.id)
        done = await svc.get(task.id)
    # the next reconciliation stopped it: no process of its group is left on h1
    assert not alive_after
    assert runs[0].ref["abandoned"] == "reconciled"
    assert stray.run_id == first.id and stray.data["host"] == "h1"
    assert stray.data["reason"] == (
        "given up while the host was unreachable; its task was retried on host h2"
    )
    assert [(r.host, r.status) for r in runs] == [
        ("h1", RunStatus.LOST),
        ("h2", RunStatus.SUCCEEDED),
    ]
    assert done.status is TaskStatus.COMPLETED


async def _retry_ran_alone(
    svc: Service,
    task_id: int,
    pgid: int,
    *,
    before: tuple[str, ...] = ("started",),
    given_up: str = "while the host was unreachable",
) -> None:
    """The retry on h1 started after the first attempt's agent was gone: the retry found
    none of its processes on h1, and bosun recorded the kill before the retry's start.
    ``before``: the first attempt's output lines recorded; ``given_up``: why it was."""
    lines = [e.data["line"] for e in await svc.events(task_id) if e.kind == "run.output"]
    (stray,) = await for_task(svc, "run.stray_killed", task_id)
    (again,) = [
        e
        for e in await for_task(svc, "task.status", task_id)
        if e.data["to"] == "running" and e.data["attempt"] == 2
    ]
    runs = await svc.runs(task_id)
    shown = [(r.host, r.attempt, r.status.value, r.ref.get("abandoned")) for r in runs]
    assert lines == [*before, f"group {pgid}: 0 alive"], shown
    assert stray.id < again.id and again.data["host"] == "h1"
    assert stray.data["reason"] == f"given up {given_up}; its task was queued to be retried"
    assert [(r.host, r.status) for r in runs] == [
        ("h1", RunStatus.LOST),
        ("h1", RunStatus.SUCCEEDED),
    ], shown
    assert runs[0].ref["abandoned"] == "reconciled"
    assert (await svc.get(task_id)).status is TaskStatus.COMPLETED


async def test_a_retry_waits_at_start_up_until_its_host_is_reconciled(
    sshd: SshdFleet, make_settings: SettingsFactory
) -> None:
    """h1, the only host, drops every packet; the run there is given up and its task waits
    for a host; bosun stops; h1 answers again with the agent still running. The next
    ``bosun run`` must not start the retry on h1 before it has stopped that agent."""
    h1, settings = _one_host(sshd, make_settings)
    async with await Service.open(settings) as svc:
        async with serving(svc):
            task = await svc.submit(TaskSpec(title="outlives its link", agent="slow"))
            await until(lambda: _has_output(svc, task.id, "started"))
            (first,) = await svc.runs(task.id)
            h1.block()

            async def waits_for_a_healthy_host() -> bool:
                return bool(await for_task(svc, "task.unplaceable", task.id))

            await until(waits_for_a_healthy_host, timeout=60)
        pgid = int(first.ref["pgid"])
        assert group_alive(h1, pgid)
        assert (await svc.get(task.id)).status is TaskStatus.QUEUED
        h1.unblock()

        await burst(svc)

        assert not group_alive(h1, pgid)
        await _retry_ran_alone(svc, task.id, pgid)


async def test_a_retry_waits_until_a_host_that_came_back_is_reconciled(
    sshd: SshdFleet, make_settings: SettingsFactory
) -> None:
    """The same while bosun serves: h1 comes back, and its checks pass before its
    reconciliation has stopped the old agent; the waiting task must not start there
    before that is done."""
    h1, settings = _one_host(sshd, make_settings)
    async with await Service.open(settings) as svc, serving(svc):
        task = await svc.submit(TaskSpec(title="outlives its link", agent="slow"))
        await until(lambda: _has_output(svc, task.id, "started"))
        (first,) = await svc.runs(task.id)
        pgid = int(first.ref["pgid"])
        h1.block()

        async def waits_for_a_healthy_host() -> bool:
            return bool(await for_task(svc, "task.unplaceable", task.id))

        await until(waits_for_a_healthy_host, timeout=60)
        assert group_alive(h1, pgid)
        h1.unblock()

        async def both_ended() -> bool:
            killed = await for_task(svc, "run.stray_killed", task.id)
            return bool(killed) and await settled(svc, task.id)

        await until(both_ended, timeout=60)
        alive = group_alive(h1, pgid)
        await _retry_ran_alone(svc, task.id, pgid)
    assert not alive


class Faults:
    """Injected faults (bugs, as far as bosun can tell): attempt 1 fails inside bosun once
    its agent has said ``started``; stopping a run fails while ``refuse`` holds (the run
    directories refused are noted), although the host answers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, refuse: int) -> None:
        self.refuse = refuse  # how many stops fail from now on
        self.refused: list[str] = []
        follow = Attempt._follow_and_finish
        cancel = SshRun.cancel

        async def crash(attempt: Attempt, run: Run, handle: RunHandle | None, wt: Any) -> None:
            if attempt.task.attempt > 1:
                return await follow(attempt, run, handle, wt)
            await until(lambda: _says(Path(run.ref["run_dir"]) / "stdout", "started"))
            raise RuntimeError("a bug in bosun (injected)")

        async def refusing(run: SshRun, grace: float = 5.0) -> None:
            if len(self.refused) < self.refuse:
                self.refused.append(run.run_dir)
                raise ProviderError("could not signal the run (injected)")
            await cancel(run, grace)

        monkeypatch.setattr(Attempt, "_follow_and_finish", crash)
        monkeypatch.setattr(SshRun, "cancel", refusing)


async def _says(path: Path, line: str) -> bool:
    return path.exists() and line in path.read_text().splitlines()


async def _stopped_then_retried(svc: Service, h1: SshHost, task_id: int) -> None:
    """Wait until the stray is killed and the task settled; the retry ran alone on h1,
    the first run failed inside bosun (its output was never followed)."""

    async def both_ended() -> bool:
        killed = await for_task(svc, "run.stray_killed", task_id)
        return bool(killed) and await settled(svc, task_id)

    await until(both_ended, timeout=60)
    first = (await svc.runs(task_id))[0]
    pgid = int(first.ref["pgid"])
    assert not group_alive(h1, pgid)
    assert first.error_kind is ErrorKind.INTERNAL
    await _retry_ran_alone(svc, task_id, pgid, before=(), given_up="after an internal error")


async def test_a_run_not_stopped_after_an_internal_error_is_stopped_before_its_retry(
    sshd: SshdFleet, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt fails inside bosun while its agent runs on h1, the only host, and
    stopping that agent fails too although h1 answers. The run is given up, and h1 gets
    no new work until a reconcile (at its next check) has killed the agent: the task's
    retry must not start next to it."""
    h1, settings = _one_host(sshd, make_settings)
    faults = Faults(monkeypatch, refuse=1)
    async with await Service.open(settings) as svc, serving(svc):
        task = await svc.submit(TaskSpec(title="crashes, then its stop fails", agent="slow"))
        await _stopped_then_retried(svc, h1, task.id)
        (first, _) = await svc.runs(task.id)
        assert await events(svc, "host.reconcile_failed") == []
    assert faults.refused == [first.ref["run_dir"]]


async def test_a_run_that_cannot_be_stopped_is_said_once_and_its_host_waits(
    sshd: SshdFleet, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, but stopping the agent keeps failing: every check's reconcile of h1
    fails. ``host.reconcile_failed`` says so once, naming the run, and the task waits
    (no retry next to the agent); once the run can be stopped, the next reconcile kills
    it and the retry runs."""
    h1, settings = _one_host(sshd, make_settings)
    faults = Faults(monkeypatch, refuse=1_000)
    async with await Service.open(settings) as svc, serving(svc):
        task = await svc.submit(TaskSpec(title="cannot be stopped for a while", agent="slow"))

        async def refused_at_checks() -> bool:  # after the crash, and at three checks
            return len(faults.refused) >= 4

        await until(refused_at_checks)
        (first,) = await svc.runs(task.id)
        failed = await events(svc, "host.reconcile_failed")
        waiting = await svc.get(task.id)
        alive = group_alive(h1, int(first.ref["pgid"]))
        faults.refuse = 0
        await _stopped_then_retried(svc, h1, task.id)
    assert alive and waiting.status is TaskStatus.QUEUED
    assert [(e.task_id, e.data["host"]) for e in failed] == [(None, "h1")]
    error = failed[0].data["error"]
    assert error == (f"run {first.id} (task {task.id}): could not signal the run (injected)"), error
    assert "no new work" in failed[0].data["hint"]


async def test_a_run_the_operator_forgets_no_longer_keeps_its_host_waiting(
    sshd: SshdFleet, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run that cannot be stopped, and the operator takes it over (``bosun hosts
    forget``, here through the ``Service`` as the CLI does without a server). bosun stops
    trying to stop it, ``run.forgotten`` says who did it, and the waiting task runs on h1
    after the running dispatcher's next health check, without a restart. The agent the
    operator took over is left alone: the retry starts next to it."""
    h1, settings = _one_host(sshd, make_settings)
    faults = Faults(monkeypatch, refuse=1_000)
    async with await Service.open(settings) as svc, serving(svc):
        task = await svc.submit(TaskSpec(title="its old run is taken over", agent="slow"))

        async def said_and_waiting() -> bool:  # after the crash, and at a check
            return bool(await events(svc, "host.reconcile_failed")) and len(faults.refused) >= 2

        await until(said_and_waiting)
        (first,) = await svc.runs(task.id)
        pgid = int(first.ref["pgid"])
        try:
            waited = await svc.waiting_runs("h1")
            queued = await svc.get(task.id)
            forgotten = await svc.forget_runs(
                "h1", [first.id], by="ops", note="stuck in D state; reboot planned"
            )
            tries = len(faults.refused)
            await until(lambda: settled(svc, task.id), timeout=60)
            runs = await svc.runs(task.id)
            done = await svc.get(task.id)
            left = await svc.waiting_runs("h1")
            stored = await events(svc, "run.forgotten")
            killed = await events(svc, "run.stray_killed")
            lines = [e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output"]
            alive = group_alive(h1, pgid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)  # the operator's part
    assert [(w.run.id, w.why) for w in waited] == [(first.id, "abandoned")]
    assert queued.status is TaskStatus.QUEUED
    assert [e.id for e in stored] == [e.id for e in forgotten]
    (event,) = stored
    assert (event.task_id, event.run_id) == (task.id, first.id)
    assert {k: event.data[k] for k in ("run_id", "host", "why", "task_status", "by", "note")} == {
        "run_id": first.id,
        "host": "h1",
        "why": "abandoned",
        "task_status": "queued",
        "by": "ops",
        "note": "stuck in D state; reboot planned",
    }
    assert left == [] and killed == []
    assert [(r.host, r.attempt, r.status) for r in runs] == [
        ("h1", 1, RunStatus.LOST),
        ("h1", 2, RunStatus.SUCCEEDED),
    ]
    assert runs[0].ref["abandoned"] == "forgotten" and runs[0].ref["forgotten"]["by"] == "ops"
    assert done.status is TaskStatus.COMPLETED and done.assigned_host == "h1"
    # no stop was tried after the forget (but by a reconcile already under way then)
    assert len(faults.refused) <= tries + 1, faults.refused
    # the old agent was never stopped, and the retry found it running
    assert alive
    (line,) = lines
    assert line.startswith(f"group {pgid}: ") and line != f"group {pgid}: 0 alive", line


def test_a_host_being_reconciled_gets_no_new_task_and_the_task_waits() -> None:
    """The scheduler's side: a host still being reconciled takes no task, even one pinned
    there, and the task waits (it is not unplaceable: the host takes work once done)."""
    first = HostSlot("h1", 2, priority=10)  # preferred over h2 while it may take work
    second = HostSlot("h2", 2)
    busy = HostSlot("h1", 2, priority=10, reconciling=True)
    free = plan([make_task(1)], [], [first, second], Caps(10))
    assert [(p.task.id, p.host) for p in free.placements] == [(1, "h1")]
    anywhere = plan([make_task(1)], [], [busy, second], Caps(10))
    assert [(p.task.id, p.host) for p in anywhere.placements] == [(1, "h2")]
    pinned = plan([make_task(2, host="h1")], [], [busy, second], Caps(10))
    (skip,) = pinned.skipped
    assert not pinned.placements and skip.waiting
    assert skip.reason == (
        "every eligible host is at its max_concurrent or still being reconciled (h1)"
    )
