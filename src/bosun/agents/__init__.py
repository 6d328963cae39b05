"""Agents: how a CLI is invoked (:class:`AgentSpec`) and how its output is read (parsers).

Everything here is pure data and pure functions; providers do the running.
"""

from bosun.agents.builtin import BUILTIN_AGENTS, resolve_agents
from bosun.agents.parsers import PARSERS, Parser, get_parser, parse_lines
from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

__all__ = [
    "BUILTIN_AGENTS",
    "DEFAULT_ENV_ALLOW",
    "PARSERS",
    "AgentSpec",
    "Parser",
    "PromptDelivery",
    "get_parser",
    "parse_lines",
    "resolve_agents",
]
