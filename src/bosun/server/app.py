"""The FastAPI application: ``create_app(settings, store)``.

One app serves the whole API (see docs/server.md): health, tasks, events (SSE), agents,
and the routers of the pull protocol (``bosun.server.routes_pull``) and of the host
registry (``bosun.server.routes_hosts``) when those modules are present.
"""

from __future__ import annotations

import asyncio
import importlib
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, FastAPI

from bosun.config import Settings
from bosun.server.errors import install_error_handlers
from bosun.server.sse import Tails
from bosun.service import Service
from bosun.store.sql import SqlStore

__all__ = ["create_app"]

#: Routers other modules contribute, included when the module exists.
OPTIONAL_ROUTERS = (
    "bosun.server.routes_pull",
    "bosun.server.routes_hosts",
    "bosun.server.routes_webhooks",
)


def _version() -> str:
    try:
        return version("bosun")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def _optional_router(module: str) -> APIRouter | None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    router: APIRouter = mod.router
    return router


#: Seconds the API remembers an authenticated token (``SqlStore.cache_tokens``).
TOKEN_CACHE_SECONDS = 5.0


def create_app(settings: Settings, store: SqlStore) -> FastAPI:
    """The API over ``store`` (the caller opens and closes it)."""
    from bosun.server import routes_core, routes_events, routes_tasks

    app = FastAPI(
        title="bosun",
        version=_version(),
        description="Orchestrate AI coding agents over HTTP. Authenticate with "
        "`Authorization: Bearer <token>` (`bosun token create`).",
    )
    app.state.settings = settings
    app.state.store = store
    # Every request authenticates: remember a token for a few seconds instead of reading
    # it each time (a revoke through another process takes up to that long; docs/server.md).
    store.cache_tokens(TOKEN_CACHE_SECONDS)
    app.state.service = Service(settings, store)
    app.state.stopping = asyncio.Event()  # set by `bosun serve` on shutdown: streams end
    app.state.sse_keepalive = 15.0  # seconds between keep-alive comments of idle streams
    app.state.sse_tails = Tails(store)  # one store reader per followed stream (sse.py)
    install_error_handlers(app)
    app.include_router(routes_core.router)
    app.include_router(routes_tasks.router)
    app.include_router(routes_events.router)
    for module in OPTIONAL_ROUTERS:
        router = _optional_router(module)
        if router is not None:
            app.include_router(router)
    return app
