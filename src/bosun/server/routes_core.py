"""Health checks and the agents list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bosun.errors import BosunError
from bosun.server.deps import AnyToken, SettingsDep, StoreDep
from bosun.server.errors import ERROR_RESPONSES, error_body, status_of
from bosun.service import agent_rows

router = APIRouter()

__all__ = ["router"]


@router.get("/healthz", tags=["health"], summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: the store answers",
    responses={503: {"description": "The store does not answer"}},
)
async def readyz(store: StoreDep) -> JSONResponse:
    try:
        await store.last_event_id()
    except BosunError as exc:
        _status, code = status_of(exc)
        body = error_body(code, exc.message, exc.hint)
        return JSONResponse({"status": "unavailable", **body}, status_code=503)
    except Exception:
        body = error_body("store_unavailable", "the store does not answer", "see the server log")
        return JSONResponse({"status": "unavailable", **body}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get(
    "/api/v1/agents",
    tags=["agents"],
    summary="Every configured agent (admin and agent tokens)",
    responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 403)},
)
async def list_agents(settings: SettingsDep, token: AnyToken) -> dict[str, Any]:
    return {"agents": agent_rows(settings)}
