"""Fleet-level faults: several real sshd hosts and a real ``bosun serve`` subprocess.

Each test starts real OpenSSH hosts (``tests/sshd.py``, each on its own 127.0.0.N), writes
a ``bosun.toml`` listing them (keys trusted through known_hosts, fast heartbeats) with a
SQLite store, and runs the orchestrator as ``python -m bosun serve`` in a subprocess. The
test itself opens the same store (``Service``) to submit tasks and to read what happened.

The agent is a small ``sh`` script (``AGENT``) that runs on the host as the host's user:
it appends ``start KEY`` to ``~/.bosun/ledger`` on its host (KEY is its run directory's
name, ``task-ID-attempt-N``), prints ``KEY begins``, then, for every gate it is given,
waits for the file ``~/.bosun/gate-G`` on its host and prints three lines, and finally
appends ``done KEY``. So the ledgers on the hosts count how often each task started and
finished there, independently of what bosun recorded, and gates (created by the test,
per host) decide when runs end.

What is proven here and nowhere else: the whole fleet through the real CLI process. The
single-run versions of a host dying or dropping packets, in-process, are in
``test_hosts_ssh.py``; the provider-level checks in ``test_ssh_*.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bosun.config import load_settings
from bosun.hosts.health import unreachable_limit
from bosun.models import Event, Run, RunStatus, TaskSpec, TaskStatus
from bosun.service import Service
from tests.sshd import SshdFleet, SshHost

pytestmark = pytest.mark.ssh

BOSUN = [sys.executable, "-m", "bosun"]

#: Seconds; the limit after which runs on an unreachable host are given up is two of these.
HEARTBEAT = 0.5

#: The agent: $0 is the run directory on the host, $1 the gates it waits for (see above).
AGENT = """
key=$(basename "$0"); top=$(dirname "$(dirname "$0")")
echo "start $key" >> "$top/ledger"
echo "$key begins"
for g in $1; do
  while [ ! -e "$top/gate-$g" ]; do sleep 0.05; done
  i=0; while [ $i -lt 3 ]; do i=$((i+1)); echo "$key $g$i"; done
done
echo "done $key" >> "$top/ledger"
"""

#: agent name -> the gates its runs wait for
GATES = {"work": "a", "special": "a", "twostep": "a b"}


def expected_output(key: str, gates: str) -> list[str]:
    """What the agent prints when it runs to its end."""
    return [f"{key} begins"] + [f"{key} {g}{i}" for g in gates.split() for i in (1, 2, 3)]


def run_key(task_id: int, attempt: int) -> str:
    return f"task-{task_id}-attempt-{attempt}"


# -- bosun.toml ---------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(data: Mapping[str, Mapping[str, Any]]) -> str:
    """``{section: {key: value}}`` or ``{section: {name: {key: value}}}`` as TOML."""
    out: list[str] = []
    for section, body in data.items():
        if body and all(isinstance(v, Mapping) for v in body.values()):
            for name, table in body.items():
                out.append(f"[{section}.{name}]")
                out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
                out.append("")
        else:
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
            out.append("")
    return "\n".join(out)


# -- the orchestrator ---------------------------------------------------------------------
class Orchestrator:
    """``bosun serve`` as a subprocess on ``cfg/bosun.toml``, and the test's own view of
    the same store."""

    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()  # pids the test killed on purpose
        self.svc: Service | None = None  # the test's view of the store, for diagnostics
        self.settings = load_settings(cfg / "bosun.toml")
        self.env = {**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")}

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.procs[-1] if self.procs else None

    def start(self) -> None:
        n = len(self.procs) + 1
        with (self.cfg / f"serve-{n}.out").open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [*BOSUN, "serve", "--port", "0", "-q"],
                    cwd=self.cfg,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def kill9(self) -> None:
        proc = self.proc
        assert proc is not None and proc.poll() is None, "the orchestrator is not running"
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, as a user stops ``bosun serve``; it must exit cleanly."""
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert code == 0, f"bosun serve exited {code}:\n{self.log()}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def log(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.cfg.glob("serve-*.out"))
        )

    async def state(self) -> str:
        """Every task and every event but output lines, to say why a test failed."""
        if self.svc is None:
            return ""
        lines = [
            f"task {t.id}: {t.status.value} attempt {t.attempt} on {t.assigned_host}: {t.error}"
            for t in await self.svc.list_tasks()
        ]
        for e in await all_events(self.svc):
            if e.kind != "run.output":
                lines.append(f"  #{e.id} task {e.task_id} {e.kind} {json.dumps(e.data)[:300]}")
        return "\n".join(lines)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``bosun ARGS`` as a user runs it."""
        return subprocess.run(
            [*BOSUN, *args],
            cwd=self.cfg,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def wait_for(
        self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
    ) -> None:
        """Poll ``check`` until true; fail with ``what`` and the orchestrator's log when it
        does not become true in time or the orchestrator died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await check():
            proc = self.proc
            if proc is not None and proc.poll() is not None and proc.pid not in self.killed:
                pytest.fail(
                    f"bosun serve exited {proc.returncode} waiting for {what}\n"
                    f"{await self.state()}\n{self.log()}"
                )
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{await self.state()}\n{self.log()}")
            await asyncio.sleep(0.05)


