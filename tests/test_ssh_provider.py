"""SshProvider against real sshd hosts: the provider contract, and what only SSH has."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bosun.config import HostConfig
from bosun.errors import HostUnreachable, ProviderError
from bosun.providers import ssh as ssh_module
from bosun.providers import ssh_run
from bosun.providers.base import Command
from bosun.providers.ssh import SshProvider
from bosun.providers.ssh_scripts import SPARES
from bosun.providers.tmux import session_for_run
from tests.provider_contract import (
    PATH_ENV,
    ProviderContract,
    drain,
    process_running,
    start,
    wait_exit,
    wait_file,
    wait_until,
)
from tests.sshd import SshdFleet, SshHost

pytestmark = pytest.mark.ssh


def make_provider(fleet: SshdFleet, host: SshHost, state: Path, **overrides: Any) -> SshProvider:
    table = fleet.host_table(host, **overrides)
    return SshProvider(host.name, HostConfig(**table), str(state))


def host_dir(host: SshHost, name: str) -> Path:
    """A directory in the host user's home, owned by that user."""
    path = host.home / name
    path.mkdir(exist_ok=True)
    os.chown(path, host.uid, host.lease.gid)
    return path


@pytest.fixture
def host(sshd: SshdFleet) -> SshHost:
    (h,) = sshd.start(1)
    sshd.trust(h)
    return h


async def spares_ready(p: SshProvider, count: int = SPARES) -> None:
    """Wait until the host session has ``count`` spares waiting."""
    await p.session.start()
    for _ in range(600):
        if p.session.idle_spares >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{p.session.idle_spares} spares after 6 s, not {count}")


class TestSshProviderContract(ProviderContract):
    """Every rule of the Provider protocol, on a real sshd: launched by the session's
    spares (while there are some waiting) and by the session's setsid."""

    @pytest.fixture(params=["spare", "setsid"])
    async def provider(
        self,
        request: pytest.FixtureRequest,
        sshd: SshdFleet,
        host: SshHost,
        tmp_path: Path,
    ) -> AsyncIterator[SshProvider]:
        spares = request.param == "spare"
        p = make_provider(sshd, host, tmp_path / "state", spares=spares)  # (the config's)
        await p.ensure_ready()
        if spares:
            await spares_ready(p)
        yield p
        await p.aclose()
        if spares and sum(p.launches.values()):
            assert p.launches["spare"] >= 1  # the first launch took a spare
        else:
            assert p.launches["spare"] == 0

    @pytest.fixture
    def fresh_provider(
        self,
        sshd: SshdFleet,
        host: SshHost,
        tmp_path: Path,
    ) -> Callable[[], SshProvider]:
        return lambda: make_provider(sshd, host, tmp_path / "state")

    @pytest.fixture
    def workdir(self, host: SshHost) -> Path:
        return host_dir(host, "work")


# -- what only the SSH provider has -------------------------------------------------------
@pytest.fixture
async def provider(
    sshd: SshdFleet,
    host: SshHost,
    tmp_path: Path,
) -> AsyncIterator[SshProvider]:
    p = make_provider(sshd, host, tmp_path / "state")
    await p.ensure_ready()
    yield p
    await p.aclose()


def session_commands(host: SshHost) -> int:
    """Exec channels the host's sshd has started so far."""
    return host.log_text().count("Starting session: command")


async def test_one_connection_carries_everything(provider: SshProvider, host: SshHost) -> None:
    work = host_dir(host, "work")
    runs = [await start(provider, f"r{i}", ["sh", "-c", f"echo {i}"], work) for i in range(5)]
    for i, run in enumerate(runs):
        assert await wait_exit(run) == 0
        assert (await drain(run))["stdout"] == [str(i)]
        assert not await run.alive()
    for _ in range(10):
        assert (await provider.exec(["true"])).ok
    assert provider.link.connects == 1
    assert host.sessions() == 1  # sshd authenticated one connection, no more
    assert provider.root == f"{host.home}/.bosun"
    assert provider.home == str(host.home)


