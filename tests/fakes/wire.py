"""Wire helpers shared by the per-API renderers: SSE / NDJSON framing and stream plans.

A renderer turns a turn into either a JSON body (non-streaming) or a ``StreamPlan``: the
frames to send, split in three so the server can pace them (slow streams) or stop after
the deltas (a stalled stream, ``Hang(partial_text=...)``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The frames of one streamed answer.

    ``opening`` announces the message, ``deltas`` carry the content, ``closing`` finishes
    it (stop reason, usage, terminator). A stalled stream sends opening and deltas only.
    """

    media_type: str
    opening: tuple[str, ...]
    deltas: tuple[str, ...]
    closing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """What one API renderer produced for a turn: a JSON body or a stream plan."""

    json: dict[str, Any] | list[Any] | None = None
    stream: StreamPlan | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """Facts about the request a renderer needs: the model asked for, streaming or not,
    a per-server sequence number for ids, and the JSON body itself."""

    model: str
    stream: bool
    seq: int
    body: dict[str, Any]


def dumps(value: Any) -> str:
    """Compact JSON, as the real APIs send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event: an optional ``event:`` line, one ``data:`` line, a blank line."""
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else dumps(data)
    return f"{head}data: {payload}\n\n"


def ndjson(data: Any) -> str:
    """One newline-delimited JSON line."""
    return dumps(data) + "\n"


def pieces(text: str, size: int) -> Iterator[str]:
    """``text`` cut in pieces of ``size`` characters (one empty piece for empty text)."""
    step = max(1, size)
    if not text:
        yield ""
        return
    for start in range(0, len(text), step):
        yield text[start : start + step]
