"""OpenAI Chat Completions (``POST /v1/chat/completions``) rendering for the fake server.

Stream: unnamed SSE ``data:`` lines, each a ``chat.completion.chunk`` whose
``choices[0].delta`` carries ``role``, then ``content`` pieces or ``tool_calls`` pieces
(the first with ``id``, ``type`` and ``function.name``, the rest only
``function.arguments``); a chunk with an empty delta and ``finish_reason``; when the
request asked ``stream_options.include_usage``, every chunk carries ``usage: null`` and a
last chunk has empty ``choices`` and the usage; then ``data: [DONE]``.
Errors (shared with the Responses API): ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.turns import HttpError, Text, ToolCall, Usage
from tests.fakes.wire import SSE, Context, Reply, StreamPlan, pieces, sse

# (type, code) per status, as the OpenAI API reports them.
ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def error_body(err: HttpError) -> dict[str, Any]:
    """The JSON body of an OpenAI API error."""
    if err.body is not None:
        return dict(err.body)
    kind, code = ERRORS.get(err.status, ("server_error", None))
    return {"error": {"message": err.text(), "type": kind, "param": None, "code": err.code or code}}


def usage_json(usage: Usage) -> dict[str, Any]:
    """Chat Completions usage object."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _call_id(turn: ToolCall, ctx: Context) -> str:
    return turn.call_id or f"call_fake_{ctx.seq}"


def render(turn: Text | ToolCall, ctx: Context) -> Reply:
    """The Chat Completions answer for a text or tool-call turn, streamed or not."""
    if ctx.stream:
        return Reply(stream=_stream(turn, ctx))
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if isinstance(turn, Text):
        message["content"] = turn.text
        finish = "stop"
    else:
        message["content"] = turn.text or None
        message["tool_calls"] = [
            {
                "id": _call_id(turn, ctx),
                "type": "function",
                "function": {"name": turn.name, "arguments": turn.arguments_json()},
            }
        ]
        finish = "tool_calls"
    return Reply(
        json={
            "id": f"chatcmpl-fake-{ctx.seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage_json(turn.usage),
        }
    )


def _stream(turn: Text | ToolCall, ctx: Context) -> StreamPlan:
    options = ctx.body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        data: dict[str, Any] = {
            "id": f"chatcmpl-fake-{ctx.seq}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": ctx.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return sse(data)

    opening = [chunk({"role": "assistant", "content": ""})]
    deltas: list[str] = []
    if isinstance(turn, Text):
        deltas = [chunk({"content": piece}) for piece in pieces(turn.text, turn.chunk_size)]
        finish = "stop"
    else:
        if turn.text:
            deltas = [chunk({"content": piece}) for piece in pieces(turn.text, turn.chunk_size)]
        first = {
            "index": 0,
            "id": _call_id(turn, ctx),
            "type": "function",
            "function": {"name": turn.name, "arguments": ""},
        }
        deltas.append(chunk({"tool_calls": [first]}))
        for piece in pieces(turn.arguments_json(), turn.chunk_size):
            deltas.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        finish = "tool_calls"
    closing = [chunk({}, finish)]
    if include_usage:
        closing.append(
            sse(
                {
                    "id": f"chatcmpl-fake-{ctx.seq}",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": ctx.model,
                    "choices": [],
                    "usage": usage_json(turn.usage),
                }
            )
        )
    closing.append(sse("[DONE]"))
    return StreamPlan(SSE, tuple(opening), tuple(deltas), tuple(closing))


def models_list(models: tuple[str, ...]) -> dict[str, Any]:
    """``GET /v1/models``, readable by OpenAI clients and by Anthropic's models list."""
    data = [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "fake",
            "type": "model",
            "display_name": name,
            "created_at": "2025-01-01T00:00:00Z",
        }
        for name in models
    ]
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": models[0] if models else None,
        "last_id": models[-1] if models else None,
    }
