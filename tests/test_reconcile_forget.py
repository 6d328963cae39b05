"""A reconcile and an operator's ``bosun hosts forget`` of the same run at the same time.

The reconcile (``Fleet.reconcile``) reads the runs a host waits for, stops each one, then
records it stopped. An operator who forgets one of them meanwhile (``forget_runs``: the
run's ``ref["forgotten"]``, a ``run.forgotten`` event) must keep that record: the
reconcile's record of the stop must not overwrite it, nor add a ``run.stray_killed``
event for a run the operator took over.

The race is made deterministic: the provider's handle of each run forgets it (through
the store, as ``bosun hosts forget`` does) while the reconcile is stopping it, between
the reconcile's read of the waiting runs and its record of the stop. A real SQLite store;
a local provider whose ``attach`` hands out such handles (no process runs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bosun.hosts.health import Fleet
from bosun.models import Event, RunStatus
from bosun.providers.base import OutputChunk, RunHandle
from bosun.providers.local import LocalProvider
from bosun.store import SqlStore
from bosun.store.base import HostStore
from tests.conftest import SettingsFactory
from tests.contract_hosts import Waiting, seed_waiting
from tests.store_fixtures import db_path, migrated_db, store, used_db_path

__all__ = ["db_path", "migrated_db", "store", "used_db_path"]

#: What a handle does while it stops its run (given the run's reference).
OnStop = Callable[[dict[str, Any]], Awaitable[None]]


class Stopping:
    """A run that is alive until it is cancelled; ``on_stop`` runs during the cancel."""

    def __init__(self, ref: dict[str, Any], on_stop: OnStop) -> None:
        self._ref = ref
        self._on_stop = on_stop
        self._alive = True

    @property
    def ref(self) -> dict[str, Any]:
        return dict(self._ref)

    @property
    def run_dir(self) -> str:
        return str(self._ref["run_dir"])

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        return []

    async def exit_code(self) -> int | None:
        return None if self._alive else 143

    async def alive(self) -> bool:
        return self._alive

    async def cancel(self, grace: float = 5.0) -> None:
        await self._on_stop(self.ref)
        self._alive = False


class Host(LocalProvider):
    """A local provider whose runs are ``Stopping`` handles."""

    def __init__(self, root: str, on_stop: OnStop) -> None:
        super().__init__("h1", root)
        self.stopped: list[str] = []
        self._on_stop = on_stop

    async def attach(self, ref: Any) -> RunHandle:
        async def stop(ref: dict[str, Any]) -> None:
            self.stopped.append(str(ref["run_dir"]))
            await self._on_stop(ref)

        return Stopping(dict(ref), stop)


def _hs(store: SqlStore) -> HostStore:
    assert isinstance(store, HostStore)
    return store


async def _reconcile(
    store: SqlStore, make_settings: SettingsFactory, root: str, on_stop: OnStop
) -> tuple[Fleet, Host, int]:
    host = Host(root, on_stop)
    settings = make_settings(hosts={"h1": {"kind": "local"}})
    fleet = Fleet(
        settings,
        store,
        {"h1": host},
        factory=None,
        on_provider=lambda name, provider: None,
        cancel_grace=0.1,
    )
    await fleet.scan()
    assert fleet.unreconciled == {"h1"}
    killed = await fleet.reconcile("h1")
    return fleet, host, killed


async def _kinds(store: SqlStore, run_id: int) -> list[str]:
    return [e.kind for e in await store.events_since(0) if e.run_id == run_id]


async def _forgotten(store: SqlStore) -> list[Event]:
    return [e for e in await store.events_since(0) if e.kind == "run.forgotten"]


async def test_a_run_forgotten_while_the_reconcile_stops_it_stays_forgotten(
    store: SqlStore, make_settings: SettingsFactory, tmp_path: Any
) -> None:
    w: Waiting = await seed_waiting(store)
    by_dir = {"/runs/a": w.abandoned.id, "/runs/p": w.pending.id}

    async def operator_forgets(ref: dict[str, Any]) -> None:
        await _hs(store).forget_runs("h1", [by_dir[ref["run_dir"]]], by="ops", note="by hand")

    fleet, host, killed = await _reconcile(store, make_settings, str(tmp_path), operator_forgets)
    assert host.stopped == ["/runs/a", "/runs/p"]  # both were alive, and stopped
    assert killed == 2
    assert fleet.unreconciled == set()  # the host takes work again

    gave_up = await store.get_run(w.abandoned.id)
    assert gave_up.status is RunStatus.LOST
    assert gave_up.ref["abandoned"] == "forgotten"  # not "reconciled"
    assert gave_up.ref["forgotten"]["by"] == "ops"
    assert gave_up.ref["forgotten"]["note"] == "by hand"
    pending = await store.get_run(w.pending.id)
    assert pending.status is RunStatus.LOST  # as the operator left it, not "cancelled"
    assert pending.ref["forgotten"]["by"] == "ops"
    assert pending.error is not None and pending.error.startswith("forgotten by ops")
    assert pending.exit_code is None
    # the operator's events, and no "stray killed" for the runs the operator took over
    assert await _kinds(store, w.abandoned.id) == ["run.forgotten"]
    assert "run.stray_killed" not in await _kinds(store, w.pending.id)
    assert [e.run_id for e in await _forgotten(store)] == [w.abandoned.id, w.pending.id]
    assert await _hs(store).waiting_runs("h1") == []


async def test_without_a_forget_the_reconcile_records_each_stop(
    store: SqlStore, make_settings: SettingsFactory, tmp_path: Any
) -> None:
    """The same reconcile, nobody forgetting anything: each run recorded stopped."""
    w: Waiting = await seed_waiting(store)

    async def nothing(ref: dict[str, Any]) -> None:
        return None

    fleet, host, killed = await _reconcile(store, make_settings, str(tmp_path), nothing)
    assert host.stopped == ["/runs/a", "/runs/p"] and killed == 2
    assert fleet.unreconciled == set()
    gave_up = await store.get_run(w.abandoned.id)
    assert gave_up.ref["abandoned"] == "reconciled" and "forgotten" not in gave_up.ref
    pending = await store.get_run(w.pending.id)
    assert pending.status is RunStatus.CANCELLED and pending.exit_code == 143
    assert pending.error == "cancelled by a user" and pending.ended_at is not None
    assert await _kinds(store, w.abandoned.id) == ["run.stray_killed"]
    assert (await _kinds(store, w.pending.id))[-1] == "run.stray_killed"
    stray = [e for e in await store.events_since(0) if e.kind == "run.stray_killed"]
    assert [(e.run_id, e.data["host"]) for e in stray] == [
        (w.abandoned.id, "h1"),
        (w.pending.id, "h1"),
    ]
    assert "its task was queued to be retried" in stray[0].data["reason"]
    assert await _forgotten(store) == []
    assert await _hs(store).waiting_runs("h1") == []
