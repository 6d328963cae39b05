"""The shared tail of SSE streams (``bosun.server.sse.Tails``): one store reader per
process and stream, fanned out to every follower, with no gap and no duplicate when a
follower joins, a bounded queue per follower, and no reader left once nobody follows.

The fan-out tests run against a real uvicorn on 127.0.0.1; the join and stop tests drive
``event_stream`` directly, to place a join exactly where the tail is ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bosun.models import NewEvent, TaskSpec, TaskStatus
from bosun.server import sse
from bosun.server.sse import Tails, event_stream
from bosun.store.sql import SqlStore
from tests.serverkit import Api, api, live_url
from tests.store_fixtures import migrated_db
from tests.test_server_sse import follow, parse, peer

__all__ = ["api", "live_url", "migrated_db"]


def tails_of(api: Api) -> Tails:
    tails = getattr(api.app.state, "sse_tails", None)
    assert isinstance(tails, Tails), "no stream has joined a tail yet"
    return tails


async def until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def write_output(store: SqlStore, task_id: int, total: int, *, line: int = 20) -> None:
    """``total`` output events in batches as fast as the database takes them, then the
    task's cancellation (its last event)."""
    run = await store.add_run(task_id, attempt=1, host="local", agent="echo", ref={})
    written = 0
    while written < total:
        n = min(1 + written % 17, total - written)
        batch = [NewEvent("run.output", {"line": f"{written + i:0{line}d}"}) for i in range(n)]
        written += n
        await store.append_output(run.id, batch, stdout_offset=written, stderr_offset=0)
    await store.transition(task_id, TaskStatus.CANCELLED, reason="done writing")


async def test_many_followers_of_one_task_get_every_event_once_from_one_reader(
    api: Api, live_url: str
) -> None:
    task = await api.store.add_task(TaskSpec(title="busy"), max_attempts=3)
    path = f"/api/v1/tasks/{task.id}/events"
    n = 12
    async with httpx.AsyncClient(
        base_url=live_url, headers=api.headers(api.admin), timeout=30
    ) as client:
        started = [asyncio.Event() for _ in range(n)]
        # Half connect before the writer starts; half while it writes (they read their
        # snapshot themselves, then join the tail).
        early = [asyncio.create_task(follow(client, path, started=s)) for s in started[:6]]
        await until(lambda: tails_of(api).followers(task.id) == 6)
        # The writer is this process's store (as a running agent's output under `bosun
        # serve`): the tail is woken at once.
        start = await api.store.last_event_id()
        writing = asyncio.create_task(write_output(api.store, task.id, 3000))
        while await api.store.last_event_id() < start + 500:
            await asyncio.sleep(0.01)
        late = [asyncio.create_task(follow(client, path, started=s)) for s in started[6:]]
        # All n at once behind ONE tail while the writer is still writing.
        await until(lambda: tails_of(api).followers(task.id) == n or writing.done())
        joined_while_writing = not writing.done()
        got = await asyncio.wait_for(asyncio.gather(*early, *late), 60)
        await writing
    assert joined_while_writing
    expected = [e.id for e in await api.store.events_since(0, task_id=task.id, limit=100_000)]
    assert len(expected) == 3002  # submitted, 3000 lines, cancelled
    for events in got:
        assert [e.id for e in events] == expected
        assert events[-1].kind == "task.status" and events[-1].data["data"]["to"] == "cancelled"
    await until(lambda: not tails_of(api).jobs)  # the tail ended with the task


async def chunk(stream: AsyncIterator[str]) -> str:
    return await anext(stream)


async def close(stream: AsyncIterator[str]) -> None:
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()


async def _next(stream: AsyncIterator[str]) -> list[int]:
    """The event ids of the stream's next chunk (a keep-alive or retry: none)."""
    return [e.id for e in parse(await chunk(stream))]


