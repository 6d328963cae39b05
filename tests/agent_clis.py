"""Where the tests find the real agent CLIs that `scripts/install-agent-clis` installs.

This module owns the test side of that contract: the cache directory (the same default and
`BOSUN_AGENT_CACHE` override as the script), the `bin/` links in it, and what a test does
when a CLI is missing: skip on a developer's machine, fail in CI, where a missing CLI means
the install step did not run and a skip would hide it. docs/agent-clis.md has the layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The names `scripts/install-agent-clis` accepts, each a link in the cache's `bin/`.
CLI_NAMES: tuple[str, ...] = ("claude", "codex", "gemini", "opencode", "qwen", "aider")

INSTALL_SCRIPT = "scripts/install-agent-clis"

# Values of CI that mean "not in CI"; anything else that is non-empty means CI.
_FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})


def cache_dir() -> Path:
    """The directory the install script fills: `$BOSUN_AGENT_CACHE`, else the user cache."""
    override = os.environ.get("BOSUN_AGENT_CACHE")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "bosun" / "agent-clis"


def bin_dir() -> Path:
    """The directory of links to the installed CLIs (what a test puts first on PATH)."""
    return cache_dir() / "bin"


def cli_bin(name: str) -> Path | None:
    """The installed binary of agent CLI `name` (its link in `bin/`), or None if absent.

    A link whose target is gone or not executable counts as absent: the script removes the
    link before it reinstalls and puts it back only once the CLI ran `--version`.
    """
    if name not in CLI_NAMES:
        raise ValueError(f"unknown agent CLI {name!r}; known: {', '.join(CLI_NAMES)}")
    path = bin_dir() / name
    # is_file() follows the link, so a dangling link is absent too.
    if path.is_file() and os.access(path, os.X_OK):
        return path
    return None


def in_ci() -> bool:
    """Whether the environment says this is a CI run (`CI` set to a true-ish value)."""
    return os.environ.get("CI", "").strip().lower() not in _FALSE_VALUES


def require_cli(name: str) -> Path:
    """The installed binary of agent CLI `name`; a test that needs it calls this first.

    Missing: `pytest.fail` in CI (the suite is meant to run every CLI there, so a missing
    one is a broken setup, not a reason to pass), `pytest.skip` elsewhere. Either way the
    message names the command that installs it.
    """
    path = cli_bin(name)
    if path is not None:
        return path
    message = (
        f"agent CLI {name!r} is not installed in {bin_dir()}; "
        f"run `{INSTALL_SCRIPT} {name}` (or `{INSTALL_SCRIPT}` for all of them)"
    )
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
