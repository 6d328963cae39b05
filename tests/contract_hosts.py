"""The host registry contract: every rule of ``bosun.store.base.HostStore``, any backend.

A backend's test module subclasses ``HostStoreContract`` (named ``Test...``) and provides
the fixtures ``store`` (a fresh, empty, open store) and ``peer_store`` (a second store on
the same database, as another process would open it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from bosun.errors import InputError, NotFound
from bosun.models import RunStatus, TaskSpec
from bosun.store.base import HostStore, Store


def _hs(store: Any) -> HostStore:
    assert isinstance(store, HostStore)
    return store


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

    async def test_host_runs_selects_by_host_and_status(self, store: Store) -> None:
        hs = _hs(store)
        task = await store.add_task(TaskSpec(title="t"), max_attempts=3)
        a = await store.add_run(task.id, attempt=1, host="a", agent="echo", ref={})
        b = await store.add_run(task.id, attempt=2, host="b", agent="echo", ref={})
        c = await store.add_run(task.id, attempt=3, host="a", agent="echo", ref={})
        await store.update_run(a.id, status=RunStatus.LOST)
        await store.update_run(b.id, status=RunStatus.LOST)
        found = await hs.host_runs("a", [RunStatus.LOST])
        assert [r.id for r in found] == [a.id]
        both = await hs.host_runs("a", [RunStatus.LOST, RunStatus.STARTING])
        assert [r.id for r in both] == [a.id, c.id]
        assert await hs.host_runs("a", []) == []
