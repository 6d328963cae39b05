"""Workspace against real git repositories made in tmp_path, through a LocalProvider."""

from __future__ import annotations

import asyncio
import posixpath
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bosun.errors import ConfigError, WorkspaceError
from bosun.providers.local import LocalProvider
from bosun.workspace import RepoSpec, Workspace, Worktree, branch_name, slugify
from tests.gitrepos import bare_origin, git

NASTY_TITLES = [
    "",
    "   ",
    "-rf /",
    "--upload-pack=evil",
    "a..b",
    "refs/heads/x.lock",
    "name.lock",
    "@{u}",
    "@",
    "x@{-1}",
    "; rm -rf ~ && echo $(id) `id` | tee /etc/passwd",
    'quote\'s "double"\nnewline\r\ttab',
    "ünïcödé — ☃ 日本語 🚀",
    "\x00\x01\x7f",
    "a" * 300,
    "...",
    "/leading/slash/",
    "trailing.",
    "back\\slash*?[glob]~^:",
]


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global or system git config: bosun's fallback identity is what commits."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in (
        "XDG_CONFIG_HOME",
        "GIT_CONFIG_GLOBAL",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare 'user repository' with main (README) and a dev branch."""
    return bare_origin(tmp_path)


@pytest.fixture
async def ws(tmp_path: Path) -> AsyncIterator[Workspace]:
    provider = LocalProvider("local", str(tmp_path / "state"))
    yield Workspace(provider, str(tmp_path / "ws"))
    await provider.aclose()


def exists(path: str | Path) -> bool:
    """Path checks in sync helpers keep the async tests free of blocking calls."""
    return Path(path).exists()


def is_dir(path: str | Path) -> bool:
    return Path(path).is_dir()


def spec(origin: Path, **kw: object) -> RepoSpec:
    return RepoSpec(name="app", url=str(origin), **kw)  # type: ignore[arg-type]


# One shell loop per batch: ``git check-ref-format`` takes a single name per call.
_CHECK_ALL = (
    'for n; do git check-ref-format --branch "$n" >/dev/null || { echo "$n"; exit 1; }; done'
)


def assert_valid_branches(titles: list[str]) -> None:
    names = [branch_name(42, t) for t in titles]
    res = subprocess.run(
        ["sh", "-c", _CHECK_ALL, "sh", *names], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, f"rejected by git: {res.stdout!r}"
    for t in titles:
        slug = slugify(t)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), slug
        assert len(slug) <= 40


def test_nasty_titles_give_valid_branch_names() -> None:
    assert_valid_branches(NASTY_TITLES)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=25))
@example(["", "\n", "-", "@{", "a.lock", ".."])
def test_branch_names_always_pass_git_check_ref_format(titles: list[str]) -> None:
    assert_valid_branches(titles)


def test_slugify_examples() -> None:
    assert slugify("Fix the Login bug!") == "fix-the-login-bug"
    assert slugify("Crème brûlée -- v2.0") == "creme-brulee-v2-0"
    assert slugify("日本語") == "task"
    assert slugify("x" * 39 + " yz") == "x" * 39
    assert branch_name(7, "Add API") == "task/7-add-api"


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=10**15), st.text())
def test_worktree_path_never_escapes_root(task_id: int, title: str) -> None:
    w = Workspace(LocalProvider("local", "/nonexistent"), "/srv/bosun")
    path = w.worktree_path(task_id, title)
    assert posixpath.dirname(path) == "/srv/bosun/worktrees"
    assert posixpath.normpath(path) == path
    assert w.scratch_path(task_id).startswith("/srv/bosun/scratch/task-")


async def test_prepare_finish_push_and_fail_closed_cleanup(ws: Workspace, origin: Path) -> None:
    repo = spec(origin)
    wt = await ws.prepare(1, "Add a feature", repo)
    path = Path(wt.path)
    assert wt.branch == "task/1-add-a-feature"
    assert wt.repo == "app"
    assert wt.base_sha == git(origin, "rev-parse", "main")
    assert git(path, "symbolic-ref", "--short", "HEAD") == wt.branch
    assert (path / "README.md").read_text() == "hello\n"
    assert not await ws.dirty(wt)
    assert not await ws.unpushed(wt)

    (path / "feature.py").write_text("x = 1\n")
    assert await ws.dirty(wt)
    assert not await ws.cleanup(wt)  # uncommitted work: kept
    assert exists(path)

    commits = await ws.finish(wt, task_id=1, title="Add a feature\nmore text", push=False)
    assert len(commits) == 1
    assert git(path, "log", "-1", "--format=%s|%an|%ae") == (
        "bosun: task #1: Add a feature|bosun|bosun@localhost"
    )
    assert not await ws.dirty(wt)
    assert await ws.unpushed(wt)
    assert not await ws.cleanup(wt)  # committed but not pushed: kept
    # A repository that does not push: the commits are safe on the branch, so it goes.
    assert await ws.cleanup(wt, push=False)
    assert not exists(path)

    wt2 = await ws.prepare(1, "Add a feature", repo)  # back on the same branch
    assert wt2 == wt
    assert await ws.finish(wt2, task_id=1, title="Add a feature", push=True) == commits
    assert git(origin, "rev-parse", f"refs/heads/{wt.branch}") == commits[0]
    assert not await ws.unpushed(wt2)
    assert await ws.cleanup(wt2)
    assert not exists(path)
    # The branch outlives its worktree in the mirror.
    assert git(Path(ws.mirror_path("app")), "rev-parse", wt.branch) == commits[0]


async def test_finish_lists_agent_commits_oldest_first(ws: Workspace, origin: Path) -> None:
    wt = await ws.prepare(2, "two commits", spec(origin))
    path = Path(wt.path)
    (path / "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "-c", "user.name=Agent", "-c", "user.email=a@x", "commit", "-q", "-m", "agent")
    first = git(path, "rev-parse", "HEAD")
    (path / "b.txt").write_text("b\n")
    commits = await ws.finish(wt, task_id=2, title="two commits", push=False)
    assert commits[0] == first
    assert len(commits) == 2
    assert commits[1] == git(path, "rev-parse", "HEAD")
    assert await ws.finish(wt, task_id=2, title="two commits", push=False) == commits


async def test_commit_uses_the_repository_identity_when_set(ws: Workspace, origin: Path) -> None:
    wt = await ws.prepare(3, "identity", spec(origin))
    git(Path(ws.mirror_path("app")), "config", "user.name", "Owner")
    git(Path(ws.mirror_path("app")), "config", "user.email", "owner@example.invalid")
    (Path(wt.path) / "f").write_text("f\n")
    await ws.finish(wt, task_id=3, title="identity", push=False)
    assert git(Path(wt.path), "log", "-1", "--format=%an <%ae>") == "Owner <owner@example.invalid>"


async def test_retry_reuses_the_worktree_without_losing_work(ws: Workspace, origin: Path) -> None:
    repo = spec(origin)
    wt = await ws.prepare(4, "retry me", repo)
    (Path(wt.path) / "wip.txt").write_text("half done\n")
    again = await ws.prepare(4, "retry me", repo)
    assert again == wt
    assert (Path(wt.path) / "wip.txt").read_text() == "half done\n"


async def test_rework_after_cleanup_continues_the_branch(ws: Workspace, origin: Path) -> None:
    repo = spec(origin)
    wt = await ws.prepare(5, "rework", repo)
    (Path(wt.path) / "v1.txt").write_text("1\n")
    commits = await ws.finish(wt, task_id=5, title="rework", push=True)
    assert await ws.cleanup(wt)
    again = await ws.prepare(5, "rework", repo)
    assert again.base_sha == wt.base_sha
    assert git(Path(again.path), "rev-parse", "HEAD") == commits[0]
    assert (Path(again.path) / "v1.txt").exists()


async def test_fetch_bases_new_tasks_on_the_latest_origin(
    ws: Workspace, origin: Path, tmp_path: Path
) -> None:
    repo = spec(origin)
    await ws.prepare(6, "first", repo)
    seed = tmp_path / "seed"
    (seed / "new.txt").write_text("new\n")
    git(seed, "add", "new.txt")
    git(seed, "commit", "-q", "-m", "upstream moved")
    git(seed, "push", "-q", "origin", "main")
    wt = await ws.prepare(7, "second", repo)
    assert wt.base_sha == git(origin, "rev-parse", "main")
    dev = await ws.prepare(8, "on dev", repo, base_branch="dev")
    assert dev.base_sha == git(origin, "rev-parse", "dev")


async def test_scratch_dir_for_tasks_without_repo(ws: Workspace, tmp_path: Path) -> None:
    wt = await ws.prepare(9, "no repo", None)
    assert wt == Worktree(str(tmp_path / "ws" / "scratch" / "task-9"), None, None, None)
    assert is_dir(wt.path)
    assert await ws.finish(wt, task_id=9, title="no repo", push=True) == []
    assert not await ws.unpushed(wt)
    (Path(wt.path) / "notes.md").write_text("kept\n")
    assert await ws.dirty(wt)
    assert not await ws.cleanup(wt)  # not empty: kept
    (Path(wt.path) / "notes.md").unlink()
    assert await ws.cleanup(wt)
    assert not exists(wt.path)


async def test_copy_files_and_setup(ws: Workspace, origin: Path, tmp_path: Path) -> None:
    source = tmp_path / "project"
    (source / "conf" / "dir").mkdir(parents=True)
    (source / ".env").write_text("TOKEN=s3cret\n")
    (source / "conf" / "dir" / "a.txt").write_text("a\n")
    repo = spec(
        origin,
        copy_files=(".env", "conf"),
        setup=("sh", "-c", 'test -f .env && echo "$PWD" > setup-ran'),
    )
    wt = await ws.prepare(10, "copy", repo, source_dir=str(source))
    path = Path(wt.path)
    assert (path / ".env").read_text() == "TOKEN=s3cret\n"
    assert (path / "conf" / "dir" / "a.txt").read_text() == "a\n"
    assert (path / "setup-ran").read_text().strip() == wt.path
    commits = await ws.finish(wt, task_id=10, title="copy", push=False)
    committed = git(path, "show", "--name-only", "--format=", commits[0]).split()
    assert "setup-ran" in committed
    assert ".env" not in committed  # copied files are excluded, never committed
    assert "conf/dir/a.txt" not in committed
    assert not await ws.dirty(wt)


async def test_setup_failure_removes_the_fresh_worktree(
    ws: Workspace, origin: Path, tmp_path: Path
) -> None:
    repo = spec(origin, setup=("sh", "-c", "echo boom-detail >&2; exit 3"))
    with pytest.raises(WorkspaceError, match="boom-detail") as info:
        await ws.prepare(11, "setup fails", repo)
    assert "exit 3" in info.value.message
    assert info.value.hint
    assert not exists(ws.worktree_path(11, "setup fails"))
    mirror = Path(ws.mirror_path("app"))
    assert "task/11" not in git(mirror, "branch", "--list")
    # Fixed configuration: the retry starts clean.
    wt = await ws.prepare(11, "setup fails", spec(origin, setup=("true",)))
    assert is_dir(wt.path)


async def test_copy_files_errors(ws: Workspace, origin: Path, tmp_path: Path) -> None:
    for bad in ("/etc/passwd", "../outside", "a/../../b", ""):
        with pytest.raises(ConfigError, match="not a plain relative path"):
            spec(origin, copy_files=(bad,))
    repo = spec(origin, copy_files=("missing.env",))
    with pytest.raises(WorkspaceError, match=r"missing\.env"):
        await ws.prepare(12, "copy", repo, source_dir=str(tmp_path))
    assert not exists(ws.worktree_path(12, "copy"))
    with pytest.raises(WorkspaceError, match="source_dir"):
        await ws.prepare(12, "copy", repo)


async def test_unknown_base_branch(ws: Workspace, origin: Path) -> None:
    with pytest.raises(WorkspaceError, match=r"'nope'.*'app'") as info:
        await ws.prepare(13, "base", spec(origin), base_branch="nope")
    assert info.value.hint is not None
    assert "main" in info.value.hint
    assert "dev" in info.value.hint


async def test_concurrent_prepares_share_one_mirror(ws: Workspace, origin: Path) -> None:
    repo = spec(origin)
    wts = await asyncio.gather(*(ws.prepare(20 + i, f"parallel {i}", repo) for i in range(3)))
    assert len({w.path for w in wts}) == 3
    mirror = Path(ws.mirror_path("app"))
    git(mirror, "fsck", "--no-progress")
    assert [p.name for p in mirror.parent.iterdir()] == ["app.git"]  # no temp dirs left


async def test_url_starting_with_dash_is_never_an_option(ws: Workspace, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    repo = RepoSpec(name="evil", url=f"--upload-pack=touch {marker}")
    with pytest.raises(WorkspaceError, match="cannot fetch"):
        await ws.prepare(14, "evil", repo)
    assert not exists(marker)
    assert not exists(ws.mirror_path("evil"))


async def test_fetch_errors_hide_credentials(ws: Workspace) -> None:
    repo = RepoSpec(name="secret", url="http://user:s3cr3t@127.0.0.1:9/repo.git")
    with pytest.raises(WorkspaceError) as info:
        await ws.prepare(15, "creds", repo)
    assert "s3cr3t" not in str(info.value)


async def test_foreign_directory_at_worktree_path(ws: Workspace, origin: Path) -> None:
    repo = spec(origin)
    await ws.prepare(16, "warm", repo)
    squat = Path(ws.worktree_path(17, "squatted"))
    await asyncio.to_thread(squat.mkdir, parents=True)
    with pytest.raises(WorkspaceError, match="not a worktree"):
        await ws.prepare(17, "squatted", repo)


async def test_finish_refuses_a_worktree_off_its_branch(ws: Workspace, origin: Path) -> None:
    wt = await ws.prepare(18, "switch", spec(origin))
    git(Path(wt.path), "checkout", "-q", "--detach")
    with pytest.raises(WorkspaceError, match="not on its branch"):
        await ws.finish(wt, task_id=18, title="switch", push=True)


def test_bad_repo_specs() -> None:
    with pytest.raises(ConfigError):
        RepoSpec(name="../x", url="u")
    with pytest.raises(ConfigError):
        RepoSpec(name="x", url=" ")
    with pytest.raises(ConfigError):
        RepoSpec(name="x", url="u", default_branch="-x")
    with pytest.raises(ConfigError):
        RepoSpec(name="x", url="u", setup=())


def test_relative_root_is_refused() -> None:
    with pytest.raises(WorkspaceError, match="absolute"):
        Workspace(LocalProvider("local", "/nonexistent"), "relative/dir")
