"""LocalProvider against real processes: detached runs, offsets, cancel, exec."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bosun.errors import ProviderError
from bosun.providers import local
from bosun.providers.base import Command, OutputChunk, Provider, RunHandle
from bosun.providers.local import LocalProvider, LocalRun
from tests.provider_contract import ProviderContract

PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


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
    provider: LocalProvider,
    pgids: list[int],
    key: str,
    argv: list[str],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    files: dict[str, bytes] | None = None,
) -> RunHandle:
    run_dir = await provider.run_dir(key)
    cmd = Command(
        argv=tuple(argv),
        cwd=str(cwd),
        env=PATH_ENV if env is None else env,
        stdin=stdin,
        files=files or {},
    )
    run = await provider.launch(cmd, run_dir)
    pgids.append(run.ref["pgid"])
    return run


def group_members(pgid: int) -> set[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc."""
    members: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.add(int(entry))
    return members


async def wait_exit(run: RunHandle, limit: float = 15.0) -> int:
    for _ in range(int(limit / 0.02)):
        code = await run.exit_code()
        if code is not None:
            return code
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run.run_dir} did not exit")


def complete_text(path: Path) -> str | None:
    """The file's text once it ends with a newline (written completely), else None."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text if text.endswith("\n") else None


async def wait_file(path: Path, limit: float = 15.0) -> str:
    for _ in range(int(limit / 0.02)):
        if (text := complete_text(path)) is not None:
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} was never written")


async def drain(run: RunHandle, *, final: bool = True) -> dict[str, list[str]]:
    """All lines of both streams, read until nothing is left."""
    got: dict[str, list[str]] = {"stdout": [], "stderr": []}
    offsets = {"stdout": 0, "stderr": 0}
    while chunks := await run.read(offsets["stdout"], offsets["stderr"], final=final):
        for chunk in chunks:
            got[chunk.stream].extend(chunk.lines)
            offsets[chunk.stream] = chunk.end_offset
    return got


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (PID 1 here may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def test_protocols_are_implemented(provider: LocalProvider) -> None:
    assert isinstance(provider, Provider)
    assert isinstance(LocalRun("/nonexistent", 1, 1), RunHandle)


async def test_launch_reads_lines_and_exit_code(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(
        provider,
        pgids,
        "task-1-attempt-1",
        ["sh", "-c", 'echo one; echo "two  words"; echo oops >&2; pwd; exit 3'],
        tmp_path,
        env={**PATH_ENV, "SECRET_TOKEN": "hunter2"},
    )
    assert await wait_exit(run) == 3
    out = await drain(run)
    assert out["stdout"] == ["one", "two  words", str(tmp_path)]
    assert out["stderr"] == ["oops"]
    assert not await run.alive()
    meta = json.loads((Path(run.run_dir) / "cmd.json").read_text())
    assert meta["argv"][0] == "sh"
    assert meta["cwd"] == str(tmp_path)
    assert "hunter2" not in (Path(run.run_dir) / "cmd.json").read_text()
    assert set(run.ref) == {"run_dir", "pgid", "pid"}
    assert run.ref["pgid"] == run.ref["pid"]
    assert (Path(run.run_dir) / "pid").read_text().strip() == str(run.ref["pid"])


async def test_numbered_lines_in_small_steps_across_reattach(
    provider: LocalProvider, pgids: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "READ_CAP", 37)  # a few lines per read, cutting lines apart
    script = 'i=1; while [ $i -le 300 ]; do echo "line-$i"; echo "err-$i" >&2; i=$((i+1)); done'
    run = await start(provider, pgids, "numbered", ["sh", "-c", script], tmp_path)
    ref = run.ref
    got: dict[str, list[str]] = {"stdout": [], "stderr": []}
    offsets = {"stdout": 0, "stderr": 0}
    exited = False
    while True:
        # Every step uses a fresh provider and handle, as after a restart of bosun.
        other = LocalProvider("local", str(tmp_path / "state"))
        handle = await other.attach(ref)
        chunks: list[OutputChunk] = await handle.read(offsets["stdout"], offsets["stderr"])
        for chunk in chunks:
            assert len(chunk.lines) >= 1
            got[chunk.stream].extend(chunk.lines)
            offsets[chunk.stream] = chunk.end_offset
        await other.aclose()
        if not chunks:
            if exited:
                break
            exited = await run.exit_code() is not None
            await asyncio.sleep(0.01)
    assert got["stdout"] == [f"line-{i}" for i in range(1, 301)]
    assert got["stderr"] == [f"err-{i}" for i in range(1, 301)]
    assert await run.exit_code() == 0


async def test_partial_line_only_with_final(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(
        provider, pgids, "partial", ["printf", "a\\r\\n\\xff-b\\nunfinished"], tmp_path
    )
    assert await wait_exit(run) == 0
    chunks = await run.read(0, 0)
    assert chunks == [OutputChunk("stdout", ("a", "\ufffd-b"), 7)]
    assert await run.read(7, 0) == []
    final = await run.read(7, 0, final=True)
    assert final == [OutputChunk("stdout", ("unfinished",), 17)]
    assert await run.read(17, 0, final=True) == []


async def test_cancel_kills_grandchildren(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(
        provider, pgids, "grand", ["sh", "-c", "sleep 300 & echo $! > child; wait"], tmp_path
    )
    child = int(await wait_file(tmp_path / "child"))
    assert process_running(child)
    assert await run.alive()
    await run.cancel(grace=5)
    assert not process_running(child)
    assert not await run.alive()
    assert await run.exit_code() == 143  # the wrapper outlived TERM and recorded it


async def test_cancel_escalates_to_sigkill(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    # The program and its sleep ignore TERM, so only the SIGKILL after grace ends them;
    # the wrapper dies too and cancel records the exit itself.
    run = await start(
        provider, pgids, "stubborn", ["sh", "-c", "trap '' TERM; echo up > up; sleep 300"], tmp_path
    )
    await wait_file(tmp_path / "up")
    await run.cancel(grace=0.2)
    assert not await run.alive()
    assert await run.exit_code() == 137


async def test_cancel_of_ended_run_keeps_its_code(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(provider, pgids, "done", ["true"], tmp_path)
    assert await wait_exit(run) == 0
    await run.cancel(grace=0.1)
    assert await run.exit_code() == 0


async def test_missing_binary_exits_127_with_a_message(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(provider, pgids, "missing", ["no-such-agent-xyz", "--flag"], tmp_path)
    assert await wait_exit(run) == 127
    err = (await drain(run))["stderr"]
    assert any("no-such-agent-xyz" in line and "not found" in line for line in err)


async def test_env_is_exactly_the_given_env(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "ONLY_ME": "x y", "EMPTY": ""}
    run = await start(provider, pgids, "env", ["env"], tmp_path, env=env)
    assert await wait_exit(run) == 0
    assert sorted((await drain(run))["stdout"]) == sorted(f"{k}={v}" for k, v in env.items())

    # With no PATH at all the program is still found (sh's default search path).
    bare = await start(provider, pgids, "env-bare", ["env"], tmp_path, env={"OLDPWD": "/o"})
    assert await wait_exit(bare) == 0
    assert (await drain(bare))["stdout"] == ["OLDPWD=/o"]


async def test_stdin_and_files_are_delivered(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(
        provider,
        pgids,
        "stdin",
        ["sh", "-c", 'cat; cat "$0"', "/dev/null"],
        tmp_path,
        stdin=b"hello\nworld\n",
        files={"prompt.md": b"# goal\n"},
    )
    assert await wait_exit(run) == 0
    assert (await drain(run))["stdout"] == ["hello", "world"]
    assert (Path(run.run_dir) / "prompt.md").read_bytes() == b"# goal\n"

    no_stdin = await start(provider, pgids, "no-stdin", ["cat"], tmp_path)
    assert await wait_exit(no_stdin) == 0  # /dev/null: cat ends at once
    assert await drain(no_stdin) == {"stdout": [], "stderr": []}


@pytest.mark.parametrize(
    "name", ["../evil", "a/../b", "/abs", "stdout/x", "..", "", "stdout", "exit", "x.tmp"]
)
async def test_bad_file_names_are_refused(
    provider: LocalProvider, tmp_path: Path, name: str
) -> None:
    run_dir = await provider.run_dir("files")
    cmd = Command(argv=("true",), cwd=str(tmp_path), files={name: b"x"})
    with pytest.raises(ProviderError, match="invalid run file name"):
        await provider.launch(cmd, run_dir)


@pytest.mark.parametrize("key", ["../x", "a/b", "..", "", "a b", "é"])
async def test_bad_run_keys_are_refused(provider: LocalProvider, key: str) -> None:
    with pytest.raises(ProviderError, match="invalid run key") as info:
        await provider.run_dir(key)
    assert info.value.hint


async def test_run_dir_is_absolute_and_not_reused(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    path = await provider.run_dir("task-12-attempt-2")
    assert path == str(tmp_path / "state" / "runs" / "task-12-attempt-2")
    assert await provider.run_dir("task-12-attempt-2") == path
    run = await start(provider, pgids, "task-12-attempt-2", ["true"], tmp_path)
    await wait_exit(run)
    with pytest.raises(ProviderError, match="already used"):
        await provider.launch(Command(argv=("true",), cwd=str(tmp_path)), path)
    with pytest.raises(ProviderError, match="does not exist"):
        await provider.launch(
            Command(argv=("true",), cwd=str(tmp_path / "nope")), await provider.run_dir("cwd")
        )


async def test_run_survives_aclose_and_reattaches(
    provider: LocalProvider, pgids: list[int], tmp_path: Path
) -> None:
    run = await start(provider, pgids, "durable", ["sh", "-c", "echo up; sleep 300"], tmp_path)
    await provider.aclose()  # bosun going away must not stop the agent
    other = LocalProvider("local", str(tmp_path / "state"))
    again = await other.attach(json.loads(json.dumps(run.ref)))
    assert await again.alive()
    for _ in range(500):
        if await again.read(0, 0):
            break
        await asyncio.sleep(0.02)
    assert (await again.read(0, 0))[0].lines == ("up",)
    await again.cancel(grace=5)
    assert not await again.alive()
    assert await again.exit_code() == 143
    await other.aclose()


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


async def test_attach_rejects_bad_refs(provider: LocalProvider, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="malformed"):
        await provider.attach({"run_dir": 3})
    with pytest.raises(ProviderError, match="no longer exists"):
        await provider.attach({"run_dir": str(tmp_path / "gone"), "pid": 1, "pgid": 1})


async def test_exec_captures_output_and_merges_env(provider: LocalProvider, tmp_path: Path) -> None:
    res = await provider.exec(
        ["sh", "-c", 'cat; echo "$BOSUN_T" >&2; exit 4'],
        cwd=str(tmp_path),
        env={"BOSUN_T": "v"},
        stdin=b"in\n",
    )
    assert (res.exit_code, res.stdout, res.stderr, res.ok) == (4, "in\n", "v\n", False)
    home = await provider.exec(["sh", "-c", 'echo "$PATH"'])
    assert home.stdout.strip() == os.environ["PATH"]


async def test_exec_timeout_kills_and_names_the_command(
    provider: LocalProvider, tmp_path: Path
) -> None:
    with pytest.raises(ProviderError, match="sleep 300") as info:
        await provider.exec(
            ["sh", "-c", "sleep 300 & echo $! > kid; wait"], timeout=0.5, cwd=str(tmp_path)
        )
    assert "timed out" in info.value.message
    kid = int((tmp_path / "kid").read_text())
    assert not process_running(kid)


async def test_exec_missing_program_and_cwd(provider: LocalProvider, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="was not found") as info:
        await provider.exec(["no-such-tool-xyz"])
    assert info.value.hint is not None
    assert "PATH" in info.value.hint
    with pytest.raises(ProviderError, match="does not exist"):
        await provider.exec(["true"], cwd=str(tmp_path / "missing"))


async def test_exec_redacts_url_credentials(provider: LocalProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.exec(
            ["sh", "-c", "sleep 5", "https://user:tok3n@example.invalid/x"], timeout=0.1
        )
    assert "tok3n" not in str(info.value)


class TestLocalProviderContract(ProviderContract):
    """The provider contract (tests/provider_contract.py) that the SSH provider shares."""

    @pytest.fixture
    def fresh_provider(self, tmp_path: Path) -> Callable[[], LocalProvider]:
        return lambda: LocalProvider("local", str(tmp_path / "state"))

    @pytest.fixture
    def workdir(self, tmp_path: Path) -> Path:
        path = tmp_path / "work"
        path.mkdir()
        return path
