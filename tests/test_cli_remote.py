"""The CLI against a real bosun server on 127.0.0.1: with ``--server`` every task command
prints what it prints locally, on the same store, byte for byte.

One server (``create_app`` under uvicorn, in a subprocess) serves the whole module; the
CLI runs in-process through typer's CliRunner (fast), or as a subprocess where it has to
run alongside something else (``logs -f`` while a dispatcher works, or while the server is
killed and restarted). Tasks run when a test starts ``bosun run`` on the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bosun.client
from bosun.cli import app
from bosun.config import load_settings
from bosun.store import open_store
from tests.conftest import git

BOSUN = [sys.executable, "-m", "bosun"]

#: The server: create_app over the store of a bosun.toml, on 127.0.0.1:PORT (0: any).
SERVER = """
import asyncio, socket, sys
import uvicorn
from bosun.config import load_settings
from bosun.server.app import create_app
from bosun.store import open_store

async def main() -> None:
    settings = load_settings(sys.argv[1])
    store = await open_store(settings.database_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[2])))
    sock.listen(64)
    config = uvicorn.Config(
        create_app(settings, store), log_level="warning", lifespan="off",
        timeout_graceful_shutdown=1,
    )
    print(sock.getsockname()[1], flush=True)
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        await store.aclose()

asyncio.run(main())
"""

CONFIG = """
[repos.app]
url = "{origin}"

[agents.echo]
command = ["sh", "-c", "cat > NOTES.md"]

[agents.count]
command = ["sh", "-c", "i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo line $i; sleep 0.1; done"]

[agents.quick]
command = ["sh", "-c", "i=0; while [ $i -lt 20 ]; do i=$((i+1)); echo line $i; sleep 0.02; done"]

[agents.slow]
command = ["sleep", "60"]

[agents.fail]
command = ["sh", "-c", "echo broken >&2; exit 3"]

[hosts.local]
kind = "local"
max_concurrent = 4

[limits]
max_attempts = 1
retry_backoff = 0.01
retry_backoff_max = 0.05
heartbeat_seconds = 0.5
lease_seconds = 30
poll_interval = 0.1
cancel_grace = 1
"""


@dataclass
class Out:
    """What one CLI invocation did."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