def write_config(
    cfg: Path, hosts: Mapping[str, Mapping[str, Any]], limits: Mapping[str, Any] | None = None
) -> None:
    cfg.mkdir(parents=True, exist_ok=True)
    data: dict[str, dict[str, Any]] = {
        "agents": {
            name: {"command": ["sh", "-c", AGENT, "{run_dir}", gates]}
            for name, gates in GATES.items()
        },
        "hosts": dict(hosts),
        "limits": {
            "max_concurrent": 20,
            "retry_backoff": 0.01,
            "retry_backoff_max": 0.05,
            "poll_interval": 0.1,
            "heartbeat_seconds": HEARTBEAT,
            "lease_seconds": 5,
            "cancel_grace": 1,
            **(limits or {}),
        },
        "server": {"bind": "127.0.0.1", "port": 0},
    }
    (cfg / "bosun.toml").write_text(toml_text(data))


@pytest.fixture(autouse=True)
def _own_client_home(ssh_client_home: Path) -> Path:
    """bosun (and the orchestrator subprocess, which inherits HOME) gets a HOME of its own."""
    return ssh_client_home


MakeOrchestrator = Callable[[Mapping[str, Any]], Orchestrator]


@pytest.fixture
def orchestrator(tmp_path: Path, sshd: SshdFleet) -> Iterator[MakeOrchestrator]:
    """``make(hosts)`` -> an ``Orchestrator`` (not started) for those host tables; every
    process it started is killed at teardown, before the hosts (``sshd``) are stopped."""
    made: list[Orchestrator] = []

    def make(hosts: Mapping[str, Any]) -> Orchestrator:
        write_config(tmp_path / "cfg", hosts)
        orch = Orchestrator(tmp_path / "cfg")
        made.append(orch)
        return orch

    try:
        yield make
    finally:
        for orch in made:
            orch.close()


@contextlib.asynccontextmanager
async def service(orch: Orchestrator) -> AsyncIterator[Service]:
    async with await Service.open(orch.settings) as svc:
        orch.svc = svc
        try:
            yield svc
        finally:
            orch.svc = None


# -- what the hosts and the store say -----------------------------------------------------
def ledger(host: SshHost) -> list[str]:
    path = host.home / ".bosun" / "ledger"
    return path.read_text().splitlines() if path.exists() else []


def open_gate(hosts: Iterable[SshHost], gate: str) -> None:
    for host in hosts:
        (host.home / ".bosun" / f"gate-{gate}").touch()


