"""Server-Sent Events over the event log: a snapshot, then live events, resumable.

The event id is the cursor: ids are strictly increasing in commit order, so "every event
with an id greater than the last one sent" is exactly what a reader has not seen yet.

Each follower reads its snapshot itself, in pages of ``events_since`` from its own cursor.
The live part comes from a **shared tail** (``Tails``): one reader of the store per
process and stream (one per followed task, one for the all-events stream), started by the
first live follower and stopped when the last one leaves. The tail waits with
``store.wait_for_change(after=...)``, reads ``events_since`` from its position, formats
each event once and hands the text to every follower's bounded queue. It also tracks the
task's status from its ``task.status`` events, so "the task is final and everything was
sent" costs no read per follower.

Joining: a follower registers with the tail (getting the tail's position ``p`` at that
instant, with no await in between, so every event after ``p`` reaches its queue), reads
the gap ``(cursor, p]`` from the store itself if the tail was ahead, then consumes its
queue, skipping ids <= its cursor: no gap, no duplicate.

A follower whose queue holds more than ``MAX_BACKLOG`` characters (a client that does not
read) is dropped from the tail: it reads from the store by itself from its cursor, at the
pace it can send, and joins the tail again once it has caught up. It never blocks the
others and its memory is bounded.

Each event is::

    id: 42
    event: task.status
    data: {"id": 42, "task_id": 7, "run_id": null, "kind": "task.status", ...}

A comment line (``: keep-alive``) goes out after ``keepalive`` seconds without an event,
so proxies and clients see the connection is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from bosun.models import Event, TaskStatus
from bosun.store.base import Store

__all__ = ["FINAL", "MAX_BACKLOG", "PAGE", "Tail", "Tails", "event_stream", "format_event"]

log = logging.getLogger(__name__)

#: A task stream ends once its task is in one of these and every event was sent.
FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
_FINAL_VALUES = frozenset(s.value for s in FINAL)
PAGE = 500
#: Upper bound of one wait: a wake-up lost between a read and the wait costs at most this.
MAX_WAIT = 1.0
#: Client reconnection delay (milliseconds), sent once at the start.
RETRY_MS = 2000
#: Characters of SSE text a follower's queue may hold before it is dropped from the tail
#: (and reads from the store by itself until it has caught up).
MAX_BACKLOG = 4 * 1024 * 1024


def format_event(ev: Event) -> str:
    # JSON escapes newlines inside strings, so ``data`` is always one line.
    data = json.dumps(ev.to_json(), separators=(",", ":"), ensure_ascii=False)
    return f"id: {ev.id}\nevent: {_field(ev.kind)}\ndata: {data}\n\n"


def _field(value: str) -> str:
    """An SSE field value cannot hold a line break."""
    return value.replace("\r", " ").replace("\n", " ")


class _Piece:
    """One page read by a tail: its events' ids and SSE texts, formatted once."""

    __slots__ = ("first", "ids", "last", "text", "texts")

    def __init__(self, batch: Sequence[Event]) -> None:
        self.ids = [ev.id for ev in batch]
        self.texts = [format_event(ev) for ev in batch]
        self.first, self.last = self.ids[0], self.ids[-1]
        self.text = "".join(self.texts)

    def after(self, cursor: int) -> str:
        """The text of the events with an id greater than ``cursor``."""
        if self.first > cursor:
            return self.text
        return "".join(t for i, t in zip(self.ids, self.texts, strict=True) if i > cursor)


class _State(enum.Enum):
    LIVE = "live"
    DROPPED = "dropped"  # fell too far behind: read from the store by yourself
    ENDED = "ended"  # the task is final and every event was handed out
    FAILED = "failed"  # the tail's store read failed


class _Follower:
    """A follower's place in a tail: a bounded queue of pieces."""

    __slots__ = ("error", "pieces", "size", "start", "state", "wake")

    def __init__(self, start: int) -> None:
        self.start = start  # the tail's position when it joined
        self.pieces: deque[_Piece] = deque()
        self.size = 0
        self.state = _State.LIVE
        self.error: BaseException | None = None
        self.wake = asyncio.Event()

    def push(self, piece: _Piece) -> bool:
        """Queue ``piece``; False (and dropped) when that would exceed ``MAX_BACKLOG``."""
        if self.size + len(piece.text) > MAX_BACKLOG:
            self.stop(_State.DROPPED)
            return False
        self.pieces.append(piece)
        self.size += len(piece.text)
        self.wake.set()
        return True

    def stop(self, state: _State, error: BaseException | None = None) -> None:
        if state is _State.DROPPED:
            self.pieces.clear()
            self.size = 0
        self.state, self.error = state, error
        self.wake.set()

    def take(self) -> list[_Piece]:
        pieces = list(self.pieces)
        self.pieces.clear()
        self.size = 0
        return pieces


