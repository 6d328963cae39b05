"""The token contract on SQLite (the same fixtures as the store contract)."""

from __future__ import annotations

from tests.contract_tokens import TokenContract
from tests.store_fixtures import db_path, migrated_db, peer_store, store, used_db_path

__all__ = ["db_path", "migrated_db", "peer_store", "store", "used_db_path"]


class TestSqliteTokenContract(TokenContract):
    """Every rule of the TokenStore protocol, on a SQLite file."""
