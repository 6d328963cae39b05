"""``bosun hosts`` and its subcommands on a real bosun.toml and SQLite store.

Most cases run the Typer app in this process (``CliRunner``: the same code, without two
seconds of interpreter start-up per command); one runs ``python -m bosun`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bosun.cli import app
from tests.test_cli import write_config


@pytest.fixture
def cfg(tmp_path: Path, origin: Path) -> Path:
    cfg = tmp_path / "cfg"
    write_config(cfg, origin)
    return cfg


def run(cfg: Path, *args: str) -> Any:
    """``bosun ARGS`` in process; returns the result (exit_code, stdout, stderr)."""
    env = {"BOSUN_CONFIG": str(cfg / "bosun.toml"), "COLUMNS": "200"}
    old = os.getcwd()
    os.chdir(cfg)
    try:
        return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    finally:
        os.chdir(old)


def js(result: Any) -> Any:
    assert result.exit_code == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_plain_hosts_lists_and_json_has_state_health_load(cfg: Path) -> None:
    table = run(cfg, "hosts")
    assert table.exit_code == 0
    for word in ("name", "state", "health", "running", "local", "enabled", "0/2"):
        assert word in table.stdout
    (row,) = js(run(cfg, "hosts", "--json"))
    assert row["name"] == "local" and row["max_concurrent"] == 2 and row["running"] == 0
    assert row["health"] == "unknown" and row["drained"] is False and row["source"] == "config"
    assert js(run(cfg, "hosts", "list", "--json")) == [row]


def test_add_drain_enable_check_rm(cfg: Path) -> None:
    add = ["hosts", "add", "box", "--kind", "local", "--max-concurrent", "3", "--label", "fast"]
    add += ["--label", "big", "--agents", "echo", "--priority", "5", "--json"]
    added = js(run(cfg, *add))
    assert added["source"] == "cli" and added["agents"] == ["echo"]
    assert {"fast", "big", "os:linux"} <= set(added["labels"])
    assert added["health"] == "healthy" and added["capabilities"]["agents"]["echo"]["installed"]
    rows = {h["name"]: h for h in js(run(cfg, "hosts", "--json"))}
    assert set(rows) == {"local", "box"} and rows["box"]["priority"] == 5

    drained = run(cfg, "hosts", "drain", "box")
    assert drained.exit_code == 0 and "drained" in drained.stdout
    assert "drained" in run(cfg, "hosts").stdout
    assert js(run(cfg, "hosts", "enable", "box", "--json"))["drained"] is False

    check = run(cfg, "hosts", "check", "box")
    assert check.exit_code == 0
    for word in ("connection", "ok", "cpus", "memory", "echo", "yes"):
        assert word in check.stdout
    checked = js(run(cfg, "hosts", "check", "local", "--json"))
    assert checked["ok"] and checked["capabilities"]["cpus"] == os.cpu_count()

    removed = run(cfg, "hosts", "rm", "box")
    assert removed.exit_code == 0 and "removed" in removed.stdout
    assert [h["name"] for h in js(run(cfg, "hosts", "--json"))] == ["local"]


def test_bad_input_is_a_clear_error_with_a_fix_and_stores_nothing(cfg: Path) -> None:
    cases = [
        (["hosts", "add", "local", "--kind", "local"], 2, "already defined"),
        (["hosts", "add", "x y", "--kind", "local"], 2, "invalid host name"),
        (["hosts", "add", "h", "--kind", "ssh", "--no-check"], 2, "needs an address"),
        (["hosts", "add", "h", "--kind", "local", "--agents", "nope"], 2, "unknown agent"),
        (["hosts", "drain", "nope"], 3, "does not exist"),
        (["hosts", "rm", "local"], 2, "defined in"),
        (["hosts", "check", "nope"], 3, "does not exist"),
    ]
    for args, code, words in cases:
        result = run(cfg, *args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert words in result.stderr and "fix:" in result.stderr, (args, result.stderr)
    assert [h["name"] for h in js(run(cfg, "hosts", "--json"))] == ["local"]


def test_an_unreachable_host_is_not_added_and_check_exits_non_zero(cfg: Path) -> None:
    args = ["hosts", "add", "far", "--address", "nobody@127.0.0.1:1", "--connect-timeout", "1"]
    refused = run(cfg, *args)
    assert refused.exit_code == 2 and "was not added" in refused.stderr
    assert "fix:" in refused.stderr
    assert [h["name"] for h in js(run(cfg, "hosts", "--json"))] == ["local"]
    assert run(cfg, *args, "--no-check").exit_code == 0
    check = run(cfg, "hosts", "check", "far", "--json")
    assert check.exit_code == 1
    result = json.loads(check.stdout)
    assert result["ok"] is False and result["reachable"] is False
    assert "127.0.0.1" in result["error"] and result["hint"]
    plain = run(cfg, "hosts", "check", "far")
    assert plain.exit_code == 1 and "failed" in plain.stdout and "error:" in plain.stderr
    assert "unhealthy" in run(cfg, "hosts").stdout


def test_hosts_through_python_m_bosun(cfg: Path) -> None:
    env = {**os.environ, "BOSUN_CONFIG": str(cfg / "bosun.toml")}
    done = subprocess.run(
        [sys.executable, "-m", "bosun", "hosts", "add", "box", "--kind", "local", "--json"],
        cwd=cfg, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "box"
    done = subprocess.run(
        [sys.executable, "-m", "bosun", "hosts"],
        cwd=cfg, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "box" in done.stdout and "healthy" in done.stdout
