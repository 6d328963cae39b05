"""The host registry: hosts of ``bosun.toml`` plus hosts added at run time, with state.

A host comes from ``[hosts.NAME]`` in ``bosun.toml`` (the file stays the source of its
settings) or from ``bosun hosts add`` / ``POST /api/v1/hosts`` (its ``HostConfig`` fields
are stored in the ``hosts`` table). Either way the table keeps its state: drained or not,
the capabilities its last check found, its health. A name used by both is a
``ConfigError`` that says which one to remove.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from bosun.config import HostConfig, Settings
from bosun.errors import ConfigError, InputError, NotFound
from bosun.hosts.capabilities import Capabilities
from bosun.hosts.records import HostRecord
from bosun.store.base import HostStore
from bosun.store.sql_hosts import check_host_name

#: ``HostConfig`` fields that only ``bosun.toml`` may set: they name programs or files on
#: the orchestrator's machine, which a remote caller of the API must not choose.
FILE_ONLY_FIELDS = frozenset({"wake_command", "identity_file", "known_hosts", "ssh_config"})


@dataclass(frozen=True, slots=True)
class Host:
    """One host as the registry sees it: settings, source and state."""

    name: str
    source: str  # "config" (bosun.toml), "cli" or "api"
    config: HostConfig
    drained: bool = False
    health: str = "unknown"
    health_error: str | None = None
    checked_at: datetime | None = None
    capabilities: Capabilities | None = None
    problem: str | None = None  # a stored configuration that no longer validates

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def address(self) -> str | None:
        return self.config.address

    @property
    def enabled(self) -> bool:
        """May get new work: enabled in its settings, not drained, configuration valid."""
        return self.config.enabled and not self.drained and self.problem is None

    @property
    def labels(self) -> frozenset[str]:
        """The user's labels plus those derived from its capabilities (``os:linux``...)."""
        derived = self.capabilities.labels if self.capabilities else frozenset()
        return frozenset(self.config.labels) | derived

    def missing_agents(self) -> frozenset[str]:
        """Agents whose CLI the last check did not find on the host."""
        return self.capabilities.missing_agents() if self.capabilities else frozenset()


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A host with its current load, as ``bosun hosts`` and ``GET /api/v1/hosts`` show it."""

    host: Host
    running: int
    agents: tuple[str, ...]  # the agents it may run (its list, else every agent)
    waiting: int = 0  # runs to stop there before it gets new work (bosun.hosts.waiting)

    @property
    def name(self) -> str:
        return self.host.name

    def to_json(self) -> dict[str, Any]:
        h = self.host
        return {
            "name": h.name,
            "kind": h.kind,
            "address": h.address,
            "source": h.source,
            "enabled": h.enabled,
            "drained": h.drained,
            "health": h.health,
            "healthy": h.health != "unhealthy" and h.problem is None,
            "health_error": h.health_error or h.problem,
            "checked_at": None if h.checked_at is None else h.checked_at.isoformat(),
            "max_concurrent": h.config.max_concurrent,
            "running": self.running,
            "waiting_runs": self.waiting,
            "priority": h.config.priority,
            "agents": list(self.agents),
            "missing_agents": sorted(h.missing_agents()),
            "labels": sorted(h.labels),
            "strict_host_keys": h.config.strict_host_keys,
            "capabilities": None if h.capabilities is None else h.capabilities.to_json(),
        }


def parse_host_config(name: str, data: Mapping[str, Any], *, remote: bool = False) -> HostConfig:
    """``HostConfig`` from user input (CLI options, an API body); ``InputError`` naming the
    field and the fix. ``remote``: refuse the fields only ``bosun.toml`` may set."""
    check_host_name(name)
    if remote:
        refused = sorted(FILE_ONLY_FIELDS & set(data))
        if refused:
            raise InputError(
                f"host {name}: {', '.join(refused)} can only be set in bosun.toml",
                f"add [hosts.{name}] to bosun.toml instead, or leave these fields out",
            )
    try:
        return HostConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'host'}: "
            + str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise InputError(
            f"host {name}: {problems}",
            "fix the value (see `bosun hosts add --help` and docs/hosts.md)",
        ) from None


class Registry:
    """Hosts of ``settings`` merged with the rows of a ``HostStore``."""

    def __init__(self, settings: Settings, store: HostStore) -> None:
        self.settings = settings
        self.store = store

    # -- reading -------------------------------------------------------------------------
    async def hosts(self) -> list[Host]:
        """Every host: those of ``bosun.toml`` (in file order), then registered ones by name.

        ``ConfigError`` when a registered host has the name of one in ``bosun.toml``."""
        return merge(self.settings, await self.store.list_hosts())

    async def get(self, name: str) -> Host:
        for host in await self.hosts():
            if host.name == name:
                return host
        known = ", ".join(h.name for h in await self.hosts()) or "none"
        raise NotFound(f"host {name!r} does not exist (known: {known})", "list them: `bosun hosts`")

    async def effective_settings(self) -> Settings:
        """``settings`` with every usable host in ``hosts`` (for providers, validation)."""
        return with_hosts(self.settings, await self.hosts())

    # -- changing ------------------------------------------------------------------------
    def check_new(self, name: str, config: HostConfig) -> None:
        """``InputError`` unless ``name`` / ``config`` may be registered."""
        check_host_name(name)
        if name in self.settings.hosts:
            raise InputError(
                f"host {name!r} is already defined in {self.settings.config_path} ([hosts.{name}])",
                f"pick another name, or change [hosts.{name}] in that file",
            )
        known = ", ".join(sorted(self.settings.agents))
        for agent in config.agents:
            if agent not in self.settings.agents:
                raise InputError(
                    f"host {name}: unknown agent {agent!r}",
                    f"use one of: {known} (or none for every agent)",
                )

    async def add(
        self,
        name: str,
        config: HostConfig,
        *,
        source: str = "cli",
        capabilities: Capabilities | None = None,
        checked_at: datetime | None = None,
    ) -> Host:
        """Register a host (its check, if any, already done by the caller)."""
        self.check_new(name, config)
        await self.store.add_host(
            name,
            source=source,
            config=config.model_dump(mode="json", exclude_unset=True),
            capabilities=capabilities.to_json() if capabilities else {},
            health="healthy" if checked_at is not None else "unknown",
            checked_at=checked_at,
        )
        return await self.get(name)

    async def remove(self, name: str) -> HostRecord:
        """Forget a registered host. A host of ``bosun.toml`` cannot be removed here."""
        try:
            record = await self.store.get_host(name)
        except NotFound:
            record = None
        if record is None or not record.registered:
            if name in self.settings.hosts:
                raise InputError(
                    f"host {name!r} is defined in {self.settings.config_path}",
                    f"remove [hosts.{name}] from that file, or `bosun hosts drain {name}`",
                )
            raise NotFound(f"host {name!r} does not exist", "list hosts with `bosun hosts`")
        return await self.store.remove_host(name)

    async def drain(self, name: str) -> Host:
        """No new work for the host; its running runs go on."""
        await self.get(name)
        await self.store.update_host(name, create=True, drained=True)
        return await self.get(name)

    async def enable(self, name: str) -> Host:
        """Undo ``drain``. A host disabled in ``bosun.toml`` stays disabled (said so)."""
        host = await self.get(name)
        if not host.config.enabled:
            raise InputError(
                f"host {name!r} is disabled in {self.settings.config_path} (enabled = false)",
                f"set enabled = true in [hosts.{name}] there",
            )
        await self.store.update_host(name, create=True, drained=False)
        return await self.get(name)

    async def record_check(self, name: str, capabilities: Capabilities) -> Host:
        """Keep what a check found (the host answered, so it is healthy too)."""
        await self.store.update_host(name, create=True, capabilities=capabilities.to_json())
        await self.store.record_health(name, healthy=True)
        return await self.get(name)


def merge(settings: Settings, records: Iterable[HostRecord]) -> list[Host]:
    """Config hosts (with their state rows) and registered hosts, as ``Host`` values."""
    rows = {r.name: r for r in records}
    clash = sorted(n for n, r in rows.items() if r.registered and n in settings.hosts)
    if clash:
        name = clash[0]
        raise ConfigError(
            f"host {name!r} is defined in {settings.config_path} ([hosts.{name}]) and was "
            f"also added with `bosun hosts add`",
            f"remove one of them: `bosun hosts rm {name}`, or the [hosts.{name}] table",
        )
    hosts = [_host(name, "config", cfg, rows.get(name)) for name, cfg in settings.hosts.items()]
    for name, row in sorted(rows.items()):
        if not row.registered:
            continue  # the state of a host that is no longer in bosun.toml
        problem = None
        try:
            cfg = HostConfig.model_validate(row.config)
        except ValidationError as exc:
            cfg = HostConfig(enabled=False)
            problem = f"its stored configuration is invalid: {exc.errors()[0]['msg']}"
        if problem is None:
            unknown = [a for a in cfg.agents if a not in settings.agents]
            if unknown:
                problem = f"unknown agent(s) {', '.join(unknown)}"
        hosts.append(_host(name, row.source, cfg, row, problem))
    return hosts


def _host(
    name: str, source: str, cfg: HostConfig, row: HostRecord | None, problem: str | None = None
) -> Host:
    if row is None:
        return Host(name, source, cfg, problem=problem)
    return Host(
        name=name,
        source=source,
        config=cfg,
        drained=row.drained,
        health=row.health,
        health_error=row.health_error,
        checked_at=row.checked_at,
        capabilities=Capabilities.from_json(row.capabilities),
        problem=problem,
    )


def with_hosts(settings: Settings, hosts: Sequence[Host]) -> Settings:
    """``settings`` whose ``hosts`` are ``hosts`` (those with a valid configuration)."""
    return dataclasses.replace(
        settings, hosts={h.name: h.config for h in hosts if h.problem is None}
    )


def host_infos(
    hosts: Sequence[Host],
    running_hosts: Iterable[str | None],
    agents: Iterable[str],
    waiting: Mapping[str, int] | None = None,
) -> list[HostInfo]:
    """``HostInfo`` rows: each host with its running count, the agents it may run and
    how many runs it waits for (``waiting``: {host: count}, ``HostStore.waiting_counts``;
    a host not in it waits for none)."""
    load: dict[str, int] = {}
    for name in running_hosts:
        if name is not None:
            load[name] = load.get(name, 0) + 1
    waiting = waiting or {}
    every = tuple(sorted(agents))
    return [
        HostInfo(h, load.get(h.name, 0), tuple(h.config.agents) or every, waiting.get(h.name, 0))
        for h in hosts
    ]
