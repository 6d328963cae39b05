"""``bosun serve``: the HTTP API and the dispatcher in one event loop.

Both share one store. SIGINT/SIGTERM stop both gracefully: the dispatcher stops claiming
(running agents keep running and are re-attached by the next bosun), open event streams
end, in-flight requests finish (for at most ``GRACE`` seconds), then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Protocol

import uvicorn

from bosun.config import Settings
from bosun.errors import ConfigError
from bosun.server.app import create_app
from bosun.service import Service, make_providers
from bosun.store import open_store

__all__ = ["GRACE", "ApiServer", "listen", "serve", "url_of"]

log = logging.getLogger("bosun.server")

#: Seconds in-flight requests get to finish once the server is stopping.
GRACE = 5


class _Reporter(Protocol):
    async def follow(self, stop: asyncio.Event) -> None: ...

    async def drain(self) -> None: ...


class ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling (``serve`` owns SIGINT/SIGTERM), telling
    when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def listen(bind: str, port: int) -> socket.socket:
    """A listening TCP socket on ``bind:port`` (port 0: any free port), or a clear error."""
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"cannot listen on {bind!r}: {exc}",
            "give an IP address or a resolvable host name with --bind or [server] bind",
        ) from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {bind}:{port}: {exc.strerror}",
            "pick another --port (or [server] port), or stop whatever uses that one",
        ) from None
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve(
    settings: Settings,
    *,
    bind: str | None = None,
    port: int | None = None,
    say: Callable[[str], None] = print,
    reporter: Callable[[Service, int], _Reporter] | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], Awaitable[None] | None] | None = None,
) -> None:
    """Run the API on ``bind:port`` (default: ``[server]``) and the dispatcher until
    ``stop`` is set or SIGINT/SIGTERM arrives."""
    from bosun.dispatcher import Dispatcher
    from bosun.review import background as review_background

    bind = settings.server.bind if bind is None else bind
    port = settings.server.port if port is None else port
    stop = stop or asyncio.Event()
    store = await open_store(settings.database_url)
    async with Service(settings, store) as svc:
        sock = listen(bind, port)
        app = create_app(settings, store)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACE,
            server_header=False,
        )
        server = ApiServer(config)
        url = url_of(sock)
        with _signals(stop):
            api = asyncio.create_task(server.serve(sockets=[sock]), name="bosun-api")
            listening = asyncio.create_task(server.listening.wait())
            await asyncio.wait({api, listening}, return_when=asyncio.FIRST_COMPLETED)
            listening.cancel()
            if api.done() or not server.started:
                sock.close()
                await api  # raises what stopped it
                return
            say(f"bosun API on {url} (docs: {url}/docs)")
            if not await store.list_tokens():
                say("no API token exists yet: create one with `bosun token create --admin`")
            if on_ready is not None:
                ready = on_ready(url)
                if ready is not None:
                    await ready
            watch = None if reporter is None else reporter(svc, await svc.store.last_event_id())
            watching = None if watch is None else asyncio.create_task(watch.follow(stop))
            dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
            # Everything built so far (modules, FastAPI, pydantic, SQLAlchemy: a big heap)
            # lives as long as the process: move it out of the garbage collector's sight.
            # Each full collection walked all of it and stopped the event loop for 60-300 ms
            # at 200 requests/s (the GET p99); frozen, the pauses measured 1-2 ms
            # (docs/benchmarks.md, "Where the time goes").
            gc.collect()
            gc.freeze()
            dispatching = asyncio.create_task(dispatcher.run(stop=stop), name="bosun-dispatch")
            # forge polling and outgoing notifications (bosun.review; H8)
            reviewing = asyncio.create_task(review_background(settings, store, stop))
            stopper = asyncio.create_task(stop.wait())
            try:
                # Either part failing stops the other: one process, one fate.
                await asyncio.wait({api, dispatching, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.set()
                app.state.stopping.set()  # open event streams end within a second
                server.should_exit = True
                results = await asyncio.gather(
                    api, dispatching, stopper, reviewing, return_exceptions=True
                )
                if watching is not None and watch is not None:
                    await asyncio.gather(watching, return_exceptions=True)
                    await watch.drain()
                sock.close()
            for result in results:
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    raise result
