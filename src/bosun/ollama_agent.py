"""A text-only agent for local models served by Ollama (``POST /api/chat``), shipped with bosun.

``python -m bosun.ollama_agent [--model M] [--base-url URL] [--resume ID] [--timeout S]``
reads the prompt on stdin, sends the conversation to ``{base}/api/chat`` with ``"stream":
true``, and prints one JSON object a line on stdout (parsed by bosun's ``ollama`` parser):

- ``{"type": "text", "text": PIECE}`` for each piece of the answer as it streams;
- ``{"type": "result", "text": ANSWER, "model", "prompt_eval_count", "eval_count",
  "done_reason", "session_id"}`` once the answer is complete (exit 0);
- ``{"type": "error", "status": N or null, "message": TEXT}`` when it is not (exit 1):
  an HTTP error (with ``retry_after`` when the server sent ``Retry-After``), an error inside
  the stream, an unreachable server (``"reason": "connect"``), a timeout, a missing session.

It is NOT a coding agent: it has no tools and edits no files; the answer is its only output.

The server is ``$OLLAMA_HOST`` when set (Ollama's own variable: ``host``, ``host:port`` or a
URL; a bare host gets port 11434), else ``--base-url`` (default ``http://127.0.0.1:11434``).
``$OLLAMA_API_KEY``, when set, is sent as a bearer token (Ollama-compatible hosted servers).
Proxy variables are ignored: bosun does not pass them to agents.

Sessions: the conversation is kept in ``$HOME/.ollama-agent/sessions/<id>.json`` (``id`` a
uuid4 hex, printed as ``session_id``); ``--resume ID`` sends that conversation followed by
the new prompt and keeps the id. A failed turn leaves the session file as it was.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "main", "resolve_base_url", "sessions_dir"]

DEFAULT_BASE_URL = "http://127.0.0.1:11434"
DEFAULT_MODEL = "llama3.1"
DEFAULT_TIMEOUT = 600.0  # seconds a read may wait: a local model can take long to load
VERSION = "bosun ollama agent 1"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_MAX_ERROR_BODY = 64 << 10


class AgentError(Exception):
    """A failure reported as one ``error`` line; ``fields`` go into that line."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields


def resolve_base_url(environ: Mapping[str, str], base_url: str) -> str:
    """``$OLLAMA_HOST`` (as Ollama reads it) when set, else ``base_url``; no trailing slash."""
    host = environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return base_url.rstrip("/")
    scheme, sep, rest = host.partition("://")
    if not sep:
        scheme, rest = "http", host
        hostport, slash, path = rest.partition("/")
        if ":" not in hostport.rsplit("]", 1)[-1]:
            hostport += ":11434"  # Ollama's default port for a bare host
        rest = hostport + slash + path
    return f"{scheme}://{rest}".rstrip("/")


def sessions_dir() -> Path:
    """Where conversations are kept: ``$HOME/.ollama-agent/sessions``."""
    return Path(os.environ.get("HOME") or Path.home()) / ".ollama-agent" / "sessions"


def _emit(obj: dict[str, Any]) -> None:
    # Bytes, not text: the agent's locale may not be UTF-8 under bosun's trimmed environment.
    sys.stdout.buffer.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
    sys.stdout.buffer.flush()


def _load(session_id: str) -> list[dict[str, Any]]:
    if not _SESSION_ID.fullmatch(session_id):
        raise AgentError(f"invalid session id {session_id!r}: expected 32 hexadecimal digits")
    path = sessions_dir() / f"{session_id}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgentError(
            f"cannot resume session {session_id}: no {path.name} in {path.parent}"
        ) from None
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read session {session_id}: {exc}") from None
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        raise AgentError(f"session file {path} holds no message list")
    return messages


def _save(session_id: str, model: str, messages: list[dict[str, Any]]) -> None:
    folder = sessions_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{session_id}.json"
    tmp = path.with_suffix(".tmp")
    body = {"id": session_id, "model": model, "messages": messages}
    tmp.write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a conversation


