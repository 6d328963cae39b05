"""The pull protocol's store contract on SQLite (``tests/contract_pull.py``), plus the
dispatcher's side: it never adopts a pull agent's task and takes expired leases back."""

from __future__ import annotations

from datetime import timedelta

from bosun.dispatcher import Dispatcher
from bosun.models import ExecutionMode, TaskSpec, TaskStatus
from bosun.service import make_providers
from bosun.store import SqlStore, open_store
from bosun.store.base import PullStore
from tests.conftest import SettingsFactory
from tests.contract_pull import PullContract, utcnow
from tests.store_fixtures import db_path, migrated_db, peer_store, store, used_db_path

__all__ = ["db_path", "migrated_db", "peer_store", "store", "used_db_path"]


class TestSqlitePullContract(PullContract):
    """Every rule of the PullStore protocol, on a SQLite file."""


def _as_pull_store(store: SqlStore) -> PullStore:
    return store  # mypy checks here that SqlStore implements the protocol


async def test_sql_store_is_a_pull_store(store: SqlStore) -> None:
    assert isinstance(_as_pull_store(store), PullStore)


async def test_the_dispatcher_neither_runs_nor_adopts_pull_tasks(
    make_settings: SettingsFactory,
) -> None:
    """A dispatcher in burst mode leaves a queued pull task alone, never adopts a running
    one (its lease owner is no process of this machine) and takes it back once the lease
    has expired; a dispatch task next to it runs as usual."""
    settings = make_settings(limits={"max_concurrent": 1})
    store = await open_store(settings.database_url, poll_interval=0.05)
    try:
        pull = await store.add_task(
            TaskSpec(title="pulled", agent="echo", execution_mode=ExecutionMode.HTTP_PULL),
            max_attempts=3,
        )
        held = await store.add_task(
            TaskSpec(title="held", agent="echo", execution_mode=ExecutionMode.HTTP_PULL),
            max_attempts=3,
        )
        local = await store.add_task(TaskSpec(title="local", agent="echo"), max_attempts=3)
        taken = await store.dequeue("w1", ["echo"], lease_seconds=600, now=utcnow())
        assert taken is not None and taken.id == pull.id
        # The running pull task takes no slot of max_concurrent = 1.
        await Dispatcher(settings, store, make_providers(settings)).run(burst=True)
        assert (await store.get_task(local.id)).status is TaskStatus.COMPLETED
        assert (await store.get_task(held.id)).status is TaskStatus.QUEUED
        now = await store.get_task(pull.id)
        assert (now.status, now.lease_owner) == (TaskStatus.RUNNING, taken.lease_owner)
        assert [r.host for r in await store.list_runs(pull.id)] == ["pull:w1"]
        # Expired: the dispatcher's recovery takes it back (to the queue, not to itself).
        await store.update_task(pull.id, lease_expires_at=utcnow() - timedelta(seconds=1))
        await Dispatcher(settings, store, make_providers(settings)).recover()
        back = await store.get_task(pull.id)
        assert (back.status, back.lease_owner) == (TaskStatus.QUEUED, None)
        assert [r.host for r in await store.list_runs(pull.id)] == ["pull:w1"]
    finally:
        await store.aclose()
