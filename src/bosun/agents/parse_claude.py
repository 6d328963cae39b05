"""Claude Code (``claude -p``) and Qwen Code (``qwen -p``) output, json and stream-json.

Both CLIs print the same message shapes: ``system`` (``init`` carries ``session_id``),
``assistant`` (content blocks ``text`` / ``tool_use``), ``user`` (``tool_result`` blocks),
``rate_limit_event`` (claude) and a final ``result``. stream-json prints one message per
line; json prints the ``result`` object alone, or (claude ``--verbose``, qwen) one array of
every message. One parser reads all of these.

Verdicts come from the ``result``, never from the exit code alone: claude reports API errors
as ``subtype: "success"`` with ``is_error: true`` (and ``api_error_status``), qwen as
``is_error: false`` with a result starting ``[API Error:``; ``error_max_turns`` is a turn
limit; ``permission_denials`` with no file written is a permission failure (judged in
``finish``). File changes are reported when a write tool's result comes back without error,
so a json-mode run (no tool messages) reports none.

Qwen differences (checked against qwen-code 0.15.10, tests/fixtures/agent-output/qwen-*):
the ``init`` message carries ``qwen_code_version``, which switches them on (or the parser is
a :class:`QwenParser`). Tokens are the sum of the assistant messages' ``usage`` (one per
model response): the result's ``usage`` is the session's running total, so after
``--resume`` it counts the earlier runs too, and ``input_tokens`` already includes the
cached ones. An API error also arrives as an assistant message reading ``[API Error: ...]``
(not the model's words: no text event); the result repeats it, followed by a line of advice
that is dropped. Fatal errors exit with gemini's codes (41 auth, 52 config, 53 turn limit):
in json mode as ``{"error": {"type": "Fatal...", "message", "code"}}`` pretty-printed on
stderr with stdout empty, in stream-json mode as a plain stderr line ("Reached max session
turns ..."). A missing key is an ``error_during_execution`` result ("Missing API key ...").
``--resume`` of a session not in this home exits 1 with "No saved session found with ID ..."
on stderr and nothing on stdout: a config error (retrying cannot find it either).
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bosun.agents.parse_common import (
    CliParser,
    JsonDocBuffer,
    as_float,
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

__all__ = ["ClaudeParser", "QwenParser"]

# Tool name -> file_change kind ("write": created or replaced, "update": edited in place).
_WRITE_TOOLS = {
    "Write": "write",
    "Edit": "update",
    "MultiEdit": "update",
    "NotebookEdit": "update",
    "write_file": "write",  # qwen
    "edit": "update",  # qwen
    "replace": "update",  # qwen
}
_PATH_KEYS = ("file_path", "notebook_path", "path", "absolute_path")
_DENIED = re.compile(
    r"(?i)requested permissions? to|haven't granted"
    r"|permission (?:to use \S+ )?(?:was |has been )?denied"
)
_API_ERROR = ("API Error", "[API Error")
_QWEN_API_ERROR = "[API Error"
# qwen's fatal exit codes (its FatalError classes, the same as gemini's)
_QWEN_FATAL = {41: ErrorKind.AUTH, 52: ErrorKind.CONFIG, 53: ErrorKind.MAX_TURNS}
_TURN_LIMIT = re.compile(r"(?i)reached max session turns")
_MISSING_KEY = re.compile(r"(?i)\bmissing api key\b")
_NO_SESSION = re.compile(r"No saved session found with ID")
_MAX_PENDING = 256  # write-tool calls awaiting their result; older ones are forgotten


class ClaudeParser(CliParser):
    """``claude-json``, ``claude-stream-json``, ``qwen-json``, ``qwen-stream-json``."""

    #: Read qwen's variant from the first line on (else from its ``init`` message).
    qwen: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._qwen = self.qwen
        self._stderr_doc = JsonDocBuffer()  # qwen's json-mode fatal error, on stderr
        self._pending: dict[str, tuple[str, str]] = {}  # tool_use_id -> (path, kind)
        self._last_message_id: Any = None
        self._have_result = False
        self._reset_at: datetime | None = None  # from a rejecting rate_limit_event

    def feed(self, stream: Stream, line: str) -> list[AgentEvent]:
        """The base rules, with a short path for the common stream-json line."""
        if stream == "stdout" and line[:1] == "{":
            value = json_value(line)
            if type(value) is dict:
                return self._message(value) or [AgentEvent("output", text=line)]
        return super().feed(stream, line)

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """One message (stream-json) or a result / an array of messages (json)."""
        if stream != "stdout":
            return self._stderr(line)
        value = json_value(line)
        if isinstance(value, dict):
            return self._message(value)
        if isinstance(value, list):
            events: list[AgentEvent] = []
            for item in value:
                if isinstance(item, dict):
                    events.extend(self._message(item))
            return events
        return None

    def _message(self, msg: dict[str, Any]) -> list[AgentEvent]:
        session = msg.get("session_id")
        if isinstance(session, str) and session:
            self.session_id = session
        kind = msg.get("type")
        if kind == "system" and "qwen_code_version" in msg:
            self._qwen = True
        if kind == "assistant":
            return self._assistant(msg.get("message"))
        if kind == "user":
            return self._user(msg.get("message"))
        if kind == "result":
            return self._result(msg)
        if kind == "rate_limit_event":
            self._rate_limit(msg.get("rate_limit_info"))
        return []

    def _assistant(self, message: Any) -> list[AgentEvent]:
        if not isinstance(message, dict) or message.get("model") == "<synthetic>":
            # claude reports API errors as a "<synthetic>" message; the result repeats it.
            return []
        if self._qwen or not self._have_result:
            # Until the result brings totals, count each API message once (a line per block).
            # qwen: always, its result totals count the earlier runs of a resumed session.
            usage, message_id = message.get("usage"), message.get("id")
            if isinstance(usage, dict) and message_id != self._last_message_id:
                self._last_message_id = message_id
                self.tokens_in += (
                    as_int(usage.get("input_tokens")) if self._qwen else _tokens_in(usage)
                )
                self.tokens_out += as_int(usage.get("output_tokens"))
        events: list[AgentEvent] = []
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text = block.get("text")
                if self._qwen and isinstance(text, str) and text.startswith(_QWEN_API_ERROR):
                    continue  # qwen's API error, not the model's words: the result repeats it
                if isinstance(text, str) and text.strip():
                    self.set_text(text)
                    events.append(text_event(text))
            elif kind == "tool_use" and isinstance(block.get("name"), str):
                events.append(tool_event(block["name"], input_summary(block.get("input"))))
                self._remember_write(block)
        return events

    def _remember_write(self, block: dict[str, Any]) -> None:
        kind = _WRITE_TOOLS.get(block["name"])
        args = block.get("input")
        if kind is None or not isinstance(args, dict) or not isinstance(block.get("id"), str):
            return
        path = next((args[k] for k in _PATH_KEYS if isinstance(args.get(k), str)), None)
        if path:
            if len(self._pending) >= _MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[block["id"]] = (path, kind)

    def _user(self, message: Any) -> list[AgentEvent]:
        content = message.get("content") if isinstance(message, dict) else None
        events: list[AgentEvent] = []
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            write = self._pending.pop(text_of(block.get("tool_use_id")), None)
            if block.get("is_error") is True:
                text = one_line(_block_text(block.get("content")))
                if _DENIED.search(text):
                    self.denial = clip(text, 200)
                    info = ErrorInfo(ErrorKind.PERMISSION, f"permission denied: {self.denial}")
                    events.append(error_event(info, fatal=False))
            elif write is not None:
                events.append(self.file_event(*write))
        return events

    def _rate_limit(self, info: Any) -> None:
        if isinstance(info, dict) and info.get("status") == "rejected":
            resets = as_float(info.get("resetsAt"))
            if resets is not None:
                seconds = resets / 1000 if resets > 1e11 else resets
                self._reset_at = datetime.fromtimestamp(seconds, UTC)

    def _result(self, msg: dict[str, Any]) -> list[AgentEvent]:
        self._have_result = True
        if as_int(msg.get("num_turns")):
            self.turns = as_int(msg["num_turns"])
        usage = msg.get("usage")
        if isinstance(usage, dict) and not self._qwen:
            self.tokens_in = _tokens_in(usage)
            self.tokens_out = as_int(usage.get("output_tokens"))
        cost = as_float(msg.get("total_cost_usd"))
        if cost is not None:
            self.cost = cost
        denials = msg.get("permission_denials")
        if isinstance(denials, list) and denials:
            self.denial = _describe_denials(denials)
        subtype = text_of(msg.get("subtype"))
        text = text_of(msg.get("result"))
        if subtype == "error_max_turns":
            detail = f"stopped after {self.turns} turns" if self.turns else "stopped"
            return [self.fail(classify(detail, kind=ErrorKind.MAX_TURNS))]
        failed = msg.get("is_error") is True or subtype.startswith("error")
        if not failed and not text.lstrip().startswith(_API_ERROR):
            if text.strip():
                self.set_text(text)
            return []
        if self._qwen and text.startswith(_QWEN_API_ERROR):
            text = _without_advice(text)
        detail = text or _errors_text(msg) or f"result subtype {subtype or 'unknown'}"
        info = classify(detail, status=as_int(msg.get("api_error_status")) or None)
        qwen = self._qwen or isinstance(msg.get("error"), dict)  # qwen's error result form
        if qwen and info.kind is ErrorKind.AGENT and _MISSING_KEY.search(detail):
            info = classify(detail, kind=ErrorKind.AUTH)
        if info.kind is ErrorKind.USAGE_LIMIT and info.resume_at is None:
            info = replace(info, resume_at=self._reset_at)
        return [self.fail(info)]

    # -- qwen's stderr -----------------------------------------------------------------
    def _stderr(self, line: str) -> list[AgentEvent] | None:
        """qwen's fatal errors; claude's stderr is plain text, which the base handles."""
        value = self._stderr_doc.push(line)
        if isinstance(value, dict):
            error = value.get("error")
            if isinstance(error, dict) and text_of(error.get("type")).startswith("Fatal"):
                self._qwen = True
                kind = _QWEN_FATAL.get(as_int(error.get("code")))
                detail = text_of(error.get("message")) or text_of(error.get("type"))
                return [self.fail(classify(detail, kind=kind))]
        if self._stderr_doc.active:
            return []
        if self.error is None and _TURN_LIMIT.search(line):
            return [self.fail(classify(line, kind=ErrorKind.MAX_TURNS))]
        if self.error is None and _NO_SESSION.search(line):
            # not retried: the session files are not in this run's home (see cli_qwen)
            label = "the session to resume was not found (qwen looks in its home, per directory)"
            return [self.fail(classify(line, kind=ErrorKind.CONFIG, label=label))]
        return None

    def exit_error(self, exit_code: int) -> ErrorInfo:
        """qwen's fatal exit codes name the failure when its output did not."""
        info = super().exit_error(exit_code)
        kind = _QWEN_FATAL.get(exit_code) if self._qwen else None
        if kind is not None and info.kind is ErrorKind.AGENT:
            return classify(info.message, kind=kind)
        return info