def agent_processes(host: SshHost) -> list[tuple[int, int, list[str]]]:
    """The host's processes that belong to agent runs (not sshd): their argv names a run
    directory (``sh -c AGENT RUN_DIR``), or they are in such a process's group."""
    procs = host.processes()
    groups = {pgid for _pid, pgid, argv in procs if any("/runs/task-" in a for a in argv)}
    return [p for p in procs if p[1] in groups]


async def all_events(svc: Service) -> list[Event]:
    found: list[Event] = []
    cursor = 0
    while batch := await svc.store.events_since(cursor, limit=1000):
        found += batch
        cursor = batch[-1].id
    return found


def output_lines(events: Iterable[Event], run_id: int) -> list[str]:
    return [str(e.data["line"]) for e in events if e.kind == "run.output" and e.run_id == run_id]


def completions(events: Iterable[Event], task_id: int) -> int:
    return sum(
        1
        for e in events
        if e.task_id == task_id and e.kind == "task.status" and e.data["to"] == "completed"
    )


async def begun(svc: Service, task_ids: Iterable[int], attempt: int = 1) -> bool:
    """Every task's run (of ``attempt``) has printed its first line, and bosun stored it."""
    want = {f"{run_key(t, attempt)} begins" for t in task_ids}
    seen = {str(e.data["line"]) for e in await all_events(svc) if e.kind == "run.output"}
    return want <= seen


async def all_settled(svc: Service, task_ids: Iterable[int]) -> bool:
    for t in task_ids:
        task = await svc.get(t)
        if task.status not in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
            return False
    return True


def assert_each_completed_once(
    task_ids: Iterable[int], events: list[Event], hosts: Iterable[SshHost]
) -> dict[int, list[tuple[str, str]]]:
    """Every task completed exactly once, in bosun's record and on the hosts (one ``done``
    ledger line over all hosts). Returns task id -> [(host, ledger line)]."""
    per_task: dict[int, list[tuple[str, str]]] = {}
    for host in hosts:
        for line in ledger(host):
            what, key = line.split()
            per_task.setdefault(int(key.split("-")[1]), []).append((host.name, what))
    for t in task_ids:
        assert completions(events, t) == 1, (t, per_task.get(t))
        dones = [h for h, what in per_task.get(t, []) if what == "done"]
        assert len(dones) == 1, (t, per_task.get(t))
    return per_task


# -- 1. distribution by capability and load ------------------------------------------------
async def test_tasks_spread_over_four_hosts_by_capability_and_load(
    sshd: SshdFleet, orchestrator: MakeOrchestrator
) -> None:
    hosts = sshd.start(4)
    sshd.trust(*hosts)
    h1, h2, h3, h4 = hosts
    tables = {
        "h1": sshd.host_table(h1, max_concurrent=3, agents=["work"]),
        "h2": sshd.host_table(h2, max_concurrent=3, agents=["work"]),
        "h3": sshd.host_table(h3, max_concurrent=3, agents=["work", "special"]),
        "h4": sshd.host_table(h4, max_concurrent=3, agents=["work"], labels=["gpu"]),
    }
    orch = orchestrator(tables)
    async with service(orch) as svc:
        # queued before bosun starts: one scheduling pass places them all
        special = [await svc.submit(TaskSpec(title=f"s{i}", agent="special")) for i in range(2)]
        gpu = [
            await svc.submit(TaskSpec(title=f"g{i}", agent="work", labels=("host:gpu",)))
            for i in range(2)
        ]
        plain = [await svc.submit(TaskSpec(title=f"p{i}", agent="work")) for i in range(4)]
        ids = [t.id for t in special + gpu + plain]
        orch.start()
        await orch.wait_for(lambda: begun(svc, ids), "every task to start on its host")
        placed = {t: (await svc.get(t)).assigned_host for t in ids}
        load = {h.name: h.running for h in await svc.hosts()}
        open_gate(hosts, "a")
        await orch.wait_for(lambda: all_settled(svc, ids), "every task to finish")
        orch.stop()
        events = await all_events(svc)
        diag = await orch.state()
        tasks = [await svc.get(t) for t in ids]
        runs = {t: await svc.runs(t) for t in ids}
    assert all(t.status is TaskStatus.COMPLETED and t.attempt == 1 for t in tasks), diag
    assert {placed[t.id] for t in special} == {"h3"}  # the only host allowed to run it
    assert {placed[t.id] for t in gpu} == {"h4"}  # the only host labelled gpu
    # the plain tasks went to the least loaded hosts: two each on h1 and h2 (3 slots each;
    # filling one host first would have put three on h1)
    assert Counter(placed[t.id] for t in plain) == {"h1": 2, "h2": 2}
    assert load == {"h1": 2, "h2": 2, "h3": 2, "h4": 2}
    per_task = assert_each_completed_once(ids, events, hosts)
    for t in ids:  # each ran once, on the host bosun recorded
        assert per_task[t] == [(placed[t], "start"), (placed[t], "done")]
        (run,) = runs[t]
        assert run.host == placed[t] and run.status is RunStatus.SUCCEEDED
    # one SSH connection per host carried every command of every run there
    assert [h.sessions() for h in hosts] == [1, 1, 1, 1]


