"""Store fixtures shared by the test modules: ``store`` and ``peer_store`` on SQLite (a
copy of a migrated template database) or on PostgreSQL (``tests.pg``).

Use in a test module (pytest finds a fixture by the name it is imported under)::

    from tests.store_fixtures import migrated_db  # the template database only
    from tests.store_fixtures import db_path, migrated_db, peer_store, store, used_db_path
    from tests.store_fixtures import pg_peer_store, pg_store  # `store`, `peer_store` on PG

- ``migrated_db``: a database file freshly created by ``open_store`` (so: fully
  migrated), made once per session;
- ``db_path``: where a test's SQLite database lives (it does not exist yet);
- ``used_db_path``: ``db_path``, holding a copy of ``migrated_db``;
- ``store``: a store on ``used_db_path`` (or, imported as ``pg_store``, on ``pg_url``);
- ``peer_store``: a second engine on the same database, as another process would open it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from bosun.store import SqlStore, open_store
from bosun.store.connect import alembic_config
from bosun.store.sql_base import WRITE_OPTION

__all__ = [
    "ADD_TASK_SCRIPT",
    "db_path",
    "migrate_to",
    "migrated_db",
    "opened_store",
    "peer_store",
    "pg_peer_store",
    "pg_store",
    "store",
    "used_db_path",
]

#: A child process (``python -c ADD_TASK_SCRIPT URL``) that adds one task to the store at
#: URL: a write by another process.
ADD_TASK_SCRIPT = """
import asyncio, sys
from bosun.models import TaskSpec
from bosun.store import open_store

async def main() -> None:
    store = await open_store(sys.argv[1])
    await store.add_task(TaskSpec(title="from another process"), max_attempts=1)
    await store.aclose()

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[SqlStore]:
    """A store on ``url`` (polling every 50 ms), closed on the way out."""
    opened = await open_store(url, poll_interval=0.05)
    try:
        yield opened
    finally:
        await opened.aclose()


async def migrate_to(store: SqlStore, revision: str) -> None:
    """Upgrade (``head``) or downgrade (a revision id) ``store``'s schema with alembic, in
    one write transaction, as ``bosun.store.connect.migrate`` does."""
    from alembic import command

    def move(conn: Connection) -> None:
        config = alembic_config(conn)
        if revision == "head":
            command.upgrade(config, "head")
        else:
            command.downgrade(config, revision)

    async with store.engine.connect() as conn:
        await conn.execution_options(**{WRITE_OPTION: True})
        async with conn.begin():
            await conn.run_sync(move)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file freshly created by ``open_store`` (so: fully migrated), made once;
    the tests each start from a copy of it, which is much faster than migrating."""
    path = tmp_path_factory.mktemp("template") / "bosun.db"

    async def create() -> None:
        await (await open_store(f"sqlite:///{path}")).aclose()

    asyncio.run(create())
    return path


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's database lives; it does not exist yet."""
    return tmp_path / "state" / "bosun.db"


@pytest.fixture
def used_db_path(db_path: Path, migrated_db: Path) -> Path:
    """``db_path``, holding an empty, migrated database."""
    db_path.parent.mkdir(parents=True)
    shutil.copyfile(migrated_db, db_path)
    return db_path


@pytest.fixture
async def store(used_db_path: Path) -> AsyncIterator[SqlStore]:
    async with opened_store(f"sqlite:///{used_db_path}") as opened:
        yield opened


@pytest.fixture
async def peer_store(used_db_path: Path, store: SqlStore) -> AsyncIterator[SqlStore]:
    """A second engine on the same file: to SQLite, another process."""
    async with opened_store(f"sqlite+aiosqlite:///{used_db_path}") as opened:
        yield opened


@pytest.fixture(name="store")
async def pg_store(pg_url: str) -> AsyncIterator[SqlStore]:
    async with opened_store(pg_url) as opened:
        yield opened


@pytest.fixture(name="peer_store")
async def pg_peer_store(pg_url: str, store: SqlStore) -> AsyncIterator[SqlStore]:
    """A second store on the same database: its own engine, pool and LISTEN connection,
    as another process would have."""
    async with opened_store(pg_url) as opened:
        yield opened
