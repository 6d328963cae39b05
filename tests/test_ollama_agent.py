"""bosun's Ollama agent program on its own: real subprocesses against servers on 127.0.0.1
(the fake model server's ``/api/chat``, and a tiny raw server for broken streams)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bosun.agents.parsers import parse_lines
from bosun.models import ErrorKind
from bosun.ollama_agent import resolve_base_url
from tests.fakes import FakeModelServer, Hang, Text, auth_error, rate_limited, server_error
from tests.fakes.turns import REDACTED


@pytest.fixture(scope="module")
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeModelServer) -> FakeModelServer:
    server.reset()
    return server


def agent(
    home: Path, base_url: str, *args: str, prompt: str = "Hi", env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], str]:
    """Run the agent; its exit code, stdout objects and stderr."""
    done = subprocess.run(  # the timeout kills the child: no process outlives a test
        [sys.executable, "-m", "bosun.ollama_agent", "--base-url", base_url, *args],
        input=prompt.encode(),
        capture_output=True,
        env={"PATH": os.environ["PATH"], "HOME": str(home), **(env or {})},
        timeout=30,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return done.returncode, lines, done.stderr.decode()


def session_file(home: Path, session_id: str) -> dict[str, Any]:
    path = home / ".ollama-agent" / "sessions" / f"{session_id}.json"
    value: dict[str, Any] = json.loads(path.read_text())
    return value


def test_streams_the_answer_and_keeps_the_session(tmp_path: Path, fake: FakeModelServer) -> None:
    fake.push(Text("Hello there.", chunk_size=5))
    code, lines, _ = agent(tmp_path, fake.url, "--model", "m1", prompt="Say hi")
    assert code == 0
    assert [x["text"] for x in lines if x["type"] == "text"] == ["Hello", " ther", "e."]
    result = lines[-1]
    assert result["type"] == "result" and result["text"] == "Hello there."
    assert (result["model"], result["prompt_eval_count"], result["eval_count"]) == ("m1", 12, 5)
    assert fake.model_requests[0].path == "/api/chat"
    assert fake.model_requests[0].body == {
        "model": "m1",
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": True,
    }
    saved = session_file(tmp_path, result["session_id"])
    assert saved["messages"] == [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hello there."},
    ]


def test_resume_sends_the_conversation_and_a_failed_turn_leaves_it(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    fake.push(Text("42."), server_error(500), Text("It was 42."))
    _, first, _ = agent(tmp_path, fake.url, prompt="Pick a number")
    session = first[-1]["session_id"]
    code, failed, _ = agent(tmp_path, fake.url, "--resume", session, prompt="Lost turn")
    assert code == 1 and failed[-1]["status"] == 500
    code, lines, _ = agent(tmp_path, fake.url, "--resume", session, prompt="Which?")
    assert code == 0 and lines[-1]["session_id"] == session
    sent = fake.model_requests[-1].body["messages"]
    assert [m["content"] for m in sent] == ["Pick a number", "42.", "Which?"]
    assert len(session_file(tmp_path, session)["messages"]) == 4


@pytest.mark.parametrize("session", ["0123456789abcdef0123456789abcdef", "../../etc/passwd"])
def test_an_unknown_or_malformed_session_is_an_error(
    tmp_path: Path, fake: FakeModelServer, session: str
) -> None:
    code, lines, err = agent(tmp_path, fake.url, "--resume", session)
    assert code == 1 and lines[-1]["type"] == "error" and "session" in err
    assert fake.model_requests == []


@pytest.mark.parametrize(
    ("turn", "status", "kind"),
    [
        (auth_error(), 401, ErrorKind.AUTH),
        (rate_limited(30), 429, ErrorKind.USAGE_LIMIT),
        (server_error(503), 503, ErrorKind.SERVER),
    ],
)
def test_http_errors(
    tmp_path: Path, fake: FakeModelServer, turn: Any, status: int, kind: ErrorKind
) -> None:
    fake.push(turn)
    code, lines, err = agent(tmp_path, fake.url)
    assert (code, lines[-1]["type"], lines[-1]["status"]) == (1, "error", status)
    assert lines[-1]["message"] in err
    _, outcome = parse_lines("ollama", [("stdout", json.dumps(x)) for x in lines], code)
    assert outcome.error_kind is kind
    if status == 429:
        assert lines[-1]["retry_after"] == "30"


def test_ollama_host_and_api_key_come_from_the_environment(
    tmp_path: Path, fake: FakeModelServer
) -> None:
    env = {"OLLAMA_HOST": fake.url.removeprefix("http://"), "OLLAMA_API_KEY": "k"}
    code, lines, _ = agent(tmp_path, "http://127.0.0.1:9", env=env)
    assert code == 0, lines
    assert fake.model_requests[0].headers["authorization"] == REDACTED


def test_connection_refused_and_read_timeout(tmp_path: Path, fake: FakeModelServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, lines, _ = agent(tmp_path, closed)
    assert (code, lines[-1]["reason"]) == (1, "connect")
    assert "connection refused" in lines[-1]["message"]
    fake.push(Hang(partial_text="Hmm"))
    code, lines, _ = agent(tmp_path, fake.url, "--timeout", "0.5")
    assert code == 1 and lines[0] == {"type": "text", "text": "Hmm"}
    assert "timed out" in lines[-1]["message"]


class _Raw(BaseHTTPRequestHandler):
    """Answers every POST with the NDJSON lines in ``server.lines`` (status 200)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.end_headers()
        for line in self.server.lines:  # type: ignore[attr-defined]
            self.wfile.write(json.dumps(line).encode() + b"\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([{"message": {"content": "par"}}, {"error": "model runner crashed"}], "runner crashed"),
        ([{"message": {"content": "par"}, "done": False}], "ended before the answer"),
    ],
)
def test_broken_streams_are_errors(
    tmp_path: Path, lines: list[dict[str, Any]], expected: str
) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Raw)
    httpd.lines = lines  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        code, out, _ = agent(tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 1 and out[0] == {"type": "text", "text": "par"}
    assert out[-1]["type"] == "error" and expected in out[-1]["message"]


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("", "http://base:1"),
        ("example:8080", "http://example:8080"),
        ("example", "http://example:11434"),
        ("https://example/prefix/", "https://example/prefix"),
        ("[::1]", "http://[::1]:11434"),
    ],
)
def test_resolve_base_url(host: str, url: str) -> None:
    assert resolve_base_url({"OLLAMA_HOST": host}, "http://base:1/") == url


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bosun.ollama_agent", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.startswith("bosun ollama agent")


def test_parser_reads_a_retry_after_date() -> None:
    date = "Tue, 10 Mar 2026 12:00:30 GMT"
    line = {"type": "error", "status": 429, "message": "slow down", "retry_after": date}
    _, outcome = parse_lines("ollama", [("stdout", json.dumps(line))], 1)
    assert outcome.error_kind is ErrorKind.USAGE_LIMIT
    assert outcome.resume_at is not None and outcome.resume_at.isoformat().startswith(
        "2026-03-10T12:00:30"
    )