# -- 2. a killed sshd listener ------------------------------------------------------------
async def test_a_killed_listener_leaves_running_sessions_and_runs_alone(
    sshd: SshdFleet, orchestrator: MakeOrchestrator
) -> None:
    hosts = sshd.start(2)
    sshd.trust(*hosts)
    orch = orchestrator(sshd.hosts_tables(max_concurrent=2))
    async with service(orch) as svc:
        first = [await svc.submit(TaskSpec(title=f"t{i}", agent="work")) for i in range(4)]
        orch.start()
        await orch.wait_for(lambda: begun(svc, [t.id for t in first]), "four runs to start")
        for host in hosts:
            host.kill_listener()  # no new connection can be made; the open one goes on
        # new work still reaches the hosts, over the connections already open
        late = [await svc.submit(TaskSpec(title=f"late{i}", agent="work")) for i in range(2)]
        open_gate(hosts, "a")
        ids = [t.id for t in first + late]
        await orch.wait_for(lambda: all_settled(svc, ids), "every task to finish")
        orch.stop()
        events = await all_events(svc)
        diag = await orch.state()
        tasks = [await svc.get(t) for t in ids]
        runs = {t: await svc.runs(t) for t in ids}
    assert all(t.status is TaskStatus.COMPLETED and t.attempt == 1 for t in tasks), diag
    assert all(len(r) == 1 and r[0].status is RunStatus.SUCCEEDED for r in runs.values())
    kinds = {e.kind for e in events}
    # nothing noticed any trouble: no host became unreachable, nothing was re-dispatched
    assert not kinds & {"run.host_unreachable", "run.abandoned", "host.unhealthy"}
    per_task = assert_each_completed_once(ids, events, hosts)
    assert all(len(lines) == 2 for lines in per_task.values())  # one start, one done
    assert [h.sessions() for h in hosts] == [1, 1]


