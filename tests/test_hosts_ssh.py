"""The host registry over real sshd hosts (``tests/sshd.py``): capability detection,
unknown host keys and ``bosun hosts trust``, distribution by capability and load, and
hosts that die or drop packets during a run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bosun.models import RunStatus, TaskSpec, TaskStatus
from bosun.service import Service, make_providers
from tests.conftest import SettingsFactory
from tests.sshd import SshdFleet, SshHost
from tests.test_hosts_cli import js, run
from tests.test_hosts_dispatch import _has_output, events, serving, settled, until

pytestmark = pytest.mark.ssh


@pytest.fixture(autouse=True)
def _own_client_home(ssh_client_home: Path) -> Path:
    """bosun's SSH client gets a HOME of its own: root's ~/.ssh plays no part."""
    return ssh_client_home


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the test users can read (tmp_path is root's own, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bosun-h6-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def only_for(host: SshHost, where: Path) -> Path:
    """A program that exists for ``host``'s user only (a directory only it may enter)."""
    private = where / f"only-{host.user}"
    private.mkdir(mode=0o700)
    tool = private / "tool"
    tool.write_text("#!/bin/sh\necho 'tool 2.5'\n")
    tool.chmod(0o700)
    for p in (private, tool):
        os.chown(p, host.uid, -1)
    return tool


async def test_capabilities_of_an_ssh_host(
    sshd: SshdFleet, make_settings: SettingsFactory, shared_dir: Path
) -> None:
    h1, h2 = sshd.start(2)
    sshd.trust(h1, h2)
    tool = only_for(h2, shared_dir)
    settings = make_settings(
        agents={
            "echo": {"command": ["sh", "-c", "echo hi"]},
            "special": {"command": [str(tool)], "version_command": [str(tool)]},
        },
        hosts={"h1": sshd.host_table(h1), "h2": sshd.host_table(h2, labels=["big"])},
    )
    async with await Service.open(settings) as svc:
        one, two = await svc.check_host("h1"), await svc.check_host("h2")
        rows = {h.name: h.to_json() for h in await svc.hosts()}
    for result in (one, two):
        assert result.ok and result.reachable and result.host_key == "trusted"
        caps = result.capabilities
        assert caps is not None and caps.os == "Linux" and caps.cpus == os.cpu_count()
        assert caps.memory_bytes is not None and caps.memory_bytes > 0
        assert caps.agents["echo"].installed
    assert one.capabilities is not None and two.capabilities is not None
    assert not one.capabilities.agents["special"].installed
    assert two.capabilities.agents["special"].version == "tool 2.5"
    assert "special" in rows["h1"]["missing_agents"]
    assert not {"special", "echo"} & set(rows["h2"]["missing_agents"])
    assert "big" in rows["h2"]["labels"] and "os:linux" in rows["h2"]["labels"]
    assert rows["h1"]["address"] == h1.address and rows["h1"]["health"] == "healthy"


async def test_an_unknown_host_key_is_refused_until_trusted(
    sshd: SshdFleet, tmp_path: Path, origin: Path
) -> None:
    from tests.test_cli import write_config

    (h1,) = sshd.start(1)  # its key is in no known_hosts file
    cfg = tmp_path / "cfg"
    write_config(cfg, origin)
    table = sshd.host_table(h1)
    add = ["hosts", "add", "h1", "--address", h1.address, "--connect-timeout", "5"]
    add += ["--identity-file", table["identity_file"], "--known-hosts", table["known_hosts"]]
    add += ["--ssh-config", table["ssh_config"]]

    def cli(*args: str) -> Any:
        return run(cfg, *args)

    refused = await asyncio.to_thread(cli, *add)
    assert refused.exit_code == 2
    assert "unknown" in refused.stderr and "bosun hosts trust h1" in refused.stderr
    assert js(await asyncio.to_thread(cli, *add, "--no-check", "--json"))["health"] == "unknown"

    check = await asyncio.to_thread(cli, "hosts", "check", "h1", "--json")
    assert check.exit_code == 1
    result = json.loads(check.stdout)
    fingerprint = h1.host_key.get_fingerprint("sha256")
    assert result["host_key"] == "unknown" and result["fingerprint"] == fingerprint
    assert "bosun hosts trust h1" in result["hint"] and not result["reachable"]

    wrong = await asyncio.to_thread(cli, "hosts", "trust", "h1", "--fingerprint", "SHA256:nope")
    assert wrong.exit_code == 2 and "nothing was trusted" in wrong.stderr
    trusted = js(
        await asyncio.to_thread(cli, "hosts", "trust", "h1", "--fingerprint", fingerprint, "--json")
    )
    assert trusted["fingerprint"] == fingerprint
    assert (
        Path(trusted["known_hosts"])
        .read_text()
        .strip()
        .endswith(h1.known_hosts_line.split(" ", 1)[1])
    )
    ok = js(await asyncio.to_thread(cli, "hosts", "check", "h1", "--json"))
    assert ok["ok"] and ok["host_key"] == "trusted" and ok["capabilities"]["os"] == "Linux"


