"""What the fake model server answers: scripted turns, and what it recorded.

A test queues turns on a ``FakeModelServer``; each model request pops the next one and the
server renders it in the wire format of whichever API was called. The values here know
nothing about any wire format; ``tests/fakes/<api>.py`` do the rendering.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Header names whose values never reach a recorded request: tests assert that a key was
# sent, never what it was.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie"}
)
SECRET_QUERY = frozenset({"key", "api_key"})
REDACTED = "<redacted>"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts the fake reports for one answer, in every API's own field names."""

    input_tokens: int = 12
    output_tokens: int = 5
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output, as OpenAI and Gemini report it."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Text:
    """A plain assistant answer.

    Streams send ``text`` in pieces of ``chunk_size`` characters; ``delay`` seconds pass
    before each piece and before the closing events, which makes it a slow stream.
    """

    text: str
    usage: Usage = Usage()
    chunk_size: int = 8
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model calls one tool, optionally after some text.

    ``name`` is the tool's name as the calling CLI declared it (claude ``Write``, gemini
    ``write_file``, codex ``apply_patch`` ...). ``arguments`` are sent as the API expects:
    a JSON object (Anthropic ``input``, Gemini ``args``, Ollama ``arguments``) or a JSON
    string (OpenAI ``arguments``). ``custom_input`` is for the OpenAI Responses API only:
    when set, the call is a ``custom_tool_call`` carrying that free-form text as ``input``
    (codex declares ``apply_patch`` as such a custom tool) and ``arguments`` is unused there.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    text: str = ""
    call_id: str | None = None
    custom_input: str | None = None
    usage: Usage = Usage()
    chunk_size: int = 16
    delay: float = 0.0

    def arguments_json(self) -> str:
        """The arguments as the compact JSON string OpenAI-style APIs carry."""
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class HttpError:
    """Answer with an HTTP error, shaped like the called API's error JSON.

    ``message`` defaults to a text fitting the status; ``code`` overrides the API's error
    type / code / status field; ``body`` replaces the whole JSON body; ``headers`` are sent
    as they are (``retry-after``, ``anthropic-ratelimit-*-reset`` ...).
    """

    status: int
    message: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    code: str | None = None
    body: Mapping[str, Any] | None = None

    def text(self) -> str:
        """The message, or a default one for the status."""
        return self.message or DEFAULT_MESSAGES.get(self.status, f"fake error {self.status}")


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request and never finish it, until the client leaves or the server stops.

    Without ``partial_text`` nothing is sent at all, not even the status line. With it,
    a streaming request gets the stream's opening events and that text, then silence
    (a stalled stream); a non-streaming request still gets nothing.
    """

    partial_text: str | None = None


Turn = Text | ToolCall | HttpError | Hang

DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: "Invalid API key: authentication failed.",
    403: "Permission denied for this API key.",
    404: "Not found.",
    429: "Rate limit reached. Please try again later.",
    500: "Internal server error.",
    503: "The fake model server is shutting down.",
    529: "Overloaded.",
}


def auth_error(message: str = "") -> HttpError:
    """A 401 as each API sends it for a wrong or missing key."""
    return HttpError(401, message)


def server_error(status: int = 500, message: str = "") -> HttpError:
    """A 5xx server error."""
    return HttpError(status, message)


def rate_limited(
    retry_after: int = 30, *, reset_at: datetime | None = None, message: str = ""
) -> HttpError:
    """A 429 carrying the reset time in every header family the CLIs read.

    ``retry-after`` (seconds) for everyone; ``anthropic-ratelimit-{requests,tokens}-reset``
    (RFC 3339) and ``anthropic-ratelimit-unified-reset`` (Unix seconds) for Claude;
    ``x-ratelimit-reset-{requests,tokens}`` (``30s``) for OpenAI clients. The default
    message says "try again in 30s", the phrase codex parses. Gemini's error body gets a
    ``RetryInfo`` detail from ``retry-after`` (see ``tests/fakes/gemini.py``).
    """
    reset = reset_at or datetime.now(UTC) + timedelta(seconds=retry_after)
    rfc3339 = reset.astimezone(UTC).isoformat().replace("+00:00", "Z")
    headers = {
        "retry-after": str(retry_after),
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": rfc3339,
        "anthropic-ratelimit-tokens-reset": rfc3339,
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": str(int(reset.timestamp())),
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{retry_after}s",
        "x-ratelimit-reset-tokens": f"{retry_after}s",
    }
    text = message or f"Rate limit reached. Please try again in {retry_after}s."
    return HttpError(429, text, headers)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received, secrets redacted.

    ``api`` names the model API that answered it (``anthropic``, ``openai-chat``,
    ``openai-responses``, ``gemini``, ``ollama``) or is None for probes (``GET /``, model
    lists, token counts, unknown paths). ``turn`` is what answered a model request.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any
    api: str | None = None
    turn: Turn | None = None

    def body_text(self) -> str:
        """The body as one JSON string, to check that a text appears anywhere in it."""
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-cased headers with the values of credential headers replaced."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = REDACTED if key in SECRET_HEADERS else value
    return out


def redact_query(query: Mapping[str, str]) -> dict[str, str]:
    """Query parameters with API keys (Gemini's ``?key=``) replaced."""
    return {k: REDACTED if k.lower() in SECRET_QUERY else v for k, v in query.items()}
