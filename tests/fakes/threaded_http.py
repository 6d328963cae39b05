"""A ``http.server`` server on 127.0.0.1 (a free port) serving from a thread of its own:
the plumbing of the fake forge and of the notification receiver."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["QuietHandler", "ThreadedServer"]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (pytest shows stderr of failing tests)."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class ThreadedServer:
    """Serves ``handler`` until ``stop`` (or the end of the ``with`` block)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=name, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