class Tail:
    """The one reader of one stream (a task's events, or all of them) in this process."""

    def __init__(self, tails: Tails, task_id: int | None, position: int) -> None:
        self.tails, self.task_id = tails, task_id
        #: Every event of the stream with an id <= position was handed out already.
        self.position = position
        self.followers: set[_Follower] = set()
        self.final = False
        self.job = asyncio.create_task(self._run(), name=f"sse-tail-{task_id}")

    async def _run(self) -> None:
        store = self.tails.store
        try:
            if self.task_id is not None:
                # Once per tail: later changes come as task.status events.
                self.final = (await store.get_task(self.task_id)).status in FINAL
            while self.followers:
                seen = await store.last_event_id()  # before the read: no lost wake-up
                batch = await store.events_since(self.position, task_id=self.task_id, limit=PAGE)
                if batch:
                    self._hand_out(batch)
                    if len(batch) == PAGE:
                        continue
                if self.final:
                    self._close(_State.ENDED)
                    return
                if not self.followers:
                    break
                await store.wait_for_change(MAX_WAIT, after=seen)
        except Exception as exc:  # the followers end with it, as a read of their own would
            log.warning("event stream reader of task %s failed: %s", self.task_id, exc)
            self._close(_State.FAILED, exc)
            return
        self._close(_State.ENDED)

    def _hand_out(self, batch: Sequence[Event]) -> None:
        """Synchronous, so a joiner sees either all of it queued or ``position`` after it."""
        piece = _Piece(batch)
        if self.task_id is not None:
            for ev in batch:
                if ev.kind == "task.status" and isinstance(ev.data.get("to"), str):
                    self.final = ev.data["to"] in _FINAL_VALUES
        self.position = piece.last
        for follower in list(self.followers):
            if not follower.push(piece):
                self.followers.discard(follower)
        if not self.followers:
            self.tails.forget(self)

    def _close(self, state: _State, error: BaseException | None = None) -> None:
        self.tails.forget(self)
        for follower in self.followers:
            follower.stop(state, error)
        self.followers.clear()


class Tails:
    """The shared tails of one store in this process, by task id (None: all events)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.running: dict[int | None, Tail] = {}
        self.jobs: set[asyncio.Task[None]] = set()  # every tail task not finished yet

    def join(self, task_id: int | None, cursor: int) -> _Follower:
        """Register a follower that has sent every event up to ``cursor``."""
        tail = self.running.get(task_id)
        if tail is None:
            tail = self.running[task_id] = Tail(self, task_id, cursor)
            self.jobs.add(tail.job)
            tail.job.add_done_callback(self.jobs.discard)
        follower = _Follower(tail.position)
        tail.followers.add(follower)
        return follower

    def leave(self, task_id: int | None, follower: _Follower) -> None:
        tail = self.running.get(task_id)
        if tail is not None and follower in tail.followers:
            tail.followers.discard(follower)
            if not tail.followers:
                # It ends at its next wake-up (within MAX_WAIT); a new follower starts
                # a new one.
                self.forget(tail)

    def forget(self, tail: Tail) -> None:
        if self.running.get(tail.task_id) is tail:
            del self.running[tail.task_id]

    def followers(self, task_id: int | None) -> int:
        tail = self.running.get(task_id)
        return len(tail.followers) if tail is not None else 0


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


async def event_stream(
    store: Store,
    *,
    cursor: int,
    task_id: int | None,
    follow: bool,
    keepalive: float = 15.0,
    stopping: asyncio.Event | None = None,
    tails: Tails | None = None,
) -> AsyncIterator[str]:
    """The SSE text of every event after ``cursor`` (of one task, or of all), then, with
    ``follow``, live events (from the shared tail of ``tails``) until the client goes
    away, the task is final, or ``stopping`` is set (the server shuts down; the client
    resumes elsewhere)."""
    yield f"retry: {RETRY_MS}\n\n"
    if not follow:
        end = await store.last_event_id()
        while True:  # the snapshot up to the newest event at the start
            batch = await store.events_since(cursor, task_id=task_id, limit=PAGE)
            page = [ev for ev in batch if ev.id <= end]
            if page:
                cursor = page[-1].id
                yield "".join(format_event(ev) for ev in page)
            if len(page) < PAGE:
                return
    if tails is None:
        tails = Tails(store)
    last_write = time.monotonic()
    while True:
        # Catch up from the store by ourselves (the snapshot; or after being dropped).
        while True:
            batch = await store.events_since(cursor, task_id=task_id, limit=PAGE)
            if batch:
                cursor = batch[-1].id
                last_write = time.monotonic()
                yield "".join(format_event(ev) for ev in batch)
            if len(batch) < PAGE:
                break
        if stopping is not None and stopping.is_set():
            return
        follower = tails.join(task_id, cursor)
        try:
            # The gap: events the tail had handed out before we joined.
            while cursor < follower.start:
                batch = await store.events_since(cursor, task_id=task_id, limit=PAGE)
                page = [ev for ev in batch if ev.id <= follower.start]
                if page:
                    cursor = page[-1].id
                    last_write = time.monotonic()
                    yield "".join(format_event(ev) for ev in page)
                if len(page) < PAGE:
                    break
            while True:
                if stopping is not None and stopping.is_set():
                    return
                if follower.pieces:
                    pieces = follower.take()  # in id order
                    text = "".join(piece.after(cursor) for piece in pieces)
                    cursor = max(cursor, pieces[-1].last)
                    if text:
                        last_write = time.monotonic()
                        yield text
                    continue
                if follower.state is _State.ENDED:
                    return
                if follower.state is _State.FAILED:
                    assert follower.error is not None
                    raise follower.error
                if follower.state is _State.DROPPED:
                    break  # catch up from the store, then join again
                idle = time.monotonic() - last_write
                if idle >= keepalive:
                    last_write = time.monotonic()
                    yield ": keep-alive\n\n"
                    continue
                follower.wake.clear()
                await _wait(follower.wake, max(0.01, min(MAX_WAIT, keepalive - idle)))
        finally:
            tails.leave(task_id, follower)
