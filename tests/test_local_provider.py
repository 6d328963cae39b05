"""LocalProvider against real processes: what only the local provider does (its run
directories, the reaper, exec's environment). Every rule it shares with the SSH provider
is in tests/provider_contract.py, run here by ``TestLocalProviderContract``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bosun.providers import local
from bosun.providers.base import RunHandle
from bosun.providers.local import LocalProvider
from tests.provider_contract import ProviderContract, group_members, wait_exit, wait_file
from tests.provider_contract import start as start_run


@pytest.fixture
def pgids() -> Iterator[list[int]]:
    """Process groups started by a test; killed and reaped even when the test fails."""
    started: list[int] = []
    yield started
    for pgid in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, 0)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    p = LocalProvider("local", str(tmp_path / "state"))
    await p.ensure_ready()
    yield p
    await p.aclose()


async def start(
    provider: LocalProvider, pgids: list[int], key: str, argv: list[str], cwd: Path
) -> RunHandle:
    run = await start_run(provider, key, argv, cwd)
    pgids.append(run.ref["pgid"])
    return run


async def test_a_run_is_its_wrappers_own_group_under_the_state_dir(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    path = await provider.run_dir("task-12-attempt-2")
    assert path == str(tmp_path / "state" / "runs" / "task-12-attempt-2")
    run = await start(provider, pgids, "task-12-attempt-2", ["true"], tmp_path)
    assert run.run_dir == path
    assert set(run.ref) == {"run_dir", "pgid", "pid"}
    assert run.ref["pgid"] == run.ref["pid"]
    assert await wait_exit(run) == 0


async def test_killed_wrapper_still_gets_an_exit_code(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(provider, pgids, "wrapper", ["sleep", "300"], tmp_path)
    await wait_file(Path(run.run_dir) / "pid")
    # the wrapper writes its pid before it forks the agent: wait for the agent to exist
    for _ in range(750):
        if group_members(run.ref["pgid"]) - {run.ref["pid"]}:
            break
        await asyncio.sleep(0.02)
    os.kill(run.ref["pid"], signal.SIGKILL)  # only the wrapper, not its group
    assert await wait_exit(run) == 137  # recorded by the reaper
    assert await run.alive()  # the agent itself still runs
    await run.cancel(grace=5)
    assert not await run.alive()


async def test_exec_env_is_this_process_env_updated(
    provider: LocalProvider, tmp_path: Path
) -> None:
    res = await provider.exec(["sh", "-c", 'echo "$BOSUN_T"; echo "$PATH"'], env={"BOSUN_T": "v"})
    assert res.stdout.splitlines() == ["v", os.environ["PATH"]]
    plain = await provider.exec(["sh", "-c", 'echo "$PATH"'])
    assert plain.stdout.strip() == os.environ["PATH"]


class TestLocalProviderContract(ProviderContract):
    """The provider contract (tests/provider_contract.py) that the SSH provider shares."""

    @pytest.fixture
    def small_reads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(local, "READ_CAP", 37)  # a few lines per read, cutting lines apart

    @pytest.fixture
    def fresh_provider(self, tmp_path: Path) -> Callable[[], LocalProvider]:
        return lambda: LocalProvider("local", str(tmp_path / "state"))

    @pytest.fixture
    def workdir(self, tmp_path: Path) -> Path:
        path = tmp_path / "work"
        path.mkdir()
        return path
