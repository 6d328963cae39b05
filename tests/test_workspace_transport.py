"""Commit transport through bosun, against real git repositories.

The "host" is this machine through a LocalProvider whose git cannot reach the origin: every
command it runs gets ``url.<nowhere>.insteadOf=<origin>`` in git's environment, so its
fetches and pushes of ``origin`` really fail ("does not appear to be a git repository"),
while bosun's own git (the orchestrator side) reaches the origin. The same on a real SSH
host, whose user cannot read root's temporary directories, is in test_ssh_transport.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from bosun.dispatcher import Dispatcher
from bosun.errors import WorkspaceError
from bosun.models import TaskSpec, TaskStatus
from bosun.providers.base import ExecResult
from bosun.providers.local import LocalProvider
from bosun.service import Service, make_providers
from bosun.workspace import RepoSpec, Workspace
from tests.conftest import SettingsFactory
from tests.conftest import git as cgit
from tests.gitrepos import bare_origin, git


class HostProvider(LocalProvider):
    """A LocalProvider standing in for a host: records every command with its stdin, and
    (``unreachable``) rewrites the origin's url to a path that does not exist."""

    def __init__(self, root: str, origin: Path | None, *, push_only: bool = False) -> None:
        super().__init__("host", root)
        self.calls: list[tuple[tuple[str, ...], bytes | None]] = []
        self._env = {}
        if origin is not None:
            rewrite = "pushInsteadOf" if push_only else "insteadOf"
            self._env = {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"url.{root}/nowhere/origin.git.{rewrite}",
                "GIT_CONFIG_VALUE_0": str(origin),
            }

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        self.calls.append((tuple(argv), stdin))
        return await super().exec(
            argv, cwd=cwd, env={**(env or {}), **self._env}, stdin=stdin, timeout=timeout
        )

    def ran(self, *words: str) -> bool:
        """Whether some command contained ``words`` in this order, next to each other."""
        n = len(words)
        return any(
            tuple(argv[i : i + n]) == words for argv, _ in self.calls for i in range(len(argv))
        )

    def uploads(self) -> list[bytes]:
        return [data for argv, data in self.calls if argv[:2] == ("sh", "-c") and data]


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repository with main (README) and dev."""
    return bare_origin(tmp_path)


@pytest.fixture
async def host(tmp_path: Path, origin: Path) -> AsyncIterator[HostProvider]:
    provider = HostProvider(str(tmp_path / "host-state"), origin)
    yield provider
    await provider.aclose()


def workspace(tmp_path: Path, provider: LocalProvider) -> Workspace:
    return Workspace(provider, str(tmp_path / "host"), local_root=str(tmp_path / "bosun"))


def spec(origin: Path, transport: str) -> RepoSpec:
    return RepoSpec(name="app", url=str(origin), transport=transport)


def commit_in(path: str, name: str, text: str) -> None:
    Path(path, name).write_text(text)


def prerequisites(bundle: bytes) -> list[str]:
    """The ``-<sha>`` lines of a v2 bundle's header: history the receiver must have."""
    header = bundle.split(b"\n\n", 1)[0].decode()
    return [line[1:].split()[0] for line in header.splitlines()[1:] if line.startswith("-")]


async def test_the_host_really_cannot_reach_the_origin(host: HostProvider, origin: Path) -> None:
    res = await host.exec(["git", "ls-remote", str(origin)])
    assert not res.ok and "does not appear to be a git repository" in res.stderr
    plain = await LocalProvider("bosun", "/tmp").exec(["git", "ls-remote", str(origin)])
    assert plain.ok and "refs/heads/main" in plain.stdout


async def test_auto_moves_the_commits_through_bosun(
    tmp_path: Path, host: HostProvider, origin: Path
) -> None:
    ws = workspace(tmp_path, host)
    wt = await ws.prepare(1, "Add notes", spec(origin, "auto"))
    assert host.ran("fetch", "-q", "--prune", "origin")  # the host's own git was tried first
    assert len(host.uploads()) == 1  # then the history came as a bundle
    assert wt.base_sha == git(origin, "rev-parse", "main")
    assert git(Path(wt.path), "log", "-1", "--format=%s") == "init"
    commit_in(wt.path, "NOTES.md", "notes\n")
    commits = await ws.finish(wt, task_id=1, title="Add notes", push=True)
    assert len(commits) == 1
    # the host could not fetch: its push is not tried; the branch came back as a bundle
    assert not host.ran("push", "-q", "origin") and host.ran("base64")
    # the branch with its commit arrived in the origin, through bosun
    assert git(origin, "rev-parse", "task/1-add-notes") == commits[0]
    assert git(origin, "show", "task/1-add-notes:NOTES.md") == "notes"
    # the host's mirror knows it was pushed: fail-closed cleanup removes the worktree
    assert not await ws.unpushed(wt)
    assert await ws.cleanup(wt)
    assert not Path(wt.path).exists()


async def test_a_host_that_can_fetch_but_not_push(tmp_path: Path, origin: Path) -> None:
    host = HostProvider(str(tmp_path / "host-state"), origin, push_only=True)
    try:
        ws = workspace(tmp_path, host)
        wt = await ws.prepare(9, "Read only", spec(origin, "auto"))
        assert not host.uploads()  # fetched with its own git
        commit_in(wt.path, "r.txt", "r\n")
        commits = await ws.finish(wt, task_id=9, title="Read only", push=True)
    finally:
        await host.aclose()
    assert host.ran("push", "-q", "origin") and host.ran("base64")  # tried, then bosun
    assert git(origin, "rev-parse", "task/9-read-only") == commits[0]
    assert not await ws.unpushed(wt)


