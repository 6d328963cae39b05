"""Server-Sent Events: snapshot then live, resumable, with no gap and no duplicate while a
writer (another engine on the same database: to SQLite, another process) appends fast.

The live tests run against a real uvicorn on 127.0.0.1 (httpx's ASGI transport buffers
whole responses, so it cannot follow a stream); the snapshot tests run in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from bosun.models import NewEvent, TaskSpec, TaskStatus
from bosun.server.sse import PAGE
from bosun.store import open_store
from bosun.store.sql import SqlStore
from tests.serverkit import Api, api, live_url
from tests.store_fixtures import migrated_db

__all__ = ["api", "live_url", "migrated_db"]


@dataclass(frozen=True)
class Sse:
    id: int
    kind: str
    data: dict[str, Any]


def parse(text: str) -> list[Sse]:
    """The events of a complete SSE body (comments and retry-only blocks skipped)."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
        if "data" in fields:
            data = json.loads(fields["data"])
            assert data["id"] == int(fields["id"]) and data["kind"] == fields["event"]
            out.append(Sse(int(fields["id"]), fields["event"], data))
    return out


@contextlib.asynccontextmanager
async def peer(api: Api) -> AsyncIterator[SqlStore]:
    """A second store on the same database file, as another process would open it."""
    other = await open_store(f"sqlite+aiosqlite:///{api.store.engine.url.database}")
    try:
        yield other
    finally:
        await other.aclose()


async def follow(
    client: httpx.AsyncClient,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    until_kind: str | None = None,
    started: asyncio.Event | None = None,
) -> list[Sse]:
    """Read a live stream until it ends, ``stop_after`` events, or the first event of kind
    ``until_kind``."""
    got: list[Sse] = []
    async with aconnect_sse(client, "GET", path, headers=headers or {}) as source:
        assert source.response.status_code == 200
        if started is not None:
            started.set()
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            ev = Sse(int(sse.id), sse.event, json.loads(sse.data))
            assert ev.data["id"] == ev.id and ev.data["kind"] == ev.kind
            got.append(ev)
            if stop_after is not None and len(got) >= stop_after:
                break
            if until_kind is not None and ev.kind == until_kind:
                break
    return got


async def write_fast(store: SqlStore, task_id: int, other_id: int, total: int) -> None:
    """``total`` events as fast as the database takes them: single events and batches, for
    the followed task and for another one, then the task's cancellation."""
    run = await store.add_run(task_id, attempt=1, host="local", agent="echo", ref={})
    rng = random.Random(7)
    written = offset = 0
    while written < total:
        n = rng.randint(1, 25)
        if rng.random() < 0.5:
            batch = [NewEvent("run.output", {"line": f"o{written + i}"}) for i in range(n)]
            offset += n
            await store.append_output(run.id, batch, stdout_offset=offset, stderr_offset=0)
        else:
            for i in range(n):
                target = task_id if i % 2 else other_id
                await store.append_event(
                    NewEvent("agent.text", {"text": f"e{written + i}"}, task_id=target)
                )
        written += n
    await store.transition(task_id, TaskStatus.CANCELLED, reason="done writing")


async def test_followers_see_every_event_exactly_once_while_events_are_appended_fast(
    api: Api, live_url: str
) -> None:
    task = await api.store.add_task(TaskSpec(title="busy"), max_attempts=3)
    other = await api.store.add_task(TaskSpec(title="other"), max_attempts=3)
    # A snapshot longer than one page before anyone connects.
    run0 = await api.store.add_run(other.id, attempt=1, host="local", agent="echo", ref={})
    await api.store.append_output(
        run0.id,
        [NewEvent("run.output", {"line": str(i)}) for i in range(PAGE + 80)],
        stdout_offset=PAGE + 80,
        stderr_offset=0,
    )
    for i in range(PAGE + 30):
        await api.store.append_event(NewEvent("agent.text", {"n": i}, task_id=task.id))
    start_id = await api.store.last_event_id()
    path = f"/api/v1/tasks/{task.id}/events"
    async with (
        httpx.AsyncClient(base_url=live_url, headers=api.headers(api.admin), timeout=30) as c,
        peer(api) as writer_store,
    ):
        writing = asyncio.create_task(write_fast(writer_store, task.id, other.id, 1500))

        # Whether the writer was still writing when each follower (re)connected.
        writing_at_connect: list[bool] = []

        async def connect(path: str, **kwargs: Any) -> list[Sse]:
            started = asyncio.Event()
            reading = asyncio.create_task(follow(c, path, started=started, **kwargs))
            await started.wait()
            writing_at_connect.append(not writing.done())
            return await reading

        async def mid_run() -> list[Sse]:
            # Connects once the writer is well under way.
            while await api.store.last_event_id() < start_id + 300:
                await api.store.wait_for_change(0.2)
            return await connect(path)

        async def reconnecting() -> list[Sse]:
            first = await connect(path, stop_after=PAGE + 200)
            resumed = await connect(path, headers={"Last-Event-ID": str(first[-1].id)})
            return first + resumed

        async def everything() -> list[Sse]:
            # Every task's events, live, until the followed task's cancellation (the
            # writer's last event).
            return await connect(f"/api/v1/events?after={start_id}", until_kind="task.status")

        a, b, g = await asyncio.wait_for(
            asyncio.gather(mid_run(), reconnecting(), everything()), 60
        )
        await writing
    assert writing_at_connect == [True] * 4, writing_at_connect
    expected = [e.id for e in await api.store.events_since(0, task_id=task.id, limit=100_000)]
    assert len(expected) > 1500  # the snapshot, the writer's share, the cancellation
    assert [e.id for e in a] == expected
    assert [e.id for e in b] == expected
    assert a[-1].kind == "task.status" and a[-1].data["data"]["to"] == "cancelled"
    every = [e.id for e in await api.store.events_since(start_id, limit=100_000)]
    assert [e.id for e in g] == every
    assert {e.data["task_id"] for e in g} == {task.id, other.id}


