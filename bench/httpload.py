"""A small open-loop HTTP/1.1 load generator and an SSE follower, on raw asyncio streams.

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened to the ones
before it, and its latency is measured from that due time, so a stall of the server (or
of this client) shows up in the figures instead of silently lowering the offered rate
(coordinated omission). Requests go out on keep-alive connections taken from a pool; when
every pooled connection is busy a new one is opened (its cost counts, as it would for a
real client).

The client is deliberately minimal (hand-made request bytes, status line and
``Content-Length`` parsing only) so that its own cost is small next to the server's; the
same client measures bosun and the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

__all__ = ["LoadResult", "SseResult", "follow_sse", "open_loop", "request_bytes"]

_CL = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
#: The write time of a ``run.output`` event in an SSE stream: ``Event.to_json()`` on one
#: line, ``created_at`` after ``data``. The benchmark's lines hold no quote or backslash,
#: so ``[^"]*`` spans a line's text; the pattern has no backtracking to speak of, which
#: keeps this client's cost (100 followers x 1 MB/s) small next to the server's.
_RUN_OUTPUT = re.compile(
    rb'"kind":"run\.output","data":\{"stream":"[a-z]+","line":"[^"]*"\},"created_at":"([^"]+)"'
)
MAX_CONNECTIONS = 512


def request_bytes(
    method: str, url: str, path: str, *, token: str | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request, ready to write."""
    host = urlsplit(url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # failed attempts, by exception
    connections: int = 0
    late_starts: int = 0  # requests this client sent more than 1 ms after their due time
    duration: float = 0.0


#: Idle keep-alive connections older than this are dropped, not reused: uvicorn closes
#: them after 5 s (``timeout_keep_alive``), and a request racing that close would fail.
IDLE_MAX = 3.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Pool:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: list[tuple[Conn, float]] = []  # (connection, when it became idle)
        self.opened = 0
        self.slot = asyncio.Semaphore(MAX_CONNECTIONS)

    async def take(self, *, fresh: bool = False) -> Conn:
        now = asyncio.get_running_loop().time()
        while self.idle and not fresh:
            conn, since = self.idle.pop()
            if now - since < IDLE_MAX:
                return conn
            conn[1].close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def give(self, conn: Conn) -> None:
        self.idle.append((conn, asyncio.get_running_loop().time()))

    async def close(self) -> None:
        for (_, writer), _since in self.idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.idle.clear()


async def _exchange(conn: Conn, raw: bytes) -> tuple[int, bool]:
    """Send ``raw``, read the response; (status, connection reusable)."""
    reader, writer = conn
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    found = _CL.search(head)
    if found is not None:
        await reader.readexactly(int(found.group(1)))
    elif _CHUNKED.search(head):
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and status >= 200:
        await reader.read()  # no length: the body ends with the connection
        return status, False
    return status, b"connection: close" not in head.lower()


async def open_loop(url: str, raws: list[bytes], rate: float, *, warmup: int = 0) -> LoadResult:
    """Send ``raws[i]`` at ``start + i / rate``; the first ``warmup`` are not recorded."""
    pool = _Pool(url)
    result = LoadResult()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int, due: float) -> None:
        async with pool.slot:
            status, conn, reusable = 0, None, False
            for attempt in range(2):
                try:
                    # a second attempt on a new connection: the server may have closed
                    # the one taken from the pool just now, as HTTP clients assume
                    conn = await pool.take(fresh=attempt > 0)
                    status, reusable = await _exchange(conn, raws[index])
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    name = type(exc).__name__
                    result.failures[name] = result.failures.get(name, 0) + 1
                    if conn is not None:
                        conn[1].close()
                    conn = None
            if conn is None:
                if index >= warmup:
                    result.errors += 1
                return
            done = loop.time()
            if reusable:
                pool.give(conn)
            else:
                conn[1].close()
        if index >= warmup:
            result.latencies_ms.append((done - due) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    start = loop.time() + 0.05
    for i in range(len(raws)):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001 and i >= warmup:
            result.late_starts += 1
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    result.duration = loop.time() - start
    result.connections = pool.opened
    await pool.close()
    return result


@dataclass
class SseResult:
    lags_ms: list[float] = field(default_factory=list)
    events: int = 0  # run.output events received
    ended: bool = False  # the server ended the stream


async def follow_sse(
    url: str, path: str, token: str | None, ready: asyncio.Event, result: SseResult
) -> None:
    """Follow one SSE stream until the server ends it; for each ``run.output`` event,
    record receive time minus ``created_at``. ``ready`` is set once the response began."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        raw = request_bytes("GET", url, path, token=token)
        extra = b"\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        writer.write(raw.replace(b"\r\n\r\n", extra, 1))
        head = await reader.readuntil(b"\r\n\r\n")
        if int(head[9:12]) != 200:
            raise RuntimeError(f"SSE {path}: {head.decode(errors='replace').splitlines()[0]}")
        ready.set()
        buf = b""
        seen: dict[bytes, float] = {}
        while True:
            data = await reader.read(1 << 18)
            now = time.time()
            if not data:
                result.ended = True
                break
            buf += data
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                continue
            done, buf = buf[: cut + 2], buf[cut + 2 :]
            for stamp in _RUN_OUTPUT.findall(done):
                written = seen.get(stamp)
                if written is None:  # the events of one write share their created_at
                    written = seen[stamp] = datetime.fromisoformat(stamp.decode()).timestamp()
                result.lags_ms.append((now - written) * 1000)
            if buf.endswith(b"\r\n0\r\n\r\n") or buf == b"0\r\n\r\n":
                result.ended = True  # the last chunk of a chunked response
                break
        result.events = len(result.lags_ms)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
