"""ProviderContract: the rules every Provider / RunHandle obeys, as tests that do not know
which provider they run on (local, ssh).

A provider's test module subclasses it (``class TestXProviderContract(ProviderContract)``)
and supplies three fixtures:

- ``provider``: a ready provider (``ensure_ready`` done), closed after the test;
- ``fresh_provider``: a factory of *new* providers of the same host, as a restarted bosun
  would make them (the test closes them);
- ``workdir``: a directory on the provider's host where the host's user may write, used as
  the working directory of runs. The test hosts of every provider live on this machine,
  so the tests check files and processes through this machine's file system and /proc.

It may also override ``small_reads`` (see there).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bosun.errors import ProviderError
from bosun.providers.base import Command, OutputChunk, Provider, RunHandle

PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}

ProviderFactory = Callable[[], Provider]


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


def process_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (PID 1 here may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def start(
    provider: Provider,
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
    return await provider.launch(cmd, run_dir)


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Until ``condition()`` holds (``AssertionError`` after ``limit`` seconds: a guard
    against a hang, not a measurement)."""
    for _ in range(int(limit / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {limit}s")


async def wait_exit(run: RunHandle, limit: float = 30.0) -> int:
    for _ in range(int(limit / 0.02)):
        code = await run.exit_code()
        if code is not None:
            return code
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run.run_dir} did not exit")


async def wait_dead(run: RunHandle, limit: float = 30.0) -> None:
    """Until no process of the run's group is left (the wrapper exits just after it
    recorded the exit code)."""
    for _ in range(int(limit / 0.02)):
        if not await run.alive():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run.run_dir} is still alive")


async def wait_file(path: Path, limit: float = 30.0) -> str:
    """The file's text once it ends with a newline (written completely)."""
    for _ in range(int(limit / 0.02)):
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.endswith("\n"):
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


