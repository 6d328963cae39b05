"""PostgreSQL for tests: a throwaway database per test module (or per test), dropped
afterwards even when the test failed.

The server is the one on 127.0.0.1:5432 (user ``postgres``, trust authentication), or the
maintenance URL in ``BOSUN_TEST_POSTGRES``. When it cannot be reached the tests skip with
the reason, except when the environment variable ``CI`` is set: then they fail, so a CI
run never passes by skipping every PostgreSQL test.

Use in a test module (every PostgreSQL test is marked ``postgres``: the suite runs those
outside the loopback-only network namespace)::

    from tests.pg import pg_database, pg_server, pg_url, fresh_pg_database  # noqa: F401
    pytestmark = pytest.mark.postgres

- ``pg_server``: the maintenance URL (session; skips or fails when unreachable);
- ``fresh_pg_database``: a factory of new, empty databases (no schema), dropped at the
  end of the test;
- ``pg_database``: the URL of a database migrated by ``open_store``, one per module;
- ``pg_url``: ``pg_database`` emptied for this test (every table truncated, ids restarted).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bosun.store import open_store

__all__ = [
    "ADMIN_URL",
    "FreshDatabase",
    "fresh_pg_database",
    "pg_database",
    "pg_server",
    "pg_url",
    "run_sync",
    "truncate_all",
]

#: The maintenance database's URL (the ``postgres`` database: CREATE/DROP DATABASE).
ADMIN_URL = os.environ.get("BOSUN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Prefix of every database the tests create.
PREFIX = "bosun_test_"

FreshDatabase = Callable[[], str]
T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end on an event loop of its own, in a thread of its own: a
    sync fixture must not touch the event loop pytest-asyncio keeps for the tests."""
    result: list[T] = []
    error: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=main, name="pg-admin")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def database_url(name: str) -> str:
    """The URL of database ``name`` on the test server, as a user writes it."""
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> str:
    """Create an empty database with a random name; returns its name."""
    name = PREFIX + secrets.token_hex(6)
    run_sync(lambda: _admin(f'CREATE DATABASE "{name}"'))
    return name


def drop_database(name: str) -> None:
    """Drop ``name``, disconnecting whoever is still connected (a store a failed test
    did not close, a killed child's connection)."""
    assert name.startswith(PREFIX)
    run_sync(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _unreachable() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
        await conn.close()

    try:
        run_sync(probe)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        shown = make_url(ADMIN_URL).render_as_string(hide_password=True)
        return f"PostgreSQL is not reachable at {shown}: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The maintenance URL; skips (fails when ``CI`` is set) when nobody answers there."""
    reason = _unreachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so PostgreSQL tests must run)")
        pytest.skip(f"{reason} (set BOSUN_TEST_POSTGRES to another maintenance URL)")
    return ADMIN_URL


@pytest.fixture
def fresh_pg_database(pg_server: str) -> Iterator[FreshDatabase]:
    """Make new empty databases (no schema yet): call it for each one's URL."""
    made: list[str] = []

    def make() -> str:
        name = create_database()
        made.append(name)
        return database_url(name)

    try:
        yield make
    finally:
        for name in made:
            drop_database(name)


@pytest.fixture(scope="module")
def pg_database(pg_server: str) -> Iterator[str]:
    """A database migrated by ``open_store``, shared by the tests of one module."""
    name = create_database()
    try:
        url = database_url(name)

        async def migrate() -> None:
            await (await open_store(url)).aclose()

        run_sync(migrate)
        yield url
    finally:
        drop_database(name)


def truncate_all(url: str) -> None:
    """Empty every table but ``alembic_version`` and restart the id sequences."""

    async def run() -> None:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            names = await conn.fetch(
                "SELECT quote_ident(tablename) AS name FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
            if names:
                tables = ", ".join(row["name"] for row in names)
                await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    run_sync(run)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """``pg_database``, empty for this test."""
    truncate_all(pg_database)
    return pg_database
