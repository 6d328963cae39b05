"""Gemini API (``/v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``)
rendering for the fake model server.

Every answer is a ``GenerateContentResponse``: ``candidates[0].content`` (role ``model``)
with ``parts`` holding ``text`` or a whole ``functionCall`` (``name``, ``args``), plus
``finishReason`` and ``usageMetadata`` on the last one. ``?alt=sse`` streams each chunk as
an unnamed SSE ``data:`` line: text pieces, then a last chunk carrying the function call
(or an empty text part), ``finishReason: STOP`` and the usage. Without ``alt=sse`` the
stream endpoint answers a JSON array of the same chunks. Errors:
``{"error": {"code", "message", "status", "details"}}``; a 429 with ``retry-after`` gets
a ``google.rpc.RetryInfo`` detail (``retryDelay: "30s"``), which gemini-cli reads.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.turns import HttpError, Text, ToolCall, Usage
from tests.fakes.wire import SSE, Context, Reply, StreamPlan, pieces, sse

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(err: HttpError) -> dict[str, Any]:
    """The JSON body of a Gemini API error."""
    if err.body is not None:
        return dict(err.body)
    details: list[dict[str, Any]] = []
    retry_after = {k.lower(): v for k, v in err.headers.items()}.get("retry-after")
    if err.status == 429 and retry_after is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{retry_after}s",
            }
        )
    return {
        "error": {
            "code": err.status,
            "message": err.text(),
            "status": err.code or STATUSES.get(err.status, "UNKNOWN"),
            "details": details,
        }
    }


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens,
        "totalTokenCount": usage.total_tokens,
        "cachedContentTokenCount": usage.cached_input_tokens,
    }


def _chunk(
    ctx: Context, parts: list[dict[str, Any]], usage: Usage | None, finished: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finished:
        candidate["finishReason"] = "STOP"
    out: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": ctx.model,
        "responseId": f"fake-{ctx.seq}",
    }
    if usage is not None:
        out["usageMetadata"] = _usage(usage)
    return out


def _call_part(turn: ToolCall) -> dict[str, Any]:
    call: dict[str, Any] = {"name": turn.name, "args": dict(turn.arguments)}
    if turn.call_id:
        call["id"] = turn.call_id
    return {"functionCall": call}


def _chunks(turn: Text | ToolCall) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """The parts of each non-final chunk, and the parts of the final one."""
    if isinstance(turn, Text):
        return [[{"text": p}] for p in pieces(turn.text, turn.chunk_size)], [{"text": ""}]
    texts = [[{"text": p}] for p in pieces(turn.text, turn.chunk_size)] if turn.text else []
    return texts, [_call_part(turn)]


def render(turn: Text | ToolCall, ctx: Context, *, sse_stream: bool = True) -> Reply:
    """The Gemini answer: one response (generateContent), an SSE stream (alt=sse), or a
    JSON array of chunks (streamGenerateContent without alt=sse)."""
    if not ctx.stream:
        if isinstance(turn, Text):
            parts: list[dict[str, Any]] = [{"text": turn.text}]
        else:
            parts = ([{"text": turn.text}] if turn.text else []) + [_call_part(turn)]
        return Reply(json=_chunk(ctx, parts, turn.usage, finished=True))
    body, last = _chunks(turn)
    chunks = [_chunk(ctx, parts, None, finished=False) for parts in body]
    final = _chunk(ctx, last, turn.usage, finished=True)
    if not sse_stream:
        return Reply(json=[*chunks, final])
    return Reply(stream=StreamPlan(SSE, (), tuple(sse(c) for c in chunks), (sse(final),)))


def count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """``:countTokens``: a rough count, enough for clients that ask."""
    return {"totalTokens": max(1, len(str(body.get("contents", ""))) // 4)}


def model_info(name: str) -> dict[str, Any]:
    """One entry of ``GET /v1beta/models``."""
    return {
        "name": f"models/{name}",
        "displayName": name,
        "inputTokenLimit": 1_000_000,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }
