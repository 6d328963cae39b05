"""Percentiles and the one-line summaries every new benchmark prints."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cpu_seconds", "goal", "pct", "proc_cpu_seconds", "rss_mb", "spread"]


def pct(samples: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(samples: list[float], unit: str = "ms") -> str:
    """``p50 .. p99 .. max`` of ``samples``."""
    return (
        f"p50 {pct(samples, 50):7.2f} {unit}   p99 {pct(samples, 99):7.2f} {unit}   "
        f"max {max(samples, default=math.nan):7.2f} {unit}"
    )


def goal(met: bool) -> str:
    return "met" if met else "NOT met"


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of process ``pid`` in MB (from /proc: VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MB (MiB)
    return fields["VmRSS"], fields["VmHWM"]


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
