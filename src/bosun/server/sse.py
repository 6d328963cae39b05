"""Server-Sent Events over the event log: a snapshot, then live events, resumable.

The event id is the cursor: ids are strictly increasing in commit order, so "every event
with an id greater than the last one sent" is exactly what a reader has not seen yet. The
snapshot is read in pages of ``events_since``; the live part waits with
``store.wait_for_change`` and reads ``events_since`` from the last id sent. The hand-over
is the same query as the snapshot, from the same cursor: no gap, no duplicate.

Each event is::

    id: 42
    event: task.status
    data: {"id": 42, "task_id": 7, "run_id": null, "kind": "task.status", ...}

A comment line (``: keep-alive``) goes out after ``keepalive`` seconds without an event,
so proxies and clients see the connection is alive.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from bosun.models import Event, TaskStatus
from bosun.store.base import Store

__all__ = ["FINAL", "PAGE", "event_stream", "format_event"]

#: A task stream ends once its task is in one of these and every event was sent.
FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
PAGE = 500
#: Upper bound of one wait: a wake-up lost between a read and the wait costs at most this.
MAX_WAIT = 1.0
#: Client reconnection delay (milliseconds), sent once at the start.
RETRY_MS = 2000


def format_event(ev: Event) -> str:
    # JSON escapes newlines inside strings, so ``data`` is always one line.
    data = json.dumps(ev.to_json(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {ev.id}\nevent: {_field(ev.kind)}\ndata: {data}\n\n"


def _field(value: str) -> str:
    """An SSE field value cannot hold a line break."""
    return value.replace("\r", " ").replace("\n", " ")


async def event_stream(
    store: Store,
    *,
    cursor: int,
    task_id: int | None,
    follow: bool,
    keepalive: float = 15.0,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[str]:
    """The SSE text of every event after ``cursor`` (of one task, or of all), then, with
    ``follow``, live events until the client goes away, the task is final, or
    ``stopping`` is set (the server shuts down; the client resumes elsewhere)."""
    yield f"retry: {RETRY_MS}\n\n"
    end = None if follow else await store.last_event_id()
    last_write = time.monotonic()
    while True:
        batch = await store.events_since(cursor, task_id=task_id, limit=PAGE)
        if end is not None:
            batch = [ev for ev in batch if ev.id <= end]
        if batch:
            chunk = "".join(format_event(ev) for ev in batch)
            cursor = batch[-1].id
            last_write = time.monotonic()
            yield chunk
            if len(batch) == PAGE:
                continue
        if end is not None:
            return  # ?follow=false: the snapshot up to the newest event at the start
        if task_id is not None and (await store.get_task(task_id)).status in FINAL:
            # Final: anything written before the status change is already readable.
            if not await store.events_since(cursor, task_id=task_id, limit=1):
                return
            continue
        if stopping is not None and stopping.is_set():
            return
        idle = time.monotonic() - last_write
        if idle >= keepalive:
            last_write = time.monotonic()
            yield ": keep-alive\n\n"
            idle = 0.0
        # Idle: note the newest event id, look once more, then wait for anything newer
        # (an event written between the read above and the wait still ends it at once).
        seen = await store.last_event_id()
        if await store.events_since(cursor, task_id=task_id, limit=1):
            continue
        await store.wait_for_change(max(0.01, min(MAX_WAIT, keepalive - idle)), after=seen)
