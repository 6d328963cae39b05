"""SSH benchmarks (issue 4), on real OpenSSH ``sshd`` hosts on 127.0.0.N.

The hosts are started and stopped here with the test harness (``tests/sshd.py``:
``SshdFleet``; one unprivileged user per host, every process killed by PID at the end),
so this needs root and ``/usr/sbin/sshd`` like the SSH tests do.

P1. submit -> agent started over SSH: a dispatcher with one SSH host; for each task the
    clock starts just before ``Service.submit``, and the agent is ``date +%s%N`` on the
    host (same machine, same clock), which prints the wall clock the moment it runs. The
    baseline: one ``asyncssh`` exec of the same ``date`` on a warm connection, under the
    same conditions: bosun's tasks each follow about ``WATCH`` of idle (its completion is
    looked for that often), which makes a wake-up on this VM slower, so the baseline's
    execs are paced the same (the back-to-back figure is printed too). Goal: bosun at
    most 1.5x the baseline (medians).
P2. 1,000 no-op tasks (``true``) over 4 hosts, 8 at a time per host, from the first
    submit to the last task completed, through bosun's dispatcher (SQLite store,
    connections already up), against GNU parallel ``--sshlogin 8/h1,...`` running the
    same ``true`` on the same hosts through OpenSSH ControlMaster connections (opened
    before the clock starts, ``ControlPersist``). Goal: bosun at least 5x faster. Also
    printed: the whole machine's CPU time per task (from /proc/stat: bosun or GNU
    parallel, sshd and every process on the hosts; the hosts share this machine's cores,
    so with both cores busy that figure is what bounds the rate), split where cgroups
    can be written (``bench.cgroups``) into the orchestrator's process tree (bosun; or
    GNU parallel with its ssh clients and ControlMasters) and the hosts' (every sshd and
    all it starts). The floor: the same runs started by no orchestrator (``floor_p2``,
    ``FLOOR_HOST``), the most any could do here.
M.  The orchestrator's memory (``bosun serve``) with many ``sleep`` tasks running at once
    on the 4 hosts (see ``bench.memory``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import sqlalchemy as sa

from bench.cgroups import CpuGroups, cpu_groups
from bench.memory import baseline as memory_baseline
from bench.memory import memory, report
from bench.stats import goal
from bosun.config import settings_from_data
from bosun.dispatcher import Dispatcher
from bosun.models import TaskSpec, TaskStatus
from bosun.service import Service, make_providers
from bosun.store import SqlStore
from bosun.store.schema import tasks

DATE = ["date", "+%s%N"]
HOSTS = 4
PER_HOST = 8
GOAL_P1 = 1.5
#: How often P1 looks whether its task completed: each submit follows an idle host (and an
#: idle machine) of about this long, and the paced baseline gets the same idle before each
#: exec (measured: 2.0 ms back to back, 3.1 ms after 50 ms of idle, on this VM).
WATCH = 0.05
GOAL_P2 = 5.0


@dataclass(frozen=True)
class SshSizes:
    p1: int  # tasks (and bare execs)
    p2: int  # tasks over the hosts
    memory: int  # sleeping tasks at once (0: skip)
    hold: float

    @classmethod
    def of(cls, quick: bool) -> SshSizes:
        if quick:
            return cls(p1=8, p2=24, memory=0, hold=1.0)
        return cls(p1=40, p2=1000, memory=500, hold=10.0)


def why_not() -> str | None:
    """Why the SSH benchmarks cannot run here, or None."""
    if not os.path.exists("/usr/sbin/sshd"):
        return "/usr/sbin/sshd is missing (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "starting test sshd hosts needs root (they run as users of their own)"
    if shutil.which("parallel") is None:
        return "GNU parallel is missing (apt-get install parallel)"
    return None


@contextlib.contextmanager
def fleet(count: int, root: Path, *, max_sessions: int = 64) -> Iterator[Any]:
    """``count`` sshd hosts (``tests.sshd.SshdFleet``), trusted; stopped on exit."""
    from tests.sshd import SshdFleet  # the test harness: plain functions, no pytest needed

    key = root / "id_ed25519"
    private = asyncssh.generate_private_key("ssh-ed25519", comment="bosun-bench")
    key.write_bytes(private.export_private_key("openssh"))
    key.chmod(0o600)
    Path(f"{key}.pub").write_bytes(private.export_public_key("openssh"))
    hosts = SshdFleet(root, key)
    try:
        started = hosts.start(count, max_sessions=max_sessions)
        hosts.trust(*started)
        yield hosts
    finally:
        with contextlib.redirect_stdout(io.StringIO()):  # the harness prints sshd's logs
            hosts.close()


def _settings(root: Path, hosts: dict[str, dict[str, Any]], agents: dict[str, Any]) -> Any:
    return settings_from_data(
        {
            "agents": agents,
            "hosts": hosts,
            "limits": {"poll_interval": 1.0, "max_concurrent": 1000},
        },
        root / "bosun.toml",
    )


@contextlib.asynccontextmanager
async def dispatching(settings: Any) -> AsyncIterator[Service]:
    """A Service and a running dispatcher (serve mode) on ``settings``."""
    async with await Service.open(settings) as svc:
        stop = asyncio.Event()
        dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
        job = asyncio.create_task(dispatcher.run(stop=stop))
        try:
            yield svc
        finally:
            stop.set()
            await job


async def _completed(svc: Service) -> int:
    query = sa.select(sa.func.count()).where(tasks.c.status == TaskStatus.COMPLETED.value)
    assert isinstance(svc.store, SqlStore)
    async with svc.store.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


# -- P1 ---------------------------------------------------------------------------------
async def bare_exec(table: dict[str, Any], n: int, *, gap: float = 0.0) -> list[float]:
    """ms from before ``conn.run`` to ``date`` running on the host, on a warm connection;
    ``gap``: seconds of idle before each one (as bosun's tasks have, see ``_p1``)."""
    user, _, hostport = table["address"].partition("@")
    host, _, port = hostport.rpartition(":")
    out: list[float] = []
    async with asyncssh.connect(
        host,
        port=int(port),
        username=user,
        client_keys=[table["identity_file"]],
        known_hosts=table["known_hosts"],
        config=[table["ssh_config"]],
        agent_path=None,
    ) as conn:
        await conn.run(" ".join(DATE), check=True)  # warm
        for _ in range(n):
            if gap:
                await asyncio.sleep(gap)
            t0 = time.time_ns()
            done = await conn.run(" ".join(DATE), check=True)
            out.append((int(str(done.stdout)) - t0) / 1e6)
    return out


async def bosun_p1(root: Path, table: dict[str, Any], n: int) -> list[float]:
    settings = _settings(
        root / "p1",
        {"h1": {**table, "max_concurrent": 4, "work_dir": ".bosun-p1"}},
        {"noop": {"command": DATE}},
    )
    out: list[float] = []
    async with dispatching(settings) as svc:
        # one task first, untimed: connection, preflight of the agent on the host
        first = await svc.submit(TaskSpec(title="warm", agent="noop"))
        while (await svc.get(first.id)).status is not TaskStatus.COMPLETED:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for i in range(n):
            t0 = time.time_ns()
            task = await svc.submit(TaskSpec(title=f"noop {i}", agent="noop"))
            # look now and then only, so that watching does not compete with the dispatcher
            while (await svc.get(task.id)).status is not TaskStatus.COMPLETED:  # noqa: ASYNC110
                await asyncio.sleep(WATCH)
            line = next(e.data["line"] for e in await svc.events(task.id) if e.kind == "run.output")
            out.append((int(line) - t0) / 1e6)
    return out


# -- P2 ---------------------------------------------------------------------------------
def machine_busy() -> float:
    """CPU seconds this machine's cores have been busy (all processes: bosun, sshd, the
    hosts' shells, GNU parallel's perl and ssh clients), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait


@dataclass(frozen=True)
class Cpu:
    """CPU seconds: the whole machine's, and where known (``bench.cgroups``) the
    orchestrator's (this process and all it started) and the hosts' (the sshd listeners
    and all they started). Subtract two readings for a phase's cost."""

    machine: float
    orchestrator: float | None
    hosts: float | None

    def __sub__(self, other: Cpu) -> Cpu:
        def minus(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        return Cpu(
            self.machine - other.machine,
            minus(self.orchestrator, other.orchestrator),
            minus(self.hosts, other.hosts),
        )

    def per_task(self, n: int) -> str:
        """``machine CPU x ms/task (orchestrator y, hosts z)``, in ms per task."""
        text = f"machine CPU {self.machine / n * 1000:5.1f} ms/task"
        if self.orchestrator is not None and self.hosts is not None:
            text += (
                f" (orchestrator {self.orchestrator / n * 1000:4.1f},"
                f" hosts {self.hosts / n * 1000:4.1f})"
            )
        return text

    def to_json(self, n: int) -> dict[str, float | None]:
        def ms(v: float | None) -> float | None:
            return None if v is None else v / n * 1000

        return {
            "machine_ms": ms(self.machine),
            "orchestrator_ms": ms(self.orchestrator),
            "hosts_ms": ms(self.hosts),
        }


@dataclass(frozen=True)
class CpuMeter:
    groups: CpuGroups | None

    def read(self) -> Cpu:
        if self.groups is None:
            return Cpu(machine_busy(), None, None)
        return Cpu(
            machine_busy(), self.groups.seconds("orchestrator"), self.groups.seconds("hosts")
        )


async def bosun_p2(
    root: Path, tables: dict[str, dict[str, Any]], n: int, *, queued: bool
) -> tuple[float, float]:
    """(seconds until every task completed, seconds the submits took).

    ``queued``: all ``n`` tasks are submitted first (untimed), then a dispatcher starts
    (connecting to the hosts is timed), as GNU parallel gets its whole job list at once.
    Else the tasks are submitted one by one to a running dispatcher whose connections
    are up, and the clock starts at the first submit."""
    # each bosun (database) has a work_dir of its own on the hosts, as in real use: run
    # directories are named after task ids, which a fresh database hands out again
    label = "p2q" if queued else "p2"
    hosts = {
        name: {
            **t,
            "max_concurrent": PER_HOST,
            "max_channels": PER_HOST + 2,
            "work_dir": f".bosun-{label}",
        }
        for name, t in tables.items()
    }
    settings = _settings(root / label, hosts, {"noop": {"command": ["true"]}})
    warm = [TaskSpec(title=f"warm {h}", agent="noop", host=h) for h in hosts]
    specs = [TaskSpec(title=f"noop {i}", agent="noop") for i in range(n)]
    async with dispatching(settings) as svc:
        # every host connected and the agent's preflight done on each
        for spec in warm:
            await svc.submit(spec)
        while await _completed(svc) < len(warm):  # noqa: ASYNC110 (another task writes)
            await asyncio.sleep(0.05)
        if not queued:
            t0 = time.monotonic()
            for spec in specs:
                await svc.submit(spec)
            submitted = time.monotonic() - t0
            while await _completed(svc) < n + len(warm):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            return time.monotonic() - t0, submitted
    async with await Service.open(settings) as svc:
        t0 = time.monotonic()
        for spec in specs:
            await svc.submit(spec)
        submitted = time.monotonic() - t0
    async with dispatching(settings) as svc:
        t0 = time.monotonic()
        while await _completed(svc) < n + len(warm):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return time.monotonic() - t0, submitted


def _ssh_config(root: Path, fleet_: Any, control: Path) -> Path:
    """An OpenSSH client config: the hosts as h1..hN, multiplexed (ControlMaster) through
    sockets in ``control``."""
    lines = []
    for host in fleet_.hosts:
        lines += [
            f"Host {host.name}",
            f"  HostName {host.addr}",
            f"  Port {host.port}",
            f"  User {host.user}",
            f"  IdentityFile {fleet_.client_key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {fleet_.known_hosts}",
            "  StrictHostKeyChecking yes",
            "  ControlMaster auto",
            f"  ControlPath {control}/%C",
            "  ControlPersist 120",
            "  BatchMode yes",
        ]
    path = root / "ssh_config"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out


async def parallel_p2(root: Path, fleet_: Any, n: int) -> float:
    """Seconds GNU parallel takes to run ``true`` n times over the hosts, masters warm."""
    control = Path(tempfile.mkdtemp(prefix="bosun-cm-", dir="/tmp"))  # short socket paths
    config = _ssh_config(root, fleet_, control)
    names = [h.name for h in fleet_.hosts]
    env = {**os.environ, "HOME": str(root)}  # parallel keeps its state in ~/.parallel
    env.pop("SSH_AUTH_SOCK", None)
    (root / ".parallel").mkdir(exist_ok=True)
    (root / ".parallel" / "will-cite").touch()
    try:
        for name in names:  # open the masters (they persist) before the clock starts
            code, out = await _run("ssh", "-F", str(config), name, "true", env=env)
            if code != 0:
                raise RuntimeError(f"ssh {name}: {out.decode(errors='replace')}")
        logins = ",".join(f"{PER_HOST}/{name}" for name in names)
        t0 = time.monotonic()
        code, out = await _run(
            "parallel", "--ssh", f"ssh -F {config}", "--sshlogin", logins,
            "--halt", "now,fail=1", "true", ":::", *map(str, range(n)),
            env=env,
        )  # fmt: skip
        took = time.monotonic() - t0
        if code != 0:
            raise RuntimeError(f"parallel failed ({code}): {out.decode(errors='replace')[-2000:]}")
        return took
    finally:
        for name in names:  # stop the masters (ssh -O exit: by their control sockets)
            await _run("ssh", "-F", str(config), "-O", "exit", name, env=env)
        shutil.rmtree(control, ignore_errors=True)


#: The floor's host side: one ``sh`` per host reading ``r ID`` lines. Each run is started
#: the way any durable launch must at least be (bosun's wrapper does this and more): a
#: ``/bin/sh`` leading a session of its own (``setsid -f``) runs the agent in a subshell
#: with its output going to files and writes its exit code to a file. It then says
#: ``ID done`` on the channel (fd 3), which no durable run could rely on, so that the
#: floor needs no polling at all.
FLOOR_HOST = r"""cd || exit 1; d=.bosun-floor; rm -rf -- "$d"; mkdir -p "$d" || exit 1
w='(exec true) </dev/null >>"$1.out" 2>>"$1.err"; echo "$?" >"$1.exit"
trap "" PIPE; echo "${1##*/} done" >&3'
r() { setsid -f /bin/sh -c "$w" bosun-floor "$d/$1" 3>&1 </dev/null >/dev/null 2>&1; }
echo ready
"""


async def floor_p2(fleet_: Any, n: int) -> float:
    """Seconds for n no-op runs over the hosts, PER_HOST at a time per host, started by
    ``FLOOR_HOST`` over one asyncssh connection per host (connected before the clock):
    what an orchestrator that costs nothing but its launches would take."""
    per = [n // len(fleet_.hosts) + (i < n % len(fleet_.hosts)) for i in range(len(fleet_.hosts))]
    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for host in fleet_.hosts:
            conn = await stack.enter_async_context(
                asyncssh.connect(
                    host.addr,
                    port=host.port,
                    username=host.user,
                    client_keys=[str(fleet_.client_key)],
                    known_hosts=str(fleet_.known_hosts),
                    config=[str(fleet_.ssh_config)],
                    agent_path=None,
                )
            )
            proc = await conn.create_process("exec /bin/sh -s", encoding=None)
            proc.stdin.write(FLOOR_HOST.encode())
            if await proc.stdout.readline() != b"ready\n":
                raise RuntimeError(f"floor: the shell on {host.name} did not start")
            procs.append(proc)

        async def drive(proc: Any, count: int) -> None:
            sent = done = 0
            while sent < min(PER_HOST, count):
                proc.stdin.write(b"r %d\n" % sent)
                sent += 1
            while done < count:
                line = await proc.stdout.readline()
                if not line.endswith(b" done\n"):
                    raise RuntimeError(f"floor: the host said {line!r}")
                done += 1
                if sent < count:
                    proc.stdin.write(b"r %d\n" % sent)
                    sent += 1
            proc.stdin.write_eof()

        t0 = time.monotonic()
        await asyncio.gather(*(drive(p, c) for p, c in zip(procs, per, strict=True)))
        return time.monotonic() - t0


# -- all --------------------------------------------------------------------------------
def _summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10)
    return f"median {statistics.median(samples):7.2f} ms   p90 {q[-1]:7.2f} ms"


PARTS = ("p1", "p2", "memory")


async def run(quick: bool, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Run the ``parts`` (``p1``, ``p2``, ``memory``); print and return the figures."""
    sizes = SshSizes.of(quick)
    reason = why_not()
    if reason is not None:
        print(f"\n7-9. SSH benchmarks skipped: {reason}")
        return {"skipped": reason}
    os.environ.pop("SSH_AUTH_SOCK", None)  # bosun's client: only the key given below
    figures: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="bosun-bench-ssh-", dir="/tmp"))
    try:
        with cpu_groups() as groups, fleet(HOSTS, root) as hosts:
            if groups is not None:
                for host in hosts.hosts:  # each sshd listener, with all it will start
                    groups.add("hosts", host.proc.pid)
            tables = hosts.hosts_tables()
            if "p1" in parts:
                figures["p1"] = await _p1(root, tables["h1"], sizes)
            if "p2" in parts:
                figures["p2"] = await _p2(root, hosts, tables, sizes, CpuMeter(groups))
            if "memory" in parts and sizes.memory:
                figures["memory"] = await _memory_over_ssh(root, hosts, sizes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


async def _p1(root: Path, h1: dict[str, Any], sizes: SshSizes) -> dict[str, Any]:
    bare = await bare_exec(h1, sizes.p1)
    paced = await bare_exec(h1, sizes.p1, gap=WATCH)
    ours = await bosun_p1(root, h1, sizes.p1)
    b, p, o = statistics.median(bare), statistics.median(paced), statistics.median(ours)
    print("\n7. P1: submit -> agent started over SSH (one loopback sshd host)")
    print(f"   asyncssh exec, back to back    {_summary(bare)}")
    apart = f"{WATCH * 1000:.0f} ms apart"
    print(f"   asyncssh exec, {apart}     {_summary(paced)}   (as bosun's tasks)")
    print(f"   bosun submit -> dispatch       {_summary(ours)}")
    print(
        f"   ratio {o / p:.2f}x the exec {apart} ({o / b:.2f}x back to back);"
        f" goal <= {GOAL_P1}x: {goal(o / p <= GOAL_P1)}"
    )
    return {"bare": b, "bare_paced": p, "bosun": o, "met": o / p <= GOAL_P1}


async def _p2(
    root: Path,
    hosts: Any,
    tables: dict[str, dict[str, Any]],
    sizes: SshSizes,
    meter: CpuMeter,
) -> dict[str, Any]:
    n = sizes.p2
    start = meter.read()
    par = await parallel_p2(root, hosts, n)
    after_par = meter.read()
    took, submitted = await bosun_p2(root, tables, n, queued=True)
    after_ours = meter.read()  # (with the submits before)
    floor = await floor_p2(hosts, n)
    par_cpu, ours_cpu = after_par - start, after_ours - after_par
    floor_cpu = meter.read() - after_ours
    live, live_submits = await bosun_p2(root, tables, n, queued=False)
    ratio = par / took
    print(f"\n8. P2: {n} no-op tasks over {HOSTS} sshd hosts, {PER_HOST} at a time per host")
    print(f"   GNU parallel, ControlMaster  {par:7.2f} s   {n / par:6.1f} tasks/s")
    print(f"      {par_cpu.per_task(n)}")
    print(
        f"   bosun, tasks queued first    {took:7.2f} s   {n / took:6.1f} tasks/s"
        f"   (the submits before: {submitted:.2f} s)"
    )
    print(f"      {ours_cpu.per_task(n)}   (with the submits)")
    print(
        f"   bosun, submitted while running {live:5.2f} s   {n / live:6.1f} tasks/s"
        f"   (of which the submits: {live_submits:.2f} s)"
    )
    print(
        f"   floor: launches alone         {floor:7.2f} s   {n / floor:6.1f} tasks/s"
        "   (no orchestrator: see FLOOR_HOST)"
    )
    print(f"      {floor_cpu.per_task(n)}")
    print(
        f"   bosun {ratio:.2f}x faster; goal >= {GOAL_P2:.0f}x: {goal(ratio >= GOAL_P2)}"
        f"   (the floor is {par / floor:.2f}x: the most any orchestrator could be here)"
    )
    return {
        "parallel": par,
        "parallel_cpu_ms": par_cpu.machine / n * 1000,
        "parallel_cpu": par_cpu.to_json(n),
        "bosun": took,
        "bosun_cpu_ms": ours_cpu.machine / n * 1000,
        "bosun_cpu": ours_cpu.to_json(n),
        "submitted": submitted,
        "bosun_live": live,
        "floor": floor,
        "floor_cpu_ms": floor_cpu.machine / n * 1000,
        "floor_cpu": floor_cpu.to_json(n),
        "met": ratio >= GOAL_P2,
    }


async def _memory_over_ssh(root: Path, hosts: Any, sizes: SshSizes) -> dict[str, Any]:
    per_host = -(-sizes.memory // HOSTS)
    tables = hosts.hosts_tables(max_concurrent=per_host, work_dir=".bosun-mem")

    def started() -> int:
        return sum(len(list(h.home.glob(".bosun-mem/runs/*/pid"))) for h in hosts.hosts)

    mem_root = root / "memory"
    mem_root.mkdir()
    bare = await memory_baseline(sizes.memory)
    ours = await memory(
        sizes.memory, hold=sizes.hold, hosts=tables, count_started=started, root=mem_root
    )
    met = report(
        f"9. orchestrator memory, {sizes.memory} concurrently running `sleep` tasks over "
        f"{HOSTS} sshd hosts",
        ours,
        bare,
    )
    return {"bare_mb": bare, "result": ours, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ssh", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default=",".join(PARTS), help="p1,p2,memory")
    args = parser.parse_args()
    asyncio.run(run(args.quick, tuple(args.parts.split(","))))


if __name__ == "__main__":
    main()
