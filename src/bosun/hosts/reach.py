"""How one attempt rides out its host being unreachable.

A single failed read must not fail a task: the link may be down for a moment (an SSH
reconnect, a rebooting router) while the agent works on. ``HostWatch.call`` runs one
provider call for a followed run:

- it succeeds: go on (and if calls had failed before, say so: ``run.host_back``);
- it fails while the host still answers ``true``: a problem of the run itself. The handle
  is rebuilt once from the run's stored ref (a handle may hold a dead connection) and
  the call tried again; a second failure is raised as before;
- it fails (or hangs past ``call_timeout``) and the host does not answer: the host is
  unreachable (``run.host_unreachable``, and the dispatcher is told so it sends no new
  work there). The call is tried again until the host has been unreachable for longer
  than ``unreachable_limit`` (two heartbeat intervals): then ``HostGone`` is raised and
  the attempt gives the run up; its task is retried at once, preferably on another host,
  and the run is marked ``abandoned`` so that the host's reconciliation kills it if it is
  still running when the host comes back. So a task is neither lost nor run twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bosun.config import Settings
from bosun.hosts.health import probe_timeout, reachable, unreachable_limit
from bosun.models import NewEvent
from bosun.providers.base import Provider
from bosun.store.base import Store

T = TypeVar("T")

#: Seconds between two tries while the host is unreachable (capped by the limit).
RETRY_DELAY = 0.5

#: Told when an attempt finds its host unreachable: (host, error).
HostDown = Callable[[str, str], Awaitable[None]]


class HostGone(Exception):
    """The host has been unreachable for longer than the limit: give the run up."""

    def __init__(self, message: str, unreachable_for: float) -> None:
        super().__init__(message)
        self.unreachable_for = unreachable_for


class Stopped(Exception):
    """``should_stop`` said so (e.g. the lease was lost) while the host was unreachable."""


def describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        return message
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    return f"{type(exc).__name__}: {exc}"


class HostWatch:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: Provider,
        host: str,
        task_id: int,
        *,
        on_down: HostDown | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.provider = provider
        self.host = host
        self.task_id = task_id
        self.on_down = on_down
        self.should_stop = should_stop
        self.limit = unreachable_limit(settings)
        self.probe_timeout = probe_timeout(settings)
        # a call that hangs this long counts as failed (then the host is asked `true`)
        self.call_timeout = self.limit
        self.run_id: int | None = None
        self.down_since: float | None = None  # monotonic time of the first failure
        self.back_at: float | None = None  # monotonic time the host answered again

    async def unreachable(self) -> str | None:
        """Why the host does not answer ``true``, or None when it does (on the provider's
        connection, reconnecting if needed; no ``ensure_ready``, which could wake it)."""
        return await reachable(self.provider, self.probe_timeout)

    async def call(
        self,
        op: Callable[[], Awaitable[T]],
        *,
        timeout: float | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """``op()`` through a host outage (see the module docstring). ``refresh`` rebuilds
        the handle ``op`` uses (once, when the host answers but the call failed)."""
        refreshed = False
        while True:
            if self.should_stop():
                raise Stopped
            began = time.monotonic()
            try:
                async with asyncio.timeout(timeout or self.call_timeout):
                    result = await op()
            except Exception as exc:
                problem = await self.unreachable()
                if problem is None:
                    if isinstance(exc, TimeoutError):
                        continue  # slow, but the host answers: try again
                    if refresh is not None and not refreshed:
                        refreshed = True
                        await refresh()
                        continue
                    raise
                await self._failed(f"{describe(exc)} ({problem})", since=began)
                await asyncio.sleep(min(RETRY_DELAY, self.limit / 4))
                continue
            if self.down_since is not None:
                await self._back()
            return result

    async def _failed(self, error: str, *, since: float) -> None:
        """A failed call that began at ``since`` (a hung call counts from its start)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = since
            await self.store.append_event(
                NewEvent(
                    "run.host_unreachable",
                    {"host": self.host, "error": error, "limit": self.limit},
                    task_id=self.task_id,
                    run_id=self.run_id,
                )
            )
            if self.on_down is not None:
                await self.on_down(self.host, error)
        gone_for = now - self.down_since
        if gone_for >= self.limit:
            raise HostGone(
                f"host {self.host} was unreachable for {gone_for:.1f}s (limit {self.limit:g}s, "
                f"two heartbeat intervals): {error}",
                gone_for,
            )

    async def _back(self) -> None:
        assert self.down_since is not None
        now = time.monotonic()
        await self.store.append_event(
            NewEvent(
                "run.host_back",
                {"host": self.host, "after": round(now - self.down_since, 3)},
                task_id=self.task_id,
                run_id=self.run_id,
            )
        )
        self.down_since = None
        self.back_at = now