# -- 3. a host's whole process tree dies ------------------------------------------------
async def test_a_dead_host_has_its_tasks_redispatched_and_none_lost_or_doubled(
    sshd: SshdFleet, orchestrator: MakeOrchestrator
) -> None:
    hosts = sshd.start(3)
    sshd.trust(*hosts)
    h1, h2, h3 = hosts
    orch = orchestrator(sshd.hosts_tables(max_concurrent=2))
    limit = unreachable_limit(orch.settings)
    async with service(orch) as svc:
        ids = [(await svc.submit(TaskSpec(title=f"t{i}", agent="work"))).id for i in range(6)]
        orch.start()
        await orch.wait_for(lambda: begun(svc, ids), "six runs to start")
        on_h1 = [t for t in ids if (await svc.get(t)).assigned_host == "h1"]
        assert len(on_h1) == 2
        h1.kill_all()  # listener, sessions and agent runs: the machine is gone
        assert agent_processes(h1) == []

        async def abandoned() -> bool:
            return sum(e.kind == "run.abandoned" for e in await all_events(svc)) == 2

        await orch.wait_for(abandoned, "the runs on h1 to be given up")
        open_gate([h2, h3], "a")  # h1 never gets its gate: its runs are dead anyway
        await orch.wait_for(lambda: all_settled(svc, ids), "every task to finish")
        events = await all_events(svc)
        diag = await orch.state()
        tasks = {t: await svc.get(t) for t in ids}
        runs = {t: await svc.runs(t) for t in ids}
        health = {h.name: h.host.health for h in await svc.hosts()}
        orch.stop()
    assert all(t.status is TaskStatus.COMPLETED for t in tasks.values()), diag
    per_task = assert_each_completed_once(ids, events, hosts)
    for t in ids:
        if t not in on_h1:
            assert tasks[t].attempt == 1 and len(runs[t]) == 1, runs[t]
            continue
        # started twice, but the first run was really dead: its host's processes were all
        # killed, its ledger has no "done", and bosun recorded it lost (given up)
        first, second = runs[t]
        assert (first.host, first.status, first.ref.get("abandoned")) == (
            "h1",
            RunStatus.LOST,
            True,
        )
        assert second.host in ("h2", "h3") and second.status is RunStatus.SUCCEEDED
        assert tasks[t].attempt == 2 and tasks[t].assigned_host == second.host
        assert per_task[t] == [("h1", "start"), (second.host, "start"), (second.host, "done")]
        gone = _one(events, "run.abandoned", t)
        assert gone.data["limit"] == limit and gone.data["unreachable_for"] >= limit
        assert gone.id < _redispatch(events, t).id
    assert health["h1"] == "unhealthy"
    assert agent_processes(h1) == []


def _one(events: Iterable[Event], kind: str, task_id: int) -> Event:
    (found,) = [e for e in events if e.kind == kind and e.task_id == task_id]
    return found


def _redispatch(events: Iterable[Event], task_id: int) -> Event:
    (found,) = [
        e
        for e in events
        if e.task_id == task_id
        and e.kind == "task.status"
        and e.data["to"] == "running"
        and e.data["attempt"] == 2
    ]
    return found


