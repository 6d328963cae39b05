"""Git repositories for test set-up: ``git`` runs a command and fails the test on error;
``bare_origin`` makes the bare 'user repository' the workspace tests fetch from."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["bare_origin", "git"]


def git(cwd: Path, *args: str) -> str:
    """Run git for test set-up; fails the test on error."""
    res = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, f"git {args}: {res.stderr}"
    return res.stdout.strip()


def bare_origin(tmp_path: Path, *, dev: bool = True) -> Path:
    """``tmp_path/origin.git``: a bare repository with main (one commit: README.md) and,
    with ``dev``, a dev branch at the same commit."""
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "--initial-branch=main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    git(seed, "config", "user.name", "Seed")
    git(seed, "config", "user.email", "seed@example.invalid")
    git(seed, "checkout", "-q", "-b", "main")
    (seed / "README.md").write_text("hello\n")
    git(seed, "add", "README.md")
    git(seed, "commit", "-q", "-m", "init")
    git(seed, "push", "-q", "origin", "main", *(["main:dev"] if dev else []))
    return bare