async def test_tasks_go_by_capability_and_load_over_ssh_hosts(
    sshd: SshdFleet, make_settings: SettingsFactory, shared_dir: Path
) -> None:
    h1, h2 = sshd.start(2)
    sshd.trust(h1, h2)
    tool = only_for(h2, shared_dir)
    gate = shared_dir / "gate"
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done"
    settings = make_settings(
        agents={
            "waiter": {"command": ["sh", "-c", wait]},
            "special": {"command": [str(tool)]},
        },
        hosts={
            "h1": sshd.host_table(h1, max_concurrent=2, priority=5),
            "h2": sshd.host_table(h2, max_concurrent=2),
        },
    )
    async with await Service.open(settings) as svc:
        await svc.check_host("h1")  # finds that `special` is missing on h1
        special = [await svc.submit(TaskSpec(title=f"s{i}", agent="special")) for i in range(2)]
        waiters = [await svc.submit(TaskSpec(title=f"w{i}", agent="waiter")) for i in range(3)]
        async with serving(svc):
            await until(lambda: settled(svc, *(t.id for t in special)))

            async def three_running() -> bool:
                return len(await svc.store.running()) == 3

            await until(three_running)
            load = {h.name: h.running for h in await svc.hosts()}
            gate.touch()
            await until(lambda: settled(svc, *(t.id for t in waiters)))
        done = [await svc.get(t.id) for t in special + waiters]
    assert all(t.status is TaskStatus.COMPLETED for t in done)
    assert {t.assigned_host for t in done[:2]} == {"h2"}
    assert load == {"h1": 2, "h2": 1}  # least loaded first; h1 wins ties by priority


@pytest.mark.parametrize("fault", ["dies", "drops_packets"])
async def test_a_run_on_a_failed_ssh_host_is_retried_elsewhere_once(
    sshd: SshdFleet, make_settings: SettingsFactory, fault: str
) -> None:
    h1, h2 = sshd.start(2)
    sshd.trust(h1, h2)
    script = 'case "$0" in *attempt-1) echo started; exec sleep 60;; *) echo quick;; esac'
    settings = make_settings(
        agents={"slow": {"command": ["sh", "-c", script, "{run_dir}"]}},
        hosts={"h1": sshd.host_table(h1, priority=10), "h2": sshd.host_table(h2)},
    )

    def sleeping(host: SshHost) -> list[int]:
        return [pid for pid, _, argv in host.processes() if argv[:1] == ["sleep"]]

    async with await Service.open(settings) as svc:
        async with serving(svc):
            task = await svc.submit(TaskSpec(title="outlives its host", agent="slow"))
            await until(lambda: _has_output(svc, task.id, "started"))
            if fault == "dies":
                h1.kill_all()
            else:
                h1.block()
            await until(lambda: settled(svc, task.id), timeout=60)
            done = await svc.get(task.id)
            assert done.status is TaskStatus.COMPLETED and done.assigned_host == "h2"
            if fault == "dies":
                h1.restart()  # its processes died with it: nothing to reconcile

                async def healthy_again() -> bool:
                    return any(e.data["host"] == "h1" for e in await events(svc, "host.healthy"))

                await until(healthy_again, timeout=60)
            else:
                assert sleeping(h1), "the first run goes on behind the blocked link"
                h1.unblock()

                async def reconciled() -> bool:
                    (first, *_) = await svc.runs(task.id)
                    return first.ref.get("abandoned") == "reconciled"

                await until(reconciled, timeout=60)
            assert not sleeping(h1)  # never two runs of one task
        runs = await svc.runs(task.id)
        lines = [e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output"]
        kinds = [e.kind for e in await events(svc)]
    shown = [(r.host, r.status.value, r.error, r.ref.get("abandoned")) for r in runs]
    assert [r.host for r in runs] == ["h1", "h2"], shown
    assert runs[0].status is RunStatus.LOST and runs[1].status is RunStatus.SUCCEEDED, shown
    assert lines == ["started", "quick"]
    assert "host.unhealthy" in kinds and "host.healthy" in kinds
    assert kinds.count("run.stray_killed") == (1 if fault == "drops_packets" else 0)


async def test_an_agent_on_an_ssh_host_gets_the_hosts_path_not_bosuns(
    sshd: SshdFleet, make_settings: SettingsFactory
) -> None:
    # The agent's CLI is installed on the host: it must run with the PATH commands get
    # there (the one preflight looked the program up with), not with bosun's own PATH.
    (h1,) = sshd.start(1)
    sshd.trust(h1)
    settings = make_settings(
        agents={"path": {"command": ["sh", "-c", 'printf "%s\\n" "$PATH"']}},
        hosts={"h1": sshd.host_table(h1)},
    )
    async with await Service.open(settings) as svc:
        task = await svc.submit(TaskSpec(title="which path", agent="path"))
        async with serving(svc):
            await until(lambda: settled(svc, task.id))
        assert (await svc.get(task.id)).status is TaskStatus.COMPLETED
        lines = [e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output"]
    provider = make_providers(settings)["h1"]
    try:
        await provider.ensure_ready()
        host_path = (await provider.exec(["sh", "-c", 'printf "%s" "$PATH"'])).stdout
    finally:
        await provider.aclose()
    assert lines == [host_path]
    assert host_path != os.environ["PATH"]