# -- 4. a host drops every packet ------------------------------------------------------------
async def test_a_host_dropping_packets_is_given_up_after_the_limit_and_its_strays_killed(
    sshd: SshdFleet, orchestrator: MakeOrchestrator
) -> None:
    hosts = sshd.start(3)
    sshd.trust(*hosts)
    h1, h2, h3 = hosts
    orch = orchestrator(sshd.hosts_tables(max_concurrent=2))
    limit = unreachable_limit(orch.settings)
    assert limit == 2 * HEARTBEAT
    async with service(orch) as svc:
        ids = [(await svc.submit(TaskSpec(title=f"t{i}", agent="work"))).id for i in range(6)]
        orch.start()
        await orch.wait_for(lambda: begun(svc, ids), "six runs to start")
        on_h1 = [t for t in ids if (await svc.get(t)).assigned_host == "h1"]
        assert len(on_h1) == 2
        strays = {pgid for _pid, pgid, _argv in agent_processes(h1)}
        assert len(strays) == 2
        h1.block()
        try:

            async def requeued() -> bool:
                evs = await all_events(svc)
                return all(any(_is_requeue(e, t) for e in evs) for t in on_h1)

            await orch.wait_for(requeued, "the runs on h1 to be given up and requeued")
            # behind the dropped packets the first runs go on: nobody could stop them
            assert {pgid for _pid, pgid, _argv in agent_processes(h1)} == strays
            open_gate([h2, h3], "a")  # never on h1: its strays must not finish
            await orch.wait_for(lambda: all_settled(svc, ids), "every task to finish")
            assert {pgid for _pid, pgid, _argv in agent_processes(h1)} == strays
        finally:
            h1.unblock()

        async def reconciled() -> bool:
            evs = await all_events(svc)
            return sum(e.kind == "run.stray_killed" for e in evs) == 2

        await orch.wait_for(reconciled, "the stray runs on h1 to be killed", timeout=60)
        events = await all_events(svc)
        diag = await orch.state()
        tasks = {t: await svc.get(t) for t in ids}
        runs = {t: await svc.runs(t) for t in ids}
        orch.stop()
    assert agent_processes(h1) == []
    assert all(t.status is TaskStatus.COMPLETED for t in tasks.values()), diag
    per_task = assert_each_completed_once(ids, events, hosts)
    for t in ids:
        if t not in on_h1:
            assert tasks[t].attempt == 1 and len(runs[t]) == 1
            continue
        first, second = runs[t]
        assert first.host == "h1" and first.status is RunStatus.LOST
        assert first.ref.get("abandoned") == "reconciled"
        assert second.host in ("h2", "h3") and second.status is RunStatus.SUCCEEDED
        assert per_task[t] == [("h1", "start"), (second.host, "start"), (second.host, "done")]
        # detected, given up after the limit (two heartbeat intervals), then re-dispatched
        # elsewhere, then the stray killed once the host answered again: in that order
        down = _one(events, "run.host_unreachable", t)
        gone = _one(events, "run.abandoned", t)
        again = _redispatch(events, t)
        killed = _one(events, "run.stray_killed", t)
        assert down.data["limit"] == gone.data["limit"] == limit
        assert gone.data["unreachable_for"] >= limit
        assert gone.data["run_id"] == killed.data["run_id"] == first.id
        assert down.id < gone.id < again.id < killed.id
        assert again.data["host"] == second.host
    kinds = [(e.kind, e.data.get("host")) for e in events if e.kind.startswith("host.")]
    assert ("host.unhealthy", "h1") in kinds and ("host.healthy", "h1") in kinds


def _is_requeue(e: Event, task_id: int) -> bool:
    return (
        e.task_id == task_id
        and e.kind == "task.status"
        and e.data["from"] == "running"
        and e.data["to"] == "queued"
    )


# -- 5. kill -9 of the orchestrator ------------------------------------------------------
async def test_a_restarted_orchestrator_reattaches_and_loses_or_repeats_no_line(
    sshd: SshdFleet, orchestrator: MakeOrchestrator
) -> None:
    hosts = sshd.start(2)
    sshd.trust(*hosts)
    orch = orchestrator(sshd.hosts_tables(max_concurrent=2))
    async with service(orch) as svc:
        # "work" ends at gate a (opened while bosun is dead); "twostep" goes on to gate b
        # (opened once the new bosun has re-attached)
        quick = [(await svc.submit(TaskSpec(title=f"q{i}", agent="work"))).id for i in range(2)]
        slow = [(await svc.submit(TaskSpec(title=f"s{i}", agent="twostep"))).id for i in range(2)]
        ids = quick + slow
        orch.start()
        await orch.wait_for(lambda: begun(svc, ids), "four runs to start")
        where = {t: (await svc.get(t)).assigned_host for t in ids}
        by_name = {h.name: h for h in hosts}
        orch.kill9()
        open_gate(hosts, "a")

        async def quick_ended() -> bool:
            return all(
                (by_name[str(where[t])].home / ".bosun" / "runs" / run_key(t, 1) / "exit").exists()
                for t in quick
            )

        await orch.wait_for(quick_ended, "the quick runs to end while bosun is dead")
        assert [(await svc.get(t)).status for t in ids] == [TaskStatus.RUNNING] * 4
        orch.start()

        async def reattached() -> bool:
            evs = await all_events(svc)
            return all(any(e.kind == "run.reattached" and e.task_id == t for e in evs) for t in ids)

        await orch.wait_for(reattached, "the new bosun to re-attach to every run")
        await orch.wait_for(lambda: all_settled(svc, quick), "the quick tasks to be collected")
        open_gate(hosts, "b")
        await orch.wait_for(lambda: all_settled(svc, ids), "every task to finish")
        orch.stop()
        events = await all_events(svc)
        diag = await orch.state()
        tasks = {t: await svc.get(t) for t in ids}
        runs = {t: await svc.runs(t) for t in ids}
    assert all(t.status is TaskStatus.COMPLETED and t.attempt == 1 for t in tasks.values()), diag
    per_task = assert_each_completed_once(ids, events, hosts)
    for t in ids:
        (run,) = runs[t]
        key = run_key(t, 1)
        printed = (by_name[run.host].home / ".bosun" / "runs" / key / "stdout").read_text()
        stored = output_lines(events, run.id)
        # every line the agent printed on the host, stored once, in order
        assert stored == printed.splitlines() == expected_output(key, GATES[tasks[t].agent])
        assert run.status is RunStatus.SUCCEEDED and run.exit_code == 0
        assert sum(e.kind == "run.reattached" and e.task_id == t for e in events) == 1
        assert per_task[t] == [(run.host, "start"), (run.host, "done")]


