"""API benchmarks (issue 5): request latency under a steady open-loop load, and SSE lag.

The server is its own process (``bench.apiserver``): what ``bosun serve`` runs (store,
API on uvicorn, dispatcher), plus a bare Starlette app on a second uvicorn in the same
process and event loop, the baseline. This process is the client (``bench.httpload``).

1. ``GET /api/v1/tasks/{id}`` (admin token; 200 different finished tasks in turn) and
   ``POST /api/v1/tasks/dequeue`` (agent token; every call takes a queued ``http_pull``
   task, a write transaction) at a steady 200 requests/s, open loop, each against a bare
   Starlette route answering the same bytes from memory. Goal: p99 under 25 ms.
2. The lag of 100 SSE followers of one task (``GET /api/v1/tasks/{id}/events``) while it
   writes 1 MB/s of ``run.output`` events (1,000-byte lines; every 10 ms the lines due,
   through ``Store.append_output`` as a running agent's output goes): receive time minus
   the event's ``created_at``. The baseline: the same SSE text fanned out to 100
   followers of a bare Starlette route from in-memory queues. Goal: p99 under 100 ms.

``python -m bench.api [--quick] [--phases get,dequeue,sse] [--rate N]``; with
``BENCH_PROFILE=FILE`` the server runs under ``py-spy record`` (raw collapsed stacks);
``BENCH_GC_FREEZE=0`` leaves out the ``gc.freeze()`` that ``bosun serve`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.httpload import LoadResult, SseResult, follow_sse, open_loop, request_bytes
from bench.stats import cpu_seconds, goal, pct, spread

RATE = 200.0
PHASES = ("get", "dequeue", "sse")
AGENT = "noop"  # the agent of the server's tasks (bench.apiserver.AGENT)
GOAL_P99_MS = 25.0
GOAL_SSE_P99_MS = 100.0


@dataclass(frozen=True)
class ApiSizes:
    seconds: float  # per latency phase, after the warm-up
    warmup: int  # requests sent first and not recorded
    followers: int
    sse_seconds: float
    sse_rate: int  # bytes per second
    line: int  # bytes per output line

    @classmethod
    def of(cls, quick: bool) -> ApiSizes:
        if quick:
            return cls(
                seconds=1, warmup=50, followers=100, sse_seconds=1, sse_rate=1_000_000, line=1000
            )
        return cls(
            seconds=20, warmup=200, followers=100, sse_seconds=10, sse_rate=1_000_000, line=1000
        )


class Server:
    """The ``bench.apiserver`` process: started, commanded and stopped by this one."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info

    @classmethod
    async def start(cls, root: Path, pull_tasks: int) -> Server:
        env = {**os.environ, "BENCH_PULL_TASKS": str(pull_tasks)}
        argv = [sys.executable, "-m", "bench.apiserver", str(root)]
        if os.environ.get("BENCH_PROFILE"):  # a py-spy flame graph of the server process
            out = os.environ["BENCH_PROFILE"]
            argv = [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-g",
                "-r",
                "100",
                "-f",
                "raw",
                "-o",
                out,
                "--",
                *argv,
            ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        server = cls(proc, {})
        try:
            server.info = await asyncio.wait_for(server.answer(), 120)
        except BaseException:
            await server.stop()
            raise
        return server

    async def answer(self) -> dict[str, Any]:
        """The next JSON line of the server (py-spy's own lines are skipped)."""
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            if line.startswith(b"{"):
                answer: dict[str, Any] = json.loads(line)
                return answer
        await self.proc.wait()
        raise RuntimeError(f"bench.apiserver exited with {self.proc.returncode}")

    async def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.answer()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 15)
            except (TimeoutError, ConnectionError, RuntimeError):
                self.proc.kill()  # this process's own child, by its PID
                await self.proc.wait()


@dataclass
class Phase:
    result: LoadResult
    server_cpu: float  # share of one core
    loop_lag: dict[str, float]  # the server's event-loop lateness (ms): p99, max


