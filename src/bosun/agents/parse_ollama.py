"""Output of bosun's own Ollama agent (``python -m bosun.ollama_agent``): one JSON line each.

The agent (see :mod:`bosun.ollama_agent`) prints ``{"type": "text", "text"}`` per streamed
piece, then ``{"type": "result", "text", "model", "prompt_eval_count", "eval_count",
"done_reason", "session_id"}`` and exits 0, or ``{"type": "error", "status", "message"}``
(plus ``retry_after`` from the ``Retry-After`` header, ``reason: "connect"`` when the
server could not be reached) and exits 1. Its stderr repeats the error as plain text.

Pieces are gathered as the candidate summary (a stalled run keeps what arrived) and the
answer is one ``text`` event when the result comes. Errors: 401/403 ``auth``, 429
``usage_limit`` (the reset from ``Retry-After`` or the message), 5xx ``server``, 404 with
"not found" (Ollama's "model ... not found, try pulling it first") ``config``, an
unreachable server ``server``, "timed out" ``timeout``; anything else ``agent``. A text-only
agent has no tools: no ``tool_use`` or ``file_change`` events, and costs are not reported.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any

from bosun.agents.parse_common import CliParser, as_int, json_value, text_event, text_of
from bosun.agents.parse_errors import ErrorInfo, classify
from bosun.agents.reset_time import find_reset_hint
from bosun.models import AgentEvent, ErrorKind
from bosun.providers.base import Stream

__all__ = ["OllamaParser"]


class OllamaParser(CliParser):
    """``ollama``."""

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """One agent line on stdout; stderr is plain text (the base class keeps it)."""
        if stream != "stdout":
            return None
        event = json_value(line)
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "text":
            # A bounded running tail: the summary of a run cut off before its result.
            self.set_text(self.final_text + text_of(event.get("text")))
        elif kind == "result":
            text = text_of(event.get("text"))
            self.set_text(text)
            session = event.get("session_id")
            if isinstance(session, str) and session:
                self.session_id = session
            self.turns = (self.turns or 0) + 1
            self.tokens_in += as_int(event.get("prompt_eval_count"))
            self.tokens_out += as_int(event.get("eval_count"))
            return [text_event(text)] if text else []
        elif kind == "error":
            return [self.fail(_error(event))]
        return []


def _error(event: dict[str, Any]) -> ErrorInfo:
    message = text_of(event.get("message")) or "the agent reported an error"
    status = event.get("status")
    code = status if type(status) is int and 400 <= status <= 599 else None
    if event.get("reason") == "connect":
        return classify(message, kind=ErrorKind.SERVER, label="cannot reach the Ollama server")
    if code == 404 and "not found" in message.lower():
        return classify(
            message, status=code, kind=ErrorKind.CONFIG, label="the model is not on the server"
        )
    hint = _retry_hint(event.get("retry_after"))
    if hint and find_reset_hint(message) is None:
        message = f"{message} ({hint})"
    return classify(message, status=code)


def _retry_hint(value: Any) -> str | None:
    """``Retry-After`` (seconds or an HTTP date) in words the reset-time reader knows."""
    text = text_of(value).strip()
    if text.isdigit():
        return f"retry after {text}s"
    if not text:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return f"retry after {when.isoformat()}" if when.tzinfo is not None else None
