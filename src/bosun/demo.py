"""``bosun demo``: the whole story on a throwaway repository, no API keys needed.

It builds a small git repository, a ``bosun.toml`` that uses the built-in ``demo`` agent
(a deterministic script, not an AI), submits a handful of tasks (one waits for another,
two share a scope lock), dispatches them on the embedded SQLite store with a live table,
and ends with the branches and commits each task produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from bosun.config import load_settings
from bosun.dispatcher import Dispatcher
from bosun.models import Task, TaskSpec
from bosun.service import Service, make_providers

DEMO_TOML = """\
# Written by `bosun demo`. The `demo` agent ships with bosun; it is not an AI.
state_dir = ".bosun"

[repos.demo]
url = "repo"
default_branch = "main"

[hosts.local]
kind = "local"
max_concurrent = 3

[limits]
max_attempts = 2
retry_backoff = 0.5
stall_timeout = 30
run_timeout = 120
"""

TASKS: list[TaskSpec] = [
    TaskSpec(
        title="Add a greeting to the README",
        body='## Goal\nAppend "Hello from bosun!" to README.md\n',
        repo="demo",
        agent="demo",
        scope=("README.md",),
    ),
    TaskSpec(
        title="Write a contributing guide",
        body="## Goal\nCreate CONTRIBUTING.md with: Open an issue, then hand it to bosun.\n",
        repo="demo",
        agent="demo",
        scope=("CONTRIBUTING.md",),
    ),
    TaskSpec(
        title="Make greet() friendlier",
        body='## Goal\nReplace "Hi" with "Hello there" in greet.py\n\n'
        "## Validation\n- python greet.py prints the new greeting\n",
        repo="demo",
        agent="demo",
        scope=("greet.py",),
        priority=5,
    ),
    TaskSpec(
        title="Polish the README greeting",
        body='## Goal\nReplace "Hello from bosun!" with "Hello, world, from bosun!" in README.md\n',
        repo="demo",
        agent="demo",
        scope=("README.md",),
        depends_on=(1,),
    ),
    TaskSpec(
        title="Draft release notes (no repo: a scratch directory)",
        body="## Goal\nCreate NOTES.md with: bosun ran five tasks on this machine.\n",
        agent="demo",
    ),
]


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bosun demo",
        "GIT_AUTHOR_EMAIL": "demo@localhost",
        "GIT_COMMITTER_NAME": "bosun demo",
        "GIT_COMMITTER_EMAIL": "demo@localhost",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    )
    return done.stdout


def make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# demo\n\nA throwaway repository for `bosun demo`.\n")
    (path / "greet.py").write_text(
        'def greet(name):\n    return f"Hi {name}"\n\n\n'
        'if __name__ == "__main__":\n    print(greet("bosun"))\n'
    )
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "initial commit")


def _table(tasks: list[Task]) -> Table:
    from bosun.cli import task_table

    return task_table(tasks, title="bosun demo: tasks")


async def run_demo(console: Console, *, keep: bool = False, directory: Path | None = None) -> None:
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="bosun-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    console.print(
        Panel.fit(
            "[bold]bosun demo[/]: five tasks, one throwaway repo, "
            "the built-in [bold]demo[/] agent.\n"
            "The demo agent is [bold red]not an AI[/]: it follows literal instructions such as\n"
            "'Append \"X\" to FILE' so the demo needs no API key and always ends the same way.",
            border_style="cyan",
        )
    )
    try:
        make_repo(root / "repo")
        (root / "bosun.toml").write_text(DEMO_TOML)
        os.environ.setdefault("BOSUN_DEMO_DELAY", "0.3")
        settings = load_settings(root / "bosun.toml")
        async with await Service.open(settings) as svc:
            for spec in TASKS:
                await svc.submit(spec)
            dispatcher = Dispatcher(settings, svc.store, make_providers(settings))
            job = asyncio.create_task(dispatcher.run(burst=True))
            with Live(
                _table(await svc.list_tasks()), console=console, refresh_per_second=8
            ) as live:
                while not job.done():
                    await asyncio.wait([job], timeout=0.15)
                    live.update(_table(await svc.list_tasks()))
            await job
            tasks = await svc.list_tasks()
            console.print(_summary(tasks, root / "repo"))
        where = (
            f"The repository is in [bold]{root / 'repo'}[/]: try "
            f"`git -C {root / 'repo'} log --oneline --all`."
            if keep or directory is not None
            else "Run `bosun demo --keep` to keep the repository and look at the branches."
        )
        console.print(
            f"\n{where}\n"
            "To use a real agent, run `bosun init` in your project, add your repository under\n"
            "\\[repos.NAME] and an agent under \\[agents.NAME] (any command: argv, prompt on\n"
            "stdin), then `bosun submit --repo NAME --agent NAME --title ...` and `bosun run`."
        )
    finally:
        if not keep and directory is None:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
        elif keep:
            console.print(f"kept {root}")


def _summary(tasks: list[Task], repo: Path) -> Group:
    table = Table(title="branches and commits")
    for col in ("id", "status", "branch", "commits", "agent said"):
        table.add_column(col, overflow="fold")
    for t in tasks:
        table.add_row(
            str(t.id),
            t.status.value,
            t.branch or "(scratch dir)",
            " ".join(c[:8] for c in t.commits),
            escape((t.result_summary or t.error or "")[-120:]),
        )
    return Group(table)
