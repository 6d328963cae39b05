"""aider (``aider --message``) output: plain text, plus its analytics log when fed in.

Text (``--no-pretty``): the model's reply, ``Applied edit to PATH`` for each file written,
``Tokens: 2.3k sent, 120 received. Cost: $0.01 message, $0.02 session.`` after each
request, and API errors as litellm exceptions (``litellm.RateLimitError: ...``) followed by
aider's own explanation. aider exits 0 on API errors, so an error line decides the outcome
unless a later request succeeded (aider retries rate limits and server errors itself).

Analytics (``--analytics-log FILE``): one JSON object per line, ``{"event", "properties",
"time"}``; ``message_send`` carries exact ``prompt_tokens``, ``completion_tokens`` and
``cost``, which replace the rounded figures of the text. The parser reads such lines from
either stream, so the agent spec can point the log at the run's stderr
(``--analytics-log /dev/stderr``: the local provider opens stderr for appending, so the log
lines land whole in the captured stream) or append the file to the output after the run.
An analytics ``time`` seen after a rate-limit error anchors a relative hint ("try again in
20s").

aider has no session id. The analytics records' ``user_id`` is reported as one: aider keeps
it in ``~/.aider/analytics.json``, so it names the home the run used (a fresh UUID in each
isolated home, the same in a resumed run that carries the home, where the chat history that
``--restore-chat-history`` replays lives). A cost of 0 (a model without a known price) is
read as "not reported".

Checked against aider 0.86.2 (see ``tests/fixtures/agent-output/README.md``): error lines
are on stdout and aider wraps them at 80 columns unless ``COLUMNS`` is wider; a 401 from an
OpenAI-compatible server arrives as ``litellm.BadRequestError: OpenAIException - …`` (not
``AuthenticationError``), recognised by its wording; the analytics log has no
``message_send`` for a failed request.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from bosun.agents.parse_common import (
    CliParser,
    as_float,
    as_int,
    json_value,
    obj,
)
from bosun.agents.parse_errors import (
    ErrorInfo,
    classify,
    error_event,
)
from bosun.models import AgentEvent, ErrorKind, Outcome
from bosun.providers.base import Stream

__all__ = ["AiderParser"]

_APPLIED = re.compile(r"^Applied edit to (.+?)\s*$")
_TOKENS = re.compile(r"^Tokens: ")
_PATH_LINE = re.compile(r"^\S+$")
_COUNT = re.compile(r"([\d.]+)(k|M)? (sent|received)")
_SESSION_COST = re.compile(r"\$([\d.]+) session")
_LITELLM = re.compile(r"litellm\.(\w+):\s*(.*)")
# aider's explanation lines (aider/exceptions.py), for errors whose litellm line was missed.
_EXPLAINED = (
    ("The API provider is not able to authenticate you", ErrorKind.AUTH),
    ("The API provider has rate limited you", ErrorKind.USAGE_LIMIT),
    ("The API provider's servers are down or overloaded", ErrorKind.SERVER),
    ("The API provider timed out", ErrorKind.TIMEOUT),
)
_EXCEPTION_KINDS = {
    "AuthenticationError": ErrorKind.AUTH,
    "RateLimitError": ErrorKind.USAGE_LIMIT,
    "RouterRateLimitError": ErrorKind.USAGE_LIMIT,
    "InternalServerError": ErrorKind.SERVER,
    "ServiceUnavailableError": ErrorKind.SERVER,
    "APIConnectionError": ErrorKind.SERVER,
    "Timeout": ErrorKind.TIMEOUT,
}
# Exceptions aider does not retry: the run is over when one is printed.
_NOT_RETRIED = frozenset(
    {"AuthenticationError", "BadRequestError", "ContextWindowExceededError", "NotFoundError"}
)
# Lines aider prints about itself; never part of the summary.
_CHROME = re.compile(
    r"^(?:Aider v\d|Model: |Main model: |Weak model: |Editor model: |Git repo: |Repo-map: "
    r"|Added .+ to the chat|Cost: |Commit [0-9a-f]{7}|Use /help|https://aider\.chat"
    r"|Retrying in |Warning|Can't initialize prompt toolkit|Creating empty file "
    r"|Scanning repo|Initial repo scan|Note: |Update git (?:name|email) with: "
    r"|Analytics have been|Aider respects your privacy|For more info: "
    r"|Restored previous conversation history|[-─=]{3,}\s*$)"
)


class AiderParser(CliParser):
    """``aider``."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: ErrorInfo | None = None  # an API error no later request cancelled
        self._pending_text = ""
        self._time_after_error: datetime | None = None
        self._text_in = self._text_out = 0
        self._text_cost: float | None = None
        self._log_in = self._log_out = 0
        self._log_cost: float | None = None
        self._logged = False
        self._text_turns = self._log_turns = 0
        self._fence = False  # inside a fenced block: file content, not summary material

    def parse_line(self, stream: Stream, line: str) -> list[AgentEvent] | None:
        """An analytics record, or one of aider's known text lines; else None."""
        if line[:1] == "{":
            record = json_value(line)
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                return self._analytics(record)
        match = _APPLIED.match(line)
        if match:
            self._succeeded()
            while self._tail and self._tail[-1].strip() == match.group(1):
                self._tail.pop()  # aider echoes the path before applying the edit
            return [self.file_event(match.group(1), "write")]
        if _TOKENS.match(line):
            self._succeeded()
            self._text_turns += 1
            self._usage_line(line)
            return []
        if line.lstrip().startswith("```"):
            if not self._fence and self._tail and _PATH_LINE.match(self._tail[-1]):
                self._tail.pop()  # the whole-format file listing's path line
            self._fence = not self._fence
            return []
        if self._fence:
            return []
        match = _LITELLM.search(line)
        if match:
            name = match.group(1)
            info = classify(line[match.start() :], kind=_EXCEPTION_KINDS.get(name))
            self._pending, self._pending_text = info, line[match.start() :]
            self._time_after_error = None
            return [error_event(info, fatal=name in _NOT_RETRIED)]
        for prefix, kind in _EXPLAINED:
            if line.startswith(prefix):
                if self._pending is None:
                    self._pending, self._pending_text = classify(line, kind=kind), line
                return []
        if _CHROME.match(line):
            return []
        return None

    def _succeeded(self) -> None:
        # A request went through after the error: aider's retry worked.
        self._pending = None

    def _usage_line(self, line: str) -> None:
        for number, scale, what in _COUNT.findall(line):
            value = round(float(number) * {"k": 1e3, "M": 1e6}.get(scale, 1.0))
            if what == "sent":
                self._text_in += value
            else:
                self._text_out += value
        match = _SESSION_COST.search(line)
        if match:
            self._text_cost = as_float(float(match.group(1))) or None

    def _analytics(self, record: dict[str, Any]) -> list[AgentEvent]:
        if self.session_id is None and isinstance(record.get("user_id"), str):
            self.session_id = record["user_id"] or None
        props = obj(record.get("properties"))
        event = record["event"]
        if event == "message_send":
            self._logged = True
            self._log_turns += 1
            self._succeeded()
            self._log_in += as_int(props.get("prompt_tokens"))
            self._log_out += as_int(props.get("completion_tokens"))
            cost = as_float(props.get("cost"))
            if cost:  # 0: aider knows no price for the model
                self._log_cost = round((self._log_cost or 0.0) + cost, 10)
        elif event == "message_send_exception" and isinstance(props.get("exception"), str):
            info = classify(props["exception"])
            self._pending, self._pending_text = info, props["exception"]
            return [error_event(info)]
        seconds = as_float(record.get("time"))
        if seconds is not None and self._pending is not None and seconds < 1e11:
            self._time_after_error = datetime.fromtimestamp(seconds, UTC)
        return []

    def finish(self, exit_code: int | None) -> Outcome:
        """Exact analytics figures when logged, else the text's; a pending error fails."""
        if self._logged:
            self.tokens_in, self.tokens_out, self.cost = self._log_in, self._log_out, self._log_cost
            self.turns = self._log_turns
        else:
            self.tokens_in, self.tokens_out = self._text_in, self._text_out
            self.cost = self._text_cost
            self.turns = self._text_turns or None
        info = self._pending
        if info is not None and self.error is None:
            if info.kind is ErrorKind.USAGE_LIMIT and info.resume_at is None:
                info = classify(self._pending_text, kind=info.kind, at=self._time_after_error)
            self.error = info
        return super().finish(exit_code)