async def test_idle_streams_send_keep_alive_comments(api: Api, live_url: str) -> None:
    api.app.state.sse_keepalive = 0.2
    task = await api.store.add_task(TaskSpec(title="idle"), max_attempts=3)
    seen: list[str] = []
    async with (
        httpx.AsyncClient(base_url=live_url, headers=api.headers(api.admin), timeout=30) as c,
        c.stream("GET", f"/api/v1/tasks/{task.id}/events") as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        async for line in resp.aiter_lines():
            seen.append(line)
            if seen.count(": keep-alive") == 2:
                break
    assert seen[0] == "retry: 2000"
    assert sum(line.startswith("id: ") for line in seen) == 1  # task.submitted only


async def test_stopping_the_server_ends_open_streams(api: Api) -> None:
    from tests.serverkit import serving

    async with (
        serving(api.app) as url,
        httpx.AsyncClient(base_url=url, headers=api.headers(api.admin), timeout=30) as c,
    ):
        started = asyncio.Event()
        reading = asyncio.create_task(follow(c, "/api/v1/events", started=started))
        await asyncio.wait_for(started.wait(), 10)
        api.app.state.stopping.set()  # what `bosun serve` does on SIGTERM
        assert await asyncio.wait_for(reading, 10) == []  # ended cleanly, nothing lost


# -- snapshots (in-process) --------------------------------------------------------------
async def test_follow_false_sends_the_snapshot_in_pages_then_ends(api: Api) -> None:
    task = await api.store.add_task(TaskSpec(title="t"), max_attempts=3)
    run = await api.store.add_run(task.id, attempt=1, host="local", agent="echo", ref={})
    n = 2 * PAGE + 7
    await api.store.append_output(
        run.id,
        [NewEvent("run.output", {"line": f"l{i}\nwith a newline"}) for i in range(n)],
        stdout_offset=n,
        stderr_offset=0,
    )
    stored = await api.store.events_since(0, task_id=task.id, limit=100_000)
    resp = await api.client.get(f"/api/v1/tasks/{task.id}/events", params={"follow": "false"})
    assert resp.status_code == 200
    got = parse(resp.text)
    assert [e.id for e in got] == [e.id for e in stored]
    assert [e.data for e in got] == [e.to_json() for e in stored]
    everything = parse((await api.client.get("/api/v1/events?follow=false")).text)
    assert [e.id for e in everything] == [
        e.id for e in await api.store.events_since(0, limit=100_000)
    ]


async def test_resuming_with_after_or_last_event_id(api: Api) -> None:
    task = await api.store.add_task(TaskSpec(title="t"), max_attempts=3)
    for i in range(10):
        await api.store.append_event(NewEvent("agent.text", {"n": i}, task_id=task.id))
    ids = [e.id for e in await api.store.events_since(0, task_id=task.id)]
    path = f"/api/v1/tasks/{task.id}/events?follow=false"

    async def got(url: str, **headers: str) -> list[int]:
        resp = await api.client.get(url, headers=headers)
        assert resp.status_code == 200, resp.text
        return [e.id for e in parse(resp.text)]

    assert await got(f"{path}&after={ids[3]}") == ids[4:]
    assert await got(path, **{"Last-Event-ID": str(ids[6])}) == ids[7:]
    # On a reconnect the browser repeats the URL and adds the header: the header wins.
    assert await got(f"{path}&after={ids[1]}", **{"Last-Event-ID": str(ids[8])}) == ids[9:]
    assert await got(f"{path}&after={ids[-1]}") == []
    global_ids = await got(f"/api/v1/events?follow=false&after={ids[4]}")
    assert global_ids == ids[5:]


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9" * 30, str(2**31), "١٢"])
async def test_a_malformed_last_event_id_is_a_400(api: Api, value: str) -> None:
    resp = await api.client.get(
        "/api/v1/events?follow=false", headers={b"Last-Event-ID": value.encode()}
    )
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["error"]["hint"]


async def test_event_streams_of_unknown_tasks_are_404(api: Api) -> None:
    resp = await api.client.get("/api/v1/tasks/404/events")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


async def test_a_final_task_stream_ends_and_a_reconnect_after_the_end_is_204(api: Api) -> None:
    task = await api.store.add_task(TaskSpec(title="t"), max_attempts=3)
    await api.store.transition(task.id, TaskStatus.CANCELLED, reason="test")
    # follow=true, but the task is final: everything, then the end (in-process: finite).
    resp = await api.client.get(f"/api/v1/tasks/{task.id}/events")
    events = parse(resp.text)
    assert resp.status_code == 200 and events[-1].data["data"]["to"] == "cancelled"
    again = await api.client.get(
        f"/api/v1/tasks/{task.id}/events", headers={"Last-Event-ID": str(events[-1].id)}
    )
    assert again.status_code == 204 and again.content == b""
