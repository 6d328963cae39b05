"""Helpers for the review-loop tests: a ``Rig`` is a bosun API app (in-process, over a real
SQLite store) whose repo ``app`` has a forge, a ``FakeForge`` that is that forge (a real
HTTP server on 127.0.0.1) and a way to post signed webhooks to the app.

Use from a test module::

    from tests.forgekit import Rig, rig_for
    from tests.store_fixtures import migrated_db  # the template database

    @pytest.fixture
    async def rig(make_settings, migrated_db, tmp_path, monkeypatch, origin):
        async with rig_for("forgejo", make_settings, migrated_db, tmp_path, monkeypatch,
                           origin) as made:
            yield made
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bosun.config import Settings
from bosun.models import Task, TaskSpec, TaskStatus
from bosun.server.app import create_app
from bosun.store import open_store
from bosun.store.sql import SqlStore
from tests.conftest import SettingsFactory, git
from tests.fakes.forge import FakeForge
from tests.fakes.threaded_http import QuietHandler, ThreadedServer

__all__ = ["SECRET", "TOKEN", "Receiver", "Rig", "forge_table", "receiver", "rig_for"]

SECRET = "webhook-secret-for-tests"
TOKEN = "forge-token-for-tests"
TOKEN_ENV = "BOSUN_TEST_FORGE_TOKEN"
SECRET_ENV = "BOSUN_TEST_WEBHOOK_SECRET"
BASE = "http://bosun.test"


def forge_table(forge: FakeForge, **extra: Any) -> dict[str, Any]:
    """The ``[repos.app.forge]`` table for ``forge`` (secrets from the variables above)."""
    return {
        "kind": forge.kind,
        "api_url": forge.url,
        "repo": forge.repo,
        "token_env": TOKEN_ENV,
        "webhook_secret_env": SECRET_ENV,
        **extra,
    }


@dataclass
class Rig:
    settings: Settings
    store: SqlStore
    forge: FakeForge
    app: FastAPI
    client: httpx.AsyncClient
    origin: Path

    async def post(
        self,
        body: bytes,
        *,
        event: str,
        secret: str = SECRET,
        delivery: str | None = None,
        event_type: str | None = None,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``body`` as the forge would, signed with ``secret``."""
        sent = self.forge.signed_headers(
            body, secret, event=event, delivery=delivery, event_type=event_type
        )
        return await self.client.post(
            path or f"/api/v1/webhooks/{self.forge.kind}",
            content=body,
            headers={**sent, **(headers or {})},
        )

    async def task_with_pull(
        self, status: TaskStatus = TaskStatus.REVIEW_PENDING, title: str = "Add a greeting"
    ) -> Task:
        """A task of repo ``app`` in ``status`` whose branch (made in the origin, at its
        ``main``) has a pull request on the fake forge."""
        task = await self.store.add_task(TaskSpec(title=title, repo="app"), max_attempts=3)
        branch = f"task/{task.id}-{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}"
        git(self.origin, "branch", branch, "main")
        for step in (TaskStatus.RUNNING, TaskStatus.REVIEW_PENDING):
            task = await self.store.transition(task.id, step, reason="setup")
        with self.forge._lock:
            pr = self.forge._create_pull({"title": title, "head": branch, "base": "main"})[1]
        task = await self.store.update_task(
            task.id,
            branch=branch,
            pr_number=pr["number"],
            pr_url=pr["html_url"],
            pr_head_sha=pr["head"]["sha"],
            session_id="sess-1",
        )
        if status is TaskStatus.CANCELLED or status is TaskStatus.NEEDS_INPUT:
            task = await self.store.transition(task.id, status, reason="setup")
        elif status is not TaskStatus.REVIEW_PENDING:
            raise ValueError(f"set up {status} yourself")
        return task

    async def snapshot(self) -> tuple[list[dict[str, Any]], int, int]:
        """Everything a webhook could change: the tasks, the event count, deliveries."""
        tasks = [t.to_json() for t in await self.store.list_tasks()]
        for t in tasks:
            t.pop("updated_at")
        events = await self.store.last_event_id()
        return tasks, events, await self.store.count_deliveries()


@contextlib.asynccontextmanager
async def rig_for(
    kind: str,
    make_settings: SettingsFactory,
    migrated_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    origin: Path,
    **forge_extra: Any,
) -> AsyncIterator[Rig]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with FakeForge(kind, token=TOKEN, git_dir=origin) as forge:
        settings = make_settings(
            agents={"demo": {"timeout": 60}},
            repos={
                "app": {
                    "url": str(origin),
                    "default_branch": "main",
                    "forge": forge_table(forge, **forge_extra),
                }
            },
            server={"public_url": "https://bosun.example"},
        )
        db = Path(settings.database_url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_db, db)
        store = await open_store(settings.database_url, poll_interval=0.05)
        app = create_app(settings, store)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=BASE
            ) as client:
                yield Rig(settings, store, forge, app, client, origin)
        finally:
            app.state.stopping.set()
            await store.aclose()


# -- a receiver of outgoing notifications ------------------------------------------------------
@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 recording the POSTs it gets."""

    url: str = ""
    posts: list[tuple[dict[str, str], dict[str, Any], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answer these first, then 204
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with got.lock:
                got.posts.append(
                    ({k.lower(): v for k, v in self.headers.items()}, json.loads(raw), raw)
                )
                status = got.statuses.pop(0) if got.statuses else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with ThreadedServer(Handler, "notification-receiver") as server:
        got.url = f"http://127.0.0.1:{server.port}/hook"
        yield got
