"""``Backend``: what a front end needs from bosun, wherever bosun is.

Two things satisfy it: ``bosun.service.Service`` (the store and the configuration on this
machine) and ``bosun.client.Client`` (a bosun server over HTTP). The CLI writes each
command once against this protocol and picks the backend from ``--server``::

    async with await open_backend() as backend:
        task = await backend.get(7)

Both return bosun's own values (``Task``, ``Run``, ``Event``) and raise bosun's own errors
(``NotFound``, ``InputError``, ...), so output and exit codes are the same either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

from bosun.models import Event, Run, Task, TaskSpec
from bosun.store.base import TaskFilter

__all__ = ["Backend", "Cancellation", "SupportsJson", "Unstopped"]


class SupportsJson(Protocol):
    """A value with a machine-readable form (a host row, for instance)."""

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Unstopped:
    """A run whose agent ``cancel`` could not stop: the task is cancelled all the same.

    ``unreachable``: the host did not answer (else it answered with ``error``).
    ``will_retry``: bosun stops the run on its own once the host answers again (a
    dispatcher reconciles a host when its health check passes, and every host at its
    start); False only when the host is no longer configured, so nothing will.
    """

    run_id: int
    host: str
    error: str
    unreachable: bool
    will_retry: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "host": self.host,
            "error": self.error,
            "unreachable": self.unreachable,
            "will_retry": self.will_retry,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Unstopped:
        return cls(
            run_id=int(d["run_id"]),
            host=str(d["host"]),
            error=str(d["error"]),
            unreachable=bool(d["unreachable"]),
            will_retry=bool(d["will_retry"]),
        )


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What ``cancel`` did: the task (now ``cancelled``, whatever happened to its agent)
    and the runs whose agent could not be stopped yet (empty when every agent was
    stopped, or none was running)."""

    task: Task
    pending: tuple[Unstopped, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The task's JSON plus ``cancel_pending`` (the API's and ``--json``'s answer)."""
        return {**self.task.to_json(), "cancel_pending": [u.to_json() for u in self.pending]}


@runtime_checkable
class Backend(Protocol):
    """Submit, inspect, cancel, retry and follow tasks; list hosts and agents."""

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def submit(self, spec: TaskSpec) -> Task:
        """Validate and queue a task (``InputError`` for bad input, nothing stored)."""
        ...

    async def get(self, task_id: int) -> Task:
        """One task; ``NotFound`` if there is none."""
        ...

    async def list_tasks(self, flt: TaskFilter | None = None) -> list[Task]:
        """Tasks matching ``flt`` by ascending id: ids above ``flt.after_id``, at most
        ``flt.limit`` of them."""
        ...

    async def runs(self, task_id: int) -> list[Run]:
        """The runs (attempts) of a task by id."""
        ...

    async def cancel(self, task_id: int) -> Cancellation:
        """Cancel a task and kill its running agent; an agent that could not be stopped
        (its host does not answer) is in ``pending``, the task is cancelled regardless."""
        ...

    async def retry(self, task_id: int) -> Task:
        """Queue a failed or cancelled task again."""
        ...

    async def events(self, task_id: int, cursor: int = 0, limit: int = 1000) -> list[Event]:
        """At most ``limit`` events of a task with ids above ``cursor``; empty at the end."""
        ...

    def follow(self, task_id: int, cursor: int = 0) -> AsyncIterator[Event]:
        """Every event of a task after ``cursor``, then live ones; ends once the task has
        settled (``bosun.service.SETTLED``) and every event up to then was yielded."""
        ...

    async def hosts(self) -> Sequence[SupportsJson]:
        """The hosts with their caps and current load."""
        ...

    async def agents(self) -> list[dict[str, Any]]:
        """Every configured agent, as ``bosun agents list --json`` prints it."""
        ...
