"""Capability detection: what a host offers, found over its provider.

One exec of the constant :data:`PROBE_SCRIPT` answers the OS (``uname -s``, ``-r``,
``-m``), the number of CPUs, the memory and where each agent's program is (``command -v``);
the program names reach the script only as ``"$@"``, never inside its text. Then each
installed agent's ``version_command`` (the one ``bosun doctor`` runs) is one more exec,
all of them at once (over SSH they share the host's one connection). So a check costs two
round trips, however many agents there are.

The result is stored in the host's row (``capabilities``) and used by the dispatcher: a
host where the check found an agent's program missing gets no task of that agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bosun.agents.spec import AgentSpec
from bosun.errors import BosunError, ProviderError
from bosun.preflight import program_of
from bosun.providers.base import Provider

# A constant shell text; the programs to look for arrive as "$@". One line per fact,
# "key<TAB>value"; programs as "program<TAB>index<TAB>path" (empty path: not found).
PROBE_SCRIPT = r"""printf 'os\t%s\n' "$(uname -s 2>/dev/null)"
printf 'release\t%s\n' "$(uname -r 2>/dev/null)"
printf 'machine\t%s\n' "$(uname -m 2>/dev/null)"
n=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)
printf 'cpus\t%s\n' "$n"
m=
if [ -r /proc/meminfo ]; then
  while read -r k v _; do
    if [ "$k" = MemTotal: ]; then m=$((v * 1024)); break; fi
  done </proc/meminfo
else
  m=$(sysctl -n hw.memsize 2>/dev/null)
fi
printf 'memory\t%s\n' "$m"
i=0
for p in "$@"; do
  i=$((i + 1))
  w=$(command -v -- "$p" 2>/dev/null) || w=
  printf 'program\t%s\t%s\n' "$i" "$w"