@dataclass
class Site:
    """A bosun.toml, its store, and a bosun server over that store."""

    cfg: Path
    token: str
    agent_token: str
    port: int = 0
    server: subprocess.Popen[str] | None = None
    helpers: list[subprocess.Popen[str]] = field(default_factory=list)
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.cfg / "bosun.toml"

    def start(self) -> None:
        """Start the server (on ``port`` again after a stop, or on a free one)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.config), str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.server = proc
        assert proc.stdout is not None
        self.port = int(proc.stdout.readline())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(sig)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(15)
        if self.server is not None and self.server.stdout is not None:
            self.server.stdout.close()
        self.server = None

    def local(self, *args: str, stdin: str | None = None) -> Out:
        env = {"BOSUN_CONFIG": str(self.config), "BOSUN_SERVER": None, "BOSUN_TOKEN": None}
        return self._invoke(args, env, stdin)

    def remote(
        self, *args: str, stdin: str | None = None, auth: str | None = "admin", url: str = ""
    ) -> Out:
        """``auth``: "admin" or "agent" (the tokens made for the site), None (no token), or
        any other text, sent as the token."""
        secret = {"admin": self.token, "agent": self.agent_token}.get(auth or "", auth)
        env = {
            # No configuration on the client: everything comes from the server.
            "BOSUN_CONFIG": str(self.cfg / "absent.toml"),
            "BOSUN_SERVER": url or self.url,
            "BOSUN_TOKEN": secret,
        }
        return self._invoke(args, env, stdin)

    def _invoke(self, args: tuple[str, ...], env: dict[str, str | None], stdin: str | None) -> Out:
        result = self.runner.invoke(app, list(args), env=env, input=stdin)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Out(result.exit_code, result.stdout, result.stderr)

    def both(self, *args: str) -> tuple[Out, Out]:
        """The same command locally and through the server; asserts they agree."""
        local, remote = self.local(*args), self.remote(*args)
        assert remote == local, f"bosun {' '.join(args)}:\nlocal:  {local}\nremote: {remote}"
        return local, remote

    def popen(self, *args: str, remote: bool = True) -> subprocess.Popen[str]:
        env = {**os.environ, "BOSUN_CONFIG": str(self.config)}
        env.pop("BOSUN_SERVER", None)
        if remote:
            env.update(BOSUN_SERVER=self.url, BOSUN_TOKEN=self.token)
        proc = subprocess.Popen(
            [*BOSUN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.helpers.append(proc)
        return proc

    def dispatch(self) -> None:
        """``bosun run``: every runnable task to the end."""
        proc = self.popen("run", "-q", remote=False)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err

    def submit(self, *args: str) -> int:
        task_id = self.remote("submit", *args, "--json").json()["id"]
        assert isinstance(task_id, int)
        return task_id


async def _tokens(config: Path) -> tuple[str, str]:
    store = await open_store(load_settings(config).database_url)
    try:
        _, admin = await store.create_token("cli-admin", "admin")
        _, agent = await store.create_token(
            "puller", "agent", agent="puller", capabilities=["echo"]
        )
    finally:
        await store.aclose()
    return admin, agent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("remote")
    origin = root / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "README.md").write_text("# origin\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "initial")
    cfg = root / "cfg"
    cfg.mkdir()
    (cfg / "bosun.toml").write_text(CONFIG.format(origin=origin))
    admin, agent = asyncio.run(_tokens(cfg / "bosun.toml"))
    site = Site(cfg, admin, agent)
    site.start()
    try:
        yield site
    finally:
        site.stop()
        for proc in site.helpers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(15)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        for pidfile in root.rglob("runs/*/pid"):  # agents a failed test left running
            with contextlib.suppress(ValueError, OSError):
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def _wait_status(site: Site, task_id: int, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        task: dict[str, Any] = site.remote("show", str(task_id), "--json").json()
        if task["status"] == status:
            return task
        assert time.monotonic() < deadline, f"task {task_id} stayed {task['status']}"
        time.sleep(0.1)


# -- submit, ls, show ------------------------------------------------------------------------
def test_submit_through_the_server_stores_what_a_local_submit_stores(site: Site) -> None:
    args = [
        *("--repo", "app", "--agent", "echo", "--title", "Add a greeting"),
        *("--constraint", "keep it short", "--validation", "make test"),
        *("--label", "bug", "--label", "host:any", "--scope", "src/app"),
        *("--priority", "7", "--base-branch", "main", "--max-attempts", "2"),
        *("--mode", "http_pull", "--body-file", "-", "--json"),
    ]
    body = "## Goal\nGreet the user.\n"
    remote = site.remote("submit", *args, stdin=body).json()
    local = site.local("submit", *args, stdin=body).json()
    assert remote["execution_mode"] == "http_pull" and remote["body"] == body
    assert remote["labels"] == ["bug", "host:any"] and remote["max_attempts"] == 2
    differ = {"id", "created_at", "updated_at"}
    assert {k: v for k, v in remote.items() if k not in differ} == {
        k: v for k, v in local.items() if k not in differ
    }
    # Each one reads back the same through the other.
    assert site.local("show", str(remote["id"]), "--json").json() == {**remote, "runs": []}
    site.both("show", str(local["id"]))

    plain = site.remote("submit", "--title", "plain", "--mode", "http_pull")
    assert plain.code == 0 and plain.stdout.endswith(" queued: plain\n")


def test_ls_filters_and_pages_like_a_local_ls(site: Site) -> None:
    made = [
        site.submit("--title", f"ls {i}", "--agent", agent, "--label", "ls-test", *extra)
        for i, (agent, extra) in enumerate(
            [
                ("echo", ["--mode", "http_pull"]),
                ("count", ["--mode", "http_pull", "--repo", "app"]),
                ("echo", ["--mode", "http_pull", "--label", "other"]),
                ("fail", ["--mode", "http_pull"]),
                ("echo", ["--mode", "http_pull"]),
            ]
        )
    ]
    site.remote("cancel", str(made[4]))
    for args in (
        ["ls"],
        ["ls", "--label", "ls-test"],
        ["ls", "--label", "ls-test", "--agent", "echo"],
        ["ls", "--label", "ls-test", "--status", "cancelled"],
        ["ls", "--label", "ls-test", "--status", "cancelled", "--status", "queued"],
        ["ls", "--repo", "app", "--label", "ls-test"],
        ["ls", "--label", "ls-test", "--after", str(made[1]), "--limit", "2"],
    ):
        local, _ = site.both(*args, "--json")
        site.both(*args)  # the table too
        assert local.code == 0
    ids = [t["id"] for t in site.remote("ls", "--label", "ls-test", "--json").json()]
    assert ids == made
    paged = site.remote("ls", "--label", "ls-test", "--after", str(made[1]), "--limit", "2")
    assert paged.stdout.count("ls 2") == 1 and "ls 4" not in paged.stdout
    by_agent = site.remote("ls", "--label", "ls-test", "--agent", "echo", "--json").json()
    assert [t["id"] for t in by_agent] == [made[0], made[2], made[4]]
    # A bad status is refused before anything is asked, the same way.
    bad, _ = site.both("ls", "--status", "done")
    assert bad.code == 2 and "unknown status" in bad.stderr


def test_ls_follows_next_cursor_over_several_pages(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        site.submit("--title", f"page {i}", "--label", "pages", "--mode", "http_pull")
    monkeypatch.setattr(bosun.client, "PAGE", 2)  # 5 tasks: three requests of 2, 2 and 1
    for limit in ("5", "4", "100"):
        site.both("ls", "--label", "pages", "--limit", limit, "--json")
    assert len(site.remote("ls", "--label", "pages", "--limit", "4", "--json").json()) == 4


def test_errors_read_the_same_through_the_server(site: Site) -> None:
    for args in (
        ["show", "999999"],
        ["logs", "999999"],
        ["logs", "999999", "-f"],
        ["cancel", "999999"],
        ["retry", "999999"],
        ["submit", "--title", "x", "--agent", "nope"],
        ["submit", "--title", "x", "--repo", "nope"],
        ["submit", "--title", "x", "--mode", "sideways"],
        ["submit", "--title", "x", "--depends-on", "999999"],
        ["agents", "show", "nope"],
        ["agents", "parse", "nope", "/dev/null"],
    ):
        local, remote = site.both(*args)
        assert local.code in (2, 3) and "error:" in local.stderr and "fix:" in local.stderr
    # Schema checks of the API word some messages differently; the outcome is the same.
    local, remote = (
        site.local("submit", "--title", "x", "--priority", "5000"),
        site.remote("submit", "--title", "x", "--priority", "5000"),
    )
    assert local.code == remote.code == 2 and "priority" in remote.stderr


# -- logs --------------------------------------------------------------------------------------
def test_logs_and_logs_follow_through_the_server(site: Site) -> None:
    task_id = site.submit("--agent", "quick", "--title", "count to twenty")
    follow = site.popen("logs", str(task_id), "-f")
    follow_json = site.popen("logs", str(task_id), "-f", "--json")
    site.dispatch()
    out, err = follow.communicate(timeout=60)  # ends by itself: the task has settled
    out_json, err_json = follow_json.communicate(timeout=60)
    assert follow.returncode == follow_json.returncode == 0, err + err_json
    local = site.local("logs", str(task_id))
    assert out == local.stdout
    assert [f"line {i}" for i in range(1, 21)] == [
        line for line in out.splitlines() if line.startswith("line ")
    ]
    assert "running -> completed" in out
    assert out_json == site.local("logs", str(task_id), "--json").stdout
    site.both("logs", str(task_id))
    site.both("logs", str(task_id), "--json")
    site.both("logs", str(task_id), "-f")  # a settled task: everything, then the end
    site.both("show", str(task_id))
    shown, _ = site.both("show", str(task_id), "--json")
    assert shown.json()["runs"][0]["status"] == "succeeded"


def test_logs_follow_resumes_after_the_server_restarts(site: Site) -> None:
    task_id = site.submit("--agent", "count", "--title", "outlive the server")
    follow = site.popen("logs", str(task_id), "-f", "--json")
    dispatcher = site.popen("run", "-q", remote=False)
    assert follow.stdout is not None
    seen: list[str] = []
    while sum('"run.output"' in line for line in seen) < 3:
        line = follow.stdout.readline()
        assert line, f"logs -f ended early: {follow.communicate(timeout=10)}"
        seen.append(line)
    site.stop(signal.SIGKILL)  # mid-stream, no goodbye
    time.sleep(0.5)
    site.start()  # same port, new process
    # Not communicate(): it reads the pipe itself and would miss what readline buffered.
    rest = follow.stdout.read()  # to the end: logs -f ends once the task has settled
    assert follow.wait(60) == 0, follow.communicate()[1]
    dispatcher.communicate(timeout=60)
    received = "".join(seen) + rest
    # Every event exactly once, in order, across the reconnection.
    assert received == site.local("logs", str(task_id), "--json").stdout
    outputs = [json.loads(x)["data"]["line"] for x in received.splitlines() if "run.output" in x]
    assert outputs == [f"line {i}" for i in range(1, 31)]


# -- cancel, retry -----------------------------------------------------------------------------
def test_cancel_and_retry_through_the_server(site: Site) -> None:
    queued = site.submit("--title", "cancel me", "--mode", "http_pull")
    cancelled = site.remote("cancel", str(queued), "--json").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled.pop("cancel_pending") == []  # no agent was running
    assert site.local("show", str(queued), "--json").json() == {**cancelled, "runs": []}
    again, _ = site.both("cancel", str(queued))  # cancelled already: not allowed
    assert again.code == 2
    retried = site.remote("retry", str(queued), "--json").json()
    assert retried["status"] == "queued"
    assert site.local("show", str(queued), "--json").json() == {**retried, "runs": []}
    again, _ = site.both("retry", str(queued))  # queued: nothing to retry
    assert again.code == 2 and "cannot go from queued" in again.stderr
    plain = site.remote("cancel", str(queued))
    assert plain.stdout == f"task {queued} cancelled\n"
    assert site.remote("retry", str(queued)).stdout == f"task {queued} queued again\n"
    site.remote("cancel", str(queued))

    # A running agent is killed by a cancel through the server.
    running = site.submit("--title", "sleep", "--agent", "slow")
    dispatcher = site.popen("run", "-q", remote=False)
    _wait_status(site, running, "running")
    assert site.remote("cancel", str(running)).code == 0
    _out, err = dispatcher.communicate(timeout=60)  # nothing left to run: burst ends
    assert dispatcher.returncode == 0, err
    shown, _ = site.both("show", str(running), "--json")
    run = shown.json()["runs"][0]
    assert run["status"] == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(run["ref"]["pgid"], 0)

    # A failed task, retried through the server, runs again.
    failed = site.submit("--title", "fails", "--agent", "fail")
    site.dispatch()
    assert _wait_status(site, failed, "failed")["error_kind"] is not None
    site.both("show", str(failed))
    assert site.remote("retry", str(failed), "--json").json()["status"] == "queued"
    site.dispatch()
    shown, _ = site.both("show", str(failed), "--json")
    assert [r["attempt"] for r in shown.json()["runs"]] == [1, 2]


# -- hosts, agents -----------------------------------------------------------------------------
def test_hosts_through_the_server(site: Site) -> None:
    local, _ = site.both("hosts", "--json")
    assert local.json()[0]["name"] == "local"
    site.both("hosts")


def test_agents_through_the_server(site: Site, tmp_path: Path) -> None:
    listed, _ = site.both("agents", "list", "--json")
    assert {"echo", "count", "slow", "fail", "claude"} <= {a["name"] for a in listed.json()}
    site.both("agents", "list")
    site.both("agents", "show", "count", "--json")
    site.both("agents", "show", "claude")
    capture = tmp_path / "out.jsonl"
    capture.write_text('{"type":"result","subtype":"success","result":"done","session_id":"s"}\n')
    # "count" is an agent, not a parser: its parser comes from the server's configuration.
    parsed, _ = site.both("agents", "parse", "count", str(capture), "--exit-code", "0", "--json")
    assert parsed.json()["parser"] == "raw"
    site.both("agents", "parse", "claude", str(capture), "--exit-code", "0")


# -- choosing the server, tokens, failures -----------------------------------------------------
def test_server_and_token_options_work_like_the_variables(site: Site) -> None:
    env_way = site.remote("ls", "--json")
    flags = site.runner.invoke(
        app,
        ["--server", site.url, "--token", site.token, "ls", "--json"],
        env={"BOSUN_SERVER": None, "BOSUN_TOKEN": None, "BOSUN_CONFIG": "/nonexistent.toml"},
    )
    assert flags.exit_code == 0 and flags.stdout == env_way.stdout
    slash = site.remote("ls", "--json", url=site.url + "/")
    assert slash == env_way


def test_a_missing_or_wrong_token_says_how_to_get_one(site: Site) -> None:
    missing = site.remote("ls", auth=None)
    assert missing.code == 2 and missing.stdout == ""
    assert "needs an API token" in missing.stderr
    assert "bosun token create" in missing.stderr and "BOSUN_TOKEN" in missing.stderr
    wrong = site.remote("show", "1", auth="bsn_" + "x" * 43)
    assert wrong.code == 2 and "refused the token" in wrong.stderr
    assert "bosun token create" in wrong.stderr and "bsn_xxx" not in wrong.stderr
    agent = site.remote("ls", auth="agent")  # a pull agent's token: not for these routes
    assert agent.code == 2 and "admin token" in agent.stderr
    garbled = site.remote("ls", auth="bsn_ with spaces")
    assert garbled.code == 2 and "with spaces" not in garbled.stderr
    # The agents list is open to agent tokens too.
    assert site.remote("agents", "list", "--json", auth="agent").code == 0


def test_a_server_that_is_down_is_named_with_the_fix(site: Site) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = f"http://127.0.0.1:{port}"  # nothing listens there
    for args in (["ls"], ["submit", "--title", "lost"], ["logs", "1", "-f"], ["agents", "list"]):
        out = site.remote(*args, url=down)
        assert out.code == 1 and out.stdout == ""
        assert f"cannot connect to the bosun server at {down}" in out.stderr
        assert "bosun serve" in out.stderr and "BOSUN_SERVER" in out.stderr
    bad = site.remote("ls", url="localhost:8765")
    assert bad.code == 2 and "not an http:// or https:// URL" in bad.stderr
    secret = site.remote("ls", url="http://user:hunter2@127.0.0.1:1")
    assert secret.code == 1 and "hunter2" not in secret.stderr and "***@" in secret.stderr


class NotBosun(BaseHTTPRequestHandler):
    """A web server that is not bosun: HTML pages, a redirect, a failure."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/tasks"):
            self._answer(200, b"<html>a web page</html>", [("Content-Type", "text/html")])
        elif self.path.startswith("/api/v1/agents"):
            self._answer(302, b"", [("Location", "https://elsewhere.example/api/v1/agents")])
        else:
            self._answer(500, b"Internal Server Error", [("Content-Type", "text/plain")])

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_server_that_is_not_bosun_is_named(site: Site) -> None:
    web = ThreadingHTTPServer(("127.0.0.1", 0), NotBosun)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        for args in (["ls"], ["show", "1"], ["logs", "1"]):
            out = site.remote(*args, url=url)
            assert out.code == 1 and out.stdout == ""
            assert f"the server at {url} answered" in out.stderr
            assert "not bosun's API" in out.stderr and "BOSUN_SERVER" in out.stderr
        moved = site.remote("agents", "list", url=url)
        assert moved.code == 1 and "redirects to https://elsewhere.example\n" in moved.stderr
        failing = site.remote("hosts", "list", url=url)
        assert failing.code == 1 and "Internal Server Error" in failing.stderr
    finally:
        web.shutdown()
        web.server_close()
        thread.join(10)


@pytest.mark.parametrize("command", ["run", "serve", "demo", "init", "doctor", "token"])
def test_local_only_commands_refuse_a_server(site: Site, command: str, tmp_path: Path) -> None:
    args = {
        "init": ["--path", str(tmp_path / "bosun.toml")],
        "demo": ["--dir", str(tmp_path)],
        "token": ["create", "--admin"],
    }
    out = site.remote(command, *args.get(command, []))
    assert out.code == 2 and out.stdout == ""
    assert f"`bosun {command}`" in out.stderr and "unset BOSUN_SERVER" in out.stderr
    flag = site.runner.invoke(app, ["--server", site.url, command, *args.get(command, [])])
    assert flag.exit_code == 2 and "leave out --server" in flag.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was written
