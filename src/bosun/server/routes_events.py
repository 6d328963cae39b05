"""``GET /api/v1/tasks/{id}/events`` and ``GET /api/v1/events``: Server-Sent Events.

See ``bosun.server.sse`` for the stream itself and docs/server.md for the semantics.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from bosun.errors import InputError
from bosun.server.deps import AdminToken, StoreDep
from bosun.server.errors import ERROR_RESPONSES
from bosun.server.routes_tasks import MAX_ID, TaskId
from bosun.server.sse import FINAL, Tails, event_stream

router = APIRouter(tags=["events"])

__all__ = ["router"]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "text/event-stream: `id: <event id>`, `event: <kind>`, "
        "`data: <event JSON>` for each event",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **{c: ERROR_RESPONSES[c] for c in (400, 401, 403, 422)},
}

After = Annotated[
    int | None,
    Query(ge=0, le=MAX_ID, description="Start after this event id (Last-Event-ID wins)"),
]
Follow = Annotated[
    bool, Query(description="false: end after the events written so far (no live part)")
]
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=40,
        description="The id of the last event received (sent by EventSource on reconnect)",
    ),
]


def _cursor(after: int | None, last_event_id: str | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
            raise InputError(
                f"Last-Event-ID {text[:40]!r} is not an event id",
                "send the id of the last event received (a non-negative integer), or omit it",
            )
        return int(text)
    return after or 0


def _stream(request: Request, store: StoreDep, **kwargs: Any) -> StreamingResponse:
    state = request.app.state
    tails: Tails | None = getattr(state, "sse_tails", None)
    if tails is None or tails.store is not store:
        # One shared reader per stream and process (bosun.server.sse.Tails).
        tails = state.sse_tails = Tails(store)
    return StreamingResponse(
        event_stream(
            store, keepalive=state.sse_keepalive, stopping=state.stopping, tails=tails, **kwargs
        ),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


@router.get(
    "/api/v1/tasks/{task_id}/events",
    summary="A task's events (SSE): everything so far, then live",
    response_class=StreamingResponse,
    responses={
        **_SSE_RESPONSES,
        204: {"description": "The task is final and every event was already sent"},
        404: ERROR_RESPONSES[404],
    },
)
async def task_events(
    request: Request,
    task_id: TaskId,
    store: StoreDep,
    token: AdminToken,
    after: After = None,
    follow: Follow = True,
    last_event_id: LastEventId = None,
) -> Response:
    cursor = _cursor(after, last_event_id)
    task = await store.get_task(task_id)  # 404 before the stream starts
    if (
        follow
        and task.status in FINAL
        and not await store.events_since(cursor, task_id=task_id, limit=1)
    ):
        # Nothing left and nothing will come: 204 also stops an EventSource reconnecting.
        return Response(status_code=204)
    return _stream(request, store, cursor=cursor, task_id=task_id, follow=follow)


@router.get(
    "/api/v1/events",
    summary="Every event (SSE): everything so far, then live",
    response_class=StreamingResponse,
    responses=_SSE_RESPONSES,
)
async def all_events(
    request: Request,
    store: StoreDep,
    token: AdminToken,
    after: After = None,
    follow: Follow = True,
    last_event_id: LastEventId = None,
) -> Response:
    return _stream(
        request, store, cursor=_cursor(after, last_event_id), task_id=None, follow=follow
    )