async def _load(server: Server, url: str, raws: list[bytes], warmup: int, rate: float) -> Phase:
    before = await server.ask(cmd="cpu")
    result = await open_loop(url, raws, rate, warmup=warmup)
    after = await server.ask(cmd="cpu")
    return Phase(
        result,
        (after["cpu"] - before["cpu"]) / max(result.duration, 1e-9),
        after["loop_lag"],
    )


def _line(name: str, phase: Phase) -> str:
    r = phase.result
    codes = ", ".join(f"{n} x {c}" for c, n in sorted(r.statuses.items()))
    errors = f", {r.errors} failed {r.failures}" if r.errors else ""
    return (
        f"   {name:<30}{spread(r.latencies_ms)}\n"
        f"   {'':<30}({codes}{errors}; {r.connections} connections; server: CPU "
        f"{phase.server_cpu * 100:.0f}%, loop lag p99 {phase.loop_lag['p99']:.1f} ms "
        f"max {phase.loop_lag['max']:.0f} ms; GC pauses max {phase.loop_lag['gc_max']:.0f} ms, "
        f"total {phase.loop_lag['gc_total']:.0f} ms)"
    )


def _verdict(ours_phase: Phase, bare_phase: Phase) -> dict[str, Any]:
    ours, bare = ours_phase.result, bare_phase.result
    p99, p99_bare = pct(ours.latencies_ms, 99), pct(bare.latencies_ms, 99)
    all_ok = ours.statuses.get(200, 0) == len(ours.latencies_ms) and not ours.errors
    met = p99 < GOAL_P99_MS and all_ok
    print(
        f"   p99 {p99 / p99_bare:.1f}x bare; goal p99 < {GOAL_P99_MS:.0f} ms"
        f"{'' if all_ok else ' (and every answer a 200)'}: {goal(met)}"
    )
    return {
        "p50": pct(ours.latencies_ms, 50),
        "p99": p99,
        "bare_p50": pct(bare.latencies_ms, 50),
        "bare_p99": p99_bare,
        "requests": len(ours.latencies_ms),
        "statuses": ours.statuses,
        "bare_statuses": bare.statuses,
        "errors": ours.errors + bare.errors,
        "met": met,
    }


async def run(quick: bool, phases: tuple[str, ...] = PHASES, rate: float = RATE) -> dict[str, Any]:
    """Run the ``phases`` (``get``, ``dequeue``, ``sse``); print and return the figures."""
    sizes = ApiSizes.of(quick)
    n = int(rate * sizes.seconds) + sizes.warmup
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bosun-bench-api-") as tmp:
        server = await Server.start(Path(tmp), pull_tasks=n + 100)
        try:
            info = server.info
            ids = info["task_ids"]
            if "get" in phases or "dequeue" in phases:
                print(
                    f"\n4. API latency: open loop at {rate:.0f} requests/s for "
                    f"{sizes.seconds:.0f} s (after {sizes.warmup} warm-up requests), "
                    "uvicorn on 127.0.0.1"
                )
            if "get" in phases:
                ours = [
                    request_bytes(
                        "GET", info["bosun"], f"/api/v1/tasks/{ids[i % len(ids)]}",
                        token=info["admin"],
                    )
                    for i in range(n)
                ]  # fmt: skip
                bare = [
                    request_bytes("GET", info["bare"], f"/tasks/{ids[i % len(ids)]}")
                    for i in range(n)
                ]
                b = await _load(server, info["bare"], bare, sizes.warmup, rate)
                o = await _load(server, info["bosun"], ours, sizes.warmup, rate)
                print(_line("bare Starlette GET", b))
                print(_line("bosun GET /api/v1/tasks/{id}", o))
                figures["get"] = _verdict(o, b)
            if "dequeue" in phases:
                body = json.dumps({"agents": [AGENT]}).encode()
                ours = [
                    request_bytes(
                        "POST", info["bosun"], "/api/v1/tasks/dequeue", token=info["agent"],
                        body=body,
                    )
                ] * n  # fmt: skip
                bare = [request_bytes("POST", info["bare"], "/dequeue", body=body)] * n
                b = await _load(server, info["bare"], bare, sizes.warmup, rate)
                o = await _load(server, info["bosun"], ours, sizes.warmup, rate)
                print(_line("bare Starlette POST", b))
                print(_line("bosun POST .../tasks/dequeue", o))
                figures["dequeue"] = _verdict(o, b)
            if "sse" in phases:
                figures["sse"] = await _sse_phase(server, sizes)
        finally:
            await server.stop()
    return figures