class QwenParser(ClaudeParser):
    """``qwen-json``, ``qwen-stream-json``: qwen's variant from the first line on."""

    qwen = True


def _without_advice(text: str) -> str:
    """qwen's ``[API Error: ...]`` without the advice line it appends to some errors."""
    first, _, _rest = text.partition("\n")
    return first if first.rstrip().endswith("]") else text


def _tokens_in(usage: dict[str, Any]) -> int:
    return (
        as_int(usage.get("input_tokens"))
        + as_int(usage.get("cache_creation_input_tokens"))
        + as_int(usage.get("cache_read_input_tokens"))
    )


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def _errors_text(msg: dict[str, Any]) -> str:
    errors = msg.get("errors")
    if isinstance(errors, list):
        text = "; ".join(e if isinstance(e, str) else str(e) for e in errors)
        if text:
            return text
    error = msg.get("error")  # qwen: {"message": ...}
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return ""


def _describe_denials(denials: list[Any]) -> str:
    first = denials[0] if isinstance(denials[0], dict) else {}
    name = first.get("tool_name") if isinstance(first.get("tool_name"), str) else "a tool"
    summary = input_summary(first.get("tool_input"))
    text = f"{name} {summary}".strip() + " was refused"
    if len(denials) > 1:
        text += f" (and {len(denials) - 1} more tool calls)"
    return text
