"""``bosun hosts check``: can bosun reach a host, is its key trusted, what does it offer?

The check opens the host's provider (for SSH: connect, host key verified strictly unless
the host opts out), runs ``true`` and then the capability probes of
``bosun.hosts.capabilities``. Nothing here raises for an unreachable host: the result says
what failed and how to fix it (the provider's own message and hint, e.g. an unknown host
key with its fingerprint and ``bosun hosts trust HOST``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bosun.config import HostConfig, Settings
from bosun.errors import BosunError, HostKeyError
from bosun.hosts.capabilities import Capabilities, agents_for, detect, probe
from bosun.hosts.waiting import WaitingRun
from bosun.providers.base import Provider

#: Builds the providers of the hosts in ``settings.hosts`` (``service.make_providers``).
ProviderFactory = Callable[[Settings], Mapping[str, Provider]]

#: Seconds the ``true`` of a check may take once connected.
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    host: str
    kind: str
    address: str | None
    reachable: bool
    # "trusted" (verified), "not checked" (strict_host_keys = false), "local",
    # "unknown" (no key recorded: `bosun hosts trust`), "changed" (differs from the record)
    host_key: str
    error: str | None = None
    hint: str | None = None
    fingerprint: str | None = None  # of an unknown / changed host key, when known
    capabilities: Capabilities | None = None
    labels: tuple[str, ...] = ()
    # the runs the host waits for (``bosun hosts waiting``): no new work there until
    # bosun has stopped them; they do not make the check fail
    waiting: tuple[WaitingRun, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reachable and self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "kind": self.kind,
            "address": self.address,
            "ok": self.ok,
            "reachable": self.reachable,
            "host_key": self.host_key,
            "fingerprint": self.fingerprint,
            "error": self.error,
            "hint": self.hint,
            "labels": list(self.labels),
            "capabilities": None if self.capabilities is None else self.capabilities.to_json(),
            "waiting": [w.to_json() for w in self.waiting],
        }


def _key_state(cfg: HostConfig) -> str:
    if cfg.kind == "local":
        return "local"
    return "trusted" if cfg.strict_host_keys else "not checked"


async def check_host(
    settings: Settings,
    name: str,
    cfg: HostConfig,
    factory: ProviderFactory,
    *,
    capabilities: bool = True,
) -> CheckResult:
    """Connect to ``name`` (configured as ``cfg``), run ``true`` and, with
    ``capabilities``, detect what it offers. Never raises for a host problem."""
    alone = dataclasses.replace(settings, hosts={name: cfg})
    base = CheckResult(name, cfg.kind, cfg.address, False, _key_state(cfg))
    try:
        providers = factory(alone)
    except BosunError as exc:
        return dataclasses.replace(base, error=exc.message, hint=exc.hint)
    provider = providers.get(name)
    try:
        if provider is None:
            return dataclasses.replace(
                base,
                error=f"this bosun cannot reach {cfg.kind} hosts (no provider for host {name})",
                hint="update bosun, or use a kind this version supports",
            )
        budget = cfg.connect_timeout + PROBE_TIMEOUT
        try:
            async with asyncio.timeout(budget):
                await provider.ensure_ready()
                await probe(provider, timeout=PROBE_TIMEOUT)
        except TimeoutError:
            return dataclasses.replace(
                base,
                error=f"host {name} did not answer within {budget:g}s",
                hint="check that the host is up and reachable from here (address, firewall)",
            )
        except HostKeyError as exc:
            return dataclasses.replace(
                base,
                host_key="changed" if exc.changed else "unknown",
                error=exc.message,
                hint=exc.hint,
                fingerprint=exc.fingerprint,
            )
        except BosunError as exc:
            return dataclasses.replace(base, error=exc.message, hint=exc.hint)
        reachable = dataclasses.replace(base, reachable=True, labels=tuple(sorted(cfg.labels)))
        if not capabilities:
            return reachable
        try:
            caps = await detect(provider, agents_for(cfg.agents, settings.agents))
        except BosunError as exc:
            return dataclasses.replace(reachable, error=exc.message, hint=exc.hint)
        labels = tuple(sorted(set(cfg.labels) | caps.labels))
        return dataclasses.replace(reachable, capabilities=caps, labels=labels)
    finally:
        for p in providers.values():
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                await p.aclose()
