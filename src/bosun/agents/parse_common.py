"""What the agent-CLI parsers share: JSON line reading, small value helpers, the outcome rules.

:class:`CliParser` is the base of every structured parser. A subclass reads one line in
``parse_line`` and records what it learns on ``self`` (session id, final text, turns, tokens,
cost, the decisive error, files written, a permission denial); ``finish`` turns that into an
:class:`Outcome` by one rule for all of them:

1. an error the output reported (an API error, max turns, ...) decides, whatever the exit
   code says (aider and qwen exit 0 on API errors, claude prints ``subtype: success``);
2. else a process that vanished is ``lost``;
3. else permission denials with no file written are a ``permission`` failure;
4. else a non-zero exit code fails (the last stderr line says why);
5. else the run succeeded, whether or not the CLI printed its final result.

Token counts: ``tokens_in`` counts every prompt token the model read, cached or not;
``tokens_out`` every token it wrote. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import json
from collections import deque
from datetime import UTC, datetime
from typing import Any

from bosun.agents.parse_errors import ERROR_CHARS, ErrorInfo, classify, clip, error_event, one_line
from bosun.models import AgentEvent, ErrorKind, Outcome
from bosun.providers.base import Stream

__all__ = [
    "CliParser",
    "JsonDocBuffer",
    "as_float",
    "as_int",
    "epoch_ms",
    "input_summary",
    "iso_time",
    "json_value",
    "obj",
    "text_event",
    "text_of",
    "tool_event",
]

SUMMARY_LINES = 5
SUMMARY_CHARS = 500
TEXT_EVENT_CHARS = 4000  # an event carries at most this much text; the raw output has it all
DOC_CHARS = 8 << 20  # a multi-line JSON document longer than this is given up on

_INPUT_KEYS = ("file_path", "filePath", "path", "command", "pattern", "url", "query", "prompt")


def _clip_tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (fields of untrusted JSON)."""
    return value if isinstance(value, dict) else {}


def text_of(value: Any) -> str:
    """``value`` if it is a string, else ""."""
    return value if isinstance(value, str) else ""


_raw_decode = json.JSONDecoder().raw_decode


def json_value(line: str) -> Any:
    """The JSON object or array on ``line``, or None (cheap for lines that are not JSON)."""
    first = line[:1]
    if first != "{" and first != "[":
        line = line.strip()
        if line[:1] not in ("{", "["):
            return None
    try:
        # raw_decode skips json.loads' wrappers: this runs once per line of a long stream.
        value, end = _raw_decode(line)
    except ValueError:
        return None
    return value if end == len(line) or not line[end:].strip() else None


class JsonDocBuffer:
    """Gathers a pretty-printed JSON document (gemini's ``JSON.stringify(x, null, 2)``).

    A document starts at a line that opens with ``{`` / ``[`` at column 0 and is tried when a
    line closes it at column 0, so each document is decoded once, not once per line.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._size = 0

    @property
    def active(self) -> bool:
        """True while a document is open (its lines are JSON, not text)."""
        return bool(self._lines)

    def push(self, line: str) -> Any:
        """The document ``line`` completes, else None."""
        if line[:1] in ("{", "["):
            value = json_value(line)
            if value is not None:
                self._lines, self._size = [], 0
                return value
            self._lines, self._size = [line], len(line)
            return None
        if not self._lines:
            return None
        if line[:1] not in (" ", "\t", "}", "]"):
            # Inside a pretty-printed document every line is indented or closes it.
            self._lines, self._size = [], 0
            return None
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size > DOC_CHARS:
            self._lines, self._size = [], 0
            return None
        if line.rstrip() in ("}", "]"):
            try:
                value = json.loads("\n".join(self._lines))
            except ValueError:
                return None
            self._lines, self._size = [], 0
            return value
        return None


def as_int(value: Any) -> int:
    """``value`` if it is a positive int (not a bool), else 0."""
    return value if type(value) is int and value > 0 else 0


def as_float(value: Any) -> float | None:
    """``value`` as a float if it is a finite non-negative number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < float("inf") else None


def epoch_ms(value: Any) -> datetime | None:
    """A millisecond epoch (opencode's ``timestamp``) as an aware datetime, else None."""
    ms = as_float(value)
    if ms is None or ms > 1e15:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso_time(value: Any) -> datetime | None:
    """An ISO-8601 string (gemini's ``timestamp``) as an aware datetime, else None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def input_summary(value: Any) -> str:
    """A short description of a tool call's input: its path or command, else compact JSON."""
    if isinstance(value, dict):
        for key in _INPUT_KEYS:
            if isinstance(value.get(key), str) and value[key]:
                return clip(one_line(value[key]), 200)
    if isinstance(value, str):
        return clip(one_line(value), 200)
    try:
        return clip(json.dumps(value, ensure_ascii=False, default=str), 200)
    except ValueError:
        return ""


