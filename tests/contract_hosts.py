"""The host registry contract: every rule of ``bosun.store.base.HostStore``, any backend.

A backend's test module subclasses ``HostStoreContract`` (named ``Test...``) and provides
the fixtures ``store`` (a fresh, empty, open store) and ``peer_store`` (a second store on
the same database, as another process would open it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from bosun.errors import BosunError, InputError, NotFound
from bosun.models import ErrorKind, NewEvent, Run, RunStatus, Task, TaskSpec, TaskStatus
from bosun.store.base import HostStore, Store


def _hs(store: Any) -> HostStore:
    assert isinstance(store, HostStore)
    return store


async def counts_agree(hs: HostStore, hosts: list[str]) -> dict[str, int]:
    """``waiting_counts`` for ``hosts``, and for every host, checked against
    ``len(waiting_runs(host))`` of each host (the same rule); returns the first."""
    lengths = {h: len(await hs.waiting_runs(h)) for h in hosts}
    counts = await hs.waiting_counts(hosts)
    assert counts == {h: n for h, n in lengths.items() if n}, (counts, lengths)
    every = await hs.waiting_counts()
    by_run = [w.run.host for w in await hs.waiting_runs()]
    assert every == {h: by_run.count(h) for h in by_run}, (every, by_run)
    return counts


async def _host_events(store: Store) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind, e.data) for e in await store.events_since(0) if e.kind.startswith("host.")]


class HostStoreContract:
    async def test_a_registered_host_is_stored_with_its_config_and_listed_by_name(
        self, store: Store
    ) -> None:
        hs = _hs(store)
        cfg = {"kind": "ssh", "address": "dev@127.0.0.2:2222", "labels": ["gpu"]}
        added = await hs.add_host("zeta", source="cli", config=cfg)
        await hs.add_host("alpha", source="api", config={"kind": "local"})
        assert added.name == "zeta" and added.source == "cli" and added.registered
        assert added.config == cfg and not added.drained
        assert added.health == "unknown" and added.capabilities == {}
        assert added.created_at is not None and added.created_at.tzinfo is not None
        assert [h.name for h in await hs.list_hosts()] == ["alpha", "zeta"]
        assert (await hs.get_host("zeta")).config == cfg

    async def test_unknown_host_is_not_found(self, store: Store) -> None:
        hs = _hs(store)
        with pytest.raises(NotFound, match="nope"):
            await hs.get_host("nope")
        with pytest.raises(NotFound):
            await hs.remove_host("nope")
        with pytest.raises(NotFound):
            await hs.update_host("nope", drained=True)

    async def test_a_second_registration_of_a_name_is_refused_and_changes_nothing(
        self, store: Store
    ) -> None:
        hs = _hs(store)
        await hs.add_host("box", source="cli", config={"kind": "local", "max_concurrent": 2})
        with pytest.raises(InputError, match="already registered") as err:
            await hs.add_host("box", source="api", config={"kind": "local"})
        assert err.value.hint is not None and "bosun hosts rm box" in err.value.hint
        assert (await hs.get_host("box")).config == {"kind": "local", "max_concurrent": 2}

    @pytest.mark.parametrize("name", ["", "-x", "a b", "x/../y", "é", "a" * 129, "a;rm"])
    async def test_bad_names_and_sources_are_refused(self, store: Store, name: str) -> None:
        hs = _hs(store)
        with pytest.raises(InputError, match="invalid host name"):
            await hs.add_host(name, source="cli", config={})
        with pytest.raises(InputError, match="source"):
            await hs.add_host("ok", source="config", config={})
        assert await hs.list_hosts() == []

    async def test_state_of_a_config_host_is_created_on_demand(self, store: Store) -> None:
        hs = _hs(store)
        row = await hs.update_host("local", create=True, drained=True)
        assert row.source == "config" and not row.registered and row.drained
        assert row.config == {}
        row = await hs.update_host("local", drained=False, capabilities={"os": "Linux"})
        assert not row.drained and row.capabilities == {"os": "Linux"}

    async def test_update_refuses_unknown_fields_and_bad_values(self, store: Store) -> None:
        hs = _hs(store)
        await hs.update_host("h", create=True)
        with pytest.raises(InputError, match="cannot set host field"):
            await hs.update_host("h", source="cli")
        with pytest.raises(InputError, match="drained"):
            await hs.update_host("h", drained="yes")
        with pytest.raises(InputError, match="health"):
            await hs.update_host("h", health="sick")
        with pytest.raises(InputError, match="timezone-aware"):
            await hs.update_host("h", checked_at=datetime(2024, 1, 1))
        with pytest.raises(InputError, match="JSON"):
            await hs.update_host("h", capabilities={"x": object()})
        assert (await hs.get_host("h")).health == "unknown"

    async def test_registering_over_a_leftover_config_state_row_replaces_it(
        self, store: Store
    ) -> None:
        hs = _hs(store)
        await hs.update_host("old", create=True, drained=True)
        added = await hs.add_host("old", source="cli", config={"kind": "local"})
        assert added.registered and not added.drained and added.config == {"kind": "local"}

    async def test_remove_returns_the_row_and_forgets_it(self, store: Store) -> None:
        hs = _hs(store)
        await hs.add_host("gone", source="cli", config={"kind": "local"})
        removed = await hs.remove_host("gone")
        assert removed.name == "gone" and removed.registered
        assert await hs.list_hosts() == []

    async def test_health_changes_append_one_event_each(self, store: Store) -> None:
        hs = _hs(store)
        now = datetime.now(UTC)
        row = await hs.record_health("h1", healthy=True, now=now)  # unknown -> healthy: quiet
        assert row.health == "healthy" and row.checked_at == now and row.source == "config"
        await hs.record_health("h1", healthy=False, error="connection refused")
        row = await hs.record_health("h1", healthy=False, error="timed out")
        assert row.health == "unhealthy" and row.health_error == "timed out"
        row = await hs.record_health("h1", healthy=True)
        assert row.health == "healthy" and row.health_error is None
        await hs.record_health("h1", healthy=True)
        # a host never seen before that fails at once: unknown -> unhealthy
        await hs.record_health("h2", healthy=False, error="no route")
        assert await _host_events(store) == [
            ("host.unhealthy", {"host": "h1", "error": "connection refused"}),
            ("host.healthy", {"host": "h1"}),
            ("host.unhealthy", {"host": "h2", "error": "no route"}),
        ]

    async def test_concurrent_health_reports_record_a_change_once(
        self, store: Store, peer_store: Store
    ) -> None:
        hs, peer = _hs(store), _hs(peer_store)
        await hs.add_host("shared", source="cli", config={"kind": "local"})
        for healthy in (False, True, False):
            await asyncio.gather(
                *(
                    s.record_health("shared", healthy=healthy, error="down")
                    for s in (hs, peer, hs, peer)
                )
            )
        kinds = [k for k, _ in await _host_events(store)]
        assert kinds == ["host.unhealthy", "host.healthy", "host.unhealthy"]

    async def test_a_peer_sees_registrations_and_races_on_a_name_have_one_winner(
        self, store: Store, peer_store: Store
    ) -> None:
        hs, peer = _hs(store), _hs(peer_store)
        results = await asyncio.gather(
            hs.add_host("race", source="cli", config={"kind": "local", "priority": 1}),
            peer.add_host("race", source="api", config={"kind": "local", "priority": 2}),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1 and len(losers) == 1
        assert isinstance(losers[0], InputError)
        assert (await peer.get_host("race")).config == winners[0].config
        await peer.update_host("race", drained=True)
        assert (await hs.get_host("race")).drained

    # -- the runs a host waits for, and forgetting them ----------------------------------
    async def test_waiting_runs_are_the_abandoned_and_the_unfollowed_ones(
        self, store: Store
    ) -> None:
        hs = _hs(store)
        w = await seed_waiting(store)
        found = await hs.waiting_runs("h1")
        assert [(x.run.id, x.why, x.task_status) for x in found] == [
            (w.abandoned.id, "abandoned", TaskStatus.QUEUED),
            (w.pending.id, "cancel_pending", TaskStatus.CANCELLED),
        ]
        gave_up, pending = found
        assert gave_up.since == w.abandoned_at
        assert pending.since is not None and pending.since == w.pending_at
        row = pending.to_json()
        assert row["run_id"] == w.pending.id and row["task_id"] == w.pending.task_id
        assert row["why"] == "cancel_pending" and "cancelled" in row["reason"]
        assert row["run_dir"] == "/runs/p" and row["pgid"] == 7
        assert [x.run.id for x in await hs.waiting_runs("h2")] == [w.elsewhere.id]
        assert [x.run.id for x in await hs.waiting_runs()] == [
            w.abandoned.id,
            w.pending.id,
            w.elsewhere.id,
        ]
        assert await hs.waiting_runs("nobody") == []
        assert await counts_agree(hs, ["h1", "h2", "nobody"]) == {"h1": 2, "h2": 1}

    async def test_waiting_counts_count_many_hosts_at_once_by_the_same_rule(
        self, store: Store
    ) -> None:
        hs = _hs(store)
        assert await hs.waiting_counts() == {} and await hs.waiting_counts(["h1"]) == {}
        w = await seed_waiting(store)
        # a second host of every kind: what makes a run waiting or not is the same there
        await seed_waiting(store, "h3", "h2")
        assert await counts_agree(hs, ["h1", "h2", "h3"]) == {"h1": 2, "h2": 2, "h3": 2}
        assert await hs.waiting_counts(["h3", "nobody", "h3"]) == {"h3": 2}
        assert await hs.waiting_counts([]) == {}
        with pytest.raises(TypeError, match="not one name"):
            await hs.waiting_counts("h1")
        # the task of the run whose cancel could not stop it is queued again (a new
        # attempt): nobody follows the old run still; forgetting one changes its host's count
        await store.transition(w.pending.task_id, TaskStatus.QUEUED, reason="retried")
        assert await counts_agree(hs, ["h1", "h2", "h3"]) == {"h1": 2, "h2": 2, "h3": 2}
        await hs.forget_runs("h1", [w.abandoned.id], by="ops")
        assert await counts_agree(hs, ["h1", "h2", "h3"]) == {"h1": 1, "h2": 2, "h3": 2}
        await hs.forget_runs("h1", [w.pending.id], by="ops")
        assert await counts_agree(hs, ["h1", "h2", "h3"]) == {"h2": 2, "h3": 2}

    async def test_forgotten_runs_wait_no_more_and_each_gets_an_event(self, store: Store) -> None:
        hs = _hs(store)
        w = await seed_waiting(store)
        before = {t.id: t for t in await store.list_tasks()}
        forgotten = await hs.forget_runs(
            "h1", [w.pending.id, w.abandoned.id], by="ops@example", note="host reimaged"
        )
        assert [(e.kind, e.run_id, e.task_id) for e in forgotten] == [
            ("run.forgotten", w.abandoned.id, w.abandoned.task_id),
            ("run.forgotten", w.pending.id, w.pending.task_id),
        ]
        first = forgotten[0].data
        assert first == {
            "run_id": w.abandoned.id,
            "host": "h1",
            "why": "abandoned",
            "reason": first["reason"],
            "task_status": "queued",
            "by": "ops@example",
            "note": "host reimaged",
        }
        assert "given up" in first["reason"]
        assert forgotten[1].data["why"] == "cancel_pending"
        assert [e.id for e in await store.events_since(0) if e.kind == "run.forgotten"] == [
            e.id for e in forgotten
        ]
        assert [x.run.id for x in await hs.waiting_runs("h1")] == []
        assert [x.run.id for x in await hs.waiting_runs()] == [w.elsewhere.id]
        assert await counts_agree(hs, ["h1", "h2"]) == {"h2": 1}
        gave_up = await store.get_run(w.abandoned.id)
        assert gave_up.ref["abandoned"] == "forgotten" and gave_up.status is RunStatus.LOST
        assert gave_up.ref["forgotten"]["by"] == "ops@example"
        assert gave_up.ref["forgotten"]["note"] == "host reimaged"
        assert gave_up.ref["run_dir"] == "/runs/a"  # the rest of the reference is kept
        pending = await store.get_run(w.pending.id)
        assert pending.status is RunStatus.LOST and pending.ended_at is not None
        assert pending.error is not None and "forgotten by ops@example" in pending.error
        # nothing already accepted is lost: the tasks are as they were
        assert {t.id: t for t in await store.list_tasks()} == before

    async def test_forgetting_what_does_not_wait_is_refused_and_changes_nothing(
        self, store: Store
    ) -> None:
        hs = _hs(store)
        w = await seed_waiting(store)
        cases: list[tuple[list[int], type[BosunError], str, str]] = [
            ([w.abandoned.id, 9999], NotFound, "run 9999 does not exist", "hosts waiting h1"),
            ([w.elsewhere.id], InputError, "ran on host h2, not on h1", "forget h2"),
            ([w.followed.id], InputError, "current run of task", "bosun cancel"),
            ([w.reconciled.id], InputError, "stopped by a reconcile", "hosts waiting h1"),
            (
                [w.ended.id],
                InputError,
                "not waiting to be stopped \\(status succeeded\\)",
                "hosts waiting h1",
            ),
            ([], InputError, "no run to forget", "run id"),
        ]
        for ids, kind, message, hint in cases:
            with pytest.raises(kind, match=message) as err:
                await hs.forget_runs("h1", ids, by="ops")
            assert err.value.hint is not None and hint in err.value.hint, err.value.hint
        with pytest.raises(InputError, match="by="):
            await hs.forget_runs("h1", [w.abandoned.id], by=" ")
        with pytest.raises(InputError, match="note"):
            await hs.forget_runs("h1", [w.abandoned.id], by="ops", note="x" * 1001)
        # all or nothing: the waiting run named with the unknown one still waits
        assert len(await hs.waiting_runs("h1")) == 2
        assert await counts_agree(hs, ["h1", "h2"]) == {"h1": 2, "h2": 1}
        assert [e for e in await store.events_since(0) if e.kind == "run.forgotten"] == []
        await hs.forget_runs("h1", [w.abandoned.id], by="ops")
        with pytest.raises(InputError, match="forgotten already \\(by ops at ") as err:
            await hs.forget_runs("h1", [w.abandoned.id], by="someone else")
        assert (await store.get_run(w.abandoned.id)).ref["forgotten"]["by"] == "ops"

    async def test_a_run_forgotten_from_two_stores_at_once_is_forgotten_once(
        self, store: Store, peer_store: Store
    ) -> None:
        w = await seed_waiting(store)
        results = await asyncio.gather(
            *(
                _hs(s).forget_runs("h1", [w.pending.id], by=f"ops{i}")
                for i, s in enumerate((store, peer_store, store, peer_store))
            ),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 3, results
        assert all(isinstance(e, InputError) and "already" in e.message for e in lost), lost
        events = [e for e in await store.events_since(0) if e.kind == "run.forgotten"]
        assert [e.id for e in events] == [won[0][0].id]

    # -- a reconcile's record of a stop ---------------------------------------------------
    async def test_a_reconcile_records_a_stop_with_its_event_once(self, store: Store) -> None:
        hs = _hs(store)
        w = await seed_waiting(store)
        killed = NewEvent("run.stray_killed", {"run_id": w.abandoned.id, "host": "h1"})
        marked = await hs.mark_reconciled(
            w.abandoned.id, ref={"abandoned": "reconciled"}, event=killed
        )
        assert marked is not None and marked.id == w.abandoned.id
        assert marked.ref == {**w.abandoned.ref, "abandoned": "reconciled"}
        assert await store.get_run(w.abandoned.id) == marked
        ended = datetime(2024, 5, 2, tzinfo=UTC)
        fields = {
            "status": RunStatus.CANCELLED,
            "exit_code": 143,
            "error_kind": ErrorKind.CANCELLED,
            "error": "cancelled by a user",
            "ended_at": ended,
        }
        stopped = await hs.mark_reconciled(w.pending.id, fields=fields)
        assert stopped is not None and stopped.status is RunStatus.CANCELLED
        assert stopped.exit_code == 143 and stopped.ended_at == ended
        assert stopped.ref == w.pending.ref
        (event,) = [e for e in await store.events_since(0) if e.kind == "run.stray_killed"]
        # the event is about the run: its task and run are the run's
        assert (event.task_id, event.run_id) == (w.abandoned.task_id, w.abandoned.id)
        assert await counts_agree(hs, ["h1", "h2"]) == {"h2": 1}
        # a second reconcile's record (or a run that never waited) changes nothing
        for run in (w.abandoned, w.pending, w.followed, w.reconciled, w.ended):
            again = await hs.mark_reconciled(run.id, ref={"abandoned": "x"}, event=killed)
            assert again is None, run.id
            assert await store.get_run(run.id) == (
                marked if run is w.abandoned else stopped if run is w.pending else run
            )
        assert [e.id for e in await store.events_since(0) if e.kind == "run.stray_killed"] == [
            event.id
        ]
        with pytest.raises(NotFound, match="run 9999"):
            await hs.mark_reconciled(9999, ref={"abandoned": "reconciled"})
        with pytest.raises(InputError, match="ref="):
            await hs.mark_reconciled(w.elsewhere.id, fields={"ref": {}})
        with pytest.raises(InputError, match="cannot set run field"):
            await hs.mark_reconciled(w.elsewhere.id, fields={"host": "h3"})
        assert len(await hs.waiting_runs("h2")) == 1

    async def test_a_reconcile_never_overwrites_a_forgotten_run(self, store: Store) -> None:
        hs = _hs(store)
        w = await seed_waiting(store)
        # the reconcile read both runs as waiting; an operator forgets them; then the
        # reconcile, having stopped them, records it
        forgotten = await hs.forget_runs("h1", [w.abandoned.id, w.pending.id], by="ops")
        before = {r.id: await store.get_run(r.id) for r in (w.abandoned, w.pending)}
        killed = NewEvent("run.stray_killed", {"host": "h1"})
        assert await hs.mark_reconciled(w.abandoned.id, ref={"abandoned": "reconciled"}) is None
        assert await hs.mark_reconciled(w.abandoned.id, event=killed) is None
        cancelled = {"status": RunStatus.CANCELLED, "error": "cancelled by a user"}
        assert await hs.mark_reconciled(w.pending.id, fields=cancelled, event=killed) is None
        assert {r.id: await store.get_run(r.id) for r in (w.abandoned, w.pending)} == before
        assert before[w.abandoned.id].ref["forgotten"]["by"] == "ops"
        kinds = [e.kind for e in await store.events_since(0) if e.kind.startswith("run.")]
        assert kinds == ["run.cancel_pending", "run.forgotten", "run.forgotten"]
        assert [e.id for e in forgotten] == [
            e.id for e in await store.events_since(0) if e.kind == "run.forgotten"
        ]

    async def test_a_forget_and_a_reconciles_record_at_once_one_of_them_wins(
        self, store: Store, peer_store: Store
    ) -> None:
        w = await seed_waiting(store)
        cancelled = {"status": RunStatus.CANCELLED, "error": "cancelled by a user"}
        killed = NewEvent("run.stray_killed", {"host": "h1"})
        for run, record in (
            (w.abandoned, {"ref": {"abandoned": "reconciled"}}),
            (w.pending, {"fields": cancelled}),
        ):
            forget, mark = await asyncio.gather(
                _hs(store).forget_runs("h1", [run.id], by="ops"),
                _hs(peer_store).mark_reconciled(run.id, event=killed, **record),
                return_exceptions=True,
            )
            now = await store.get_run(run.id)
            events = [e.kind for e in await store.events_since(0) if e.run_id == run.id]
            if mark is None:  # the forget came first
                assert isinstance(forget, list) and [e.run_id for e in forget] == [run.id]
                assert now.ref["forgotten"]["by"] == "ops"
                assert "run.stray_killed" not in events and "run.forgotten" in events
            else:  # the reconcile came first: the run no longer waits, nothing to forget
                assert isinstance(mark, Run) and mark == now, (forget, mark)
                assert isinstance(forget, InputError), forget
                assert "forgotten" not in now.ref
                assert "run.stray_killed" in events and "run.forgotten" not in events


@dataclass
class Waiting:
    """What ``seed_waiting`` made (``h1`` / ``h2``: the hosts it was given)."""

    abandoned: Run  # h1, given up; its task queued again
    abandoned_at: datetime
    pending: Run  # h1, going, its task cancelled (bosun cancel could not stop it)
    pending_at: datetime
    elsewhere: Run  # h2, given up
    followed: Run  # h1, the current run of a running task
    reconciled: Run  # h1, given up and since stopped by a reconcile
    ended: Run  # h1, succeeded


#: When ``seed_waiting``'s given-up runs ended.
GIVEN_UP_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


async def _running(store: Store, host: str) -> Task:
    task = await store.add_task(TaskSpec(title=f"on {host}"), max_attempts=3)
    now = datetime.now(UTC)
    claimed = await store.claim(task.id, owner="d1", host=host, lease_seconds=60, now=now)
    assert claimed is not None and claimed.attempt == 1
    return claimed


async def _going(store: Store, task: Task, host: str, name: str) -> Run:
    ref = {"run_dir": f"/runs/{name}", "pgid": 7}
    return await store.add_run(task.id, attempt=task.attempt, host=host, agent="echo", ref=ref)


async def _given_up(store: Store, host: str, name: str, abandoned: object = True) -> Run:
    """A run on ``host`` given up (``abandoned``) at ``GIVEN_UP_AT``; its task queued."""
    task = await _running(store, host)
    run = await _going(store, task, host, name)
    run = await store.update_run(
        run.id,
        status=RunStatus.LOST,
        ended_at=GIVEN_UP_AT,
        ref={**run.ref, "abandoned": abandoned},
    )
    await store.transition(task.id, TaskStatus.QUEUED, reason="given up")
    return run


async def seed_waiting(store: Store, h1: str = "h1", h2: str = "h2") -> Waiting:
    """Runs on hosts ``h1`` and ``h2`` of every kind: waiting for their host or not."""
    abandoned = await _given_up(store, h1, "a")
    doomed = await _running(store, h1)
    pending = await _going(store, doomed, h1, "p")
    await store.transition(doomed.id, TaskStatus.CANCELLED, reason="cancelled by a user")
    said = await store.append_event(
        NewEvent(
            "run.cancel_pending",
            {"run_id": pending.id, "host": h1, "error": "no route", "unreachable": True},
            task_id=doomed.id,
            run_id=pending.id,
        )
    )
    elsewhere = await _given_up(store, h2, "e")
    followed = await _going(store, await _running(store, h1), h1, "f")
    reconciled = await _given_up(store, h1, "r", abandoned="reconciled")
    ended = await _going(store, await _running(store, h1), h1, "s")
    ended = await store.update_run(ended.id, status=RunStatus.SUCCEEDED, exit_code=0)
    not_a_dir = await _running(store, h1)  # a run with no run directory: nothing to stop
    await store.add_run(not_a_dir.id, attempt=1, host=h1, agent="echo", ref={})
    await store.transition(not_a_dir.id, TaskStatus.CANCELLED, reason="cancelled")
    return Waiting(
        abandoned=abandoned,
        abandoned_at=GIVEN_UP_AT,
        pending=pending,
        pending_at=said.created_at,
        elsewhere=elsewhere,
        followed=followed,
        reconciled=reconciled,
        ended=ended,
    )
