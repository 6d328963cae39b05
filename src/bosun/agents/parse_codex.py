"""OpenAI Codex (``codex exec --json``) output: one thread event per stdout line.

``thread.started{thread_id}`` gives the session id (``codex exec resume THREAD_ID``);
``item.started`` / ``item.completed`` carry ``agent_message``, ``command_execution``,
``file_change{changes[{path, kind}]}``, ``mcp_tool_call`` and ``error`` items;
``turn.completed{usage}`` ends a turn that worked, ``turn.failed{error}`` one that did not,
and a top-level ``error`` is fatal unless it is a ``Reconnecting...`` notice.

Tokens: ``usage`` is the thread's running total (``exec resume`` starts from the earlier
runs' total), so after a resume it counts the earlier runs too. ``input_tokens`` already
includes the cached ones. Codex reports no cost.

Permission: the default read-only sandbox rejects a patch with a line on stderr only and
exits 0; such a line (or a ``declined`` command) with no file written is a permission failure.
"""

from __future__ import annotations

import re
from typing import Any

from bosun.agents.parse_common import (
    CliParser,
    as_int,
    input_summary,
    json_value,
    text_event,
    text_of,
    tool_event,
)
from bosun.agents.parse_errors import (
    ErrorInfo,
    classify,
    clip,
    error_event,
    one_line,
)
from bosun.models import AgentEvent, ErrorKind
from bosun.providers.base import Stream

__all__ = ["CodexParser"]

_SANDBOX = re.compile(
    r"(?i)rejected by user approval|read-only sandbox|sandbox (?:denied|rejected|blocked)"
    r"|patch rejected|writing (?:is )?(?:blocked|not allowed)"
)
_TRANSIENT = re.compile(r"(?i)^\s*reconnecting\b")
# tracing's prefix on codex's stderr lines: "2026-03-10T12:00:02.418Z ERROR codex_core::codex: "
_LOG_PREFIX = re.compile(r"^\S*\d\S*\s+(?:ERROR|WARN|INFO|DEBUG|TRACE)\s+[\w:]+:\s*")


class CodexParser(CliParser):
    """``codex-jsonl``."""

    def __init__(self) -> None:
        super().__init__()
        self._stream_error = False  # self.error came from a top-level ``error`` event

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """A thread event on stdout; a sandbox rejection on stderr."""
        if stream == "stderr":
            if not _SANDBOX.search(line):
                return None
            self.denial = clip(_LOG_PREFIX.sub("", one_line(line)), 200)
            info = ErrorInfo(ErrorKind.PERMISSION, f"the sandbox refused a change: {self.denial}")
            return [error_event(info, fatal=False)]
        event = json_value(line)
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.session_id = event["thread_id"] or self.session_id
        elif kind == "turn.started":
            self.turns = (self.turns or 0) + 1
        elif kind in ("item.started", "item.completed") and isinstance(event.get("item"), dict):
            return self._item(kind == "item.completed", event["item"])
        elif kind == "turn.completed":
            self._turn_completed(event.get("usage"))
        elif kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            info = classify(message if isinstance(message, str) else "turn failed")
            reported = self._stream_error and self.error == info
            self.error, self._stream_error = info, False
            # codex prints the same message as a stream ``error`` first: announce it once.
            return [] if reported else [error_event(info)]
        elif kind == "error":
            message = text_of(event.get("message"))
            if _TRANSIENT.search(message):
                return []
            self._stream_error = True
            return [self.fail(classify(message or "stream error"))]
        return []

    def _turn_completed(self, usage: Any) -> None:
        if self._stream_error:  # the turn survived the error after all
            self.error, self._stream_error = None, False
        if isinstance(usage, dict):
            # A running total for the thread: the latest value replaces the earlier ones.
            self.tokens_in = as_int(usage.get("input_tokens"))
            self.tokens_out = as_int(usage.get("output_tokens"))

    def _item(self, completed: bool, item: dict[str, Any]) -> list[AgentEvent]:
        kind = item.get("type")
        if not completed:
            if kind == "command_execution":
                return [tool_event("shell", input_summary(item.get("command")))]
            if kind == "mcp_tool_call":
                name = f"{item.get('server') or 'mcp'}.{item.get('tool') or '?'}"
                return [tool_event(name, input_summary(item.get("arguments")))]
            return []
        if kind == "agent_message" and isinstance(item.get("text"), str):
            self.set_text(item["text"])
            return [text_event(item["text"])]
        if kind == "file_change":
            return self._file_change(item)
        if kind == "command_execution" and item.get("status") == "declined":
            self.denial = f"shell {input_summary(item.get('command'))} was declined"
            info = ErrorInfo(ErrorKind.PERMISSION, f"permission denied: {self.denial}")
            return [error_event(info, fatal=False)]
        if kind == "error" and isinstance(item.get("message"), str):
            return [error_event(classify(item["message"]), fatal=False)]
        return []

    def _file_change(self, item: dict[str, Any]) -> list[AgentEvent]:
        changes = item.get("changes")
        paths = [
            (c["path"], text_of(c.get("kind")) or "update")
            for c in (changes if isinstance(changes, list) else ())
            if isinstance(c, dict) and isinstance(c.get("path"), str)
        ]
        if item.get("status") == "failed":
            names = ", ".join(path for path, _ in paths) or "unknown files"
            info = ErrorInfo(ErrorKind.AGENT, f"a patch failed to apply to {clip(names, 200)}")
            return [error_event(info, fatal=False)]
        return [self.file_event(path, kind) for path, kind in paths]
