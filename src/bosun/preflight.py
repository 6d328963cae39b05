"""Preflight: is an agent installed on a host, which version, and can it authenticate?

``bosun doctor`` runs the full check for every agent on every host and prints the fix for
each problem. The dispatcher runs the cheap part (is the program there?) before an agent's
first use on a host, so a missing CLI fails one attempt with a clear message instead of
every attempt with "not found".
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec
from bosun.errors import BosunError
from bosun.providers.base import Provider

#: Environment variables that carry credentials, by the shape of their names.
_SECRET_SUFFIXES = ("_API_KEY", "_AUTH_TOKEN", "_ACCESS_TOKEN")
#: Credentials an agent can do without (a local Ollama needs no key).
_OPTIONAL = frozenset({"OLLAMA_API_KEY"})


@dataclass(frozen=True, slots=True)
class AgentCheck:
    host: str
    agent: str
    program: str
    installed: bool
    path: str | None = None
    version: str | None = None
    credentials: str | None = None  # which variable provides them, "not needed", or None
    problems: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "agent": self.agent,
            "program": self.program,
            "installed": self.installed,
            "path": self.path,
            "version": self.version,
            "credentials": self.credentials,
            "ok": self.ok,
            "problems": list(self.problems),
            "fixes": list(self.fixes),
        }


def program_of(spec: AgentSpec) -> str:
    """The program an agent runs: argv[0] of its command, ``{python}`` filled in."""
    return spec.command[0].replace("{python}", sys.executable)


def credential_vars(spec: AgentSpec) -> tuple[str, ...]:
    """The credential variables an agent may receive (from its allowlist)."""
    extra = [p for p in spec.env_allow if p not in DEFAULT_ENV_ALLOW]
    return tuple(p for p in extra if p.endswith(_SECRET_SUFFIXES) and p not in _OPTIONAL)


async def locate(provider: Provider, program: str) -> str | None:
    """The path of ``program`` on the host, or None (argv only: no shell string)."""
    try:
        found = await provider.exec(["sh", "-c", 'command -v -- "$1"', "sh", program], timeout=20)
    except BosunError:
        return None
    path = found.stdout.strip()
    return path if found.ok and path else None


async def check_agent(
    provider: Provider, host: str, spec: AgentSpec, environ: Mapping[str, str]
) -> AgentCheck:
    """Installed, version, credentials; each problem with the command or setting that fixes it."""
    program = program_of(spec)
    path = await locate(provider, program)
    problems: list[str] = []
    fixes: list[str] = []
    if path is None:
        problems.append(f"{program} is not installed on {host} (not on PATH)")
        fixes.append(f"install {program} on {host}, or set [agents.{spec.name}] command")
        return AgentCheck(
            host, spec.name, program, False, problems=tuple(problems), fixes=tuple(fixes)
        )
    if spec.tmux and await locate(provider, "tmux") is None:
        # tmux mode cannot start a run without it: as good as a missing program
        problems.append(f"tmux is not installed on {host} (agent {spec.name} runs in tmux mode)")
        fixes.append(f"install tmux on {host}, or set [agents.{spec.name}] tmux = false")
        return AgentCheck(
            host, spec.name, program, False, path, problems=tuple(problems), fixes=tuple(fixes)
        )
    version = None
    argv = spec.version_argv()
    if argv:
        try:
            result = await provider.exec(list(argv), timeout=60)
        except BosunError as exc:
            problems.append(f"`{' '.join(argv)}` failed: {exc.message}")
            fixes.append(f"run `{' '.join(argv)}` on {host} and fix what it says")
        else:
            lines = (result.stdout or result.stderr).strip().splitlines()
            version = lines[0][:120] if lines else None
            if not result.ok:
                problems.append(f"`{' '.join(argv)}` exited {result.exit_code}")
                fixes.append(f"run `{' '.join(argv)}` on {host} and fix what it says")
    needed = credential_vars(spec)
    credentials: str | None
    if not needed:
        credentials = "not needed"
    else:
        present = [
            name
            for name in needed
            if any(fnmatchcase(key, name) for key, value in environ.items() if value)
        ]
        credentials = present[0] if present else None
        if credentials is None:
            problems.append(f"no credentials: none of {', '.join(needed)} is set for bosun")
            fixes.append(
                f"export {needed[0]}=... in bosun's environment (agents run with an isolated "
                "HOME, so a login stored in your home directory is not seen)"
            )
    return AgentCheck(
        host, spec.name, program, True, path, version, credentials, tuple(problems), tuple(fixes)
    )
