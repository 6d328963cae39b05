"""A real agent CLI (Claude Code) on a real SSH host, end to end through bosun.

The host is a real sshd (``tests/sshd.py``) whose unprivileged user runs the CLI. The fake
model server listens on the orchestrator's side only as far as the agent knows: the agent
is given ``ANTHROPIC_BASE_URL=http://127.0.0.1:REMOTE_PORT``, a port on which nothing but
the host's remote port forward listens (``remote_forwards = ["REMOTE_PORT:127.0.0.1:
FAKE_PORT"]``, carried by bosun's SSH connection). The repository is the ``origin`` of
``tests/conftest.py``, in root's pytest directory: the host's user cannot read it, so the
commits travel through bosun (``docs/workspace-transport.md``).

The CLIs are installed under root's home (``~/.cache/bosun/agent-clis``, and ``/root`` is
mode 0700), which the host's user cannot enter: the test hard-links Claude Code's binary
(a single self-contained executable) into a world-readable directory under /tmp and
points the agent's command at it (a copy when a link is not possible).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bosun.agents.cli_claude import SPEC
from bosun.models import RunStatus, TaskSpec, TaskStatus
from bosun.providers.local import LocalProvider
from bosun.workspace import Workspace
from tests.conftest import SettingsFactory, git
from tests.fakes import FakeModelServer, Text, ToolCall
from tests.realcli import need, run_task
from tests.sshd import SshdFleet

pytestmark = [pytest.mark.realcli, pytest.mark.ssh]


@pytest.fixture
def shared_claude() -> Iterator[Path]:
    """Claude Code's binary where any user can run it."""
    need("claude")
    from tests.agent_clis import cli_bin

    installed = cli_bin("claude")
    assert installed is not None
    source = installed.resolve()
    where = Path(tempfile.mkdtemp(prefix="bosun-claude-", dir="/tmp"))
    try:
        where.chmod(0o755)
        target = where / "claude"
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed: copy it
            shutil.copy2(source, target)
        target.chmod(0o755)
        yield target
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def client_home(shared_claude: Path, ssh_client_home: Path) -> Path:
    """bosun's own HOME (``ssh_client_home``), set only once ``shared_claude`` has found
    the installed CLI under the real HOME."""
    return ssh_client_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_claude_on_an_ssh_host_commits_what_its_tool_call_wrote(
    shared_claude: Path,
    client_home: Path,
    sshd: SshdFleet,
    fake: FakeModelServer,
    make_settings: SettingsFactory,
    origin: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (h1,) = sshd.start(1)
    sshd.trust(h1)
    fake_port = urlsplit(fake.url).port
    remote_port = free_port()
    assert fake_port is not None and remote_port != fake_port
    table = sshd.host_table(h1, remote_forwards=[f"{remote_port}:127.0.0.1:{fake_port}"])
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{remote_port}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    settings = make_settings(hosts={"h1": table}, limits={"max_attempts": 1})
    spec = dataclasses.replace(
        SPEC,
        command=(str(shared_claude), *SPEC.command[1:]),
        version_command=(str(shared_claude), "--version"),
        vars={**SPEC.vars, "max_retries": "0"},
    )
    settings = dataclasses.replace(settings, agents={**settings.agents, "claude": spec})
    title = "Write hello"
    remote_root = f"{h1.home}/.bosun"  # the host's work_dir: ~/.bosun of its user
    worktree = Workspace(LocalProvider("x", "."), remote_root).worktree_path(1, title)
    fake.push(
        ToolCall(
            "Write", {"file_path": f"{worktree}/hello.txt", "content": "hi\n"}, text="Writing."
        ),
        Text("Wrote hello.txt."),
    )

    done = await run_task(
        settings, TaskSpec(title=title, body="Do it.", repo="app", agent="claude"), timeout=120
    )

    assert done.task.status is TaskStatus.COMPLETED, (done.task.error, done.output("stderr"))
    (run,) = done.runs
    assert run.host == "h1" and run.status is RunStatus.SUCCEEDED
    assert str(run.ref["run_dir"]).startswith(f"{remote_root}/runs/")
    assert str(run.ref["workdir"]) == worktree
    # the model was reached through the forward, and got the tool's result back
    assert len(fake.model_requests) >= 2
    assert "tool_result" in str(fake.model_requests[-1].body)
    assert "agent.tool_use" in done.kinds()
    # the file the tool call wrote on the host is committed on the task's branch in origin
    assert done.task.branch is not None and done.task.commits
    assert git(origin, "show", f"{done.task.branch}:hello.txt") == "hi"
    assert git(origin, "log", "-1", "--format=%H", done.task.branch) == done.task.commits[-1]
    # nothing of the run is left running on the host
    assert not [p for p in h1.processes() if any("/runs/task-" in a for a in p[2])]
