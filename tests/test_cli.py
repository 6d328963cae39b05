"""The ``bosun`` command as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git

BOSUN = [sys.executable, "-m", "bosun"]

COUNTER = "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line $i; sleep 0.1; done"


def write_config(cfg: Path, origin: Path, extra: str = "") -> Path:
    cfg.mkdir(parents=True, exist_ok=True)
    path = cfg / "bosun.toml"
    path.write_text(
        f"""
[repos.app]
url = "{origin}"

[agents.echo]
command = ["sh", "-c", "cat > NOTES.md"]

[agents.count]
command = ["sh", "-c", "{COUNTER}"]

[hosts.local]
kind = "local"
max_concurrent = 2

[limits]
retry_backoff = 0.01
retry_backoff_max = 0.05
heartbeat_seconds = 0.5
lease_seconds = 30
poll_interval = 0.1
{extra}
"""
    )
    return path


def bosun(
    cfg: Path, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*BOSUN, *args],
        cwd=cfg,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env={**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"bosun {args} exited {done.returncode}: {done.stderr}")
    return done


def stored_output_lines(cfg: Path) -> int:
    """Read the event count straight from the SQLite file (a CLI call takes too long here)."""
    db = cfg / ".bosun" / "bosun.db"
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM events WHERE kind = 'run.output'").fetchone()
    return int(count)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


@pytest.fixture
def cfg(tmp_path: Path, origin: Path) -> Path:
    write_config(tmp_path / "cfg", origin)
    return tmp_path / "cfg"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_submit_run_ls_show_logs(cfg: Path, origin: Path, tmp_path: Path) -> None:
    body = tmp_path / "task.md"
    body.write_text("## Goal\nAdd a greeting\n\n## Constraints\n- keep it short\n")
    task = as_json(
        bosun(
            cfg,
            "submit",
            "--repo",
            "app",
            "--agent",
            "echo",
            "--title",
            "Add a greeting",
            "--body-file",
            str(body),
            "--json",
        )
    )
    assert task["status"] == "queued"
    for key in (
        "id",
        "title",
        "status",
        "repo",
        "agent",
        "branch",
        "assigned_host",
        "attempt",
        "session_id",
        "created_at",
        "updated_at",
        "last_activity_at",
        "result_summary",
        "tokens",
        "cost_usd",
        "error",
    ):
        assert key in task
    bosun(cfg, "run")
    listed = as_json(bosun(cfg, "ls", "--json"))
    assert [t["status"] for t in listed] == ["completed"]
    shown = as_json(bosun(cfg, "show", str(task["id"]), "--json"))
    assert shown["branch"] == "task/1-add-a-greeting" and len(shown["runs"]) == 1
    assert "- keep it short" in git(origin, "show", "task/1-add-a-greeting:NOTES.md")
    logs = bosun(cfg, "logs", "1").stdout
    assert "queued -> running" in logs and "running -> completed" in logs
    hosts = as_json(bosun(cfg, "hosts", "--json"))
    assert hosts[0]["name"] == "local" and hosts[0]["max_concurrent"] == 2


def test_kill_9_mid_run_loses_and_repeats_no_line(
    cfg: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    bosun(cfg, "submit", "--agent", "count", "--title", "Count to sixty")
    env = {**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")}
    first = subprocess.Popen(
        [*BOSUN, "run", "-q"],
        cwd=cfg,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(first)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if stored_output_lines(cfg) >= 10:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the agent never produced 10 lines")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert as_json(bosun(cfg, "show", "1", "--json"))["status"] == "running"
    bosun(cfg, "run", "-q")
    events = [json.loads(x) for x in bosun(cfg, "logs", "1", "--json").stdout.splitlines()]
    output = [e["data"]["line"] for e in events if e["kind"] == "run.output"]
    assert output == [f"line {i}" for i in range(1, 61)]
    task = as_json(bosun(cfg, "show", "1", "--json"))
    assert task["status"] == "completed" and task["attempt"] == 1 and len(task["runs"]) == 1
    completions = [
        e for e in events if e["kind"] == "task.status" and e["data"]["to"] == "completed"
    ]
    assert len(completions) == 1
    assert any(e["kind"] == "run.reattached" for e in events)


def test_logs_follow_streams_until_done(cfg: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    bosun(cfg, "submit", "--agent", "count", "--title", "Count")
    env = {**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")}
    runner = subprocess.Popen(
        [*BOSUN, "run", "-q"],
        cwd=cfg,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(runner)
    follow = bosun(cfg, "logs", "1", "-f")
    runner.wait(60)
    lines = [x for x in follow.stdout.splitlines() if x.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, 61)]
    assert "running -> completed" in follow.stdout


def test_cancel_and_retry(cfg: Path) -> None:
    bosun(cfg, "submit", "--agent", "echo", "--title", "later")
    assert as_json(bosun(cfg, "cancel", "1", "--json"))["status"] == "cancelled"
    again = bosun(cfg, "cancel", "1", check=False)
    assert again.returncode == 2 and "cannot go from cancelled to cancelled" in again.stderr
    assert as_json(bosun(cfg, "retry", "1", "--json"))["status"] == "queued"
    missing = bosun(cfg, "show", "42", check=False)
    assert missing.returncode == 3 and "42" in missing.stderr


def test_bad_task_input_exits_2_and_stores_nothing(cfg: Path) -> None:
    done = bosun(cfg, "submit", "--repo", "nope", "--title", "x", check=False)
    assert done.returncode == 2
    assert "unknown repo 'nope'" in done.stderr and "fix:" in done.stderr
    assert as_json(bosun(cfg, "ls", "--json")) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[repos.app]\nurl = 3\n", "[repos.app] url"),
        ("[hosts]\n", "[hosts] is empty"),
        ("[limits]\nmax_attempts = 0\n", "max_attempts"),
        ("[hosts.local]\nkind = 'local'\nmax_concurent = 2\n", "max_concurent"),
        ("[agents.x]\nprompt = 'stdin'\n", "command"),
        ("[agents.x]\ncommand = ['sh', '{nope}']\n", "nope"),
        ("[repos.app\nurl='x'\n", "line 1"),
        ("[unknown]\n", "unknown"),
    ],
)
def test_bad_config_names_file_and_key_and_changes_nothing(
    tmp_path: Path, text: str, expected: str
) -> None:
    cfg = tmp_path / "bad"
    cfg.mkdir()
    (cfg / "bosun.toml").write_text(text)
    done = bosun(cfg, "ls", check=False)
    assert done.returncode == 2, done.stderr
    assert "bosun.toml" in done.stderr and expected in done.stderr
    assert not (cfg / ".bosun").exists()


def test_missing_config_says_bosun_init(tmp_path: Path) -> None:
    done = subprocess.run(
        [*BOSUN, "ls"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "BOSUN_CONFIG"},
        timeout=60,
    )
    assert done.returncode == 2 and "bosun init" in done.stderr


def test_init_writes_a_config_that_works(tmp_path: Path) -> None:
    done = subprocess.run(
        [*BOSUN, "init"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [*BOSUN, "init"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and "--force" in again.stderr
    ls = subprocess.run(
        [*BOSUN, "ls", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "BOSUN_CONFIG"},
    )
    assert ls.returncode == 0, ls.stderr
    assert json.loads(ls.stdout) == []


def test_serve_stops_gracefully_on_sigterm(cfg: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    env = {**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")}
    server = subprocess.Popen(
        [*BOSUN, "serve"], cwd=cfg, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    procs.append(server)
    bosun(cfg, "submit", "--agent", "echo", "--title", "served")
    deadline = time.monotonic() + 60
    while as_json(bosun(cfg, "show", "1", "--json"))["status"] != "completed":
        assert time.monotonic() < deadline, "serve never completed the task"
        time.sleep(0.1)
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    done = subprocess.run(
        [*BOSUN, "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BOSUN_DEMO_DELAY": "0", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "not an AI" in done.stdout
    repo = tmp_path / "demo" / "repo"
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert "task/1-add-a-greeting-to-the-readme" in branches
    readme = git(repo, "show", "task/4-polish-the-readme-greeting:README.md")
    assert "Hello, world, from bosun!" in readme
    assert done.stdout.count("completed") >= 5


def test_agents_list_and_show(cfg: Path) -> None:
    agents = {a["name"]: a for a in as_json(bosun(cfg, "agents", "list", "--json"))}
    assert agents["demo"]["builtin"] is True and agents["echo"]["builtin"] is False
    assert agents["echo"]["command"] == ["sh", "-c", "cat > NOTES.md"]
    shown = as_json(bosun(cfg, "agents", "show", "count", "--json"))
    assert shown["prompt"] == "stdin" and shown["parser"] == "raw"
    missing = bosun(cfg, "agents", "show", "nope", check=False)
    assert missing.returncode == 2 and "unknown agent 'nope'" in missing.stderr


def test_agents_parse_explains_a_captured_failure(cfg: Path) -> None:
    cases = Path(__file__).parent / "fixtures" / "agent-output" / "gemini-json"
    done = bosun(
        cfg,
        "agents",
        "parse",
        "gemini-json",
        str(cases / "401.stdout"),
        "--stderr",
        str(cases / "401.stderr"),
        "--exit-code",
        "145",
        "--json",
    )
    outcome = as_json(done)["outcome"]
    assert outcome["success"] is False and outcome["error_kind"] == "auth"
    unknown = bosun(cfg, "agents", "parse", "nope", str(cases / "401.stdout"), check=False)
    assert unknown.returncode == 2 and "neither an agent nor a parser" in unknown.stderr


def test_doctor_names_each_problem_and_its_fix(tmp_path: Path, origin: Path) -> None:
    cfg = tmp_path / "doc"
    write_config(cfg, origin)
    with (cfg / "bosun.toml").open("a") as f:
        f.write('\n[agents.ghost]\ncommand = ["no-such-agent-cli-xyz", "run"]\n')
        f.write('\n[agents.keyed]\ncommand = ["sh", "-c", "true"]\n')
        f.write('env_allow = ["PATH", "KEYED_API_KEY"]\n')
    done = bosun(cfg, "doctor", "--json", check=False)
    assert done.returncode == 1
    checks = {c["agent"]: c for c in as_json(done)}
    assert checks["echo"]["ok"] is True and checks["echo"]["installed"] is True
    ghost = checks["ghost"]
    assert ghost["installed"] is False and ghost["counts"] is True
    assert "no-such-agent-cli-xyz is not installed on local" in ghost["problems"][0]
    assert "KEYED_API_KEY" in checks["keyed"]["fixes"][0]
    assert checks["demo"]["version"].startswith("bosun demo agent")
    only_echo = bosun(cfg, "doctor", "--agent", "echo", "--json", check=False)
    assert only_echo.returncode == 0
