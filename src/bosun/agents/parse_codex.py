"""OpenAI Codex (``codex exec --json``) output: one thread event per stdout line.

``thread.started{thread_id}`` gives the session id (``codex exec resume THREAD_ID``);
``item.started`` / ``item.completed`` carry ``agent_message``, ``command_execution``,
``file_change{changes[{path, kind}]}`` (absolute paths), ``mcp_tool_call`` and ``error``
items (warnings, e.g. an unknown model's missing metadata); ``turn.completed{usage}`` ends
a turn that worked, ``turn.failed{error}`` one that did not (exit 1), after a top-level
``error`` with the same message; an ``error`` is fatal unless it is a ``Reconnecting...``
notice. Checked against codex-cli 0.169.0 (tests/fixtures/agent-output/codex-jsonl).

Errors name the HTTP status (``unexpected status 401 Unauthorized: ...``, ``exceeded retry
limit, last status: 429 Too Many Requests``), except two: an HTTP 500 reads "We're currently
experiencing high demand, ..." and a ``usage_limit_reached`` 429 reads "You've hit your usage
limit. ... try again at 3:00 PM." (a local wall-clock time; the dispatcher resolves it).
Codex drops ``Retry-After``, so a plain 429 carries no reset time.

Tokens: ``usage`` is the thread's running total (``exec resume`` starts from the earlier
runs' total), so after a resume it counts the earlier runs too. ``input_tokens`` already
includes the cached ones. Codex reports no cost.

Permission: the read-only sandbox rejects a patch with a tracing line on stderr only
(``... ERROR codex_core::tools::router: error=patch rejected: ...``) and exits 0; such a
line (or a ``declined`` command) with no file written is a permission failure. A resume
whose session files are missing ends with exit 1 and "no rollout found for thread id" on
stderr.
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
# tracing's prefix on codex's stderr lines, and its "error=" field name:
# "2026-11-21T16:04:04.979420Z ERROR codex_core::tools::router: error=patch rejected: ..."
_LOG_PREFIX = re.compile(r"^\S*\d\S*\s+(?:ERROR|WARN|INFO|DEBUG|TRACE)\s+[\w:]+:\s*(?:error=)?")
# codex's text for an HTTP 500 (CodexErr::InternalServerError); it names no status.
_HIGH_DEMAND = re.compile(r"(?i)experiencing high demand")
_NO_ROLLOUT = re.compile(r"no rollout found for thread id (\S+)")


class CodexParser(CliParser):
    """``codex-jsonl``."""

    def __init__(self) -> None:
        super().__init__()
        self._stream_error = False  # self.error came from a top-level ``error`` event

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """A thread event on stdout; a sandbox rejection or a failed resume on stderr."""
        if stream == "stderr":
            if (missing := _NO_ROLLOUT.search(line)) is not None:
                return [self.fail(_no_rollout(missing.group(1)))]
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
            info = _classify(message if isinstance(message, str) else "turn failed")
            reported = self._stream_error and self.error == info
            self.error, self._stream_error = info, False
            # codex prints the same message as a stream ``error`` first: announce it once.
            return [] if reported else [error_event(info)]
        elif kind == "error":
            message = text_of(event.get("message"))
            if _TRANSIENT.search(message):
                return []
            self._stream_error = True
            return [self.fail(_classify(message or "stream error"))]
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
            if kind == "file_change":  # the apply_patch tool; the result comes as completed
                paths = [str(c["path"]) for c in _changes(item)]
                return [tool_event("apply_patch", clip(", ".join(paths), 200))]
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
        paths = [(c["path"], text_of(c.get("kind")) or "update") for c in _changes(item)]
        if item.get("status") == "failed":
            names = ", ".join(path for path, _ in paths) or "unknown files"
            info = ErrorInfo(ErrorKind.AGENT, f"a patch failed to apply to {clip(names, 200)}")
            return [error_event(info, fatal=False)]
        return [self.file_event(path, kind) for path, kind in paths]


def _changes(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The well-formed entries of a ``file_change`` item's ``changes`` (each has a path)."""
    changes = item.get("changes")
    return [
        c
        for c in (changes if isinstance(changes, list) else ())
        if isinstance(c, dict) and isinstance(c.get("path"), str)
    ]


def _classify(message: str) -> ErrorInfo:
    """:func:`classify`, knowing codex's wording for an HTTP 500, which names no status."""
    if _HIGH_DEMAND.search(message):
        return classify(message, kind=ErrorKind.SERVER)
    return classify(message)


def _no_rollout(thread_id: str) -> ErrorInfo:
    return ErrorInfo(
        ErrorKind.AGENT,
        f"codex cannot resume session {clip(thread_id, 80)}: no rollout found for it in "
        "$CODEX_HOME/sessions (the session was recorded under another home)",
    )