async def test_auto_remembers_the_fallback(
    tmp_path: Path, host: HostProvider, origin: Path
) -> None:
    ws = workspace(tmp_path, host)
    wt1 = await ws.prepare(1, "One", spec(origin, "auto"))
    commit_in(wt1.path, "a.txt", "a\n")
    await ws.finish(wt1, task_id=1, title="One", push=True)
    host.calls.clear()
    wt2 = await ws.prepare(2, "Two", spec(origin, "auto"))
    commit_in(wt2.path, "b.txt", "b\n")
    await ws.finish(wt2, task_id=2, title="Two", push=True)
    assert not host.ran("fetch", "-q", "--prune", "origin")  # not tried again
    assert not host.ran("push", "-q", "origin")
    assert git(origin, "show", "task/2-two:b.txt") == "b"


async def test_forced_bosun_transport_never_uses_the_hosts_git_remote(
    tmp_path: Path, origin: Path
) -> None:
    reachable = HostProvider(str(tmp_path / "host-state"), None)  # could reach it: not used
    try:
        ws = workspace(tmp_path, reachable)
        wt = await ws.prepare(3, "Forced", spec(origin, "bosun"))
        commit_in(wt.path, "f.txt", "forced\n")
        commits = await ws.finish(wt, task_id=3, title="Forced", push=True)
    finally:
        await reachable.aclose()
    assert git(origin, "rev-parse", "task/3-forced") == commits[0]
    assert not reachable.ran("fetch", "-q", "--prune", "origin")
    assert not reachable.ran("push", "-q", "origin")
    assert reachable.uploads()  # the history travelled as a bundle
    mirror = Path(tmp_path / "host" / "repos" / "app.git")
    assert git(mirror, "config", "bosun.transport") == "bosun"


async def test_git_transport_does_not_fall_back(
    tmp_path: Path, host: HostProvider, origin: Path
) -> None:
    ws = workspace(tmp_path, host)
    with pytest.raises(WorkspaceError) as err:
        await ws.prepare(4, "Strict", spec(origin, "git"))
    assert "cannot fetch repository 'app'" in err.value.message
    assert not host.uploads()


async def test_later_fetches_send_only_new_history_and_prune(
    tmp_path: Path, host: HostProvider, origin: Path
) -> None:
    ws = workspace(tmp_path, host)
    await ws.prepare(5, "First", spec(origin, "bosun"))
    first = host.uploads()
    assert len(first) == 1 and prerequisites(first[0]) == []  # a new mirror: everything
    # the origin moves on: a new commit on main, dev deleted, a new branch
    seed = tmp_path / "seed"
    commit_in(str(seed), "more.txt", "more\n")
    git(seed, "add", "more.txt")
    git(seed, "commit", "-q", "-m", "more")
    git(seed, "push", "-q", "origin", "main", "main:feature", ":dev")
    host.calls.clear()
    wt = await ws.prepare(6, "Second", spec(origin, "bosun"))
    uploads = host.uploads()
    assert len(uploads) == 1
    old_main = git(seed, "rev-parse", "main~1")
    assert prerequisites(uploads[0]) == [old_main]  # only the new commit travelled
    mirror = tmp_path / "host" / "repos" / "app.git"
    refs = git(mirror, "for-each-ref", "--format=%(refname)", "refs/remotes/origin")
    assert refs.split() == ["refs/remotes/origin/feature", "refs/remotes/origin/main"]
    assert wt.base_sha == git(origin, "rev-parse", "main")
    # nothing new: nothing uploaded
    host.calls.clear()
    await ws.prepare(7, "Third", spec(origin, "bosun"))
    assert host.uploads() == []


async def test_a_rejected_push_is_not_repeated_through_bosun(tmp_path: Path, origin: Path) -> None:
    reachable = HostProvider(str(tmp_path / "host-state"), None)
    try:
        ws = workspace(tmp_path, reachable)
        wt = await ws.prepare(8, "Clash", spec(origin, "auto"))
        # someone else pushed a different task/8-clash first: a non-fast-forward
        seed = tmp_path / "seed"
        git(seed, "commit", "-q", "--allow-empty", "-m", "theirs")
        git(seed, "push", "-q", "origin", "HEAD:refs/heads/task/8-clash")
        commit_in(wt.path, "mine.txt", "mine\n")
        with pytest.raises(WorkspaceError) as err:
            await ws.finish(wt, task_id=8, title="Clash", push=True)
    finally:
        await reachable.aclose()
    assert "rejected" in err.value.message
    assert "through bosun" not in err.value.message
    assert not reachable.uploads() and not reachable.ran("base64")
    assert await ws.unpushed(wt)  # and cleanup keeps the worktree
    assert not await ws.cleanup(wt)


async def test_dispatch_with_transport_bosun(make_settings: SettingsFactory, origin: Path) -> None:
    settings = make_settings(repos={"app": {"url": str(origin), "transport": "bosun"}})
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="Via bosun", body="hi", repo="app"))
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        await asyncio.wait_for(dispatcher.run(burst=True), timeout=60)
        done = await svc.get(task.id)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert cgit(origin, "rev-parse", done.branch or "") == done.commits[-1]
    assert (settings.state_dir / "transport" / "repos" / "app.git").is_dir()