class CliParser:
    """Bookkeeping and outcome rules shared by the agent-CLI parsers (see the module doc)."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.final_text = ""
        self.turns: int | None = None
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost: float | None = None
        self.error: ErrorInfo | None = None
        self.files_written = 0
        self.denial: str | None = None  # why a tool call was refused, if one was
        self._tail: deque[str] = deque(maxlen=SUMMARY_LINES)
        self._last_stderr = ""

    # -- for subclasses -------------------------------------------------------------------
    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """Events for a line this parser understands ([] if nothing to report), else None."""
        return None

    def exit_error(self, exit_code: int) -> ErrorInfo:
        """Why a non-zero exit failed when the output said nothing better."""
        if exit_code < 0:
            return ErrorInfo(ErrorKind.AGENT, f"killed by signal {-exit_code}")
        text = f"exited with code {exit_code}"
        if not self._last_stderr:
            return ErrorInfo(ErrorKind.AGENT, text)
        info = classify(self._last_stderr)
        if info.kind is ErrorKind.AGENT:  # nothing recognised: the line speaks for itself
            return ErrorInfo(info.kind, f"{text}: {clip(one_line(self._last_stderr), ERROR_CHARS)}")
        return ErrorInfo(info.kind, f"{text}: {info.message}", info.resume_at)

    def fail(self, info: ErrorInfo) -> AgentEvent:
        """Record ``info`` as the run's decisive error; the ``error`` event announcing it."""
        self.error = info
        return error_event(info)

    def set_text(self, text: str) -> None:
        """Remember the latest assistant text (bounded) as the candidate summary."""
        self.final_text = _clip_tail(text, SUMMARY_CHARS)

    def add_cost(self, value: Any) -> None:
        """Add a reported cost in USD (ignored when not a number)."""
        cost = as_float(value)
        if cost is not None:
            # Rounded so that summing many steps does not print 0.0020000000000000005.
            self.cost = round((self.cost or 0.0) + cost, 10)

    def file_event(self, path: str, kind: str) -> AgentEvent:
        """A ``file_change`` event, counted towards "the agent wrote something"."""
        self.files_written += 1
        return AgentEvent("file_change", text=f"{kind} {path}", data={"path": path, "kind": kind})

    # -- the Parser protocol --------------------------------------------------------------
    def feed(self, stream: Stream, line: str) -> list[AgentEvent]:
        """The events in one line; lines the CLI format does not cover are ``output``."""
        events = self.parse_line(stream, line)
        if stream == "stderr":
            if line.strip():
                self._last_stderr = line.strip()
            if not events:
                return [AgentEvent("output", text=line, data={"stream": "stderr"})]
            return events
        if events is None:
            if line.strip():
                self._tail.append(line.rstrip())
            return [AgentEvent("output", text=line)]
        return events or [AgentEvent("output", text=line)]

    def finish(self, exit_code: int | None) -> Outcome:
        """The outcome by the rules in the module docstring."""
        summary = self.final_text or _clip_tail("\n".join(self._tail), SUMMARY_CHARS)
        info = self.error
        if info is None and exit_code is None:
            info = ErrorInfo(ErrorKind.LOST, "the agent process ended without leaving an exit code")
        if info is None and self.denial is not None and self.files_written == 0:
            info = ErrorInfo(
                ErrorKind.PERMISSION, f"permission denied: {self.denial}; no file was written"
            )
        if info is None and exit_code:
            info = self.exit_error(exit_code)
        common: dict[str, Any] = {
            "summary": summary,
            "session_id": self.session_id,
            "turns": self.turns,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": self.cost,
        }
        if info is None:
            return Outcome(success=True, **common)
        return Outcome(
            success=False,
            error_kind=info.kind,
            error=clip(info.message, 2 * ERROR_CHARS),
            resume_at=info.resume_at,
            **common,
        )


def text_event(text: str) -> AgentEvent:
    """A ``text`` event (assistant text, clipped to ``TEXT_EVENT_CHARS``)."""
    return AgentEvent("text", text=clip(text, TEXT_EVENT_CHARS))


def tool_event(name: str, summary: str) -> AgentEvent:
    """A ``tool_use`` event: the tool's name and a short summary of its input."""
    text = f"{name}: {summary}" if summary else name
    return AgentEvent("tool_use", text=text, data={"name": name, "input": summary})
