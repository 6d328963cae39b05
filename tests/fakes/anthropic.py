"""Anthropic Messages API (``POST /v1/messages``) rendering for the fake model server.

Stream event sequence (named SSE events, each ``data`` carrying the same ``type``), as the
Messages streaming documentation describes it: ``message_start`` (a Message with empty
``content``), ``ping``, then per content block ``content_block_start`` /
``content_block_delta`` (``text_delta`` or ``input_json_delta``) / ``content_block_stop``,
then ``message_delta`` (``stop_reason``, cumulative ``usage``) and ``message_stop``.
Errors: ``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.turns import HttpError, Text, ToolCall, Usage
from tests.fakes.wire import SSE, Context, Reply, StreamPlan, pieces, sse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_body(err: HttpError) -> dict[str, Any]:
    """The JSON body of an Anthropic API error."""
    if err.body is not None:
        return dict(err.body)
    kind = err.code or ERROR_TYPES.get(err.status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": err.text()},
        "request_id": "req_fake",
    }


def _usage(usage: Usage, *, output_tokens: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens if output_tokens is None else output_tokens,
    }


def _message(
    ctx: Context,
    content: list[dict[str, Any]],
    stop: str | None,
    usage: Usage,
    output_tokens: int | None = None,
) -> dict[str, Any]:
    return {
        "id": f"msg_fake_{ctx.seq}",
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(usage, output_tokens=output_tokens),
    }


def _tool_id(turn: ToolCall, ctx: Context) -> str:
    return turn.call_id or f"toolu_fake_{ctx.seq}"


def render(turn: Text | ToolCall, ctx: Context) -> Reply:
    """The Messages API answer for a text or tool-call turn, streamed or not."""
    if not ctx.stream:
        content: list[dict[str, Any]] = []
        if isinstance(turn, Text):
            content.append({"type": "text", "text": turn.text})
            stop = "end_turn"
        else:
            if turn.text:
                content.append({"type": "text", "text": turn.text})
            content.append(
                {
                    "type": "tool_use",
                    "id": _tool_id(turn, ctx),
                    "name": turn.name,
                    "input": dict(turn.arguments),
                }
            )
            stop = "tool_use"
        return Reply(json=_message(ctx, content, stop, turn.usage))
    return Reply(stream=_stream(turn, ctx))


def _text_block(index: int, text: str, size: int) -> tuple[list[str], list[str], str]:
    start = sse(
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
        "content_block_start",
    )
    deltas = [
        sse(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": piece},
            },
            "content_block_delta",
        )
        for piece in pieces(text, size)
    ]
    stop = sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    return [start], deltas, stop


def _stream(turn: Text | ToolCall, ctx: Context) -> StreamPlan:
    opening = [
        sse(
            {"type": "message_start", "message": _message(ctx, [], None, turn.usage, 1)},
            "message_start",
        )
    ]
    deltas: list[str] = []
    closing: list[str] = []
    if isinstance(turn, Text):
        start, text_deltas, stop = _text_block(0, turn.text, turn.chunk_size)
        opening += [*start, sse({"type": "ping"}, "ping")]
        deltas = text_deltas
        closing.append(stop)
        stop_reason = "end_turn"
    else:
        opening.append(sse({"type": "ping"}, "ping"))
        index = 0
        if turn.text:
            start, text_deltas, stop = _text_block(0, turn.text, turn.chunk_size)
            deltas += [*start, *text_deltas, stop]
            index = 1
        block = {"type": "tool_use", "id": _tool_id(turn, ctx), "name": turn.name, "input": {}}
        deltas.append(
            sse(
                {"type": "content_block_start", "index": index, "content_block": block},
                "content_block_start",
            )
        )
        for piece in pieces(turn.arguments_json(), turn.chunk_size):
            delta = {"type": "input_json_delta", "partial_json": piece}
            deltas.append(
                sse(
                    {"type": "content_block_delta", "index": index, "delta": delta},
                    "content_block_delta",
                )
            )
        closing.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        stop_reason = "tool_use"
    closing += [
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": _usage(turn.usage),
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return StreamPlan(SSE, tuple(opening), tuple(deltas), tuple(closing))


def count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/messages/count_tokens``: a rough count, enough for clients that ask."""
    return {"input_tokens": max(1, len(str(body.get("messages", ""))) // 4)}
