"""Pure host selection: which runnable task goes to which host now.

``plan`` takes a snapshot (candidate tasks in priority order, the tasks already running,
the hosts with their caps and health, the global and per-agent caps) and returns the
placements to try. It does no I/O; the store's ``claim`` re-checks scope collisions
atomically, so a plan that races with another dispatcher is still safe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bosun.models import ExecutionMode, Task
from bosun.scopes import collides


class Occupant(Protocol):
    """What ``plan`` reads of a running task (a ``Task`` is one; the store's claim hands
    the planner ``RunningTask`` rows, which carry only this)."""

    @property
    def id(self) -> int: ...
    @property
    def agent(self) -> str: ...
    @property
    def assigned_host(self) -> str | None: ...
    @property
    def repo(self) -> str | None: ...
    @property
    def scope(self) -> tuple[str, ...]: ...
    @property
    def execution_mode(self) -> ExecutionMode: ...


@dataclass(frozen=True, slots=True)
class HostSlot:
    """What the scheduler needs to know about one host."""

    name: str
    max_concurrent: int
    agents: frozenset[str] = frozenset()  # empty: every agent
    labels: frozenset[str] = frozenset()
    priority: int = 0  # higher first when loads are equal
    enabled: bool = True
    healthy: bool = True
    unhealthy_agents: frozenset[str] = frozenset()
    # bosun still stops runs there it gave up on: no new task until that is done (a task
    # waits for it, as for a free slot)
    reconciling: bool = False

    def can_run(self, agent: str) -> bool:
        if not (self.enabled and self.healthy) or agent in self.unhealthy_agents:
            return False
        return not self.agents or agent in self.agents


@dataclass(frozen=True, slots=True)
class Caps:
    total: int
    per_agent: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    task: Task
    host: str


@dataclass(frozen=True, slots=True)
class Skip:
    task: Task
    reason: str
    waiting: bool  # True: waits for capacity or a scope lock; False: no host can ever take it


@dataclass(frozen=True, slots=True)
class Plan:
    placements: tuple[Placement, ...]
    skipped: tuple[Skip, ...]


def required_labels(task: Task) -> frozenset[str]:
    """Task labels of the form ``host:LABEL`` ask for a host carrying ``LABEL``."""
    return frozenset(lbl[5:] for lbl in task.labels if lbl.startswith("host:") and lbl[5:])


def eligible(task: Task, host: HostSlot) -> bool:
    """Whether ``host`` could ever run ``task`` (ignoring load)."""
    if task.host is not None and task.host != host.name:
        return False
    if not host.can_run(task.agent):
        return False
    return required_labels(task) <= host.labels


def plan(
    candidates: Sequence[Task],
    running: Sequence[Occupant],
    hosts: Sequence[HostSlot],
    caps: Caps,
) -> Plan:
    """Place candidates (already in priority order) on hosts.

    Rules, in order: global cap; per-agent cap; scope locks against running and
    already-placed tasks; a host that can run the agent, carries the requested labels, is
    under its ``max_concurrent`` and not being reconciled; among those prefer one that is
    not the host of the previous failed attempt, then the least loaded (running / max),
    then higher host priority, then name.
    """
    by_host: Counter[str] = Counter(t.assigned_host for t in running if t.assigned_host)
    by_agent: Counter[str] = Counter(t.agent for t in running)
    total = len(running)
    busy: list[Occupant] = list(running)
    placements: list[Placement] = []
    skipped: list[Skip] = []
    for task in candidates:
        if total >= caps.total:
            skipped.append(Skip(task, f"global cap of {caps.total} running tasks", True))
            continue
        agent_cap = caps.per_agent.get(task.agent)
        if agent_cap is not None and by_agent[task.agent] >= agent_cap:
            skipped.append(Skip(task, f"agent {task.agent} is at its cap of {agent_cap}", True))
            continue
        blocker = next(
            (
                b
                for b in busy
                if b.id != task.id and collides(task.repo, task.scope, b.repo, b.scope)
            ),
            None,
        )
        if blocker is not None:
            skipped.append(Skip(task, f"scope overlaps task {blocker.id}", True))
            continue
        able = [h for h in hosts if eligible(task, h)]
        if not able:
            skipped.append(Skip(task, _why_no_host(task, hosts), False))
            continue
        free = [h for h in able if not h.reconciling and by_host[h.name] < h.max_concurrent]
        if not free:
            why = "every eligible host is at its max_concurrent"
            if later := ", ".join(h.name for h in able if h.reconciling):
                why += f" or still being reconciled ({later})"
            skipped.append(Skip(task, why, True))
            continue
        avoid = task.assigned_host if task.attempt > 0 else None
        best = min(
            free,
            key=lambda h: (
                h.name == avoid and len(free) > 1,
                by_host[h.name] / h.max_concurrent,
                -h.priority,
                h.name,
            ),
        )
        placements.append(Placement(task, best.name))
        by_host[best.name] += 1
        by_agent[task.agent] += 1
        total += 1
        busy.append(task)
    return Plan(tuple(placements), tuple(skipped))


def _why_no_host(task: Task, hosts: Sequence[HostSlot]) -> str:
    if task.host is not None:
        pinned = next((h for h in hosts if h.name == task.host), None)
        if pinned is None:
            return f"pinned to host {task.host}, which is not configured"
        if not pinned.enabled:
            return f"pinned to host {task.host}, which is drained or disabled"
        if not pinned.healthy:
            return f"pinned to host {task.host}, which is unhealthy"
        if not pinned.can_run(task.agent):
            return (
                f"pinned to host {task.host}, which cannot run agent {task.agent} "
                "(not in its agents list, or its CLI is missing there)"
            )
    if not any(h.enabled for h in hosts):
        return "no host is enabled"
    if not any(h.can_run(task.agent) for h in hosts):
        return f"no enabled, healthy host offers agent {task.agent}"
    labels = ", ".join(sorted(required_labels(task)))
    return f"no host carries the labels {labels}"