done
"""

#: Seconds one probe may take (a version command of a node CLI can be slow to start).
PROBE_TIMEOUT = 60.0
#: Version commands run at once on one host.
VERSION_PARALLEL = 4


@dataclass(frozen=True, slots=True)
class AgentCapability:
    """Whether one agent's CLI is installed on a host, and its version."""

    agent: str
    program: str
    installed: bool
    path: str | None = None
    version: str | None = None
    error: str | None = None  # the version command failed (installed but broken?)

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "installed": self.installed,
            "path": self.path,
            "version": self.version,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, agent: str, data: Mapping[str, Any]) -> AgentCapability:
        return cls(
            agent=agent,
            program=str(data.get("program", "")),
            installed=bool(data.get("installed", False)),
            path=_opt_str(data.get("path")),
            version=_opt_str(data.get("version")),
            error=_opt_str(data.get("error")),
        )


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a check found on a host."""

    os: str | None = None  # uname -s: Linux, Darwin, ...
    os_release: str | None = None  # uname -r
    machine: str | None = None  # uname -m: x86_64, aarch64, ...
    cpus: int | None = None
    memory_bytes: int | None = None
    agents: Mapping[str, AgentCapability] = field(default_factory=dict)
    detected_at: datetime | None = None

    @property
    def labels(self) -> frozenset[str]:
        """Labels derived from the facts: ``os:linux``, ``arch:x86_64``. A task asks for
        one with the label ``host:os:linux`` (see ``scheduler.required_labels``)."""
        found = set()
        if self.os:
            found.add(f"os:{self.os.lower()}")
        if self.machine:
            found.add(f"arch:{self.machine}")
        return frozenset(found)

    def missing_agents(self) -> frozenset[str]:
        """Agents whose program the check did not find on the host."""
        return frozenset(name for name, a in self.agents.items() if not a.installed)

    def to_json(self) -> dict[str, Any]:
        return {
            "os": self.os,
            "os_release": self.os_release,
            "machine": self.machine,
            "cpus": self.cpus,
            "memory_bytes": self.memory_bytes,
            "agents": {name: a.to_json() for name, a in sorted(self.agents.items())},
            "detected_at": None if self.detected_at is None else self.detected_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capabilities | None:
        """The stored form back (``None`` for an empty dict: never checked)."""
        if not data:
            return None
        agents = data.get("agents") or {}
        detected = data.get("detected_at")
        try:
            when = datetime.fromisoformat(detected) if isinstance(detected, str) else None
        except ValueError:
            when = None
        return cls(
            os=_opt_str(data.get("os")),
            os_release=_opt_str(data.get("os_release")),
            machine=_opt_str(data.get("machine")),
            cpus=_opt_int(data.get("cpus")),
            memory_bytes=_opt_int(data.get("memory_bytes")),
            agents={
                str(name): AgentCapability.from_json(str(name), a)
                for name, a in agents.items()
                if isinstance(a, Mapping)
            },
            detected_at=when,
        )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


async def probe(provider: Provider, *, timeout: float) -> None:
    """The cheap health check: ``true`` on the host; ``ProviderError`` when it fails."""
    result = await provider.exec(["true"], timeout=timeout)
    if not result.ok:
        detail = (result.stderr or result.stdout).strip()[-300:]
        raise ProviderError(
            f"`true` exited {result.exit_code} on host {provider.name}"
            + (f": {detail}" if detail else ""),
            "check that the host has a working sh and that its disk is not full",
        )


async def detect(
    provider: Provider, agents: Mapping[str, AgentSpec], *, timeout: float = PROBE_TIMEOUT
) -> Capabilities:
    """Detect OS, CPUs, memory and the given agents' CLIs on the provider's host."""
    names = sorted(agents)
    programs = [program_of(agents[name]) for name in names]
    result = await provider.exec(
        ["sh", "-c", PROBE_SCRIPT, "bosun-probe", *programs], timeout=timeout
    )
    if not result.ok:
        raise ProviderError(
            f"the capability probe exited {result.exit_code} on host {provider.name}: "
            f"{result.stderr.strip()[-300:]}",
            "check that the host has a POSIX sh (bosun needs only sh, git and the agent CLIs)",
        )
    facts, paths = parse_probe(result.stdout, len(programs))
    found = {
        name: AgentCapability(name, program, path is not None, path)
        for name, program, path in zip(names, programs, paths, strict=True)
    }
    gate = asyncio.Semaphore(VERSION_PARALLEL)

    async def version(cap: AgentCapability) -> AgentCapability:
        argv = agents[cap.agent].version_argv()
        if not cap.installed or not argv:
            return cap
        async with gate:
            try:
                res = await provider.exec(list(argv), timeout=timeout)
            except BosunError as exc:
                return AgentCapability(
                    cap.agent, cap.program, True, cap.path, error=exc.message[:300]
                )
        lines = (res.stdout or res.stderr).strip().splitlines()
        text = lines[0].strip()[:120] if lines else None
        error = None if res.ok else f"`{' '.join(argv)}` exited {res.exit_code}"
        return AgentCapability(cap.agent, cap.program, True, cap.path, text, error)

    checked = await asyncio.gather(*(version(c) for c in found.values()))
    return Capabilities(
        os=facts.get("os") or None,
        os_release=facts.get("release") or None,
        machine=facts.get("machine") or None,
        cpus=_opt_int(facts.get("cpus")),
        memory_bytes=_opt_int(facts.get("memory")),
        agents={c.agent: c for c in checked},
        detected_at=datetime.now(UTC),
    )


def parse_probe(stdout: str, programs: int) -> tuple[dict[str, str], list[str | None]]:
    """The probe's output as (facts, path of each program or None), pure."""
    facts: dict[str, str] = {}
    paths: list[str | None] = [None] * programs
    for line in stdout.splitlines():
        key, _, rest = line.partition("\t")
        if key == "program":
            index, _, path = rest.partition("\t")
            if index.isdigit() and 1 <= int(index) <= programs and path.strip():
                paths[int(index) - 1] = path.strip()
        elif key in ("os", "release", "machine", "cpus", "memory"):
            facts[key] = rest.strip()
    return facts, paths


def agents_for(host_agents: Sequence[str], agents: Mapping[str, AgentSpec]) -> dict[str, AgentSpec]:
    """The agents to look for on a host: its ``agents`` list, or every configured one."""
    if host_agents:
        return {name: agents[name] for name in host_agents if name in agents}
    return dict(agents)
