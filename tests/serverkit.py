"""Helpers for tests of the HTTP API: an app over a real SQLite store with tokens, an
in-process client (httpx.ASGITransport), and a real uvicorn server on 127.0.0.1.

Use from a test module::

    from tests.serverkit import Api, api, live_url  # fixtures
    from tests.store_fixtures import migrated_db  # the template database

``api`` gives an ``Api``: ``.app``, ``.store``, ``.settings``, ``.admin`` (an admin
token's secret), ``.agent`` (an agent token's secret, identity ``worker-1``, capabilities
``echo``), ``.client`` (in-process, admin token set) and ``.headers(secret)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from bosun.config import Settings
from bosun.server.app import create_app
from bosun.server.run import ApiServer, listen, url_of
from bosun.store import open_store
from bosun.store.sql import SqlStore
from tests.conftest import SettingsFactory

BASE = "http://bosun.test"


@dataclass
class Api:
    app: FastAPI
    store: SqlStore
    settings: Settings
    admin: str
    agent: str
    client: httpx.AsyncClient

    @staticmethod
    def headers(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    def anon(self) -> httpx.AsyncClient:
        """An in-process client without a token (close it)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=BASE)


@pytest.fixture
async def api(
    make_settings: SettingsFactory, migrated_db: Path, tmp_path: Path
) -> AsyncIterator[Api]:
    settings = make_settings(agents={"echo": {"command": ["sh", "-c", "cat > NOTES.md"]}})
    db = tmp_path / "api" / "bosun.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(migrated_db, db)
    store = await open_store(f"sqlite:///{db}", poll_interval=0.05)
    app = create_app(settings, store)
    try:
        _, admin = await store.create_token("admin", "admin")
        _, agent = await store.create_token(
            "worker-1", "agent", agent="worker-1", capabilities=["echo"]
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE, headers=Api.headers(admin)
        ) as client:
            yield Api(app, store, settings, admin, agent, client)
    finally:
        app.state.stopping.set()
        await store.aclose()


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` on a real uvicorn on 127.0.0.1 (a free port), in this event loop; yields the
    base URL and stops the server (and its open streams) on exit."""
    sock = listen("127.0.0.1", 0)
    server = ApiServer(
        uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        waiter = asyncio.create_task(server.listening.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        assert server.started, "uvicorn did not start"
        yield url_of(sock)
    finally:
        app.state.stopping.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def live_url(api: Api) -> AsyncIterator[str]:
    """The ``api`` app on a real uvicorn; the base URL."""
    async with serving(api.app) as url:
        yield url
