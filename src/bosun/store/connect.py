"""Opening a store: database URL -> configured async engine -> migrated schema -> SqlStore.

SQLite is set up for several bosun processes on one file:

- WAL journal, so readers never block the writer and the writer never blocks readers;
- ``busy_timeout`` of 10 s, so a writer waits for another process's write lock instead of
  failing at once;
- ``foreign_keys=ON`` and ``synchronous=NORMAL`` (durable at each WAL checkpoint, and no
  corruption on power loss: the usual pairing with WAL);
- the driver's own transaction handling is switched off and bosun emits ``BEGIN`` itself:
  ``BEGIN IMMEDIATE`` for writes (connections with the ``WRITE_OPTION`` execution option),
  so a write transaction holds the write lock from its first statement and concurrent
  claimers serialise instead of failing on a lock upgrade; plain ``BEGIN`` for reads of
  several statements, and none for a single SELECT (``SINGLE_READ_OPTION``).
- SQLAlchemy reaches aiosqlite through ``bosun.store.sqlite_driver``: one trip to the
  driver's thread per statement (the stock adapter makes three or four), none for a
  COMMIT or ROLLBACK with no transaction open.

PostgreSQL (``postgresql://``, ``postgres://`` or ``postgresql+asyncpg://`` URLs, all run
through asyncpg) needs none of that: its transactions are READ COMMITTED, and what SQLite's
single writer gave for free is done with locks (see ``bosun.store.dialects``). The engine
checks a pooled connection before handing it out (``pool_pre_ping``), so a restarted
server costs nothing but a reconnect; a connection attempt gives up after
``CONNECT_TIMEOUT`` seconds. Migrations run under an advisory lock, so replicas starting
together upgrade the schema once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util.concurrency import await_

from bosun.errors import StoreError
from bosun.store import sqlite_driver
from bosun.store.dialects import (
    CONNECT_TIMEOUT,
    NUMERIC_CONNECT_ARGS,
    SERVER_SETTINGS,
    coerce_connect_args,
    describe_postgres_error,
    ops_for,
)
from bosun.store.sql import SqlStore
from bosun.store.sql_base import SINGLE_READ_OPTION, WRITE_OPTION

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The newest revision in MIGRATIONS_DIR (a test keeps the two in step). A database already
#: there is opened without importing alembic, which saves a CLI call a quarter second.
HEAD_REVISION = "0004"
BUSY_TIMEOUT_MS = sqlite_driver.BUSY_TIMEOUT_MS
_URL_HINT = (
    "use a URL like sqlite:///path/to/bosun.db (in bosun.toml, a relative path is relative "
    "to the directory of bosun.toml) or postgresql://user:password@host:5432/dbname"
)
#: The URL schemes of PostgreSQL that bosun accepts; all of them run through asyncpg.
_POSTGRES_DRIVERS = ("postgresql", "postgres", "postgresql+asyncpg")
#: Pool of each PostgreSQL engine: the dispatcher's runs write and read concurrently.
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 10

_PRAGMAS = (
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode = WAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = NORMAL",
)
#: Waits (s) before trying a pragma again that found a new database locked (the WAL switch).
_WAL_RETRIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


async def open_store(url: str, *, poll_interval: float = 0.25) -> SqlStore:
    """Open (creating it if needed) the database at ``url``, apply pending migrations and
    return the store. ``StoreError`` says what was wrong with the URL or the database."""
    parsed = parse_url(url)
    engine = postgres_engine(parsed) if parsed.get_backend_name() == "postgresql" else None
    engine = engine or sqlite_engine(parsed)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine, poll_interval=poll_interval)


def parse_url(url: str) -> URL:
    """Check a database URL and translate it for the async driver; create the parent
    directory of a SQLite file."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        scheme = url.split("://", 1)[0] if "://" in url else url[:20]
        raise StoreError(f"cannot parse the database URL (starting {scheme!r})", _URL_HINT) from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        return _postgres_url(parsed, shown)
    if parsed.get_backend_name() != "sqlite":
        raise StoreError(
            f"database URL {shown}: {parsed.get_backend_name()} is not supported yet", _URL_HINT
        )
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername != "sqlite+aiosqlite":
        raise StoreError(
            f"database URL {shown}: driver {parsed.drivername} is not supported", _URL_HINT
        )
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise StoreError(
            f"database URL {shown}: an in-memory database cannot be shared between "
            "bosun's connections and processes",
            f"{_URL_HINT}; a file in a temporary directory is fine for throwaway use",
        )
    path = Path(database).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the directory {path.parent} for the database: {exc.strerror}",
            "choose a path in a writable directory",
        ) from exc
    return parsed.set(database=str(path))


