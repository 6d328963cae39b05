"""Host operations behind ``Service`` (and so behind the CLI and the HTTP API).

``HostManager`` lists, registers (after a connectivity check), removes, drains, enables
and checks hosts, lists the runs a host waits for and forgets them (an operator takes
them over: see ``bosun.hosts.waiting``). Front ends call these through
``bosun.service.Service``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from bosun.config import Settings
from bosun.errors import InputError, StoreError
from bosun.hosts.check import CheckResult, ProviderFactory, check_host
from bosun.hosts.registry import Host, HostInfo, Registry, host_infos, merge, parse_host_config
from bosun.hosts.waiting import WaitingRun
from bosun.models import Event
from bosun.store.base import HostStore, Store


def host_store(store: Store) -> HostStore:
    if not isinstance(store, HostStore):
        raise StoreError(
            "this store does not keep a host registry",
            "open the store with bosun.store.open_store (SQLite or PostgreSQL)",
        )
    return store


class HostManager:
    def __init__(self, settings: Settings, store: Store, factory: ProviderFactory) -> None:
        self.settings = settings
        self.store = store
        self.registry = Registry(settings, host_store(store))
        self.factory = factory

    async def infos(self, hosts: list[Host] | None = None) -> list[HostInfo]:
        hosts = hosts if hosts is not None else await self.registry.hosts()
        running = await self.store.running()
        waiting = await self.registry.store.waiting_counts([h.name for h in hosts])
        return host_infos(hosts, (t.assigned_host for t in running), self.settings.agents, waiting)

    async def info(self, name: str) -> HostInfo:
        host = await self.registry.get(name)
        (info,) = await self.infos([host])
        return info

    async def add(
        self, name: str, fields: Mapping[str, Any], *, source: str = "cli", check: bool = True
    ) -> HostInfo:
        """Register a host. With ``check`` it must answer first (and its capabilities are
        stored); a failed check is an ``InputError`` with the reason, and nothing is
        stored. ``source`` "api" refuses the fields only bosun.toml may set."""
        data = dict(fields)
        data.setdefault("kind", "ssh" if data.get("address") else "local")
        config = parse_host_config(name, data, remote=source == "api")
        self.registry.check_new(name, config)
        capabilities = None
        checked_at = None
        if check:
            result = await check_host(self.settings, name, config, self.factory)
            if not result.ok:
                raise InputError(
                    f"host {name} was not added: {result.error}",
                    result.hint or "fix the connection, or add it with --no-check",
                )
            capabilities = result.capabilities
            checked_at = capabilities.detected_at if capabilities else None
        host = await self.registry.add(
            name, config, source=source, capabilities=capabilities, checked_at=checked_at
        )
        return await self.info(host.name)

    async def remove(self, name: str, *, force: bool = False) -> HostInfo:
        """Forget a registered host; refused while tasks run there unless ``force``."""
        # not through the merged list: rm must work while a name clash breaks it
        running = sum(1 for t in await self.store.running() if t.assigned_host == name)
        if running and not force:
            raise InputError(
                f"host {name} has {running} running task(s)",
                f"`bosun hosts drain {name}` and wait for them to end, or pass --force "
                "(the host is forgotten; runs already there are not stopped)",
            )
        record = await self.registry.remove(name)
        (host,) = merge(dataclasses.replace(self.settings, hosts={}), [record])
        return HostInfo(
            host, running, tuple(host.config.agents) or tuple(sorted(self.settings.agents))
        )

    async def drain(self, name: str) -> HostInfo:
        await self.registry.drain(name)
        return await self.info(name)

    async def enable(self, name: str) -> HostInfo:
        await self.registry.enable(name)
        return await self.info(name)

    async def check(self, name: str) -> CheckResult:
        """Check a known host and keep what was found (capabilities, health); the result
        also lists the runs the host waits for (they do not make the check fail)."""
        host = await self.registry.get(name)
        if host.problem is not None:
            raise InputError(
                f"host {name}: {host.problem}",
                f"remove it (`bosun hosts rm {name}`) and add it again",
            )
        result = await check_host(self.settings, name, host.config, self.factory)
        hs = self.registry.store
        if result.capabilities is not None:
            await self.registry.record_check(name, result.capabilities)
        elif not result.reachable:
            await hs.record_health(name, healthy=False, error=result.error)
        return dataclasses.replace(result, waiting=tuple(await hs.waiting_runs(name)))

    async def waiting(self, name: str) -> list[WaitingRun]:
        """The runs host ``name`` waits for before it gets new work (``NotFound`` for an
        unknown host)."""
        await self.registry.get(name)
        return await self.registry.store.waiting_runs(name)

    async def forget(
        self,
        name: str,
        run_ids: Collection[int],
        *,
        every: bool = False,
        by: str,
        note: str | None = None,
    ) -> list[Event]:
        """An operator (``by``) takes over runs host ``name`` waits for (``every``: all
        it waits for now): bosun no longer tries to stop them, and the host takes new
        work at its next reconcile. All or none; the ``run.forgotten`` events."""
        await self.registry.get(name)
        hs = self.registry.store
        if every and run_ids:
            raise InputError(
                "name runs to forget or pass --all, not both",
                f"`bosun hosts forget {name} RUN_ID...`, or `bosun hosts forget {name} --all`",
            )
        if every:
            run_ids = [w.run.id for w in await hs.waiting_runs(name)]
            if not run_ids:
                return []
        elif not run_ids:
            raise InputError(
                "no run to forget was named",
                f"`bosun hosts waiting {name}` lists the runs host {name} waits for; name "
                f"them (`bosun hosts forget {name} RUN_ID...`) or pass --all",
            )
        return await hs.forget_runs(name, run_ids, by=by, note=note)

    async def effective_settings(self) -> Settings:
        """The settings with every host of the registry (for providers and validation)."""
        return await self.registry.effective_settings()
