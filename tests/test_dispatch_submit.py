"""A submit in the process of a running dispatcher is claimed in its own transaction.

Real SQLite, real processes (the local provider). What is checked: the submit comes back
claimed by that dispatcher and runs; the caps still hold (a submit with no free slot stays
queued and runs once a slot frees); a task that cannot be claimed yet (dependencies) is
left to the dispatcher's own pass; a stopped dispatcher claims nothing on submit; a busy
one (as many slots taken as free) leaves a submit to its pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bosun.dispatcher import Dispatcher
from bosun.models import TaskSpec, TaskStatus
from bosun.service import Service, make_providers
from tests.conftest import SettingsFactory

S = TaskStatus


@asynccontextmanager
async def serving(svc: Service) -> AsyncIterator[Dispatcher]:
    """A dispatcher running (serve mode) on ``svc``'s store, started and ready."""
    dispatcher = Dispatcher(svc.settings, svc.store, make_providers(svc.settings))
    stop = asyncio.Event()
    job = asyncio.create_task(dispatcher.run(stop=stop))
    try:
        # ready once a submit is claimed by it (its start-up checks the hosts first)
        for _ in range(200):
            probe = await svc.submit(TaskSpec(title="ready?", agent="quick"))
            if probe.status is S.RUNNING:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the dispatcher never claimed a submit")
        await until(svc, probe.id, S.COMPLETED)
        async with asyncio.timeout(30):
            while dispatcher._active:  # its attempt settled: the dispatcher is idle
                await asyncio.sleep(0.01)
        yield dispatcher
    finally:
        stop.set()
        await asyncio.wait_for(job, 30)


async def until(svc: Service, task_id: int, status: TaskStatus) -> None:
    async with asyncio.timeout(30):
        while (await svc.get(task_id)).status is not status:
            await asyncio.sleep(0.02)


AGENTS = {
    "quick": {"command": ["true"]},
    "slow": {"command": ["sh", "-c", "sleep 30"]},
}


async def test_a_submit_is_claimed_by_the_running_dispatcher_and_runs(
    make_settings: SettingsFactory,
) -> None:
    async with await Service.open(make_settings(agents=AGENTS)) as svc, serving(svc) as d:
        task = await svc.submit(TaskSpec(title="now", agent="quick"))
        assert task.status is S.RUNNING and task.lease_owner == d.owner
        assert task.assigned_host == "local" and task.attempt == 1
        await until(svc, task.id, S.COMPLETED)
        kinds = [(e.kind, e.data.get("to")) for e in await svc.events(task.id)]
        assert kinds[:2] == [("task.submitted", None), ("task.status", "running")]
        assert ("run.started", None) in kinds
        assert [k for k in kinds if k == ("task.status", "running")] == [kinds[1]]


async def test_a_submit_without_a_free_slot_waits_for_one(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents=AGENTS, hosts={"local": {"kind": "local", "max_concurrent": 1}})
    async with await Service.open(settings) as svc, serving(svc):
        slow = await svc.submit(TaskSpec(title="slow", agent="slow"))
        assert slow.status is S.RUNNING
        waiting = await svc.submit(TaskSpec(title="waits", agent="quick"))
        assert waiting.status is S.QUEUED
        await asyncio.sleep(0.3)  # passes of the dispatcher: the host is still full
        assert (await svc.get(waiting.id)).status is S.QUEUED
        assert len([t for t in await svc.list_tasks() if t.status is S.RUNNING]) == 1
        await svc.cancel(slow.id)
        await until(svc, waiting.id, S.COMPLETED)


async def test_a_task_that_cannot_run_yet_is_left_to_the_dispatcher(
    make_settings: SettingsFactory,
) -> None:
    async with await Service.open(make_settings(agents=AGENTS)) as svc, serving(svc):
        first = await svc.submit(TaskSpec(title="slow", agent="slow"))
        after = await svc.submit(TaskSpec(title="after", agent="quick", depends_on=(first.id,)))
        assert after.status is S.BLOCKED
        await svc.cancel(first.id)
        await asyncio.sleep(0.3)
        assert (await svc.get(after.id)).status is S.BLOCKED


async def test_a_stopped_dispatcher_claims_nothing_on_submit(
    make_settings: SettingsFactory,
) -> None:
    async with await Service.open(make_settings(agents=AGENTS)) as svc:
        async with serving(svc):
            pass
        task = await svc.submit(TaskSpec(title="after stop", agent="quick"))
        assert task.status is S.QUEUED and task.lease_owner is None


async def test_a_busy_dispatcher_leaves_submits_to_its_pass(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(agents=AGENTS, hosts={"local": {"kind": "local", "max_concurrent": 3}})
    async with await Service.open(settings) as svc, serving(svc):
        first = await svc.submit(TaskSpec(title="slow 1", agent="slow"))
        second = await svc.submit(TaskSpec(title="slow 2", agent="slow"))
        third = await svc.submit(TaskSpec(title="slow 3", agent="slow"))
        assert first.status is S.RUNNING  # 0 taken, 3 free
        assert second.status is S.RUNNING  # 1 taken, 2 free
        assert third.status is S.QUEUED  # 2 taken, 1 free: the pass claims it
        await until(svc, third.id, S.RUNNING)
        for task in (first, second, third):
            await svc.cancel(task.id)