# -- 6. cancel of a remote task ----------------------------------------------------------
@pytest.mark.parametrize("when", ["followed", "no_new_connections", "nobody_follows"])
async def test_cancel_kills_the_remote_process_group_and_only_it(
    sshd: SshdFleet, orchestrator: MakeOrchestrator, when: str
) -> None:
    """``bosun cancel`` kills the run's group on the host itself. When it cannot connect
    (the host's listener is dead) the orchestrator following the run kills it over its open
    connection; when no orchestrator runs either, the next one does, once it reaches the
    host (``nobody_follows``)."""
    (h1,) = sshd.start(1)
    sshd.trust(h1)
    orch = orchestrator(sshd.hosts_tables(max_concurrent=2))
    async with service(orch) as svc:
        doomed, kept = [
            (await svc.submit(TaskSpec(title=f"t{i}", agent="work"))).id for i in range(2)
        ]
        orch.start()
        await orch.wait_for(lambda: begun(svc, [doomed, kept]), "two runs to start")
        group = {t: int((await svc.runs(t))[0].ref["pgid"]) for t in (doomed, kept)}
        assert {pgid for _pid, pgid, _argv in agent_processes(h1)} == set(group.values())
        if when == "nobody_follows":
            orch.stop()  # the runs go on, followed by nobody
        if when != "followed":
            h1.kill_listener()

        done = await asyncio.to_thread(orch.cli, "cancel", str(doomed))
        # 4: cancelled, but the agent is not stopped yet (the CLI cannot reach the host)
        assert done.returncode == (0 if when == "followed" else 4), done.stderr
        if when == "nobody_follows":
            assert {pgid for _pid, pgid, _argv in agent_processes(h1)} == set(group.values())
            h1.restart()
            orch.start()

        async def group_gone() -> bool:
            return all(pgid != group[doomed] for _pid, pgid, _argv in h1.processes())

        await orch.wait_for(group_gone, "the cancelled run's process group to vanish")
        # the other run on the same host is untouched
        assert {pgid for _pid, pgid, _argv in agent_processes(h1)} == {group[kept]}
        open_gate([h1], "a")
        await orch.wait_for(lambda: all_settled(svc, [kept]), "the other task to finish")

        async def recorded() -> bool:
            # whoever killed the group also records the run's end; a stop before that
            # would leave it to the next orchestrator's reconciliation
            return all(r.ended_at is not None for r in await svc.runs(doomed))

        await orch.wait_for(recorded, "the cancelled run's end to be recorded")
        orch.stop()
        cancelled, finished = await svc.get(doomed), await svc.get(kept)
        runs: dict[int, list[Run]] = {t: await svc.runs(t) for t in (doomed, kept)}
        kinds = [e.kind for e in await svc.events(doomed)]
    assert cancelled.status is TaskStatus.CANCELLED and finished.status is TaskStatus.COMPLETED
    (run,) = runs[doomed]  # cancelled, not re-dispatched
    assert run.status is RunStatus.CANCELLED and run.ended_at is not None
    # the CLI killed the group itself, or (no new connection possible) bosun did later
    assert ("run.cancel_pending" in kinds) is (when != "followed")
    assert ledger(h1).count(f"start {run_key(doomed, 1)}") == 1
    assert f"done {run_key(doomed, 1)}" not in ledger(h1)
    assert f"done {run_key(kept, 1)}" in ledger(h1)
    assert agent_processes(h1) == []


