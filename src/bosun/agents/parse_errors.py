"""Error classification for the agent-CLI parsers: what kind of failure a message reports.

:func:`classify` reads an HTTP status (given, or named in the text: "API Error: 401",
"status 429", "Error code: 500") and otherwise the wording ("rate limit", "invalid api key",
"overloaded", "timed out") and returns an :class:`ErrorInfo`: the :class:`ErrorKind`, a
one-line message, and for usage limits the reset time when it can be known without a clock.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from datetime import datetime

from bosun.agents.reset_time import find_reset_hint, parse_reset_time
from bosun.models import AgentEvent, ErrorKind

__all__ = [
    "ERROR_CHARS",
    "ErrorInfo",
    "classify",
    "clip",
    "error_event",
    "find_status",
    "one_line",
    "readable",
]

ERROR_CHARS = 300
_WS = re.compile(r"\s+")
_INNER = re.compile(r"""(['"])message\1\s*:\s*(['"])((?:(?!\2)[^\\]|\\.)*)\2""")

_STATUS = re.compile(
    r"(?i)(?:api error:?|status(?:[ _]?code)?|error code:?|http(?:/[\d.]+)?|\"code\")"
    r"[\"':=\s]*([45]\d\d)(?!\d)|(?<!\d)([45]\d\d) (?:unauthorized|forbidden|too many requests"
    r"|internal server error|bad gateway|service unavailable|gateway timeout)"
)
_KIND_PATTERNS = (
    (
        ErrorKind.USAGE_LIMIT,
        re.compile(
            r"(?i)rate[ _-]?limit|usage[ _-]?limit|too many requests|quota|resource[ _]exhausted"
            r"|hit your (?:usage )?limit|\blimit reached"
        ),
    ),
    (
        ErrorKind.AUTH,
        re.compile(
            r"(?i)authenticat|unauthori[sz]ed|invalid[ _-]?(?:x-)?api[ _-]?key|incorrect api key"
            r"|api key not valid|\bnot logged in\b|/login\b|UNAUTHENTICATED|PERMISSION_DENIED"
        ),
    ),
    (
        ErrorKind.SERVER,
        re.compile(
            r"(?i)internal server error|server error|service unavailable|bad gateway"
            r"|overloaded|\bapi_error\b|\bINTERNAL\b|\bUNAVAILABLE\b"
        ),
    ),
    (ErrorKind.TIMEOUT, re.compile(r"(?i)timed out|time-?out|deadline[ _]exceeded")),
)
_LABELS = {
    ErrorKind.AUTH: "authentication failed",
    ErrorKind.USAGE_LIMIT: "usage or rate limit reached",
    ErrorKind.SERVER: "the model API failed with a server error",
    ErrorKind.TIMEOUT: "the model API timed out",
    ErrorKind.MAX_TURNS: "the agent reached its turn limit",
    ErrorKind.PERMISSION: "permission denied",
    ErrorKind.CONFIG: "the agent refused its configuration",
}

_WS = re.compile(r"\s+")
_INNER = re.compile(r"""(['"])message\1\s*:\s*(['"])((?:(?!\2)[^\\]|\\.)*)\2""")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A classified failure: its kind, a one-line message, and when to retry if known."""

    kind: ErrorKind
    message: str
    resume_at: datetime | None = None


def clip(text: str, limit: int) -> str:
    """``text`` cut to its first ``limit`` characters (ending in "…" when cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) made one space."""
    return _WS.sub(" ", text).strip()


def find_status(text: str) -> int | None:
    """An HTTP error status (400-599) named in ``text`` ("API Error: 401", "status 429")."""
    match = _STATUS.search(text)
    return int(match.group(1) or match.group(2)) if match else None


def _kind_for(status: int | None, text: str) -> ErrorKind:
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 429:
        return ErrorKind.USAGE_LIMIT
    if status == 408:
        return ErrorKind.TIMEOUT
    if status is not None and 500 <= status <= 599:
        return ErrorKind.SERVER
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(text):
            return kind
    return ErrorKind.AGENT


def readable(text: str) -> str:
    """``text`` with an embedded JSON error body shown as its ``message`` only:
    'API Error: 500 {"error":{"message":"boom"}}' reads 'API Error: 500 - boom'."""
    brace = text.find("{")
    match = _INNER.search(text, brace) if brace >= 0 else None
    if match is None:
        return text
    inner = match.group(3)
    if match.group(2) == '"':
        with contextlib.suppress(ValueError):
            inner = json.loads(f'"{inner}"')
    prefix = text[:brace].rstrip(" :-")
    return f"{prefix} - {inner}" if prefix else inner


def classify(
    detail: str,
    *,
    status: int | None = None,
    kind: ErrorKind | None = None,
    at: datetime | None = None,
    label: str | None = None,
) -> ErrorInfo:
    """Classify an error text: its kind (from ``status``, else the text), a one-line message,
    and for usage limits the reset time (absolute, or relative to ``at`` when given)."""
    flat = one_line(detail)
    if status is None:
        status = find_status(flat)
    if kind is None:
        kind = _kind_for(status, flat)
    extras = [f"HTTP {status}"] if status is not None else []
    clipped = clip(readable(flat), ERROR_CHARS)
    resume_at = None
    if kind is ErrorKind.USAGE_LIMIT:
        resume_at = parse_reset_time(flat, at)
        hint = find_reset_hint(flat)
        # The dispatcher re-reads the hint with its clock, so it must survive the clipping.
        if hint is not None and hint not in clipped:
            extras.append(clip(hint, 80))
    head = label or _LABELS.get(kind, "the agent reported an error")
    message = head + (f" ({'; '.join(extras)})" if extras else "")
    if clipped and clipped != head:
        message += f": {clipped}"
    return ErrorInfo(kind, message, resume_at)


def error_event(info: ErrorInfo, *, fatal: bool = True) -> AgentEvent:
    """An ``error`` event for ``info`` (``fatal`` False for warnings the run survives)."""
    return AgentEvent(
        "error",
        text=info.message,
        data={"kind": info.kind.value, "message": info.message, "fatal": fatal},
    )
