"""CPU time of whole process trees, from a cgroup of their own (root only).

The machine's busy time (``/proc/stat``) says what a run cost in all, not who spent it.
A process moved into a cgroup takes the children it starts afterwards along, however
they detach (``setsid``, a daemonised ``ssh`` ControlMaster, a run wrapper re-parented
to init), and the cgroup counts their CPU time after they exit too. So two groups split
a run's cost: the orchestrator (this process: bosun, or GNU parallel and its ``ssh``
clients and masters, all started from here) and the hosts (each ``sshd`` listener, with
every session, shell and agent it starts).

cgroup v1's ``cpuacct`` (``cpuacct.usage``, ns) is used where it is mounted, else
cgroup v2 (``cpu.stat``'s ``usage_usec``, present in every v2 group). The groups are
removed at the end, their processes moved back to the root group first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CpuGroups", "cpu_groups"]

_V1 = Path("/sys/fs/cgroup/cpuacct")
_V2_PLACES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def _v2_root() -> Path | None:
    for place in _V2_PLACES:
        if (place / "cgroup.procs").exists() and (place / "cgroup.controllers").exists():
            return place
    return None


class CpuGroups:
    """Named cgroups under ``root``: ``add(name, pid)``, ``seconds(name)``."""

    def __init__(self, root: Path, v1: bool, prefix: str) -> None:
        self.root = root
        self.v1 = v1
        self.prefix = prefix
        self.made: list[Path] = []

    def _group(self, name: str) -> Path:
        path = self.root / f"{self.prefix}-{name}"
        if path not in self.made:
            path.mkdir(exist_ok=True)
            self.made.append(path)
        return path

    def add(self, name: str, pid: int) -> None:
        """Move ``pid`` (with all its threads) into group ``name``; the children it
        starts from now on belong there too."""
        (self._group(name) / "cgroup.procs").write_text(f"{pid}\n")

    def seconds(self, name: str) -> float:
        """CPU seconds the group's processes have used since they joined it."""
        group = self._group(name)
        if self.v1:
            return int((group / "cpuacct.usage").read_text()) / 1e9
        for line in (group / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise RuntimeError(f"{group}/cpu.stat has no usage_usec")

    def close(self) -> None:
        """Every process still in a group back to the root group; the groups removed."""
        for group in reversed(self.made):
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):  # it exited meanwhile
                        (self.root / "cgroup.procs").write_text(f"{pid}\n")
                group.rmdir()
        self.made.clear()


@contextlib.contextmanager
def cpu_groups(prefix: str = "bosun-bench") -> Iterator[CpuGroups | None]:
    """``CpuGroups`` for this run (named ``<prefix>-<pid>-<name>``), with this process in
    the group ``orchestrator``; None where there are no cgroups to write (not root, no
    cgroup file system, a read-only one)."""
    root: Path | None
    if os.geteuid() != 0:
        root = None
    elif (_V1 / "cpuacct.usage").exists():
        root, v1 = _V1, True
    else:
        root, v1 = _v2_root(), False
    if root is None or not os.access(root, os.W_OK):
        yield None
        return
    groups = CpuGroups(root, v1, f"{prefix}-{os.getpid()}")
    try:
        try:  # (a container may show the files and refuse the writes)
            groups.add("orchestrator", os.getpid())
            groups.seconds("orchestrator")
        except OSError:
            groups.close()
            yield None
            return
        yield groups
    finally:
        groups.close()
