"""The quick mode of the API, memory and SSH benchmarks (``bench/``) runs, so they cannot rot.

Nothing here asserts a time: only that every benchmark did the work it reports on (every
request answered, every SSE follower got every event, every task ran and completed).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from bench import api, cgroups, memory, ssh


async def test_api_benchmarks_quick(capsys: pytest.CaptureFixture[str]) -> None:
    figures = await api.run(quick=True)
    sizes = api.ApiSizes.of(True)
    for phase in ("get", "dequeue"):
        got: dict[str, Any] = figures[phase]
        expected = int(api.RATE * sizes.seconds)
        # every request answered 200, bosun's and the bare route's: a dequeue that found
        # the queue empty (204) would mean the benchmark measured nothing
        assert got["requests"] == expected and got["statuses"] == {200: expected}
        assert got["bare_statuses"] == {200: expected} and got["errors"] == 0
        assert got["p99"] >= got["p50"] > 0 and got["bare_p99"] >= got["bare_p50"] > 0
    sse = figures["sse"]
    for target in ("bare", "bosun"):
        assert sse[target]["events"] > 0
        assert sse[target]["complete"] == sizes.followers  # every follower, every event
        assert sse[target]["p99"] >= sse[target]["p50"]
    out = capsys.readouterr().out
    assert "goal p99 < 25 ms" in out and "goal p99 < 100 ms" in out


async def test_memory_benchmark_quick(capsys: pytest.CaptureFixture[str]) -> None:
    figures = await memory.run(quick=True)
    result: memory.Memory = figures["result"]
    assert result.started == result.tasks == 50
    assert result.peak_mb >= result.running_mb > 0 and figures["bare_mb"] > 0
    assert "goal peak < 300 MB" in capsys.readouterr().out


@pytest.mark.ssh
async def test_ssh_benchmarks_quick(capsys: pytest.CaptureFixture[str]) -> None:
    reason = ssh.why_not()
    if reason is not None:
        pytest.skip(reason)
    saved = os.environ.get("SSH_AUTH_SOCK")
    try:
        figures = await ssh.run(quick=True)
    finally:
        if saved is not None:
            os.environ["SSH_AUTH_SOCK"] = saved
    # P1: each sample is a date printed on the host after the clock started
    assert figures["p1"]["bare"] > 0 and figures["p1"]["bosun"] > 0
    # P2: both returned only once every task ran (parallel exits 0; bosun counted them)
    p2 = figures["p2"]
    assert p2["parallel"] > 0 and p2["bosun"] > 0 and p2["bosun_live"] > 0
    assert p2["floor"] > 0 and p2["floor_cpu_ms"] > 0
    # where cgroups can be written (root: as here), each run's CPU is split between the
    # orchestrator's process tree and the hosts'; both did work in every run
    with cgroups.cpu_groups("bosun-test") as groups:
        writable = groups is not None
    for run in ("parallel", "bosun", "floor"):
        split = p2[f"{run}_cpu"]
        if writable:
            assert split["orchestrator_ms"] > 0 and split["hosts_ms"] > 0, (run, split)
        else:
            assert split["orchestrator_ms"] is None and split["hosts_ms"] is None
    out = capsys.readouterr().out
    assert "goal <= 1.5x" in out and "goal >= 5x" in out