class ProviderContract:
    """Every rule of the Provider protocol (see the module docstring for the fixtures)."""

    async def test_protocols_are_implemented(self, provider: Provider, workdir: Path) -> None:
        assert isinstance(provider, Provider)
        run = await start(provider, "proto", ["true"], workdir)
        assert isinstance(run, RunHandle)
        assert await wait_exit(run) == 0

    async def test_launch_reads_lines_and_exit_code(
        self, provider: Provider, workdir: Path
    ) -> None:
        run = await start(
            provider,
            "task-1-attempt-1",
            ["sh", "-c", 'echo one; echo "two  words"; echo oops >&2; pwd; exit 3'],
            workdir,
            env={**PATH_ENV, "SECRET_TOKEN": "hunter2"},
        )
        assert await wait_exit(run) == 3
        out = await drain(run)
        assert out["stdout"] == ["one", "two  words", str(workdir)]
        assert out["stderr"] == ["oops"]
        await wait_dead(run)
        run_dir = Path(run.run_dir)
        meta = json.loads((run_dir / "cmd.json").read_text())
        assert meta["argv"][0] == "sh"
        assert meta["cwd"] == str(workdir)
        assert meta["env_keys"] == ["PATH", "SECRET_TOKEN"]
        # the secret is nowhere in the run directory, and the run is its own group
        for path in run_dir.iterdir():
            assert b"hunter2" not in path.read_bytes(), path
        assert {"run_dir", "pgid", "pid"} <= set(run.ref)
        assert (run_dir / "pid").read_text().strip() == str(run.ref["pid"])

    @pytest.fixture
    def small_reads(self) -> None:
        """Where a provider can, make every read return only a few bytes (lines cut
        apart); a provider's test class overrides this (the local one shrinks READ_CAP)."""

    @pytest.mark.usefixtures("small_reads")
    async def test_numbered_lines_in_small_steps_across_reattach(
        self, provider: Provider, fresh_provider: ProviderFactory, workdir: Path
    ) -> None:
        script = 'i=1; while [ $i -le 300 ]; do echo "line-$i"; echo "err-$i" >&2; i=$((i+1)); done'
        run = await start(provider, "numbered", ["sh", "-c", script], workdir)
        ref = json.loads(json.dumps(run.ref))
        got: dict[str, list[str]] = {"stdout": [], "stderr": []}
        offsets = {"stdout": 0, "stderr": 0}
        exited = False
        steps = 0
        while True:
            # A fresh provider and handle every few steps, as after a restart of bosun.
            other = fresh_provider()
            handle = await other.attach(ref)
            for _ in range(3):
                chunks: list[OutputChunk] = await handle.read(offsets["stdout"], offsets["stderr"])
                steps += 1
                for chunk in chunks:
                    assert len(chunk.lines) >= 1
                    got[chunk.stream].extend(chunk.lines)
                    offsets[chunk.stream] = chunk.end_offset
                if not chunks:
                    break
            await other.aclose()
            if not chunks:
                if exited:
                    break
                exited = await run.exit_code() is not None
                await asyncio.sleep(0.01)
        assert got["stdout"] == [f"line-{i}" for i in range(1, 301)]
        assert got["stderr"] == [f"err-{i}" for i in range(1, 301)]
        assert await run.exit_code() == 0

    async def test_partial_line_only_with_final(self, provider: Provider, workdir: Path) -> None:
        run = await start(provider, "partial", ["printf", "a\\r\\n\\xff-b\\nunfinished"], workdir)
        assert await wait_exit(run) == 0
        chunks = await run.read(0, 0)
        assert chunks == [OutputChunk("stdout", ("a", "\ufffd-b"), 7)]
        assert await run.read(7, 0) == []
        final = await run.read(7, 0, final=True)
        assert final == [OutputChunk("stdout", ("unfinished",), 17)]
        assert await run.read(17, 0, final=True) == []
        with pytest.raises(ProviderError, match="negative"):
            await run.read(-1, 0)

    async def test_cancel_kills_grandchildren(self, provider: Provider, workdir: Path) -> None:
        run = await start(
            provider, "grand", ["sh", "-c", "sleep 300 & echo $! > child; wait"], workdir
        )
        child = int(await wait_file(workdir / "child"))
        assert process_running(child)
        assert await run.alive()
        await run.cancel(grace=5)
        assert not process_running(child)
        assert not await run.alive()
        assert group_members(run.ref["pgid"]) == set()
        assert await run.exit_code() == 143  # the wrapper outlived TERM and recorded it

    async def test_cancel_escalates_to_sigkill(self, provider: Provider, workdir: Path) -> None:
        # The program ignores TERM, so only the SIGKILL after grace ends it; the wrapper
        # dies too and cancel records the exit itself.
        run = await start(
            provider, "stubborn", ["sh", "-c", "trap '' TERM; echo up > up; sleep 300"], workdir
        )
        await wait_file(workdir / "up")
        await run.cancel(grace=0.2)
        assert not await run.alive()
        assert group_members(run.ref["pgid"]) == set()
        assert await run.exit_code() == 137

    async def test_cancel_of_ended_run_keeps_its_code(
        self, provider: Provider, workdir: Path
    ) -> None:
        run = await start(provider, "done", ["true"], workdir)
        assert await wait_exit(run) == 0
        await run.cancel(grace=0.1)
        assert await run.exit_code() == 0

    async def test_missing_binary_exits_127_with_a_message(
        self, provider: Provider, workdir: Path
    ) -> None:
        run = await start(provider, "missing", ["no-such-agent-xyz", "--flag"], workdir)
        assert await wait_exit(run) == 127
        err = (await drain(run))["stderr"]
        assert any("no-such-agent-xyz" in line and "not found" in line for line in err)

    async def test_env_is_exactly_the_given_env(self, provider: Provider, workdir: Path) -> None:
        env = {"PATH": "/usr/bin:/bin", "ONLY_ME": "x y", "EMPTY": "", "Q": 'it\'s "$HOME"\n!'}
        run = await start(provider, "env", ["env", "-0"], workdir, env=env)
        assert await wait_exit(run) == 0
        raw = (Path(run.run_dir) / "stdout").read_bytes().split(b"\0")[:-1]
        assert dict(item.decode().split("=", 1) for item in raw) == env

        # With no PATH at all the program is still found (sh's default search path).
        bare = await start(provider, "env-bare", ["env"], workdir, env={"OLDPWD": "/o"})
        assert await wait_exit(bare) == 0
        assert (await drain(bare))["stdout"] == ["OLDPWD=/o"]

    async def test_env_values_arrive_byte_for_byte(self, provider: Provider, workdir: Path) -> None:
        value = 'it\'s "$HOME" `id` $(id)\n\\n; rm -rf /tmp/x*'
        run = await start(
            provider,
            "env-bytes",
            ["sh", "-c", 'printf %s "$V" > v.out'],
            workdir,
            env={**PATH_ENV, "V": value},
        )
        assert await wait_exit(run) == 0
        assert (workdir / "v.out").read_text() == value

    async def test_argv_arrives_byte_for_byte(self, provider: Provider, workdir: Path) -> None:
        args = ["a b", "", "'q'", '"d"', "$HOME", "`id`", "x\ny", "*", "-n", "\\"]
        run = await start(
            provider,
            "argv",
            ["sh", "-c", 'for a in "$@"; do printf "%s\\0" "$a"; done > argv.out', "sh", *args],
            workdir,
        )
        assert await wait_exit(run) == 0
        assert (workdir / "argv.out").read_bytes().split(b"\0")[:-1] == [a.encode() for a in args]

    async def test_stdin_and_files_are_delivered(self, provider: Provider, workdir: Path) -> None:
        run = await start(
            provider,
            "stdin",
            ["sh", "-c", 'cat; cat "$0"', "/dev/null"],
            workdir,
            stdin=b"hello\nworld\n",
            files={"prompt.md": b"# goal\n", "home/.tool/settings.json": b"{}"},
        )
        assert await wait_exit(run) == 0
        assert (await drain(run))["stdout"] == ["hello", "world"]
        assert (Path(run.run_dir) / "prompt.md").read_bytes() == b"# goal\n"
        assert (Path(run.run_dir) / "home/.tool/settings.json").read_bytes() == b"{}"

        no_stdin = await start(provider, "no-stdin", ["cat"], workdir)
        assert await wait_exit(no_stdin) == 0  # /dev/null: cat ends at once
        assert await drain(no_stdin) == {"stdout": [], "stderr": []}

    @pytest.mark.parametrize(
        "name", ["../evil", "a/../b", "/abs", "stdout/x", "..", "", "stdout", "exit", "x.tmp"]
    )
    async def test_bad_file_names_are_refused(
        self, provider: Provider, workdir: Path, name: str
    ) -> None:
        run_dir = await provider.run_dir("files")
        cmd = Command(argv=("true",), cwd=str(workdir), files={name: b"x"})
        with pytest.raises(ProviderError, match="invalid run file name"):
            await provider.launch(cmd, run_dir)

    @pytest.mark.parametrize("key", ["../x", "a/b", "..", "", "a b", "é"])
    async def test_bad_run_keys_are_refused(self, provider: Provider, key: str) -> None:
        with pytest.raises(ProviderError, match="invalid run key") as info:
            await provider.run_dir(key)
        assert info.value.hint

    async def test_run_dir_is_absolute_and_not_reused(
        self, provider: Provider, workdir: Path
    ) -> None:
        path = await provider.run_dir("task-12-attempt-2")
        assert path.startswith("/")
        assert path.endswith("/runs/task-12-attempt-2")
        assert await provider.run_dir("task-12-attempt-2") == path
        run = await start(provider, "task-12-attempt-2", ["true"], workdir)
        assert Path(path).is_dir()  # by the launch at the latest
        await wait_exit(run)
        with pytest.raises(ProviderError, match="already used"):
            await provider.launch(Command(argv=("true",), cwd=str(workdir)), path)
        with pytest.raises(ProviderError, match="does not exist"):
            await provider.launch(
                Command(argv=("true",), cwd=str(workdir / "nope")), await provider.run_dir("cwd")
            )
        with pytest.raises(ProviderError, match="empty argv"):
            await provider.launch(Command(argv=(), cwd=str(workdir)), await provider.run_dir("e"))

    async def test_the_agent_starts_with_default_signal_dispositions(
        self, provider: Provider, workdir: Path
    ) -> None:
        """Nothing the agent inherits is ignored (SIGINT, SIGQUIT, SIGPIPE...): a shell
        starting it with ``&`` would leave SIGINT and SIGQUIT ignored."""
        run = await start(provider, "signals", ["grep", "^SigIgn", "/proc/self/status"], workdir)
        assert await wait_exit(run) == 0
        (line,) = (await drain(run))["stdout"]
        ignored = int(line.split()[1], 16)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGTERM):
            assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored: {line}"

    async def test_make_cwd_creates_the_working_directory(
        self, provider: Provider, workdir: Path
    ) -> None:
        cwd = workdir / "scratch" / "task-7"
        cmd = Command(argv=("sh", "-c", "pwd; echo x > here"), cwd=str(cwd), env=PATH_ENV)
        run = await provider.launch(replace(cmd, make_cwd=True), await provider.run_dir("mk"))
        assert await wait_exit(run) == 0
        assert (await drain(run))["stdout"] == [str(cwd)]
        assert (cwd / "here").read_text() == "x\n"
        with pytest.raises(ProviderError, match="does not exist"):
            await provider.launch(
                replace(cmd, cwd=str(workdir / "other")), await provider.run_dir("mk2")
            )

    async def test_run_survives_aclose_and_reattaches(
        self, provider: Provider, fresh_provider: ProviderFactory, workdir: Path
    ) -> None:
        run = await start(provider, "durable", ["sh", "-c", "echo up; sleep 300"], workdir)
        await provider.aclose()  # bosun going away must not stop the agent
        other = fresh_provider()
        try:
            again = await other.attach(json.loads(json.dumps(run.ref)))
            assert await again.alive()
            for _ in range(500):
                if await again.read(0, 0):
                    break
                await asyncio.sleep(0.02)
            assert (await again.read(0, 0))[0].lines == ("up",)
            # only the run directory known (bosun died before recording the launch)
            by_dir = await other.attach({"run_dir": run.run_dir})
            assert by_dir.ref == again.ref
            await again.cancel(grace=5)
            assert not await again.alive()
            assert await again.exit_code() == 143
        finally:
            await other.aclose()

    async def test_attach_rejects_bad_refs(self, provider: Provider, workdir: Path) -> None:
        with pytest.raises(ProviderError, match="malformed"):
            await provider.attach({"run_dir": 3})
        with pytest.raises(ProviderError, match="no longer exists"):
            await provider.attach({"run_dir": str(workdir / "gone"), "pid": 1, "pgid": 1})
        never = await provider.run_dir("never-launched")
        with pytest.raises(ProviderError, match="no run was started"):
            await provider.attach({"run_dir": never})

    async def test_makedirs(self, provider: Provider, workdir: Path) -> None:
        target = workdir / "a" / "b" / "c"
        await provider.makedirs(str(target))
        await provider.makedirs(str(target))  # exists: fine
        assert target.is_dir()
        (workdir / "file").write_text("x")
        with pytest.raises(ProviderError):
            await provider.makedirs(str(workdir / "file" / "sub"))

    async def test_exec_captures_output_and_merges_env(
        self, provider: Provider, workdir: Path
    ) -> None:
        res = await provider.exec(
            ["sh", "-c", 'cat; echo "$BOSUN_T" >&2; pwd; exit 4'],
            cwd=str(workdir),
            env={"BOSUN_T": "v w"},
            stdin=b"in\n",
        )
        assert (res.exit_code, res.stdout, res.stderr, res.ok) == (
            4,
            f"in\n{workdir}\n",
            "v w\n",
            False,
        )
        assert res.argv[0] == "sh"
        path = await provider.exec(["sh", "-c", 'echo "$PATH"'])
        assert path.ok and "/bin" in path.stdout
        odd = await provider.exec(["printf", "%s|", "a b", "", "$HOME", "'", "x\ny"])
        assert odd.stdout == "a b||$HOME|'|x\ny|"

    async def test_exec_timeout_kills_and_names_the_command(
        self, provider: Provider, workdir: Path
    ) -> None:
        with pytest.raises(ProviderError, match="sleep 300") as info:
            await provider.exec(
                ["sh", "-c", "sleep 300 & echo $! > kid; wait"], timeout=1, cwd=str(workdir)
            )
        assert "timed out" in info.value.message
        kid = int((workdir / "kid").read_text())
        for _ in range(250):
            if not process_running(kid):
                break
            await asyncio.sleep(0.02)
        assert not process_running(kid)

    async def test_exec_missing_program_and_cwd(self, provider: Provider, workdir: Path) -> None:
        with pytest.raises(ProviderError, match="was not found") as info:
            await provider.exec(["no-such-tool-xyz"])
        assert info.value.hint is not None
        assert "PATH" in info.value.hint
        with pytest.raises(ProviderError, match="does not exist"):
            await provider.exec(["true"], cwd=str(workdir / "missing"))
        with pytest.raises(ProviderError, match="empty argv"):
            await provider.exec([])

    async def test_exec_redacts_url_credentials(self, provider: Provider) -> None:
        with pytest.raises(ProviderError) as info:
            await provider.exec(
                ["sh", "-c", "sleep 5", "https://user:tok3n@example.invalid/x"], timeout=0.3
            )
        assert "tok3n" not in str(info.value)
