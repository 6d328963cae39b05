"""FastAPI dependencies every router uses: the service, the store, the caller's token.

Routers declare what they need with the ``Annotated`` aliases below, e.g.::

    from bosun.server.deps import AdminToken, ServiceDep

    @router.get("/api/v1/things")
    async def things(svc: ServiceDep, token: AdminToken) -> dict[str, Any]: ...

``require_admin`` accepts admin tokens only; ``require_agent`` accepts agent tokens only
(a pull agent's identity: ``token.agent`` and ``token.capabilities``); ``require_token``
accepts either. A missing, unknown or revoked token is a 401, a token of the wrong kind
a 403 (both in the JSON error shape of ``bosun.server.errors``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bosun.config import Settings
from bosun.server.auth import authenticate, check_kind
from bosun.service import Service
from bosun.store.base import ApiToken
from bosun.store.sql import SqlStore

__all__ = [
    "AdminToken",
    "AgentToken",
    "AnyToken",
    "ServiceDep",
    "SettingsDep",
    "StoreDep",
    "bearer",
    "get_service",
    "get_settings",
    "get_store",
    "require_admin",
    "require_agent",
    "require_token",
]

#: The security scheme (shows as "HTTPBearer" in the OpenAPI document). ``auto_error`` is
#: off so a missing header gets bosun's own 401 body instead of FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="An API token: `bosun token create`.")


# These three are ``async def`` although they never wait: FastAPI runs a plain ``def``
# dependency in a worker thread, a hop to another thread and back on every request.


async def get_settings(request: Request) -> Settings:
    """The server's loaded ``bosun.toml``."""
    settings: Settings = request.app.state.settings
    return settings


def _store(request: Request) -> SqlStore:
    store: SqlStore = request.app.state.store
    return store


async def get_store(request: Request) -> SqlStore:
    """The server's store (one ``SqlStore``: tasks, runs, events, tokens, hosts, pulls)."""
    return _store(request)


async def get_service(request: Request) -> Service:
    """The ``Service`` facade over the server's settings and store."""
    service: Service = request.app.state.service
    return service


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def require_token(request: Request, credentials: Credentials) -> ApiToken:
    """Any live token (admin or agent); 401 when missing, unknown or revoked."""
    token = await authenticate(_store(request), credentials)
    request.state.token = token
    return token


async def require_admin(token: Annotated[ApiToken, Depends(require_token)]) -> ApiToken:
    """An admin token; an agent token gets 403."""
    check_kind(token, "admin")
    return token


async def require_agent(token: Annotated[ApiToken, Depends(require_token)]) -> ApiToken:
    """An agent token (``.agent`` is its identity, ``.capabilities`` the agents it may
    run); an admin token gets 403 (it has no pull-agent identity)."""
    check_kind(token, "agent")
    return token


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SqlStore, Depends(get_store)]
ServiceDep = Annotated[Service, Depends(get_service)]
AnyToken = Annotated[ApiToken, Depends(require_token)]
AdminToken = Annotated[ApiToken, Depends(require_admin)]
AgentToken = Annotated[ApiToken, Depends(require_agent)]
