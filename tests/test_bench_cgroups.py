"""``bench.cgroups``: a process tree's CPU time from a cgroup of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.cgroups import cpu_groups

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass\n"


def test_a_child_started_after_joining_is_counted_even_once_it_has_exited() -> None:
    with cpu_groups("bosun-test") as groups:
        if groups is None:
            pytest.skip("no writable cgroup file system here (needs root)")
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            groups.add("other", sleeper.pid)  # joins an empty group; burns nothing
            before = groups.seconds("orchestrator")
            # a child's child, which we never wait for ourselves: counted once both exited
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN!r}])",
                ],
                check=True,
            )
            burnt = groups.seconds("orchestrator") - before
            assert burnt >= 0.2, burnt  # the child's 0.2 s of CPU, and the interpreters'
            assert groups.seconds("other") < 0.2
        finally:
            sleeper.kill()
            sleeper.wait()
        made = list(groups.made)
        assert len(made) == 2
    # the groups are gone, this process back in the root group
    assert made and not any(path.exists() for path in made)
    mine = Path(f"/proc/{os.getpid()}/cgroup").read_text()
    assert "bosun-test" not in mine