async def test_more_concurrent_commands_than_channels(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1, max_sessions=3)
    sshd.trust(h)
    p = make_provider(sshd, h, tmp_path / "state", max_channels=3)
    try:
        await p.ensure_ready()
        argv = ["sh", "-c", 'sleep 0.2; echo "$1"', "sh"]
        results = await asyncio.gather(*(p.exec([*argv, str(i)]) for i in range(12)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]
        assert h.sessions() == 1
    finally:
        await p.aclose()


async def test_channels_over_max_sessions_fail_with_the_fix(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1, max_sessions=2)
    sshd.trust(h)
    p = make_provider(sshd, h, tmp_path / "state", max_channels=8)
    try:
        await p.ensure_ready()
        results = await asyncio.gather(
            *(p.exec(["sleep", "0.5"]) for _ in range(6)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, ProviderError)]
        assert errors, results
        assert "refused a new SSH channel" in errors[0].message
        assert errors[0].hint is not None and "max_channels" in errors[0].hint
    finally:
        await p.aclose()


async def test_lines_survive_reconnects_and_restarts(
    sshd: SshdFleet,
    host: SshHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ssh_run, "READ_CAP", 23)  # cut lines apart between reads
    work = host_dir(host, "work")
    script = 'i=1; while [ $i -le 200 ]; do echo "line-$i"; i=$((i+1)); sleep 0.005; done; exit 5'
    first = make_provider(sshd, host, tmp_path / "state")
    run = await start(first, "numbered", ["sh", "-c", script], work)
    ref = run.ref
    got: list[str] = []
    offset = 0
    current = first
    rounds = 0
    while True:
        handle = await current.attach(ref)
        for _ in range(4):
            chunks = await handle.read(offset, 0, final=await handle.exit_code() is not None)
            for chunk in chunks:
                got.extend(chunk.lines)
                offset = chunk.end_offset
        if await handle.exit_code() is not None and not await handle.read(offset, 0, final=True):
            break
        rounds += 1
        if rounds % 2:
            # the connection dies under bosun: the host's side of it is killed
            for pid, _pgid, argv in host.processes():
                if argv and argv[0].startswith(f"sshd: {host.user}"):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(HostUnreachable):
                await handle.read(offset, 0)
        else:
            await current.aclose()  # bosun restarts: a new provider attaches
            current = make_provider(sshd, host, tmp_path / "state")
    assert await handle.exit_code() == 5
    await current.aclose()
    assert got == [f"line-{i}" for i in range(1, 201)]
    assert rounds >= 2


async def test_exit_is_collected_when_the_run_ended_while_away(
    sshd: SshdFleet,
    host: SshHost,
    tmp_path: Path,
) -> None:
    work = host_dir(host, "work")
    p = make_provider(sshd, host, tmp_path / "state")
    run = await start(
        p,
        "away",
        ["sh", "-c", "echo a; while [ ! -e go ]; do sleep 0.02; done; echo b; exit 7"],
        work,
    )
    for _ in range(500):
        if chunks := await run.read(0, 0):
            break
        await asyncio.sleep(0.02)
    assert chunks[0].lines == ("a",)
    offset = chunks[0].end_offset
    await p.aclose()
    (work / "go").touch()
    for _ in range(500):  # the run ends while no bosun is connected
        if (Path(run.run_dir) / "exit").exists():
            break
        await asyncio.sleep(0.02)
    later = make_provider(sshd, host, tmp_path / "state")
    try:
        again = await later.attach(run.ref)
        assert await again.exit_code() == 7
        assert [c.lines for c in await again.read(offset, 0, final=True)] == [("b",)]
        assert not await again.alive()
    finally:
        await later.aclose()


async def test_cancel_leaves_nothing_on_the_host(provider: SshProvider, host: SshHost) -> None:
    work = host_dir(host, "work")
    script = "sleep 300 & sleep 301 & (sleep 302 &) ; echo started > up; wait"
    run = await start(provider, "cancel", ["sh", "-c", script], work)
    await wait_file(work / "up")
    pgid = run.ref["pgid"]
    sleeps = [a for _p, g, a in host.processes() if g == pgid and a[:1] == ["sleep"]]
    assert len(sleeps) == 3
    await run.cancel(grace=5)
    assert [a for _p, g, a in host.processes() if g == pgid] == []
    assert not any(a[:1] == ["sleep"] for _p, _g, a in host.processes())
    assert await run.exit_code() == 143


async def test_without_setsid_the_run_still_has_a_group_of_its_own(
    sshd: SshdFleet,
    host: SshHost,
    tmp_path: Path,
) -> None:
    work = host_dir(host, "work")
    p = make_provider(sshd, host, tmp_path / "state")
    p = SshProvider(host.name, p.config, str(tmp_path / "state"), use_setsid=False)
    try:
        run = await start(p, "nosetsid", ["sh", "-c", "sleep 300 & echo up > up; wait"], work)
        await wait_file(work / "up")
        pid, pgid = run.ref["pid"], run.ref["pgid"]
        assert pid != pgid  # the group sshd made for the launching command
        assert (Path(run.run_dir) / "pgid").read_text().strip() == str(pgid)
        members = {p for p, g, _a in host.processes() if g == pgid}
        assert pid in members and len(members) == 3  # wrapper, sh, sleep
        assert await run.alive()
        assert (await p.attach({"run_dir": run.run_dir})).ref == run.ref
        await run.cancel(grace=5)
        assert not await run.alive()
        assert [a for _p, g, a in host.processes() if g == pgid] == []
        assert await run.exit_code() == 143
    finally:
        await p.aclose()


async def test_a_killed_wrapper_leaves_the_group_alive_until_cancel(
    provider: SshProvider, host: SshHost
) -> None:
    work = host_dir(host, "work")
    run = await start(provider, "wrapper", ["sh", "-c", "echo up > up; sleep 300"], work)
    await wait_file(work / "up")
    os.kill(run.ref["pid"], signal.SIGKILL)  # only the wrapper, not its group
    assert await run.alive()  # the agent itself still runs
    assert await run.exit_code() is None
    await run.cancel(grace=5)
    assert not await run.alive()
    assert await run.exit_code() == 143  # recorded by cancel: the wrapper could not


async def test_alive_checks_cost_no_process_or_share_one_channel(
    sshd: SshdFleet, host: SshHost, tmp_path: Path, provider: SshProvider
) -> None:
    work = host_dir(host, "work")
    # the host session answers: no command started for any of them
    runs = [await start(provider, f"s{i}", ["sleep", "300"], work) for i in range(10)]
    for run in runs:  # the wrapper has started: its own session and group exist
        await wait_file(Path(run.run_dir) / "pid")
    before = session_commands(host)
    assert await asyncio.gather(*(r.alive() for r in runs)) == [True] * 10
    assert session_commands(host) == before
    # without setsid the group's leader (the launcher) is gone: kill -0, still no command
    plain = make_provider(sshd, host, tmp_path / "state")
    p = SshProvider(host.name, plain.config, str(tmp_path / "state"), use_setsid=False)
    try:
        more = [await start(p, f"n{i}", ["sleep", "300"], work) for i in range(20)]
        before = session_commands(host)
        assert await asyncio.gather(*(r.alive() for r in more)) == [True] * 20
        assert session_commands(host) - before == p.session.starts == 1  # the session
        await asyncio.gather(*(r.cancel(grace=2) for r in [*runs, *more]))
        assert await asyncio.gather(*(r.alive() for r in [*runs, *more])) == [False] * 30
    finally:
        await p.aclose()


@pytest.mark.parametrize("setsid", [True, False], ids=["session", "exec-launch"])
async def test_env_values_never_cross_a_command_line(
    sshd: SshdFleet, host: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setsid: bool
) -> None:
    """Both ways of launching (the host session; an exec channel where there is no
    setsid): the secret reaches the agent and no command line on the host holds it."""
    work = host_dir(host, "work")
    plain = make_provider(sshd, host, tmp_path / "state")
    p = SshProvider(host.name, plain.config, str(tmp_path / "state"), use_setsid=setsid)
    lines: list[str] = []
    real_run = p.link.run

    async def spy(command: str, **kwargs: Any) -> tuple[int, bytes, bytes]:
        lines.append(command)
        return await real_run(command, **kwargs)

    monkeypatch.setattr(p.link, "run", spy)
    secret = "sk-secret-4711"
    try:
        await p.ensure_ready()
        lines.clear()
        run = await start(
            p,
            f"secret-{setsid}",
            ["sh", "-c", 'printf %s "$API_KEY" > key.out; echo up > up; echo ok; exec sleep 300'],
            work,
            env={**PATH_ENV, "API_KEY": secret},
        )
        await wait_file(work / "up")
        argvs = [" ".join(a) for _p, _g, a in host.processes()]
        assert any("sleep 300" in a for a in argvs)  # the run is there to be seen
        assert not any(secret in a for a in argvs)
        assert not any(secret in line for line in lines)
        assert (work / "key.out").read_text() == secret
        assert not (Path(run.run_dir) / "env.sh").exists()  # never written, or deleted
        await run.cancel(grace=5)
        assert (await drain(run))["stdout"] == ["ok"]
        assert bool(lines) is not setsid  # only the exec launch runs a command
    finally:
        await p.aclose()


async def test_a_lost_connection_is_unreachable_not_an_exit_code(
    provider: SshProvider, host: SshHost
) -> None:
    pending = asyncio.ensure_future(provider.exec(["sleep", "30"]))
    for _ in range(500):
        if any(a[:1] == ["sleep"] for _p, _g, a in host.processes()):
            break
        await asyncio.sleep(0.02)
    for pid, _pgid, argv in host.processes():
        if argv and argv[0].startswith(f"sshd: {host.user}"):
            os.kill(pid, signal.SIGKILL)
    with pytest.raises(HostUnreachable) as info:
        await pending
    assert "unreachable" in info.value.message and "lost" in info.value.message
    assert (await provider.exec(["echo", "back"])).stdout == "back\n"  # reconnected
    assert provider.link.connects == 2


async def test_existing_connection_outlives_the_listener(
    provider: SshProvider, host: SshHost
) -> None:
    host.kill_listener()
    assert (await provider.exec(["echo", "still"])).stdout == "still\n"
    work = host_dir(host, "work")
    run = await start(provider, "nolistener", ["echo", "fine"], work)
    assert await wait_exit(run) == 0


async def test_cancelled_exec_kills_the_remote_command(
    provider: SshProvider, host: SshHost
) -> None:
    work = host_dir(host, "work")
    task = asyncio.ensure_future(
        provider.exec(["sh", "-c", "sleep 300 & echo $! > kid; wait"], cwd=str(work))
    )
    kid = int(await wait_file(work / "kid"))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for _ in range(250):
        if not process_running(kid):
            break
        await asyncio.sleep(0.02)
    assert not process_running(kid)


async def test_files_move_both_ways(provider: SshProvider, host: SshHost, tmp_path: Path) -> None:
    local = tmp_path / "bundle"
    local.write_bytes(b"\x00git bundle\xff" * 1000)
    remote = f"{host_dir(host, 'xfer')}/bundle"
    await provider.upload(str(local), remote)
    assert Path(remote).read_bytes() == local.read_bytes()
    back = tmp_path / "back"
    await provider.download(remote, str(back))
    assert back.read_bytes() == local.read_bytes()
    with pytest.raises(ProviderError, match="cannot download"):
        await provider.download(f"{remote}-missing", str(back))


async def test_tmux_mode_runs_the_same_protocol_on_the_host(
    provider: SshProvider, host: SshHost
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/check installs it)")
    work = host_dir(host, "work")
    run_dir = await provider.run_dir("tmux-1")
    session = session_for_run(run_dir)
    cmd = Command(
        argv=("sh", "-c", 'echo "out $T"; echo err >&2; exit 4'),
        cwd=str(work),
        env={**PATH_ENV, "T": "tmux"},
        tmux=session,
    )
    run = await provider.launch(cmd, run_dir)
    assert await wait_exit(run) == 4
    assert await drain(run) == {"stdout": ["out tmux"], "stderr": ["err"]}
    stubborn = await provider.launch(
        Command(("sleep", "300"), str(work), PATH_ENV, tmux=session_for_run(run_dir + "x")),
        await provider.run_dir("tmux-1x"),
    )
    assert await stubborn.alive()
    await stubborn.cancel(grace=2)
    assert not await stubborn.alive()
    assert [a for _p, g, a in host.processes() if g == stubborn.ref["pgid"]] == []


async def test_aes_gcm_first_unless_the_ssh_config_names_ciphers(
    sshd: SshdFleet, host: SshHost, tmp_path: Path
) -> None:
    plain = make_provider(sshd, host, tmp_path / "state")
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com\n")
    chosen = make_provider(sshd, host, tmp_path / "state", ssh_config=str(config))
    try:
        conn = await plain.link.connection()
        assert conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
        conn = await chosen.link.connection()
        assert conn.get_extra_info("send_cipher") == "chacha20-poly1305@openssh.com"
    finally:
        await plain.aclose()
        await chosen.aclose()


def session_shells(host: SshHost) -> list[int]:
    """Pids of the host's bosun session shells (``/bin/sh -s PATH``)."""
    return [p for p, _g, a in host.processes() if a[:2] == ["/bin/sh", "-s"]]


async def test_a_killed_session_shell_is_replaced_and_runs_go_on(
    provider: SshProvider, host: SshHost
) -> None:
    """The session holds nothing that matters: kill its shell on the host while a run is
    followed, and the next probe starts a new one; the run itself never noticed."""
    work = host_dir(host, "work")
    os.mkfifo(work / "fifo")
    os.chown(work / "fifo", host.uid, -1)
    run = await start(provider, "survivor", ["sh", "-c", "read x < fifo; echo done"], work)
    assert await run.alive()
    (first,) = session_shells(host)
    os.kill(first, signal.SIGKILL)
    for _ in range(200):
        if first not in session_shells(host):
            break
        await asyncio.sleep(0.01)
    assert await run.exit_code() is None  # answered by a new session (a probe retries)
    assert await run.alive()
    assert provider.session.starts == 2
    (second,) = session_shells(host)
    assert second != first
    await asyncio.to_thread((work / "fifo").write_text, "go\n")  # let the run end
    assert await wait_exit(run) == 0
    assert (await drain(run))["stdout"] == ["done"]


async def test_cancel_kills_what_outlives_the_agent(provider: SshProvider, host: SshHost) -> None:
    """The agent ends on SIGTERM (so the wrapper records its code) but leaves a child
    that ignores it: the group is still alive, so cancel goes on to SIGKILL."""
    work = host_dir(host, "work")
    script = "sh -c 'trap \"\" TERM; echo up > up; exec sleep 300' & wait"
    run = await start(provider, "stubborn", ["sh", "-c", script], work)
    await wait_file(work / "up")
    await run.cancel(grace=1)
    assert await run.exit_code() == 143  # the agent's own end, recorded by the wrapper
    assert not await run.alive()
    assert [a for _p, g, a in host.processes() if g == run.ref["pgid"]] == []


async def test_a_launch_waits_for_its_directories(
    provider: SshProvider, host: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SFTP makes the run directory, its files' own and the scratch directory slowly:
    the launch request goes out once they exist, and once only."""
    work = host_dir(host, "work")
    real = provider.makedirs

    async def slow(path: str) -> None:
        await asyncio.sleep(0.3)
        await real(path)

    monkeypatch.setattr(provider, "makedirs", slow)
    sent: list[str] = []
    real_call = provider.session.call

    async def spy(function: str, args: Any, **kwargs: Any) -> list[str]:
        words = await real_call(function, args, **kwargs)
        sent.append(f"{function} {' '.join(words)}")
        return words

    monkeypatch.setattr(provider.session, "call", spy)
    run_dir = await provider.run_dir("late")
    cmd = Command(
        argv=("sh", "-c", 'pwd; cat "$1"', "sh", f"{run_dir}/sub/deep/f"),
        cwd=str(work / "late" / "t1"),
        env=PATH_ENV,
        files={"sub/deep/f": b"in a directory of its own\n"},
    )
    run = await provider.launch(replace(cmd, make_cwd=True), run_dir)
    assert await wait_exit(run) == 0
    assert (await drain(run))["stdout"] == [str(work / "late" / "t1"), "in a directory of its own"]
    assert [s.split()[:2] for s in sent if s.startswith("launch")] == [["launch", "ok"]]


# -- spares ------------------------------------------------------------------------------
def spare_pids(host: SshHost) -> list[int]:
    """Pids of the host's waiting spares (``/bin/sh -c SPARE bosun-spare ID``)."""
    return [p for p, _g, a in host.processes() if a[:1] == ["/bin/sh"] and "bosun-spare" in a]


async def test_a_launch_takes_a_waiting_spare(provider: SshProvider, host: SshHost) -> None:
    """A spare already leads its own session: the launch hands it the words, and the
    run is that process (no setsid, no new shell), with what the session launch gives."""
    work = host_dir(host, "work")
    await spares_ready(provider)
    waiting = spare_pids(host)
    assert len(waiting) == SPARES
    before = session_commands(host)
    run = await start(provider, "spare", ["sh", "-c", 'echo up; echo "$PPID"'], work)
    assert run.ref["pid"] in waiting and run.ref["pgid"] == run.ref["pid"]
    assert provider.launches == {"spare": 1, "setsid": 0, "exec": 0}
    assert await wait_exit(run) == 0
    assert (await drain(run))["stdout"] == ["up", str(run.ref["pid"])]  # the spare: its parent
    await spares_ready(provider)  # the slot was filled again
    assert run.ref["pid"] not in spare_pids(host) and len(spare_pids(host)) == SPARES
    assert session_commands(host) == before  # all through the session: no exec channel


async def test_spares_end_with_their_session(
    provider: SshProvider, host: SshHost, sshd: SshdFleet, tmp_path: Path
) -> None:
    """Waiting spares hold nothing open but their FIFO: when the session shell ends
    (bosun closes it, or it is killed) they end too, and their FIFOs go."""
    await spares_ready(provider)
    spares_dir = host.home / provider.config.work_dir / "spares"
    assert len(spare_pids(host)) == SPARES and len(list(spares_dir.iterdir())) == SPARES
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in spares_dir.iterdir())
    await provider.aclose()
    await wait_until(lambda: not spare_pids(host))
    await wait_until(lambda: not list(spares_dir.iterdir()))
    # a session shell killed outright leaves its FIFOs: the next session removes them
    again = make_provider(sshd, host, tmp_path / "state")
    try:
        await again.ensure_ready()
        await spares_ready(again)
        (shell,) = session_shells(host)
        os.kill(shell, signal.SIGKILL)
        await wait_until(lambda: not spare_pids(host))
        assert len(list(spares_dir.iterdir())) == SPARES  # (left behind)
        assert not await again.signal("0", 999999)  # (retried on a new session)
        await spares_ready(again)
        assert (
            sorted(f.name.split(".")[0] for f in spares_dir.iterdir())
            == [str(p) for p in session_shells(host)] * SPARES
        )
    finally:
        await again.aclose()


async def test_a_dead_spare_is_passed_over(provider: SshProvider, host: SshHost) -> None:
    """Spares killed on the host: the launch is told so before anything is written,
    starts the run with setsid instead, and new spares take the slots."""
    work = host_dir(host, "work")
    await spares_ready(provider)
    dead = spare_pids(host)
    for pid in dead:
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: not spare_pids(host))
    run = await start(provider, "dead", ["sh", "-c", "echo ok"], work)
    assert provider.launches["setsid"] == 1 and run.ref["pid"] not in dead
    assert await wait_exit(run) == 0
    assert (await drain(run))["stdout"] == ["ok"]
    await wait_until(lambda: provider.session.idle_spares >= 1)
    again = await start(provider, "again", ["sh", "-c", "echo ok"], work)
    assert provider.launches["spare"] == 1 and again.ref["pid"] not in dead
    assert await wait_exit(again) == 0