def _http_error(exc: urllib.error.HTTPError) -> AgentError:
    raw = exc.read(_MAX_ERROR_BODY).decode("utf-8", "replace")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, dict):  # OpenAI-style bodies from compatible proxies
        message = message.get("message")
    text = message if isinstance(message, str) and message else (raw.strip() or exc.reason)
    fields: dict[str, Any] = {"status": exc.code}
    if retry_after := exc.headers.get("retry-after"):
        fields["retry_after"] = retry_after
    return AgentError(str(text), **fields)


def _chat(url: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST ``payload``, print the streamed pieces; the result fields (answer, counters)."""
    headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
    if key := os.environ.get("OLLAMA_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    if not url.startswith(("http://", "https://")):
        raise AgentError(f"the server URL {url!r} is not http:// or https://")
    request = urllib.request.Request(  # noqa: S310 - the scheme was checked just above
        url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    pieces: list[str] = []
    try:
        with opener.open(request, timeout=timeout) as response:
            for raw in response:
                if not raw.strip():
                    continue
                try:
                    chunk = json.loads(raw)
                except ValueError:
                    text = raw[:200].decode("utf-8", "replace")
                    raise AgentError(f"the server sent a line that is not JSON: {text!r}") from None
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:  # Ollama reports failures mid-stream this way
                    raise AgentError(str(chunk["error"]), status=None)
                message = chunk.get("message")
                piece = message.get("content") if isinstance(message, dict) else None
                if isinstance(piece, str) and piece:
                    pieces.append(piece)
                    _emit({"type": "text", "text": piece})
                if chunk.get("done"):
                    return {
                        "text": "".join(pieces),
                        "model": chunk.get("model", payload["model"]),
                        "prompt_eval_count": chunk.get("prompt_eval_count", 0),
                        "eval_count": chunk.get("eval_count", 0),
                        "done_reason": chunk.get("done_reason"),
                    }
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise AgentError(f"the request to {url} timed out after {timeout:g}s") from None
        why = (getattr(reason, "strerror", None) or str(reason)).lower()
        raise AgentError(
            f"{why} at {url} (is `ollama serve` running there? point the agent elsewhere "
            "with OLLAMA_HOST or --base-url)",
            reason="connect",
        ) from None
    except TimeoutError:
        raise AgentError(f"the answer from {url} stalled for {timeout:g}s (timed out)") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise AgentError(f"the connection to {url} broke: {exc!r}", reason="connect") from None
    raise AgentError(f"the stream from {url} ended before the answer was complete")


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bosun.ollama_agent",
        description="Send the prompt on stdin to an Ollama model; print JSON lines.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default %(default)s)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="used when no OLLAMA_HOST")
    parser.add_argument("--resume", metavar="ID", help="continue the session with this id")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="read timeout, s")
    parser.add_argument("--version", action="version", version=VERSION)
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be a positive number of seconds")
    return args


def _fail(exc: AgentError) -> NoReturn:
    _emit({"type": "error", "status": None, **exc.fields, "message": str(exc)})
    print(f"ollama agent: {exc}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one turn of the conversation; 0 on an answer, 1 on an error line, 2 on bad usage."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    try:
        messages = _load(args.resume) if args.resume else []
        session_id = args.resume or uuid.uuid4().hex
        messages.append({"role": "user", "content": prompt})
        url = resolve_base_url(os.environ, args.base_url) + "/api/chat"
        payload = {"model": args.model, "messages": messages, "stream": True}
        result = _chat(url, payload, args.timeout)
        messages.append({"role": "assistant", "content": result["text"]})
        try:
            _save(session_id, args.model, messages)
        except OSError as exc:
            raise AgentError(f"cannot save session {session_id}: {exc}") from None
    except AgentError as exc:
        _fail(exc)
    _emit({"type": "result", **result, "session_id": session_id})
    return 0


if __name__ == "__main__":
    sys.exit(main())
