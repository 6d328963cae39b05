"""The orchestrator's memory with many concurrently running tasks (issue 4).

The orchestrator is a real ``bosun serve`` process (API and dispatcher, ``-q``) on a
``bosun.toml`` of its own with one host allowing every task at once, and an agent that
is ``sleep``. This process submits the tasks straight into the store (SQLite: the
dispatcher sees them within its poll interval), waits until every run has started (its
wrapper wrote its pid), keeps them all running for a few seconds, and samples the
orchestrator's resident set (``VmRSS``) all along; the peak is the kernel's high-water
mark (``VmHWM``). Then it stops ``bosun serve`` (SIGTERM, by PID) and kills the runs'
process groups (by the pids in their run directories).

The baseline, measured in the same run: a bare Python asyncio process that starts the
same number of ``sleep`` processes with ``asyncio.create_subprocess_exec`` and waits for
them (``python -m bench.memory --baseline N``).

``memory(hosts=...)`` runs the same over SSH hosts (``bench.ssh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import goal, proc_cpu_seconds, rss_mb
from bosun.models import TaskSpec
from bosun.store import open_store

GOAL_MB = 300.0
SLEEP = ["sleep", "3600"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON's string syntax here
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_dump(data: dict[str, Any], prefix: str = "") -> str:
    """TOML for nested tables of plain values (what a bosun.toml here needs)."""
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    out = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in plain.items()]
    for key, table in tables.items():
        name = f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)
        has_plain = any(not isinstance(v, dict) for v in table.values())
        if has_plain or not table:
            out.append(f"\n[{name}]")
        out.append(toml_dump(table, name))
    return "\n".join(x for x in out if x)


@dataclass
class Memory:
    tasks: int
    started: int = 0
    start_seconds: float = 0.0  # from the first submit to the last run started
    idle_mb: float = 0.0  # bosun serve before any task
    running_mb: float = 0.0  # the highest VmRSS sampled while every run was running
    peak_mb: float = 0.0  # VmHWM at the end
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)
    threads: int = 0
    hold_cpu: float = 0.0  # CPU share (1.0: one core) of bosun serve while all ran


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _started_runs(state: Path) -> list[Path]:
    return list(state.rglob("runs/*/pid"))


def _kill_local_runs(state: Path) -> None:
    """SIGKILL the process group of every run started under ``state`` (by its pid)."""
    for pidfile in _started_runs(state):
        try:
            pgid = int(pidfile.read_text())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


async def memory(
    count: int,
    *,
    hold: float,
    hosts: dict[str, dict[str, Any]] | None = None,
    count_started: Any = None,
    root: Path | None = None,
    timeout: float = 600.0,
) -> Memory:
    """``count`` sleeping tasks under ``bosun serve``; ``hosts`` (default: the local host)
    are ``[hosts.X]`` tables; ``count_started()`` says how many runs started (default: the
    local run directories with a pid file)."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bosun-mem-")))
        if hosts is None:
            hosts = {"local": {"kind": "local", "max_concurrent": count}}
        config = {
            "agents": {"sleeper": {"command": SLEEP}},
            "hosts": hosts,
            "limits": {"max_concurrent": count, "poll_interval": 1.0},
            "server": {"port": 0},
        }
        (root / "bosun.toml").write_text(toml_dump(config) + "\n")
        state = root / ".bosun"

        def started_local() -> int:
            return len(_started_runs(state))

        started = count_started or started_local
        bosun = Path(sys.executable).parent / "bosun"
        proc = await asyncio.create_subprocess_exec(
            str(bosun), "serve", "-q", "--config", str(root / "bosun.toml"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        result = Memory(tasks=count)
        drain: asyncio.Task[bytes] | None = None
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if b"bosun API on" not in line:
                rest = await proc.stdout.read()
                raise RuntimeError(f"bosun serve did not start: {(line + rest).decode()}")
            drain = asyncio.create_task(proc.stdout.read())  # keep its pipe from filling
            await asyncio.sleep(1.0)
            result.idle_mb = rss_mb(proc.pid)[0]
            store = await open_store(f"sqlite:///{state / 'bosun.db'}")
            try:
                t0 = time.monotonic()
                for i in range(count):
                    await store.add_task(
                        TaskSpec(title=f"sleep {i}", agent="sleeper"), max_attempts=1
                    )
                deadline = t0 + timeout
                while (n := started()) < count:
                    result.samples.append((time.monotonic() - t0, rss_mb(proc.pid)[0]))
                    if time.monotonic() > deadline or proc.returncode is not None:
                        raise RuntimeError(f"only {n} of {count} runs started in {timeout:.0f} s")
                    await asyncio.sleep(0.25)
                result.started = n
                result.start_seconds = time.monotonic() - t0
                result.threads = _threads(proc.pid)
                cpu0, hold0 = proc_cpu_seconds(proc.pid), time.monotonic()
                end = hold0 + hold
                while time.monotonic() < end:
                    mb = rss_mb(proc.pid)[0]
                    result.samples.append((time.monotonic() - t0, mb))
                    result.running_mb = max(result.running_mb, mb)
                    await asyncio.sleep(0.25)
                result.peak_mb = rss_mb(proc.pid)[1]
                held = time.monotonic() - hold0
                result.hold_cpu = (proc_cpu_seconds(proc.pid) - cpu0) / held
            finally:
                await store.aclose()
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # our own child, by its PID
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            _kill_local_runs(state)
            if drain is not None:
                drain.cancel()
        return result


BASELINE = """
import asyncio, sys
async def main(n):
    procs = [await asyncio.create_subprocess_exec("sleep", "3600") for _ in range(n)]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for p in procs:
        p.kill()
    for p in procs:
        await p.wait()
asyncio.run(main(int(sys.argv[1])))
"""


async def baseline(count: int) -> float:
    """VmHWM (MB) of a bare asyncio process supervising ``count`` sleeps."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BASELINE, str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), 120)
        await asyncio.sleep(0.5)
        return rss_mb(proc.pid)[1]
    finally:
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def report(title: str, result: Memory, bare: float) -> bool:
    met = result.peak_mb < GOAL_MB and result.started == result.tasks
    print(f"\n{title}")
    print(f"   bare asyncio supervisor of {result.tasks} sleeps  peak {bare:7.1f} MB")
    print(f"   bosun serve, idle                   RSS  {result.idle_mb:7.1f} MB")
    print(
        f"   bosun serve, {result.started} running          "
        f"RSS  {result.running_mb:7.1f} MB   peak {result.peak_mb:7.1f} MB"
        f"   ({result.threads} threads; all started in {result.start_seconds:.1f} s; "
        f"CPU while they run {result.hold_cpu * 100:.0f}%)"
    )
    print(f"   peak {result.peak_mb / bare:.1f}x bare; goal peak < {GOAL_MB:.0f} MB: {goal(met)}")
    return met


async def run(quick: bool) -> dict[str, Any]:
    count = 50 if quick else 500
    hold = 1.0 if quick else 10.0
    bare = await baseline(count)
    ours = await memory(count, hold=hold)
    met = report(
        f"6. orchestrator memory, {count} concurrently running `sleep` tasks, local host",
        ours,
        bare,
    )
    return {"bare_mb": bare, "result": ours, "met": met}


if __name__ == "__main__":
    asyncio.run(run("--quick" in sys.argv))