async def _sse(
    server: Server, target: str, sizes: ApiSizes
) -> tuple[list[SseResult], dict[str, Any], float]:
    """Followers connect, then the server writes; (per follower, what was written, server
    CPU share)."""
    info = server.info
    task_id = (await server.ask(cmd="sse-prepare", target=target))["task_id"]
    if target == "bosun":
        url, path, token = info["bosun"], f"/api/v1/tasks/{task_id}/events", info["admin"]
    else:
        url, path, token = info["bare"], "/events", None
    results = [SseResult() for _ in range(sizes.followers)]
    readies = [asyncio.Event() for _ in results]
    followers = [
        asyncio.create_task(follow_sse(url, path, token, ready, res))
        for ready, res in zip(readies, results, strict=True)
    ]
    try:

        async def every_ready() -> None:
            for ready in readies:
                await ready.wait()

        all_ready = asyncio.create_task(every_ready())
        watched: list[asyncio.Task[None]] = [all_ready, *followers]
        await asyncio.wait(watched, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not all_ready.done():
            all_ready.cancel()
            failed = [f for f in followers if f.done()]
            raise RuntimeError(
                f"{len(failed)} SSE followers ended before the writer started"
            ) from (failed[0].exception() if failed else None)
        cpu0 = (await server.ask(cmd="cpu"))["cpu"]
        mine = cpu_seconds()
        written = await server.ask(
            cmd="sse-write",
            target=target,
            seconds=sizes.sse_seconds,
            rate=sizes.sse_rate,
            line=sizes.line,
        )
        await asyncio.wait_for(asyncio.gather(*followers), 120)
        cpu1 = (await server.ask(cmd="cpu"))["cpu"]
        written["client_cpu"] = cpu_seconds() - mine
    finally:
        for f in followers:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    return results, written, (cpu1 - cpu0) / max(written["seconds"], 1e-9)


async def _sse_phase(server: Server, sizes: ApiSizes) -> dict[str, Any]:
    print(
        f"\n5. SSE lag: {sizes.followers} followers of one task writing "
        f"{sizes.sse_rate / 1e6:g} MB/s ({sizes.line}-byte lines, a write every 10 ms) "
        f"for {sizes.sse_seconds:.0f} s"
    )
    figures: dict[str, Any] = {}
    for target, name in (("bare", "bare Starlette fan-out"), ("bosun", "bosun /tasks/{id}/events")):
        results, written, cpu = await _sse(server, target, sizes)
        lags = [x for r in results for x in r.lags_ms]
        complete = sum(1 for r in results if r.events == written["events"] and r.ended)
        print(f"   {name:<30}{spread(lags)}")
        print(
            f"   {'':<30}({written['events']} events, {written['bytes'] / 1e6:.1f} MB in "
            f"{written['seconds']:.1f} s; {complete}/{len(results)} followers got every "
            f"event; CPU: server {cpu * 100:.0f}%, client "
            f"{written['client_cpu'] / written['seconds'] * 100:.0f}%)"
        )
        figures[target] = {
            "p50": pct(lags, 50),
            "p99": pct(lags, 99),
            "events": written["events"],
            "mb_per_s": written["bytes"] / 1e6 / written["seconds"],
            "complete": complete,
        }
    p99 = figures["bosun"]["p99"]
    met = p99 < GOAL_SSE_P99_MS and figures["bosun"]["complete"] == sizes.followers
    print(
        f"   p99 {p99 / figures['bare']['p99']:.1f}x bare; goal p99 < {GOAL_SSE_P99_MS:.0f} ms "
        f"(every follower gets every event): {goal(met)}"
    )
    figures["met"] = met
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--phases", default=",".join(PHASES), help="get,dequeue,sse")
    parser.add_argument("--rate", type=float, default=RATE, help="requests per second")
    args = parser.parse_args()
    asyncio.run(run(args.quick, tuple(args.phases.split(",")), args.rate))


if __name__ == "__main__":
    main()
