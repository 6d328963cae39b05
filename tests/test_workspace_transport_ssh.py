"""Commit transport through bosun to a real SSH host that cannot reach the origin.

The origin is a repository in root's pytest directory (mode 0700): the host's user cannot
read it, so the host's own ``git fetch`` and ``git push`` fail for real, while bosun (root,
on this machine) reaches it. The bundles travel over the provider's SFTP channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from bosun.config import HostConfig
from bosun.providers.base import ExecResult
from bosun.providers.ssh import SshProvider
from bosun.workspace import RepoSpec, Workspace
from tests.gitrepos import bare_origin, git
from tests.sshd import SshdFleet

pytestmark = pytest.mark.ssh


class RecordingSsh(SshProvider):
    """The SSH provider, remembering every argv it ran on the host."""

    calls: list[tuple[str, ...]]

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        self.calls.append(tuple(argv))
        return await super().exec(argv, cwd=cwd, env=env, stdin=stdin, timeout=timeout)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return bare_origin(tmp_path, dev=False)


@pytest.fixture
async def provider(sshd: SshdFleet, tmp_path: Path) -> AsyncIterator[RecordingSsh]:
    (host,) = sshd.start(1)
    sshd.trust(host)
    p = RecordingSsh(host.name, HostConfig(**sshd.host_table(host)), str(tmp_path / "state"))
    p.calls = []
    await p.ensure_ready()
    yield p
    await p.aclose()


async def test_commits_travel_through_bosun_to_and_from_an_ssh_host(
    provider: RecordingSsh, origin: Path, tmp_path: Path
) -> None:
    denied = await provider.exec(["git", "ls-remote", str(origin)])
    assert not denied.ok  # the host really cannot reach the origin
    ws = Workspace(provider, provider.root, local_root=str(tmp_path / "bosun"))
    repo = RepoSpec(name="app", url=str(origin), transport="auto")
    wt = await ws.prepare(1, "Remote notes", repo)
    assert wt.path == f"{provider.root}/worktrees/1-remote-notes"
    assert wt.base_sha == git(origin, "rev-parse", "main")
    head = await provider.exec(["git", "-C", wt.path, "log", "-1", "--format=%s"])
    assert head.stdout.strip() == "init"
    write = 'printf "%s\\n" "$2" > "$1"'
    done = await provider.exec(["sh", "-c", write, "sh", f"{wt.path}/NOTES.md", "from the host"])
    assert done.ok
    commits = await ws.finish(wt, task_id=1, title="Remote notes", push=True)
    assert len(commits) == 1
    # the branch and its commit arrived in the origin, made on the host
    assert git(origin, "rev-parse", "task/1-remote-notes") == commits[0]
    assert git(origin, "show", "task/1-remote-notes:NOTES.md") == "from the host"
    # the host's git tried first; then the bundles went over SFTP, not through exec
    assert any(argv[3:] == ("fetch", "-q", "--prune", "origin") for argv in provider.calls)
    assert not any(argv[3:6] == ("push", "-q", "origin") for argv in provider.calls)  # known
    assert not any(argv[0] == "base64" for argv in provider.calls)
    assert not any(argv[:3] == ("sh", "-c", 'cat > "$1"') for argv in provider.calls)
    assert await ws.cleanup(wt)  # pushed: the worktree goes
    gone = await provider.exec(["test", "-e", wt.path])
    assert not gone.ok
