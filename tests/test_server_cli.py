"""``bosun token ...`` and ``bosun serve`` as a user runs them: real subprocesses, a real
uvicorn on 127.0.0.1, the real dispatcher running a task submitted over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from typer.testing import CliRunner, Result

from bosun.cli import app

BOSUN = [sys.executable, "-m", "bosun"]


@pytest.fixture
def cfg(tmp_path: Path, origin: Path) -> Path:
    path = tmp_path / "cfg" / "bosun.toml"
    path.parent.mkdir()
    path.write_text(
        f"""
[repos.app]
url = "{origin}"

[agents.echo]
command = ["sh", "-c", "cat > NOTES.md"]

[limits]
retry_backoff = 0.01
retry_backoff_max = 0.05
heartbeat_seconds = 0.5
lease_seconds = 30
poll_interval = 0.1

[server]
port = 0
"""
    )
    return path


def bosun(cfg: Path, *args: str, check: bool = True) -> Result:
    """The ``bosun`` command in-process (the serve tests below use real subprocesses)."""
    result = CliRunner().invoke(app, list(args), env={"BOSUN_CONFIG": str(cfg), "BOSUN_SERVER": ""})
    if check:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def test_token_create_list_revoke(cfg: Path) -> None:
    made = json.loads(bosun(cfg, "token", "create", "--admin", "--json").stdout)
    secret = made["secret"]
    assert re.fullmatch(r"bsn_[A-Za-z0-9_-]{43}", secret)
    assert made["token"]["kind"] == "admin" and made["token"]["name"] == "admin"
    # A second admin token gets a name of its own.
    second = bosun(cfg, "token", "create", "--admin")
    assert second.stdout.count("bsn_") == 1 and "admin-2" in second.stdout
    assert "shown once" in second.stderr
    agent = json.loads(
        bosun(
            cfg, "token", "create", "--agent", "gpu-1", "--capabilities", "echo,claude", "--json"
        ).stdout
    )
    assert agent["token"]["agent"] == "gpu-1"
    assert agent["token"]["capabilities"] == ["echo", "claude"]
    default_caps = json.loads(bosun(cfg, "token", "create", "--agent", "w", "--json").stdout)
    assert "echo" in default_caps["token"]["capabilities"]  # every configured agent
    listed = bosun(cfg, "token", "list", "--json").stdout
    assert secret not in listed and agent["secret"] not in listed
    rows = json.loads(listed)
    assert [r["name"] for r in rows] == ["admin", "admin-2", "gpu-1", "w"]
    assert rows[0]["prefix"] == secret[: len(rows[0]["prefix"])]
    table = bosun(cfg, "token", "list").stdout
    assert "gpu-1" in table and secret not in table
    assert "revoked token" in bosun(cfg, "token", "revoke", "admin-2").stdout
    assert "revoked token" in bosun(cfg, "token", "revoke", str(rows[2]["id"])).stdout
    live = json.loads(bosun(cfg, "token", "list", "--json").stdout)
    assert [r["name"] for r in live] == ["admin", "w"]
    everything = json.loads(bosun(cfg, "token", "list", "--all", "--json").stdout)
    assert [r["revoked_at"] is not None for r in everything] == [False, True, True, False]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["create"], 2, "--admin or --agent"),
        (["create", "--admin", "--agent", "x"], 2, "--admin or --agent"),
        (["create", "--admin", "--capabilities", "echo"], 2, "for agent tokens"),
        (["create", "--agent", "w", "--capabilities", "echo,nope"], 2, "nope"),
        (["create", "--agent", "w", "--capabilities", ","], 2, "empty"),
        (["create", "--agent", "bad name"], 2, "not allowed"),
        (["revoke", "nobody"], 3, "no token 'nobody'"),
    ],
)
def test_token_errors_say_what_and_how(cfg: Path, args: list[str], code: int, message: str) -> None:
    done = bosun(cfg, "token", *args, check=False)
    assert done.exit_code == code, done.stderr
    assert message in done.stderr and "fix:" in done.stderr
    assert json.loads(bosun(cfg, "token", "list", "--all", "--json").stdout) == []


def test_token_commands_refuse_a_remote_server(cfg: Path) -> None:
    done = bosun(cfg, "--server", "http://127.0.0.1:9", "token", "list", check=False)
    assert done.exit_code == 2
    assert "bosun token" in done.stderr and "--server" in done.stderr


def test_serve_refuses_an_address_it_cannot_listen_on(cfg: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = bosun(cfg, "serve", "--port", str(port), check=False)
    assert done.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    done = bosun(cfg, "serve", "--bind", "no-such-host.invalid", check=False)
    assert done.exit_code == 2 and "cannot listen on" in done.stderr


@contextlib.asynccontextmanager
async def serve(cfg: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``bosun serve`` in a subprocess; yields it and its URL; SIGTERM on exit if alive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOSUN_")}
    proc = await asyncio.create_subprocess_exec(
        *BOSUN,
        "serve",
        *args,
        cwd=cfg.parent,
        env={**env, "BOSUN_CONFIG": str(cfg)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, line
        yield proc, found.group(0)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_serve_runs_the_api_and_the_dispatcher_and_stops_on_sigterm(cfg: Path) -> None:
    made = await asyncio.to_thread(bosun, cfg, "token", "create", "--admin", "--json")
    secret = json.loads(made.stdout)["secret"]
    async with serve(cfg) as (proc, url):
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:
            assert (await c.get("/readyz")).json() == {"status": "ready"}
            resp = await c.post(
                "/api/v1/tasks", json={"title": "write notes", "repo": "app", "agent": "echo"}
            )
            assert resp.status_code == 201, resp.text
            task_id = resp.json()["id"]
            # Follow it live until the stream ends (the task is final).
            kinds: list[str] = []
            statuses: list[Any] = []
            async with aconnect_sse(c, "GET", f"/api/v1/tasks/{task_id}/events") as source:
                async for sse in source.aiter_sse():
                    if sse.data:
                        kinds.append(sse.event)
                        if sse.event == "task.status":
                            statuses.append(json.loads(sse.data)["data"]["to"])
            assert statuses[-1] == "completed", kinds
            assert "run.started" in kinds and "run.finished" in kinds
            task = (await c.get(f"/api/v1/tasks/{task_id}")).json()
            assert task["status"] == "completed" and task["commits"]
            # A stream left open must not keep the server from stopping.
            events = asyncio.create_task(c.get("/api/v1/events"))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            resp = await asyncio.wait_for(events, 10)
            assert resp.status_code == 200 and f"id: {task_id}" in resp.text
    assert proc.stdout is not None
    out = (await proc.stdout.read()).decode()
    assert f"task {task_id}: running -> completed" in out
    assert "bosun token create" not in out  # a token exists: no hint


async def test_serve_without_tokens_says_how_to_create_one(cfg: Path) -> None:
    async with serve(cfg, "--bind", "127.0.0.1", "--port", "0", "-q") as (proc, url):
        assert proc.stdout is not None
        hint = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "bosun token create --admin" in hint
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            resp = await c.get("/api/v1/tasks")
        assert resp.status_code == 401
    assert proc.returncode == 0
