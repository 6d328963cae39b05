"""Output parsers: an agent's output lines in, :class:`AgentEvent` s and an :class:`Outcome` out.

Parsers are pure (no I/O, no clock): the dispatcher feeds every line as it arrives and calls
``finish`` with the exit code. Feeding the same lines again rebuilds the same state, which is
how a re-attached run restores its parser. Each parser keeps only a bounded tail of the
output, so a chatty agent cannot grow its memory.

Built-in parsers:

``raw``
    any program: every line is an ``output`` event; success is exit code 0; the summary is
    the last few non-empty stdout lines.
``jsonl``
    programs that print one JSON object per line: like ``raw``, and each object is also in
    the event's ``data["json"]``; ``session_id`` / ``thread_id`` keys give the session id and
    a string ``result`` key gives the summary.

The real agent CLIs have their own parsers (``parse_claude``, ``parse_codex``,
``parse_gemini``, ``parse_opencode``, ``parse_aider``, ``parse_ollama``), registered here
under the names AgentSpecs use: ``claude-json``, ``claude-stream-json``, ``qwen-json``,
``qwen-stream-json``, ``codex-jsonl``, ``gemini-json``, ``gemini-stream-json``,
``opencode-jsonl``, ``aider``, ``ollama``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from bosun.agents.parse_aider import AiderParser
from bosun.agents.parse_claude import ClaudeParser
from bosun.agents.parse_codex import CodexParser
from bosun.agents.parse_gemini import GeminiParser
from bosun.agents.parse_ollama import OllamaParser
from bosun.agents.parse_opencode import OpencodeParser
from bosun.errors import ConfigError
from bosun.models import AgentEvent, ErrorKind, Outcome
from bosun.providers.base import Stream

__all__ = [
    "PARSERS",
    "JsonlParser",
    "Parser",
    "RawParser",
    "get_parser",
    "parse_capture",
    "parse_lines",
    "split_output",
]

SUMMARY_LINES = 5
SUMMARY_CHARS = 500
ERROR_CHARS = 300


class Parser(Protocol):
    """Turns one run's output into events while it runs and an outcome when it ends."""

    def feed(self, stream: Stream, line: str) -> list[AgentEvent]:
        """Events found in one output line (without its newline)."""
        ...

    def finish(self, exit_code: int | None) -> Outcome:
        """The outcome of the run; ``exit_code`` None means the process vanished."""
        ...


def _clip_tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


class RawParser:
    """Plain text output: no structure assumed, the exit code decides."""

    def __init__(self) -> None:
        self._tail: deque[str] = deque(maxlen=SUMMARY_LINES)
        self._last_stderr = ""

    def feed(self, stream: Stream, line: str) -> list[AgentEvent]:
        """One ``output`` event per line; stderr lines carry ``data={"stream": "stderr"}``."""
        if stream == "stderr":
            if line.strip():
                self._last_stderr = line.strip()
            return [AgentEvent("output", text=line, data={"stream": "stderr"})]
        if line.strip():
            self._tail.append(line.rstrip())
        return [AgentEvent("output", text=line)]

    def summary(self) -> str:
        """The last non-empty stdout lines, clipped to ``SUMMARY_CHARS``."""
        return _clip_tail("\n".join(self._tail), SUMMARY_CHARS)

    def finish(self, exit_code: int | None) -> Outcome:
        """Success iff the exit code is 0; a missing exit code is a lost run."""
        summary = self.summary()
        if exit_code is None:
            return Outcome(
                success=False,
                summary=summary,
                error_kind=ErrorKind.LOST,
                error="the agent process ended without leaving an exit code",
            )
        if exit_code == 0:
            return Outcome(success=True, summary=summary)
        error = (
            f"killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
        )
        if self._last_stderr:
            error += ": " + _clip_tail(self._last_stderr, ERROR_CHARS)
        return Outcome(success=False, summary=summary, error_kind=ErrorKind.AGENT, error=error)


class JsonlParser(RawParser):
    """One JSON object per stdout line; other lines are treated as raw output."""

    def __init__(self) -> None:
        super().__init__()
        self._session_id: str | None = None
        self._result: str | None = None

    def feed(self, stream: Stream, line: str) -> list[AgentEvent]:
        """Like ``raw``; JSON objects also go into ``data["json"]``."""
        events = super().feed(stream, line)
        if stream != "stdout":
            return events
        obj = _json_object(line)
        if obj is None:
            return events
        for key in ("session_id", "sessionID", "thread_id"):
            if isinstance(obj.get(key), str) and obj[key]:
                self._session_id = obj[key]
        if isinstance(obj.get("result"), str):
            self._result = obj["result"]
        return [AgentEvent("output", text=line, data={"json": obj})]

    def finish(self, exit_code: int | None) -> Outcome:
        """The raw outcome with the session id and the last ``result`` as summary."""
        outcome = RawParser.finish(self, exit_code)
        summary = outcome.summary if self._result is None else self._result
        return Outcome(
            success=outcome.success,
            summary=_clip_tail(summary, SUMMARY_CHARS),
            session_id=self._session_id,
            error_kind=outcome.error_kind,
            error=outcome.error,
        )


def _json_object(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


#: Parser factories by the name an AgentSpec's ``parser`` field uses.
PARSERS: Mapping[str, Callable[[], Parser]] = MappingProxyType(
    {
        "raw": RawParser,
        "jsonl": JsonlParser,
        # claude and qwen print the same message shapes; json and stream-json share a parser.
        "claude-json": ClaudeParser,
        "claude-stream-json": ClaudeParser,
        "qwen-json": ClaudeParser,
        "qwen-stream-json": ClaudeParser,
        "codex-jsonl": CodexParser,
        "gemini-json": GeminiParser,
        "gemini-stream-json": GeminiParser,
        "opencode-jsonl": OpencodeParser,
        "aider": AiderParser,
        "ollama": OllamaParser,
    }
)


def get_parser(name: str) -> Parser:
    """A fresh parser for one run; an unknown name is a :class:`ConfigError`."""
    try:
        factory = PARSERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown parser {name!r}", f"use one of: {', '.join(sorted(PARSERS))}"
        ) from None
    return factory()


def parse_lines(
    name: str, lines: Iterable[tuple[Stream, str]], exit_code: int | None
) -> tuple[list[AgentEvent], Outcome]:
    """Run parser ``name`` over a whole output at once (tests, re-parsing stored runs)."""
    parser = get_parser(name)
    events: list[AgentEvent] = []
    for stream, line in lines:
        events.extend(parser.feed(stream, line))
    return events, parser.finish(exit_code)


def split_output(text: str) -> list[str]:
    """``text`` as the lines a provider hands over: split at each newline, a trailing
    carriage return dropped, and no empty last line after a final newline."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_capture(
    parser_name: str, stdout_text: str, stderr_text: str, exit_code: int | None
) -> tuple[list[AgentEvent], Outcome]:
    """Run parser ``parser_name`` over a captured run (``bosun agents parse``).

    A capture has lost how stdout and stderr lines interleaved, so all of stdout is fed
    first, then all of stderr. An unknown name is a :class:`ConfigError`.
    """
    lines: list[tuple[Stream, str]] = [("stdout", line) for line in split_output(stdout_text)]
    lines.extend(("stderr", line) for line in split_output(stderr_text))
    return parse_lines(parser_name, lines, exit_code)