# -- a host slow to start runs ------------------------------------------------------------
@pytest.fixture
def slow_setsid() -> Iterator[Path]:
    """A directory holding a ``setsid`` that takes half a second before it runs the real
    one: a host so busy that a launched run gets its own session only a while later."""
    real = shutil.which("setsid")
    if real is None:
        pytest.skip("setsid (util-linux) is not installed")
    where = Path(tempfile.mkdtemp(prefix="bosun-slow-", dir="/tmp"))
    try:
        where.chmod(0o755)
        tool = where / "setsid"
        tool.write_text(f'#!/bin/sh\nsleep 0.5\nexec {real} "$@"\n')
        tool.chmod(0o755)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


async def test_runs_slow_to_get_their_own_session_are_neither_lost_nor_run_twice(
    sshd: SshdFleet, orchestrator: MakeOrchestrator, slow_setsid: Path
) -> None:
    """A liveness check right after a launch must see the run even when the run has not
    called setsid() yet (it happened on a loaded host: the run was taken for lost, its task
    retried, and both runs completed)."""
    (h1,) = sshd.start(1, extra_config=(f"SetEnv PATH={slow_setsid}:/usr/bin:/bin",))
    sshd.trust(h1)
    orch = orchestrator(sshd.hosts_tables(max_concurrent=2))
    work = h1.home / ".bosun"
    work.mkdir()
    os.chown(work, h1.uid, h1.lease.gid)
    open_gate([h1], "a")  # the runs end as soon as they have started
    async with service(orch) as svc:
        ids = [(await svc.submit(TaskSpec(title=f"t{i}", agent="work"))).id for i in range(2)]
        orch.start()
        await orch.wait_for(lambda: all_settled(svc, ids), "both tasks to finish")
        orch.stop()
        events = await all_events(svc)
        diag = await orch.state()
        tasks = [await svc.get(t) for t in ids]
        runs = [await svc.runs(t) for t in ids]
    assert all(t.status is TaskStatus.COMPLETED and t.attempt == 1 for t in tasks), diag
    assert all(len(r) == 1 and r[0].status is RunStatus.SUCCEEDED for r in runs), diag
    per_task = assert_each_completed_once(ids, events, [h1])
    assert all(len(lines) == 2 for lines in per_task.values()), per_task


# -- 7. an unknown host key, through the CLI ---------------------------------------------
def test_hosts_check_refuses_an_unknown_key_with_its_fingerprint_and_the_fix(
    sshd: SshdFleet, orchestrator: MakeOrchestrator
) -> None:
    (h1,) = sshd.start(1)  # its key is in no known_hosts file
    orch = orchestrator(sshd.hosts_tables())
    done = orch.cli("hosts", "check", "h1")
    assert done.returncode == 1
    said = done.stdout + done.stderr
    assert h1.host_key.get_fingerprint("sha256") in said
    assert "bosun hosts trust h1" in said
    assert "unknown" in said
