"""Shared fixtures: real git repositories and real configurations in tmp_path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bosun.config import Settings, settings_from_data
from tests.realcli import cli_path, fake, loopback_only

__all__ = ["SettingsFactory", "cli_path", "fake", "git", "loopback_only"]

# The real-sshd fixtures (``sshd``, ``ssh_client_key``, ``ssh_client_home``) for every test
# module: pytest takes ``pytest_plugins`` only from this, the top-level conftest.
pytest_plugins = ["tests.sshd"]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout.strip()


@pytest.fixture(autouse=True)
def _kill_leftover_runs(tmp_path: Path) -> Iterator[None]:
    """After each test, kill the process group of every agent run it started that is
    still alive (found by the run directories' pid files), even when the test failed."""
    yield
    for pidfile in tmp_path.rglob("runs/*/pid"):
        try:
            pgid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A real repository with one commit on ``main``."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# origin\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


SettingsFactory = Callable[..., Settings]

#: The ``[limits]`` of test configs: quick retries, polls, heartbeats and cancels.
FAST_LIMITS: dict[str, Any] = {
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "poll_interval": 0.1,
    "heartbeat_seconds": 0.5,
    "lease_seconds": 5,
    "cancel_grace": 1,
}


@pytest.fixture
def make_settings(tmp_path: Path, origin: Path) -> SettingsFactory:
    """Build validated Settings for a config dir in tmp_path, with repo ``app`` -> origin."""

    def build(
        agents: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        hosts: dict[str, Any] | None = None,
        **top: Any,
    ) -> Settings:
        data: dict[str, Any] = {
            "repos": {"app": {"url": str(origin), "default_branch": "main"}},
            "agents": agents or {"echo": {"command": ["sh", "-c", "cat > NOTES.md"]}},
            "hosts": hosts or {"local": {"kind": "local", "max_concurrent": 4}},
            "limits": {**FAST_LIMITS, **(limits or {})},
            **top,
        }
        cfg_dir = tmp_path / "cfg"
        cfg_dir.mkdir(exist_ok=True)
        return settings_from_data(data, cfg_dir / "bosun.toml")

    return build