async def test_a_spare_that_never_answers_is_killed_not_reused(
    provider: SshProvider, host: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped spare takes no launch: the launch times out with the fix, the spare is
    killed (it must not start that run later) and its slot gets a new one."""
    work = host_dir(host, "work")
    await spares_ready(provider)
    stopped = spare_pids(host)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    monkeypatch.setattr(ssh_module, "LAUNCH_TIMEOUT", 1.0)
    try:
        with pytest.raises(ProviderError, match="did not start within 1s"):
            await start(provider, "stuck", ["sh", "-c", "echo late > late"], work)
        await wait_until(lambda: len(set(spare_pids(host)) & set(stopped)) == SPARES - 1)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    await wait_until(lambda: provider.session.idle_spares == SPARES)
    await asyncio.sleep(0.5)
    assert not (work / "late").exists()  # the killed spare never ran it, nor a new one
    run = await start(provider, "after", ["sh", "-c", "echo ok"], work)
    assert await wait_exit(run) == 0


async def test_only_the_hosts_user_may_write_where_spares_wait(
    sshd: SshdFleet, host: SshHost, tmp_path: Path
) -> None:
    """A spare runs what its FIFO says, so the directory of the FIFOs is made private to
    the host's user even when it was there already, open to others."""
    work = host.home / ".bosun"
    for path in (work, work / "spares"):
        path.mkdir(exist_ok=True)
        os.chown(path, host.uid, host.lease.gid)
    (work / "spares").chmod(0o777)
    p = make_provider(sshd, host, tmp_path / "state")
    try:
        await p.ensure_ready()
        await spares_ready(p)
        assert (work / "spares").stat().st_mode & 0o777 == 0o700
    finally:
        await p.aclose()
