"""The host registry contract on SQLite (the same fixtures as the store contract), and the
number of statements the host listing costs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from bosun.hosts.manage import HostManager
from bosun.store import SqlStore
from tests.conftest import SettingsFactory
from tests.contract_hosts import HostStoreContract, seed_waiting
from tests.store_fixtures import db_path, migrated_db, peer_store, store, used_db_path

__all__ = ["db_path", "migrated_db", "peer_store", "store", "used_db_path"]


class TestSqliteHostStoreContract(HostStoreContract):
    """Every rule of the HostStore protocol, on a SQLite file."""


@contextmanager
def statements(store: SqlStore) -> Iterator[list[str]]:
    """The SQL statements ``store`` runs meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


async def test_the_host_listing_counts_every_hosts_waiting_runs_in_one_statement(
    store: SqlStore, make_settings: SettingsFactory
) -> None:
    """``bosun hosts`` shows how many runs each host waits for: one read of the runs for
    all the hosts, and none of the events (``waiting_runs`` reads, for each run whose
    cancel could not stop it, since when it waits)."""
    await seed_waiting(store, "local", "box")
    await seed_waiting(store, "box", "far")
    hosts = {name: {"kind": "local"} for name in ("local", "box", "far", "idle")}
    manager = HostManager(make_settings(hosts=hosts), store, lambda settings: {})
    with statements(store) as seen:
        infos = await manager.infos()
    assert {i.name: i.waiting for i in infos} == {"local": 2, "box": 3, "far": 1, "idle": 0}
    assert len([s for s in seen if "FROM runs" in s]) == 1, seen
    assert not [s for s in seen if "FROM events" in s], seen
