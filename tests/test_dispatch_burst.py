"""``bosun run`` (``Dispatcher.run(burst=True)``) does not end before its hosts are
reconciled.

At start-up the dispatcher checks every host and reconciles each one that answers: what is
left of runs bosun gave up on while their host was unreachable (possibly while bosun was
stopped) is killed, so that no task runs twice. Start-up waits for that first round only
up to ``probe_timeout``; a burst with nothing else to do must still wait for the rest of it
(or ``_shutdown`` cancels it half-way and the stray run goes on), yet a host that never
answers must not keep it waiting for ever.

Real sshd hosts (``tests/sshd.py``), every packet to and from a host dropped with nftables
(``host.block()``), a real SQLite store, dispatchers in this process. The stray agent
ignores SIGTERM (an agent slow to stop), so stopping it takes ``cancel_grace`` seconds,
longer than start-up's wait for the first round: the reconcile is still going when the
burst runs out of work.
"""

from __future__ import annotations

import asyncio

import pytest

from bosun.dispatcher import Dispatcher
from bosun.models import RunStatus, TaskSpec, TaskStatus
from bosun.service import Service, make_providers
from bosun.store.base import HostStore
from tests.conftest import SettingsFactory
from tests.sshd import SshdFleet, SshHost
from tests.test_hosts_dispatch import _has_output, events, serving, settled, until

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_client_home")]

#: The first attempt runs until it is killed and ignores SIGTERM (so does ``sleep``, which
#: inherits the ignored signal); later attempts end at once.
AGENT = 'case "$0" in *attempt-1) trap "" TERM; echo started; exec sleep 300;; *) echo done;; esac'

#: Longer than start-up waits for the first round of checks (``probe_timeout``: 1 s here).
CANCEL_GRACE = 3

#: A guard against a hang only (the burst ends after a few seconds).
BURST_LIMIT = 90


def group_alive(host: SshHost, pgid: int) -> bool:
    return any(g == pgid for _pid, g, _argv in host.processes())


async def burst(svc: Service) -> None:
    """``bosun run`` as a new bosun process would: a fresh dispatcher, burst mode."""
    dispatcher = Dispatcher(svc.settings, svc.store, make_providers(svc.settings))
    await asyncio.wait_for(dispatcher.run(burst=True), BURST_LIMIT)


@pytest.mark.parametrize("retried", ["elsewhere_meanwhile", "in_the_burst"])
async def test_a_burst_kills_a_run_given_up_while_bosun_was_stopped_before_it_ends(
    sshd: SshdFleet, make_settings: SettingsFactory, retried: str
) -> None:
    """A run is given up while its host h1 does not answer; bosun stops; h1 comes back
    with the agent still running; ``bosun run`` kills it before it exits.

    ``elsewhere_meanwhile``: the task was retried on h2 and completed before bosun
    stopped, so the burst starts on an empty queue. ``in_the_burst``: h1 is the only host,
    so the task waits in the queue and its retry runs (and ends) in the burst, which must
    not exit with it while the stray is still being stopped."""
    hosts = sshd.start(2 if retried == "elsewhere_meanwhile" else 1)
    h1 = hosts[0]
    sshd.trust(*hosts)
    tables = {h.name: sshd.host_table(h, connect_timeout=3.0) for h in hosts}
    tables["h1"]["priority"] = 10  # the first attempt goes to h1
    settings = make_settings(
        agents={"slow": {"command": ["sh", "-c", AGENT, "{run_dir}"]}},
        hosts=tables,
        limits={"cancel_grace": CANCEL_GRACE},
    )
    async with await Service.open(settings) as svc:
        async with serving(svc):
            task = await svc.submit(TaskSpec(title="outlives its link", agent="slow"))
            await until(lambda: _has_output(svc, task.id, "started"))
            (first,) = await svc.runs(task.id)
            assert first.host == "h1"
            h1.block()
            if retried == "elsewhere_meanwhile":
                await until(lambda: settled(svc, task.id), timeout=60)
            else:

                async def waits_for_a_healthy_host() -> bool:
                    return any(e.task_id == task.id for e in await events(svc, "task.unplaceable"))

                await until(waits_for_a_healthy_host, timeout=60)
        # bosun is stopped; the abandoned agent still runs behind the dropped link
        pgid = int(first.ref["pgid"])
        assert group_alive(h1, pgid)
        before = await svc.runs(task.id)
        assert before[0].status is RunStatus.LOST and before[0].ref["abandoned"] is True
        queued = (await svc.get(task.id)).status
        assert queued is (
            TaskStatus.COMPLETED if retried == "elsewhere_meanwhile" else TaskStatus.QUEUED
        )
        h1.unblock()

        await burst(svc)

        alive = group_alive(h1, pgid)
        done = await svc.get(task.id)
        runs = await svc.runs(task.id)
        killed = [e for e in await events(svc, "run.stray_killed") if e.task_id == task.id]
        statuses = [e.data["to"] for e in await events(svc, "task.status") if e.task_id == task.id]
        lines = [e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output"]
    shown = [(r.host, r.attempt, r.status.value, r.ref.get("abandoned")) for r in runs]
    assert not alive, f"the abandoned run still runs on h1 after the burst ended: {shown}"
    (stray,) = killed
    assert stray.run_id == first.id and stray.data["host"] == "h1"
    assert "given up while the host was unreachable" in stray.data["reason"]
    # the reconcile's outcome is recorded, and the task ran to its end exactly once
    assert runs[0].id == first.id and runs[0].ref["abandoned"] == "reconciled", shown
    assert [(r.host, r.status) for r in runs] == [
        ("h1", RunStatus.LOST),
        ("h2" if retried == "elsewhere_meanwhile" else "h1", RunStatus.SUCCEEDED),
    ], shown
    assert done.status is TaskStatus.COMPLETED
    assert statuses.count("completed") == 1 and statuses[-1] == "completed", statuses
    assert lines == ["started", "done"]


async def test_a_burst_ends_although_a_host_never_answers(
    sshd: SshdFleet, make_settings: SettingsFactory
) -> None:
    """A host whose packets are all dropped fails its first check after its
    ``connect_timeout`` (plus at most two ``probe_timeout``), and the burst then ends: it
    waited for that check (the failure is recorded) but not for ever."""
    h1, h2 = sshd.start(2)
    sshd.trust(h1, h2)
    settings = make_settings(
        agents={"slow": {"command": ["sh", "-c", AGENT, "{run_dir}"]}},
        hosts={h.name: sshd.host_table(h, connect_timeout=2.0) for h in (h1, h2)},
    )
    h1.block()
    async with await Service.open(settings) as svc:
        await burst(svc)
        down = [e.data for e in await events(svc, "host.unhealthy")]
        store = svc.store
        assert isinstance(store, HostStore)
        hosts = {h.name: h for h in await store.list_hosts()}
    (h1_down,) = down
    assert h1_down["host"] == "h1" and h1_down["error"]
    assert hosts["h1"].health == "unhealthy" and hosts["h2"].health == "healthy"
