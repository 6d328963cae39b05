"""opencode (``opencode run --format json``) output: one event per stdout line.

Every event has ``type``, ``timestamp`` (ms epoch) and ``sessionID`` (``ses_…``, for
``--session``): ``step_start`` (a model step begins), ``text{part.text}``,
``tool_use{part.tool, part.state{status, input, output | error}}``, ``step_finish{part.tokens,
part.cost}`` once per step (summed here) and ``error{error{name, data{message, statusCode,
isRetryable, responseHeaders, responseBody}}}``, after which opencode exits 1.

Checked against opencode 1.18.33 (see ``tests/fixtures/agent-output/README.md``): an API
error comes after opencode's own retries (five, honouring ``retry-after-ms`` /
``retry-after``) and without a ``step_start`` before it; ``cost`` is 0 for a model whose
price opencode does not know (any custom provider), which is read as "not reported".

``run`` refuses permission requests itself: the refused call arrives as a ``tool_use`` with
``state.status == "error"`` (a permission denial), a "permission requested: …;
auto-rejecting" line goes to stderr, and the run ends there with exit code 0. With
``OPENCODE_PRINT_LOGS`` stderr also carries opencode's log lines; each failed model request
(``level=ERROR message="stream error" … error.error="…"``) becomes a non-fatal ``error``
event, the only sign of opencode's retries while they happen. A relative reset hint in an
error resolves against that event's own timestamp.
"""

from __future__ import annotations

import re
from typing import Any

from bosun.agents.parse_common import (
    CliParser,
    as_float,
    as_int,
    epoch_ms,
    input_summary,
    json_value,
    obj,
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

__all__ = ["OpencodeParser"]

_WRITE_TOOLS = {"write": "write", "edit": "update", "multiedit": "update", "patch": "update"}
_PATH_KEYS = ("filePath", "file_path", "path")
_REJECTED = re.compile(
    r"(?i)rejected permission|permission (?:was |has been )?(?:denied|rejected)|user rejected"
    r"|not allowed|denied by"
)
_ERROR_KINDS = {"ProviderAuthError": ErrorKind.AUTH}
#: A failed model request in opencode's log (logfmt; the error text is a quoted value).
_STREAM_ERROR = re.compile(
    r'level=ERROR .*?message="stream error" .*?error\.error="((?:[^"\\]|\\.)*)"'
)
_ERROR_CLASS = re.compile(r"^AI_\w+: ")


class OpencodeParser(CliParser):
    """``opencode-jsonl``."""

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """One opencode event (stdout); on stderr, a failed request in its log."""
        if stream != "stdout":
            return self._log_line(line)
        event = json_value(line)
        if not isinstance(event, dict):
            return None
        if isinstance(event.get("sessionID"), str) and event["sessionID"]:
            self.session_id = event["sessionID"]
        part = obj(event.get("part"))
        kind = event.get("type")
        if kind == "step_start":
            self.turns = (self.turns or 0) + 1
        elif kind == "text" and isinstance(part.get("text"), str) and part["text"].strip():
            self.set_text(part["text"])
            return [text_event(part["text"])]
        elif kind == "tool_use" and isinstance(part.get("tool"), str):
            return self._tool_use(part["tool"], part.get("state"))
        elif kind == "step_finish":
            self._step_finish(part)
        elif kind == "error":
            return [self._error(event)]
        return []

    def _log_line(self, line: str) -> list[AgentEvent] | None:
        match = _STREAM_ERROR.search(line) if "stream error" in line else None
        if match is None:
            return None
        text = _ERROR_CLASS.sub("", match.group(1).replace('\\"', '"'))
        # Not decisive: opencode may retry and succeed; the ``error`` event decides.
        return [error_event(classify(text), fatal=False)]

    def _tool_use(self, tool: str, state: Any) -> list[AgentEvent]:
        state = obj(state)
        args = state.get("input")
        summary = input_summary(args)
        events = [tool_event(tool, summary)]
        status = state.get("status")
        if status == "completed" and tool in _WRITE_TOOLS and isinstance(args, dict):
            path = next((args[k] for k in _PATH_KEYS if isinstance(args.get(k), str)), None)
            if path:
                events.append(self.file_event(path, _WRITE_TOOLS[tool]))
        elif status == "error":
            reason = one_line(text_of(state.get("error"))).rstrip(".")
            if _REJECTED.search(reason):
                self.denial = clip(f"{tool} {summary} was refused: {reason}", 200)
                info = ErrorInfo(ErrorKind.PERMISSION, f"permission denied: {self.denial}")
                events.append(error_event(info, fatal=False))
        return events

    def _step_finish(self, part: dict[str, Any]) -> None:
        tokens = part.get("tokens")
        if isinstance(tokens, dict):
            cache = obj(tokens.get("cache"))
            self.tokens_in += (
                as_int(tokens.get("input")) + as_int(cache.get("read")) + as_int(cache.get("write"))
            )
            self.tokens_out += as_int(tokens.get("output")) + as_int(tokens.get("reasoning"))
        cost = part.get("cost")
        if as_float(cost):  # 0 means opencode knows no price for the model
            self.add_cost(cost)

    def _error(self, event: dict[str, Any]) -> AgentEvent:
        error = obj(event.get("error"))
        data = obj(error.get("data"))
        name = text_of(error.get("name"))
        message = next(
            (
                m
                for m in (event.get("message"), data.get("message"), error.get("message"))
                if isinstance(m, str) and m
            ),
            "",
        )
        detail = f"{name}: {message}" if name and message else (name or message or "opencode error")
        headers = obj(data.get("responseHeaders"))
        if text_of(headers.get("retry-after")):
            detail += f" (retry-after: {headers['retry-after']})"
        elif text_of(headers.get("retry-after-ms")):
            detail += f" (retry-after: {headers['retry-after-ms']} ms)"
        status = as_int(data.get("statusCode")) or None
        kind = _ERROR_KINDS.get(name)
        return self.fail(
            classify(detail, status=status, kind=kind, at=epoch_ms(event.get("timestamp")))
        )
