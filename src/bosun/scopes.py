"""Scope paths: which parts of a repository a task may touch, and when two tasks collide.

A scope is a list of repository-relative paths (``src/api``, ``docs/``, ``README.md``);
a trailing ``/**`` or ``/`` is ignored. Two tasks collide when they are on the same repo and
one of their paths equals, or is a directory above, one of the other's. A task with no
scope declares nothing and never collides.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

from bosun.errors import InputError


def normalize(path: str) -> str:
    """Canonical form of one scope path; refuse absolute paths and ``..``."""
    raw = path.strip()
    while raw.endswith("/**") or raw.endswith("/*"):
        raw = raw.rsplit("/", 1)[0]
    raw = raw.rstrip("/")
    if not raw or raw in {".", "**", "*"}:
        return "."
    p = PurePosixPath(raw)
    if p.is_absolute() or ".." in p.parts or "\x00" in raw:
        raise InputError(
            f"scope path {path!r} must be relative to the repository and stay inside it",
            "write it like src/api or docs/ (no leading /, no ..)",
        )
    parts = [part for part in p.parts if part != "."]
    return "/".join(parts) if parts else "."


def _contains(outer: str, inner: str) -> bool:
    if outer == ".":
        return True
    return inner == outer or inner.startswith(outer + "/")


def overlap(a: Iterable[str], b: Iterable[str]) -> bool:
    """True when some path of ``a`` and some path of ``b`` are the same or nested."""
    left = [normalize(x) for x in a]
    right = [normalize(x) for x in b]
    return any(_contains(x, y) or _contains(y, x) for x in left for y in right)


def collides(
    repo_a: str | None, scope_a: Iterable[str], repo_b: str | None, scope_b: Iterable[str]
) -> bool:
    """Two tasks collide when they share a repository and their scopes overlap."""
    if repo_a is None or repo_a != repo_b:
        return False
    return overlap(scope_a, scope_b)
