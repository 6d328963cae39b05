"""The review loop's rows (``ForgeStore``, ``tests/contract_forge.py``) on SQLite; the
same contract runs on PostgreSQL in tests/test_store_postgres.py."""

from __future__ import annotations

from tests.contract_forge import ForgeStoreContract
from tests.store_fixtures import db_path, migrated_db, peer_store, store, used_db_path

__all__ = ["db_path", "migrated_db", "peer_store", "store", "used_db_path"]


class TestSqliteForgeStore(ForgeStoreContract):
    """Every rule of the ForgeStore protocol, on a SQLite file."""