async def test_a_follower_joining_while_the_tail_is_ahead_reads_the_gap_itself(
    api: Api,
) -> None:
    store = api.store
    task = await store.add_task(TaskSpec(title="t"), max_attempts=3)
    tails = Tails(store)

    def stream(cursor: int) -> AsyncIterator[str]:
        return event_stream(store, cursor=cursor, task_id=task.id, follow=True, tails=tails)

    async def write(n: int) -> list[int]:
        return [
            (await store.append_event(NewEvent("agent.text", {"n": i}, task_id=task.id))).id
            for i in range(n)
        ]

    first, a_ids = stream(0), []
    assert await _next(first) == []  # retry
    a_ids += await _next(first)  # its snapshot: task.submitted
    reading = asyncio.create_task(_next(first))  # joins the tail, waits
    await until(lambda: tails.followers(task.id) == 1)
    tail = tails.running[task.id]

    second = stream(0)
    assert await _next(second) == []
    b_ids = await _next(second)  # its snapshot, read by itself; it has not joined yet
    assert b_ids == a_ids
    # Now the tail moves past the second follower's cursor.
    written = await write(30)
    await until(lambda: tail.position == written[-1])
    a_ids += await reading
    # The second joins with a gap (its cursor < the tail's position): read from the store.
    while len(b_ids) < 1 + 30:
        b_ids += await _next(second)
    assert tails.followers(task.id) == 2
    # Both on the tail from here: more events, then the end.
    written += await write(20)
    await store.transition(task.id, TaskStatus.CANCELLED, reason="end")
    a_ids += [i async for chunk in first for i in [e.id for e in parse(chunk)]]
    b_ids += [i async for chunk in second for i in [e.id for e in parse(chunk)]]
    expected = [e.id for e in await store.events_since(0, task_id=task.id, limit=1000)]
    assert len(expected) == 1 + 50 + 1
    assert a_ids == expected
    assert b_ids == expected
    await asyncio.wait_for(asyncio.gather(*tails.jobs), 10)
    assert not tails.running


async def test_the_tail_stops_when_the_last_follower_leaves(api: Api) -> None:
    store = api.store
    task = await store.add_task(TaskSpec(title="t"), max_attempts=3)
    tails = Tails(store)
    streams = [
        event_stream(store, cursor=0, task_id=task.id, follow=True, tails=tails),
        event_stream(store, cursor=0, task_id=None, follow=True, tails=tails),
        event_stream(store, cursor=0, task_id=None, follow=True, tails=tails),
    ]
    for s in streams:
        await anext(s)  # retry
        await anext(s)  # the snapshot
    waiting = [asyncio.create_task(chunk(s)) for s in streams]
    await until(lambda: tails.followers(task.id) == 1 and tails.followers(None) == 2)
    assert len(tails.jobs) == 2  # one per stream, not one per follower
    event = await store.append_event(NewEvent("agent.text", {"x": 1}, task_id=task.id))
    for w in waiting:
        assert [e.id for e in parse(await w)] == [event.id]
    jobs = set(tails.jobs)
    # Leaving: a client going away closes its stream (cancelled at its wait, or closed).
    for s in streams[1:]:
        await close(s)
    assert tails.followers(None) == 0 and None not in tails.running
    pending = asyncio.create_task(chunk(streams[0]))
    await asyncio.sleep(0.05)
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    await close(streams[0])
    assert not tails.running
    await asyncio.wait_for(asyncio.gather(*jobs), 10)  # every reader ended
    assert not tails.jobs


@contextlib.asynccontextmanager
async def stuck_client(url: str, path: str, token: str) -> AsyncIterator[asyncio.StreamReader]:
    """A follower that sends its request and then reads nothing (a tiny receive buffer, so
    the server's writes block soon); yields the reader to read it all later."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        yield reader
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_chunked(reader: asyncio.StreamReader) -> str:
    """The body of a chunked HTTP/1.1 response, to its end."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    return body.decode()


async def test_a_stuck_follower_does_not_stop_the_others_and_catches_up_later(
    api: Api, live_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "MAX_BACKLOG", 64 * 1024)
    dropped: list[int] = []
    push = sse._Follower.push

    def counting_push(self: sse._Follower, piece: Any) -> bool:
        ok = push(self, piece)
        if not ok:
            dropped.append(piece.last)
        return ok

    monkeypatch.setattr(sse._Follower, "push", counting_push)
    task = await api.store.add_task(TaskSpec(title="busy"), max_attempts=3)
    path = f"/api/v1/tasks/{task.id}/events"
    async with (
        stuck_client(live_url, path, api.admin) as stuck,
        httpx.AsyncClient(base_url=live_url, headers=api.headers(api.admin), timeout=30) as c,
        peer(api) as writer_store,
    ):
        started = [asyncio.Event() for _ in range(3)]
        readers = [asyncio.create_task(follow(c, path, started=s)) for s in started]
        await until(lambda: tails_of(api).followers(task.id) == 4)  # with the stuck one
        # Far more than the stuck one's socket buffers and its queue bound (1 kB lines).
        await asyncio.wait_for(write_output(writer_store, task.id, 6000, line=1000), 60)
        got = await asyncio.wait_for(asyncio.gather(*readers), 60)
        expected = [e.id for e in await api.store.events_since(0, task_id=task.id, limit=10**5)]
        for events in got:  # the others got everything while the stuck one read nothing
            assert [e.id for e in events] == expected
        assert dropped, "the stuck follower was never dropped from the tail"
        # Reading at last: it catches up from the store by itself, exactly once, and ends.
        body = await asyncio.wait_for(read_chunked(stuck), 60)
    assert [e.id for e in parse(body)] == expected
    assert json.loads(body.rsplit("data: ", 1)[1])["data"]["to"] == "cancelled"
