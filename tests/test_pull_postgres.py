"""The pull protocol's store contract (``tests/contract_pull.py``) on PostgreSQL, where
dequeue takes its candidates with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bosun.store import SqlStore, open_store
from tests.contract_pull import PullContract
from tests.pg import fresh_pg_database, pg_database, pg_server, pg_url

__all__ = ["fresh_pg_database", "pg_database", "pg_server", "pg_url"]

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(pg_url, poll_interval=0.05)
    yield opened
    await opened.aclose()


@pytest.fixture
async def peer_store(pg_url: str, store: SqlStore) -> AsyncIterator[SqlStore]:
    """A second store on the same database, as another process would open it."""
    opened = await open_store(pg_url, poll_interval=0.05)
    yield opened
    await opened.aclose()


class TestPostgresPullContract(PullContract):
    """Every rule of the PullStore protocol, on PostgreSQL."""
