"""The agents bosun knows without configuration, and how ``[agents.NAME]`` tables extend them.

Built-in specs are plain data. ``bosun.toml`` may override single fields of a built-in
(``[agents.demo] timeout = 60``) or add new agents; a new agent must give ``command``. Any
program is an agent: ``[agents.fmt] command = ["sh", "-c", "cat > NOTES.md"]`` is the
generic command agent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from bosun.agents import (
    cli_aider,
    cli_claude,
    cli_codex,
    cli_gemini,
    cli_ollama,
    cli_opencode,
    cli_qwen,
)
from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery
from bosun.errors import ConfigError

if TYPE_CHECKING:  # config imports this module at run time; the types only flow back
    from bosun.config import AgentConfig

__all__ = ["BUILTIN_AGENTS", "resolve_agents"]

DEMO = AgentSpec(
    name="demo",
    # -I: isolated mode, so a repository's own bosun/ package cannot replace the agent
    command=("{python}", "-I", "-m", "bosun.demo_agent"),
    prompt=PromptDelivery.STDIN,
    parser="raw",
    # BOSUN_DEMO_* tunes the demo (its per-action delay) from bosun's environment.
    env_allow=(*DEFAULT_ENV_ALLOW, "BOSUN_DEMO_*"),
    version_command=("{python}", "-m", "bosun.demo_agent", "--version"),
    description=(
        "Deterministic demo agent shipped with bosun, NOT an AI: applies instructions like "
        "'Create FILE with: TEXT' or 'Replace \"OLD\" with \"NEW\" in FILE' from the task."
    ),
)

#: Agents available in every configuration, by name.
BUILTIN_AGENTS: Mapping[str, AgentSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            DEMO,
            cli_claude.SPEC,
            cli_codex.SPEC,
            cli_gemini.SPEC,
            cli_ollama.SPEC,
            cli_opencode.SPEC,
            cli_aider.SPEC,
            cli_qwen.SPEC,
        )
    }
)

_TUPLES = ("command", "resume", "resume_command", "env_allow", "version_command")


def _fields(cfg: AgentConfig) -> dict[str, Any]:
    """The fields a config table sets, in AgentSpec's types."""
    values: dict[str, Any] = cfg.model_dump(exclude_none=True)
    for key in _TUPLES:
        if key in values:
            values[key] = tuple(values[key])
    return values


def resolve_agents(configured: Mapping[str, AgentConfig]) -> dict[str, AgentSpec]:
    """Built-in agents, overridden field by field and extended by ``[agents.NAME]`` tables."""
    agents = dict(BUILTIN_AGENTS)
    for name, cfg in configured.items():
        values = _fields(cfg)
        base = agents.get(name)
        if base is not None:
            # Tables merge key by key: setting vars.base_url keeps the built-in's model,
            # and adding one env variable keeps its telemetry switches.
            for key in ("env", "vars", "files"):
                if key in values:
                    values[key] = {**getattr(base, key), **values[key]}
            agents[name] = dataclasses.replace(base, **values)
            continue
        if "command" not in values:
            raise ConfigError(
                f"[agents.{name}] has no command (and {name!r} is not a built-in agent)",
                f'add command = ["program", "arg", ...] to [agents.{name}]; built-in agents: '
                f"{', '.join(sorted(BUILTIN_AGENTS))}",
            )
        agents[name] = AgentSpec(name=name, **values)
    return agents
