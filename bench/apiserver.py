"""The server side of the API benchmark, run as its own process by ``bench.api``.

``python -m bench.apiserver ROOT`` builds what ``bosun serve`` runs (a SQLite store, the
API app of ``create_app`` on uvicorn with the same settings as ``bosun serve``, and the
dispatcher, idle here) and, in the same process and event loop, a bare Starlette app on a
second uvicorn: the baseline. It seeds tasks, creates an admin and an agent token, prints
one JSON line (URLs, secrets, task ids) and then obeys one-line JSON commands on stdin,
answering each with one JSON line on stdout:

- ``{"cmd": "sse-prepare", "target": "bosun"|"bare"}``: a task in ``running`` with a run
  (bosun), or a fresh fan-out (bare); answers ``{"task_id": N}``;
- ``{"cmd": "sse-write", "target": ..., "seconds": S, "rate": BYTES_PER_S, "line": N}``:
  write ``run.output`` events of ``N``-byte lines at ``rate`` for ``S`` seconds (every
  10 ms, the bytes due so far), then end the streams (bosun: the task completes);
  answers ``{"events": count, "bytes": total, "seconds": elapsed}``;
- ``{"cmd": "cpu"}``: this process's CPU seconds so far;
- ``{"cmd": "quit"}``: stop everything and exit.

bosun's writer goes through ``Store.append_output``, the call a running agent's output
takes in the dispatcher, on the store the API reads: followers are woken in-process, as
in ``bosun serve``. The bare fan-out puts the same SSE text (``format_event`` of the same
events) into one ``asyncio.Queue`` per follower: what pushing these bytes to these
clients costs with no store in between.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bosun.config import Settings, settings_from_data
from bosun.dispatcher import Dispatcher
from bosun.models import Event, ExecutionMode, NewEvent, TaskSpec, TaskStatus
from bosun.server.app import create_app
from bosun.server.run import GRACE, ApiServer, listen, url_of
from bosun.server.sse import RETRY_MS, format_event
from bosun.service import make_providers
from bosun.store import SqlStore, open_store
from bosun.store.rows import new_task_values
from bosun.store.schema import tasks

AGENT = "noop"
WRITE_EVERY = 0.01  # seconds between two writes of the output writer


def bench_settings(root: Path) -> Settings:
    return settings_from_data(
        {
            "agents": {AGENT: {"command": ["true"]}},
            "hosts": {"local": {"kind": "local"}},
        },
        root / "bosun.toml",
    )


async def seed(store: SqlStore, spec: TaskSpec, status: TaskStatus, count: int) -> list[int]:
    now = datetime.now(UTC)
    rows = [new_task_values(spec, status, 3, now) for _ in range(count)]
    ids: list[int] = []
    async with store.engine.begin() as conn:
        for start in range(0, count, 2000):
            got = await conn.execute(
                sa.insert(tasks).returning(tasks.c.id), rows[start : start + 2000]
            )
            ids.extend(got.scalars())
    return ids


def uvicorn_config(app: Any) -> uvicorn.Config:
    """The uvicorn settings of ``bosun serve`` (bosun.server.run.serve)."""
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE,
        server_header=False,
    )


class Bare:
    """The baseline: bare Starlette routes answering the same bytes from memory."""

    def __init__(self, task_json: bytes, dequeue_json: bytes) -> None:
        self.task_json = task_json
        self.dequeue_json = dequeue_json
        self.followers: list[asyncio.Queue[str | None]] = []
        self.app = Starlette(
            routes=[
                Route("/tasks/{task_id:int}", self.get_task),
                Route("/dequeue", self.dequeue, methods=["POST"]),
                Route("/events", self.events),
            ]
        )

    async def get_task(self, request: Request) -> Response:
        _ = request.path_params["task_id"]
        return Response(self.task_json, media_type="application/json")

    async def dequeue(self, request: Request) -> Response:
        await request.json()
        return Response(self.dequeue_json, media_type="application/json")

    async def events(self, request: Request) -> Response:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.followers.append(queue)

        async def stream() -> AsyncIterator[str]:
            yield f"retry: {RETRY_MS}\n\n"
            while (chunk := await queue.get()) is not None:
                yield chunk

        return StreamingResponse(stream(), media_type="text/event-stream")


_FILLER = "the quick brown fox jumps over the lazy dog 0123456789 "


def _line(size: int, n: int) -> str:
    """A ``size``-character line of text."""
    text = f"output line {n}: {_FILLER}"
    return (text * (size // len(text) + 1))[:size]


async def write_output(
    target: str,
    store: SqlStore,
    bare: Bare,
    task_id: int,
    run_id: int,
    cmd: dict[str, Any],
) -> dict[str, Any]:
    """Output events of ``cmd["line"]``-byte lines at ``cmd["rate"]`` bytes/s."""
    seconds, rate, size = float(cmd["seconds"]), float(cmd["rate"]), int(cmd["line"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    written = count = 0
    event_id = 0
    while (elapsed := loop.time() - start) < seconds:
        due = int(rate * min(elapsed + WRITE_EVERY, seconds))
        lines = []
        while written < due:
            line = _line(size, count)
            lines.append(line)
            written += len(line) + 1
            count += 1
        if lines:
            if target == "bosun":
                new = [NewEvent("run.output", {"stream": "stdout", "line": ln}) for ln in lines]
                await store.append_output(run_id, new, stdout_offset=written, stderr_offset=0)
            else:
                now = datetime.now(UTC)
                chunk = "".join(
                    format_event(
                        Event(
                            event_id + i,
                            task_id,
                            run_id,
                            "run.output",
                            {"stream": "stdout", "line": ln},
                            now,
                        )
                    )
                    for i, ln in enumerate(lines, 1)
                )
                event_id += len(lines)
                for queue in bare.followers:
                    queue.put_nowait(chunk)
        await asyncio.sleep(max(0.0, start + elapsed + WRITE_EVERY - loop.time()))
    elapsed = loop.time() - start
    if target == "bosun":
        await store.transition(task_id, TaskStatus.COMPLETED, owner="bench", reason="done")
    else:
        for queue in bare.followers:
            queue.put_nowait(None)
        bare.followers.clear()
    return {"events": count, "bytes": written, "seconds": elapsed}


async def main(root: Path) -> None:
    settings = bench_settings(root)
    store = await open_store(settings.database_url)
    try:
        _, admin = await store.create_token("admin", "admin")
        _, agent = await store.create_token("puller", "agent", agent="puller", capabilities=[AGENT])
        done = TaskSpec(title="a finished task", agent=AGENT, labels=("bench",))
        get_ids = await seed(store, done, TaskStatus.COMPLETED, 200)
        pull = TaskSpec(title="pull me", agent=AGENT, execution_mode=ExecutionMode.HTTP_PULL)
        pull_count = int(os.environ.get("BENCH_PULL_TASKS", "20000"))
        await seed(store, pull, TaskStatus.QUEUED, pull_count)
        task_json = json.dumps((await store.get_task(get_ids[0])).to_json()).encode()
        dequeue_json = json.dumps(
            {"task": json.loads(task_json), "prompt": "x" * 200, "repo_url": None}
        ).encode()
        bare = Bare(task_json, dequeue_json)
        app = create_app(settings, store)
        servers = [ApiServer(uvicorn_config(app)), ApiServer(uvicorn_config(bare.app))]
        socks = [listen("127.0.0.1", 0), listen("127.0.0.1", 0)]
        serving = [
            asyncio.create_task(s.serve(sockets=[k])) for s, k in zip(servers, socks, strict=True)
        ]
        for server in servers:
            await server.listening.wait()
        stop = asyncio.Event()
        dispatcher = Dispatcher(settings, store, make_providers(settings))
        dispatching = asyncio.create_task(dispatcher.run(stop=stop))
        say(
            {
                "bosun": url_of(socks[0]),
                "bare": url_of(socks[1]),
                "admin": admin,
                "agent": agent,
                "task_ids": get_ids,
                "pull_tasks": pull_count,
                "pid": os.getpid(),
            }
        )
        # as `bosun serve` does once everything is built (bosun.server.run.serve);
        # BENCH_GC_FREEZE=0 leaves it out, to see what it is worth
        if os.environ.get("BENCH_GC_FREEZE", "1") != "0":
            gc.collect()
            gc.freeze()
        monitor = LoopMonitor()
        watching = asyncio.create_task(monitor.run())
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        sse_task = sse_run = 0
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "cpu":
                t = os.times()
                lags, monitor.lags = sorted(monitor.lags), []
                p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
                pauses, monitor.gc_pauses = monitor.gc_pauses, []
                lag = {
                    "p99": p99,
                    "max": lags[-1] if lags else 0.0,
                    "gc_max": max(pauses, default=0.0),
                    "gc_total": sum(pauses),
                }
                say({"cpu": t.user + t.system, "loop_lag": lag})
            elif cmd["cmd"] == "sse-prepare":
                if cmd["target"] == "bosun":
                    # pinned to a host the dispatcher does not have: it never takes it
                    spec = TaskSpec(title="loud", agent=AGENT, host="elsewhere")
                    task = await store.add_task(spec, max_attempts=1)
                    now = datetime.now(UTC)
                    await store.claim(
                        task.id, owner="bench", host="local", lease_seconds=3600, now=now
                    )
                    run = await store.add_run(task.id, attempt=1, host="local", agent=AGENT, ref={})
                    sse_task, sse_run = task.id, run.id
                else:
                    sse_task, sse_run = 1, 1
                say({"task_id": sse_task})
            elif cmd["cmd"] == "sse-write":
                say(await write_output(cmd["target"], store, bare, sse_task, sse_run, cmd))
        watching.cancel()
        stop.set()
        app.state.stopping.set()
        for server in servers:
            server.should_exit = True
        await asyncio.gather(dispatching, *serving)
        for sock in socks:
            sock.close()
    finally:
        await store.aclose()


class LoopMonitor:
    """How late this process's event loop wakes from a 5 ms sleep (ms): the stalls every
    request in the process shares, whichever app it is for; and the garbage collector's
    pauses (ms), one cause of such stalls."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.gc_pauses: list[float] = []
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_pauses.append((time.perf_counter() - self._gc_start) * 1000)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.005)
            self.lags.append((loop.time() - t0 - 0.005) * 1000)


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
