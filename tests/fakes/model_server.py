"""A scriptable fake model server on 127.0.0.1 that real agent CLIs can talk to.

It speaks the Anthropic Messages API, the OpenAI Responses and Chat Completions APIs, the
Gemini API and Ollama's chat API, streaming where the real API streams. A test queues
turns (``Text``, ``ToolCall``, ``HttpError``, ``Hang``); each model request pops the next
one, or gets the default turn when the queue is empty, and is answered in the wire format
of the API that was called. Every request is recorded with its credentials redacted.

The server is uvicorn running a Starlette app in a background thread with its own event
loop, so it serves a CLI subprocess from a plain test as well as an async test::

    with FakeModelServer() as fake:            # or: async with FakeModelServer() as fake
        fake.push(ToolCall("Write", {"file_path": "a.txt", "content": "hi"}), Text("done"))
        run_cli(env={"ANTHROPIC_BASE_URL": fake.url})
        assert fake.model_requests[1].body["messages"]

Stopping ends hanging requests (they get a 503) and stalled streams (they are cut), so a
``Hang`` never blocks shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import anthropic, gemini, ollama, openai_chat, openai_responses
from tests.fakes.turns import (
    Hang,
    HttpError,
    RecordedRequest,
    Text,
    ToolCall,
    Turn,
    redact_headers,
    redact_query,
)
from tests.fakes.wire import Context, Reply, StreamPlan

SideTurn = Callable[[RecordedRequest], Turn | None]
Renderer = Callable[[Text | ToolCall, Context], Reply]
ErrorShaper = Callable[[HttpError], dict[str, Any]]

DEFAULT_TURN = Text("ok")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
GEMINI_CALL = re.compile(r"^/(v1|v1beta|v1alpha)/models/(?P<model>[^:/]+):(?P<action>\w+)$")
GEMINI_MODEL = re.compile(r"^/(v1beta|v1alpha)/models/(?P<model>[^:/]+)$")
GEMINI_LIST = re.compile(r"^/(v1beta|v1alpha)/models$")

RENDERERS: dict[str, tuple[Renderer, ErrorShaper]] = {
    "anthropic": (anthropic.render, anthropic.error_body),
    "openai-chat": (openai_chat.render, openai_chat.error_body),
    "openai-responses": (openai_responses.render, openai_responses.error_body),
    "gemini": (gemini.render, gemini.error_body),
    "ollama": (ollama.render, ollama.error_body),
}
MODEL_PATHS = {
    "/v1/messages": "anthropic",
    "/v1/chat/completions": "openai-chat",
    "/chat/completions": "openai-chat",
    "/v1/responses": "openai-responses",
    "/responses": "openai-responses",
    "/api/chat": "ollama",
}


class FakeModelServer:
    """The fake server. Use it as a (sync or async) context manager, or start()/stop().

    ``default`` answers model requests when the queue is empty. ``models`` are listed by
    the model-list endpoints. ``side_turn`` sees each model request first: when it returns
    a turn, that turn answers the request and the queue is left alone (for a CLI's side
    calls, e.g. qwen's memory-extraction request after each answer). It runs on the
    server's thread, so it must not block.
    """

    def __init__(
        self,
        *,
        default: Turn = DEFAULT_TURN,
        models: Iterable[str] = ("fake-model",),
        side_turn: SideTurn | None = None,
    ) -> None:
        self._initial_default = default
        self._default = default
        self._models = tuple(models)
        self._side_turn = side_turn
        self._cond = threading.Condition()
        self._queue: deque[Turn] = deque()
        self._requests: list[RecordedRequest] = []
        self._seq = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._lifecycle = threading.Lock()  # start() and stop() may come from any thread
        self._app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=ALL_METHODS)])

    # -- scripting -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash or API prefix."""
        if self._port is None:
            raise RuntimeError("the fake model server is not started")
        return f"http://127.0.0.1:{self._port}"

    def push(self, *turns: Turn) -> None:
        """Queue turns; model requests pop them in order."""
        with self._cond:
            self._queue.extend(turns)

    def set_default(self, turn: Turn) -> None:
        """The turn that answers model requests while the queue is empty."""
        with self._cond:
            self._default = turn

    @property
    def pending(self) -> int:
        """How many queued turns no request has taken yet."""
        with self._cond:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, probes included, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """The requests a turn answered (the model calls), oldest first."""
        with self._cond:
            return [r for r in self._requests if r.turn is not None]

    def reset(self) -> None:
        """Forget queued turns and recorded requests; restore the initial default turn."""
        with self._cond:
            self._queue.clear()
            self._requests.clear()
            self._default = self._initial_default

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``count`` model requests arrived; return them.

        Raises TimeoutError naming what did arrive, so a failing test says why.
        """
        with self._cond:
            arrived = self._cond.wait_for(
                lambda: sum(r.turn is not None for r in self._requests) >= count, timeout
            )
            seen = [f"{r.method} {r.path}" for r in self._requests]
        if not arrived:
            raise TimeoutError(f"expected {count} model requests, got these requests: {seen}")
        return self.model_requests

    async def wait_for_requests_async(
        self, count: int, timeout: float = 10.0
    ) -> list[RecordedRequest]:
        """``wait_for_requests`` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for_requests, count, timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        with self._lifecycle:
            self._start()

    def _start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the fake model server is already started")
        self._failure = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it a reused keep-alive connection waits
        # ~40 ms on every response (Nagle against delayed ACK).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name="fake-model-server", daemon=True
        )
        self._thread.start()
        ready.wait(timeout=30)
        if self._failure is not None or not ready.is_set():
            self._stop_now()
            raise RuntimeError(f"the fake model server did not start: {self._failure!r}")

    def stop(self) -> None:
        """Stop serving: hanging requests get a 503, stalled streams are cut, then join."""
        with self._lifecycle:
            self._stop_now()

    def _stop_now(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if self._server is not None:
            self._server.should_exit = True
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("the fake model server thread did not stop within 30 s")
        self._thread = None
        self._server = None
        self._loop = None
        self._stop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(sock, ready))
        except BaseException as exc:  # reported by start(); a thread cannot raise to it
            self._failure = exc
        finally:
            sock.close()
            ready.set()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = uvicorn.Config(
            self._app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            # A backstop only: stop() ends hangs and stalls itself.
            timeout_graceful_shutdown=5,
        )
        self._server = server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        ready.set()
        await task

    # -- serving ---------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        path = request.url.path
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=redact_query(dict(request.query_params)),
            headers=redact_headers(dict(request.headers)),
            body=body,
        )
        api, ctx, gemini_sse = self._model_call(request.method, path, request, body)
        if api is None or ctx is None:
            self._record(record)
            return self._probe(request.method, path, body)
        turn = self._take_turn(replace(record, api=api))
        self._record(replace(record, api=api, turn=turn))
        return await self._answer(request, api, turn, ctx, gemini_sse)

    def _model_call(
        self, method: str, path: str, request: Request, body: Any
    ) -> tuple[str | None, Context | None, bool]:
        """Which model API this request calls, and the rendering context; None for probes."""
        if method != "POST" or not isinstance(body, dict):
            return None, None, False
        with self._cond:
            self._seq += 1
            seq = self._seq
        api = MODEL_PATHS.get(path)
        if api is not None:
            streams = body.get("stream") is not False if api == "ollama" else body.get("stream")
            model = str(body.get("model") or "fake-model")
            return api, Context(model, bool(streams), seq, body), False
        match = GEMINI_CALL.match(path)
        if match and match["action"] in ("generateContent", "streamGenerateContent"):
            streams = match["action"] == "streamGenerateContent"
            alt_sse = request.query_params.get("alt") == "sse"
            return "gemini", Context(match["model"], streams, seq, body), alt_sse
        return None, None, False

    def _take_turn(self, record: RecordedRequest) -> Turn:
        side = self._side_turn(record) if self._side_turn is not None else None
        if side is not None:
            return side
        with self._cond:
            return self._queue.popleft() if self._queue else self._default

    def _record(self, record: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(record)
            self._cond.notify_all()

    def _probe(self, method: str, path: str, body: Any) -> Response:
        """Answers for everything that is not a model call: health, model lists, counts."""
        request_body = body if isinstance(body, dict) else {}
        if path == "/" and method in ("GET", "HEAD"):
            return JSONResponse({"ok": True, "server": "fake-model-server"})
        if method == "GET" and path in ("/v1/models", "/models"):
            return JSONResponse(openai_chat.models_list(self._models))
        if method == "GET" and path.startswith("/v1/models/"):
            name = path.removeprefix("/v1/models/")
            return JSONResponse(openai_chat.models_list((name,))["data"][0])
        if method == "POST" and path == "/v1/messages/count_tokens":
            return JSONResponse(anthropic.count_tokens(request_body))
        if method == "GET" and GEMINI_LIST.match(path):
            return JSONResponse({"models": [gemini.model_info(m) for m in self._models]})
        if method == "GET" and (match := GEMINI_MODEL.match(path)):
            return JSONResponse(gemini.model_info(match["model"]))
        match = GEMINI_CALL.match(path)
        if method == "POST" and match and match["action"] == "countTokens":
            return JSONResponse(gemini.count_tokens(request_body))
        if method == "GET" and path == "/api/tags":
            return JSONResponse(ollama.tags(self._models))
        if method == "GET" and path == "/api/version":
            return JSONResponse({"version": "0.0.0-fake"})
        if method == "POST" and path == "/api/show":
            return JSONResponse(ollama.show(str(request_body.get("model", "fake-model"))))
        if method == "POST" and path in MODEL_PATHS:
            err = HttpError(400, "The request body is not a JSON object.")
            return JSONResponse(RENDERERS[MODEL_PATHS[path]][1](err), status_code=400)
        message = f"fake model server: no route for {method} {path}"
        return JSONResponse(
            {"type": "error", "error": {"type": "not_found_error", "message": message}},
            status_code=404,
        )

    async def _answer(
        self, request: Request, api: str, turn: Turn, ctx: Context, gemini_sse: bool
    ) -> Response:
        error_body = RENDERERS[api][1]
        if isinstance(turn, HttpError):
            return JSONResponse(
                error_body(turn), status_code=turn.status, headers=dict(turn.headers)
            )
        if isinstance(turn, Hang):
            streamable = ctx.stream and (api != "gemini" or gemini_sse)
            if turn.partial_text is None or not streamable:
                await self._hold(request)
                return JSONResponse(error_body(HttpError(503)), status_code=503)
            reply = self._render(api, Text(turn.partial_text), ctx, gemini_sse)
            assert reply.stream is not None
            return self._streaming(reply.stream, delay=0.0, stall=True)
        reply = self._render(api, turn, ctx, gemini_sse)
        if reply.stream is not None:
            return self._streaming(reply.stream, delay=turn.delay, stall=False)
        return JSONResponse(reply.json)

    @staticmethod
    def _render(api: str, turn: Text | ToolCall, ctx: Context, gemini_sse: bool) -> Reply:
        if api == "gemini":
            return gemini.render(turn, ctx, sse_stream=gemini_sse)
        return RENDERERS[api][0](turn, ctx)

    def _streaming(self, plan: StreamPlan, *, delay: float, stall: bool) -> StreamingResponse:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(
            self._frames(plan, delay, stall), media_type=plan.media_type, headers=headers
        )

    async def _frames(self, plan: StreamPlan, delay: float, stall: bool) -> AsyncIterator[str]:
        """Send a stream plan, pausing ``delay`` before each delta and closing frame.

        Stopping the server cuts the stream; a client leaving cancels this generator
        (Starlette listens for the disconnect).
        """
        for frame in plan.opening:
            yield frame
        for frame in plan.deltas:
            if await self._stopped_within(delay):
                return
            yield frame
        if stall:
            await self._stopped_within(None)
            return
        for frame in plan.closing:
            if await self._stopped_within(delay):
                return
            yield frame

    async def _stopped_within(self, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (forever for None) for stop(); True if it came."""
        stop = self._stop
        assert stop is not None
        if seconds is not None and seconds <= 0:
            return stop.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()

    async def _hold(self, request: Request) -> None:
        """Answer nothing until the client disconnects or the server stops."""

        async def client_left() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        stop = self._stop
        assert stop is not None
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(client_left())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