def _postgres_url(parsed: URL, shown: str) -> URL:
    if parsed.drivername not in _POSTGRES_DRIVERS:
        raise StoreError(
            f"database URL {shown}: driver {parsed.drivername} is not supported",
            "bosun talks to PostgreSQL through asyncpg: write postgresql://... "
            "(or postgresql+asyncpg://...)",
        )
    if not parsed.database:
        raise StoreError(
            f"database URL {shown} names no database",
            "add the database name: postgresql://user@host:5432/dbname "
            "(create it first with `createdb dbname`)",
        )
    for name in NUMERIC_CONNECT_ARGS:
        text = parsed.query.get(name)
        try:
            value = float(text if isinstance(text, str) else "nan") if text is not None else 1.0
        except ValueError:
            value = -1.0
        if not value > 0:
            raise StoreError(
                f"database URL {shown}: {name} must be a positive number of seconds",
                f"write e.g. ?{name}=30 (once)",
            )
    return parsed.set(drivername="postgresql+asyncpg")


def postgres_engine(url: URL) -> AsyncEngine:
    """An async engine on PostgreSQL through asyncpg, with bosun's pool settings."""
    connect_args: dict[str, Any] = {"server_settings": dict(SERVER_SETTINGS)}
    if "timeout" not in url.query:
        connect_args["timeout"] = CONNECT_TIMEOUT
    engine = create_async_engine(
        url,
        json_serializer=functools.partial(json.dumps, allow_nan=False),
        pool_pre_ping=True,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_MAX_OVERFLOW,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "do_connect", _on_pg_connect)
    return engine


def _on_pg_connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    coerce_connect_args(cparams)  # ?timeout=30 arrives as text; asyncpg wants a number


def sqlite_engine(url: URL) -> AsyncEngine:
    """An async engine on a SQLite file with bosun's pragmas and BEGIN handling."""
    engine = create_async_engine(
        url,
        module=sqlite_driver.dbapi(),  # one trip to aiosqlite's thread per statement
        json_serializer=functools.partial(json.dumps, allow_nan=False),
        # a write transaction's statements run on the event loop's thread (sqlite_driver)
        connect_args={"check_same_thread": False},
    )
    event.listen(engine.sync_engine, "connect", _on_connect)
    event.listen(engine.sync_engine, "begin", _on_begin)
    return engine


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Stop the sqlite3 driver from issuing its own BEGIN (it would be deferred, and it
    # skips SELECTs); _on_begin emits the right one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _PRAGMAS:
            for wait in (*_WAL_RETRIES, None):
                try:
                    cursor.execute(pragma)
                    break
                except sqlite3.OperationalError as exc:
                    # Turning a new database to WAL needs it to itself; SQLite does not
                    # wait for that when connections opening at once would deadlock.
                    if wait is None or "locked" not in str(exc):
                        raise
                    await_(asyncio.sleep(wait))
    finally:
        cursor.close()


def _on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get(WRITE_OPTION, False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif not options.get(SINGLE_READ_OPTION, False):
        conn.exec_driver_sql("BEGIN")
    # else: one SELECT in autocommit mode is its own consistent snapshot; skipping BEGIN
    # saves round trips to the driver's thread.


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration for bosun's packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _schema_version(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _upgrade(conn: Connection) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

    try:
        command.upgrade(alembic_config(conn), "head")
    except CommandError as exc:
        raise StoreError(
            f"the database {conn.engine.url.database} has a schema this bosun does not know: {exc}",
            "it was probably written by a newer bosun; upgrade bosun",
        ) from exc


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision, in one write transaction."""
    if engine.dialect.name == "postgresql":
        await _migrate_postgres(engine)
        return
    try:
        async with engine.connect() as conn:
            if await conn.run_sync(_schema_version) == HEAD_REVISION:
                return
        async with engine.connect() as conn:
            await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                await conn.run_sync(_upgrade)
    except DBAPIError as exc:
        detail = str(exc.orig) if exc.orig is not None else str(exc)
        raise StoreError(
            f"cannot open the database {engine.url.database}: {detail}",
            "check that the path is a bosun SQLite database (or does not exist yet) and "
            "that its directory is writable",
        ) from exc


async def _migrate_postgres(engine: AsyncEngine) -> None:
    """PostgreSQL: the check and the upgrade, under an advisory lock (DDL is transactional
    there, so the whole upgrade is one transaction too). Connection errors, a missing
    database and failed authentication become ``StoreError``s saying what to do."""
    try:
        async with engine.connect() as conn:
            if await conn.run_sync(_schema_version) == HEAD_REVISION:
                return
        async with engine.connect() as conn, conn.begin():
            # A second process opening the database at the same moment waits here, then
            # finds the schema at head (alembic re-reads alembic_version after the lock).
            await ops_for(engine).lock_for_migration(conn)
            await conn.run_sync(_upgrade)
    except (DBAPIError, OSError, TimeoutError) as exc:
        raise describe_postgres_error(exc, engine.url, "open") from exc
