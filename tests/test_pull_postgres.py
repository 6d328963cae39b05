"""The pull protocol's store contract (``tests/contract_pull.py``) on PostgreSQL, where
dequeue takes its candidates with FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

import pytest

from tests.contract_pull import PullContract
from tests.pg import pg_database, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.store_fixtures import pg_peer_store, pg_store  # noqa: F401 (fixtures)

pytestmark = pytest.mark.postgres


class TestPostgresPullContract(PullContract):
    """Every rule of the PullStore protocol, on PostgreSQL."""
