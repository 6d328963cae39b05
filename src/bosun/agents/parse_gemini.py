"""Gemini CLI (``gemini -p``) output, ``--output-format json`` and ``stream-json``.

json: one pretty-printed document at the end, ``{session_id, response, stats}`` on stdout;
on failure stdout is empty and ``{session_id?, error{type, message, code}}`` is on stderr,
after gemini's own log lines and a stack trace (and, for fatal errors, once more prefixed
``[ERROR] ``). stream-json: one event per line, ``init{session_id}``, ``message{role,
content, delta?}``, ``tool_use{tool_name, tool_id, parameters}``, ``tool_result{tool_id,
status, output?, error?}``, ``error{severity, message}`` (not fatal) and ``result{status,
error?, stats}``; an API error's result message reads ``[API Error: DETAIL]`` followed by
gemini's advice, where DETAIL is the API's JSON error body or the error's message. One
parser reads both.

Exit codes: an API failure exits with the HTTP status mod 256 (401 -> 145, 429 -> 173,
500 -> 244), so the exit code names the status when the output does not; gemini's own fatal
errors use 41 (auth), 42 (bad input, e.g. no session to resume), 52 (config), 53 (turn
limit), 55 (untrusted folder).

Timestamps on stream events let a relative reset hint ("retry in 37s") become a time.
Checked against gemini-cli 0.61.0 (tests/fixtures/agent-output/gemini-*).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from bosun.agents.parse_common import (
    CliParser,
    JsonDocBuffer,
    as_int,
    input_summary,
    iso_time,
    obj,
    text_event,
    text_of,
    tool_event,
)
from bosun.agents.parse_errors import (
    ErrorInfo,
    classify,
    error_event,
    find_status,
)
from bosun.models import AgentEvent, ErrorKind, Outcome
from bosun.providers.base import Stream

__all__ = ["GeminiParser"]

_WRITE_TOOLS = {"write_file": "write", "replace": "update", "edit": "update", "edit_file": "update"}
_PATH_KEYS = ("file_path", "absolute_path", "path")
#: Exit code -> the HTTP status it encodes (status mod 256).
EXIT_STATUS = {145: 401, 147: 403, 152: 408, 173: 429, 244: 500, 246: 502, 247: 503, 248: 504}
#: gemini's own fatal exit codes.
EXIT_KIND = {
    41: ErrorKind.AUTH,
    42: ErrorKind.CONFIG,
    52: ErrorKind.CONFIG,
    53: ErrorKind.MAX_TURNS,
    55: ErrorKind.CONFIG,
}
_ERROR_TYPES = {
    "FatalAuthenticationError": ErrorKind.AUTH,
    "FatalTurnLimitedError": ErrorKind.MAX_TURNS,
}
_MAX_DELTA = 64 * 1024
_NO_SESSION = "the session to resume was not found (gemini looks in its home, per directory)"
#: ``[API Error: DETAIL]`` at the start of a result's message; DETAIL may hold brackets (a
#: JSON body's ``"details":[]``), so it ends at the ``]`` that ends a line or the message.
_API_ERROR = re.compile(r"\[API Error: (.*?)\](?=\n|\s*$)", re.DOTALL)


class GeminiParser(CliParser):
    """``gemini-json`` and ``gemini-stream-json``."""

    def __init__(self) -> None:
        super().__init__()
        self._docs = {"stdout": JsonDocBuffer(), "stderr": JsonDocBuffer()}
        self._delta: list[str] = []
        self._delta_size = 0
        self._pending: dict[str, tuple[str, str]] = {}  # tool_id -> (path, kind)
        # The raw error, classified again in ``finish`` when only the exit code names a status.
        self._error_text: str | None = None
        self._error_at: datetime | None = None
        self._error_kind: ErrorKind | None = None
        self._error_status: int | None = None

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """A stream event, or the end of a json document; [] inside a document."""
        docs = self._docs[stream]
        value = docs.push(line)
        if not isinstance(value, dict):
            return [] if docs.active else None
        if isinstance(value.get("type"), str):
            return self._event(value)
        return self._document(value)

    # -- stream-json -------------------------------------------------------------------
    def _event(self, event: dict[str, Any]) -> list[AgentEvent]:
        kind = event["type"]
        if kind == "init" and isinstance(event.get("session_id"), str):
            self.session_id = event["session_id"] or self.session_id
            return []
        if kind == "message":
            content = event.get("content")
            if event.get("role") != "assistant" or not isinstance(content, str):
                return []
            if event.get("delta") is True:
                self._add_delta(content)
                return []
            events = self._flush()
            if content.strip():
                self.set_text(content)
                events.append(text_event(content))
            return events
        events = self._flush()
        if kind == "tool_use" and isinstance(event.get("tool_name"), str):
            events.append(self._tool_use(event))
        elif kind == "tool_result":
            write = self._pending.pop(text_of(event.get("tool_id")), None)
            if write is not None and event.get("status") == "success":
                events.append(self.file_event(*write))
        elif kind == "result":
            events.extend(self._result(event))
        elif kind == "error" and isinstance(event.get("message"), str):
            info = classify(event["message"], at=iso_time(event.get("timestamp")))
            events.append(error_event(info, fatal=False))
        return events

    def _tool_use(self, event: dict[str, Any]) -> AgentEvent:
        name, params = event["tool_name"], event.get("parameters")
        kind = _WRITE_TOOLS.get(name)
        if kind is not None and isinstance(params, dict) and isinstance(event.get("tool_id"), str):
            path = next((params[k] for k in _PATH_KEYS if isinstance(params.get(k), str)), None)
            if path and len(self._pending) < 256:
                self._pending[event["tool_id"]] = (path, kind)
        return tool_event(name, input_summary(params))

    def _result(self, event: dict[str, Any]) -> list[AgentEvent]:
        stats = event.get("stats")
        if isinstance(stats, dict):
            self.tokens_in = as_int(stats.get("input_tokens"))
            self.tokens_out = as_int(stats.get("output_tokens"))
        if event.get("status") != "error":
            return []
        error = obj(event.get("error"))
        message = _unwrap(text_of(error.get("message")))
        return [
            self._fail(
                message or "gemini reported an error", error, iso_time(event.get("timestamp"))
            )
        ]

    def _add_delta(self, content: str) -> None:
        self._delta.append(content)
        self._delta_size += len(content)
        while self._delta_size > _MAX_DELTA and len(self._delta) > 1:
            self._delta_size -= len(self._delta.pop(0))

    def _flush(self) -> list[AgentEvent]:
        if not self._delta:
            return []
        text = "".join(self._delta)
        self._delta, self._delta_size = [], 0
        if not text.strip():
            return []
        self.set_text(text)
        return [text_event(text)]

    # -- json --------------------------------------------------------------------------
    def _document(self, doc: dict[str, Any]) -> list[AgentEvent]:
        if isinstance(doc.get("session_id"), str) and doc["session_id"]:
            self.session_id = doc["session_id"]
        events: list[AgentEvent] = []
        response = doc.get("response")
        if isinstance(response, str) and response.strip():
            self.set_text(response)
            events.append(text_event(response))
        models = obj(obj(doc.get("stats")).get("models"))
        if models:
            tokens = [obj(obj(m).get("tokens")) for m in models.values()]
            self.tokens_in = sum(as_int(t.get("prompt")) for t in tokens)
            self.tokens_out = sum(as_int(t.get("candidates")) for t in tokens)
        error = doc.get("error")
        if isinstance(error, dict):
            message = text_of(error.get("message"))
            events.append(self._fail(message or "gemini reported an error", error, None))
        return events

    def _fail(self, message: str, error: dict[str, Any], at: datetime | None) -> AgentEvent:
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else None
        kind = _ERROR_TYPES.get(text_of(error.get("type")))
        self._error_text, self._error_at, self._error_kind = message, at, kind
        self._error_status = status if status is not None else find_status(message)
        return self.fail(classify(message, status=status, kind=kind, at=at))

    # -- outcome -----------------------------------------------------------------------
    def exit_error(self, exit_code: int) -> ErrorInfo:
        """The exit code names the HTTP status (or a gemini fatal error) when nothing else did."""
        status, kind = EXIT_STATUS.get(exit_code), EXIT_KIND.get(exit_code)
        if status is None and kind is None:
            return super().exit_error(exit_code)
        detail = self._last_stderr or f"exited with code {exit_code}"
        # "Error resuming session: No previous sessions found for this project." (exit 42)
        label = _NO_SESSION if exit_code == 42 and "resuming session" in detail else None
        return classify(detail, status=status, kind=kind, label=label)

    def finish(self, exit_code: int | None) -> Outcome:
        """Flush pending streamed text; let the exit code name a status the error lacked."""
        self._flush()
        status = EXIT_STATUS.get(exit_code) if exit_code is not None else None
        if self._error_text is not None and self._error_status is None and status is not None:
            self._error_status = status
            self.error = classify(
                self._error_text, status=status, kind=self._error_kind, at=self._error_at
            )
        return super().finish(exit_code)


def _unwrap(message: str) -> str:
    """``[API Error: DETAIL] advice`` as ``DETAIL advice``: the brackets would hide a JSON
    error body from :func:`~bosun.agents.parse_errors.readable`."""
    match = _API_ERROR.match(message)
    if match is None:
        return message
    rest = message[match.end() :].strip()
    return f"{match.group(1).strip()} {rest}" if rest else match.group(1).strip()
