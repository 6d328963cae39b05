from __future__ import annotations

from bosun.models import TaskStatus
from bosun.scheduler import Caps, HostSlot, plan
from tests.factories import make_task

A = HostSlot("a", max_concurrent=2)
B = HostSlot("b", max_concurrent=2)


def test_least_loaded_host_wins() -> None:
    busy = make_task(9, status=TaskStatus.RUNNING, assigned_host="a")
    p = plan([make_task(1)], [busy], [A, B], Caps(10))
    assert [(x.task.id, x.host) for x in p.placements] == [(1, "b")]


def test_load_is_spread_within_one_pass() -> None:
    p = plan([make_task(i) for i in range(1, 5)], [], [A, B], Caps(10))
    hosts = sorted(x.host for x in p.placements)
    assert hosts == ["a", "a", "b", "b"]


def test_global_cap() -> None:
    p = plan([make_task(i) for i in range(1, 5)], [], [A, B], Caps(3))
    assert len(p.placements) == 3
    assert p.skipped[0].waiting and "global cap" in p.skipped[0].reason


def test_per_agent_cap() -> None:
    tasks = [make_task(1, agent="claude"), make_task(2, agent="claude"), make_task(3)]
    p = plan(tasks, [], [A, B], Caps(10, {"claude": 1}))
    assert [x.task.id for x in p.placements] == [1, 3]


def test_host_cap() -> None:
    p = plan([make_task(i) for i in range(1, 4)], [], [HostSlot("a", 2)], Caps(10))
    assert len(p.placements) == 2 and "max_concurrent" in p.skipped[0].reason


def test_capabilities_and_labels() -> None:
    gpu = HostSlot("gpu", 2, agents=frozenset({"ollama"}), labels=frozenset({"gpu"}))
    tasks = [make_task(1, agent="ollama", labels=("host:gpu",)), make_task(2, agent="claude")]
    p = plan(tasks, [], [A, gpu], Caps(10))
    assert {(x.task.id, x.host) for x in p.placements} == {(1, "gpu"), (2, "a")}
    none = plan([make_task(3, labels=("host:tpu",))], [], [A, gpu], Caps(10))
    assert not none.placements and not none.skipped[0].waiting
    assert "tpu" in none.skipped[0].reason


def test_unknown_agent_is_not_waiting() -> None:
    only = HostSlot("a", 2, agents=frozenset({"codex"}))
    p = plan([make_task(1, agent="claude")], [], [only], Caps(10))
    assert not p.skipped[0].waiting and "claude" in p.skipped[0].reason


def test_disabled_and_unhealthy_hosts_get_nothing() -> None:
    off = HostSlot("off", 5, enabled=False)
    sick = HostSlot("sick", 5, healthy=False)
    p = plan([make_task(1)], [], [off, sick, A], Caps(10))
    assert p.placements[0].host == "a"


def test_pinned_host() -> None:
    p = plan([make_task(1, host="b")], [], [A, B], Caps(10))
    assert p.placements[0].host == "b"


def test_scope_lock_against_running_and_planned() -> None:
    r = make_task(9, status=TaskStatus.RUNNING, assigned_host="a", scope=("src",))
    tasks = [
        make_task(1, scope=("src/api",)),
        make_task(2, scope=("docs",)),
        make_task(3, scope=("docs/x",)),
    ]
    p = plan(tasks, [r], [A, B], Caps(10))
    assert [x.task.id for x in p.placements] == [2]
    reasons = {s.task.id: s.reason for s in p.skipped}
    assert "task 9" in reasons[1] and "task 2" in reasons[3]


def test_retry_prefers_another_host() -> None:
    retry = make_task(1, attempt=1, assigned_host="a")
    assert plan([retry], [], [A, B], Caps(10)).placements[0].host == "b"
    # but uses the same host when it is the only one
    assert plan([retry], [], [A], Caps(10)).placements[0].host == "a"


def test_host_priority_breaks_ties() -> None:
    hi = HostSlot("z", 2, priority=10)
    assert plan([make_task(1)], [], [A, hi], Caps(10)).placements[0].host == "z"
