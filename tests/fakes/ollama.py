"""Ollama native API (``POST /api/chat``, ``GET /api/tags``) rendering for the fake server.

``/api/chat`` streams unless the body says ``"stream": false``: NDJSON lines
``{"model", "created_at", "message": {"role": "assistant", "content": piece}, "done":
false}``, a tool call as one line whose message has ``tool_calls: [{"function": {"name",
"arguments": {...}}}]`` (arguments an object, not a string), then a last line with
``done: true``, ``done_reason`` and the counters (``prompt_eval_count``, ``eval_count``,
durations in nanoseconds). Non-streaming answers are one such final object holding the
whole message. Errors: ``{"error": "message"}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.fakes.turns import HttpError, Text, ToolCall, Usage
from tests.fakes.wire import NDJSON, Context, Reply, StreamPlan, ndjson, pieces


def error_body(err: HttpError) -> dict[str, Any]:
    """The JSON body of an Ollama error."""
    if err.body is not None:
        return dict(err.body)
    return {"error": err.text()}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    return {"model": ctx.model, "created_at": _now(), "message": message, "done": False}


def _final(ctx: Context, message: dict[str, Any], usage: Usage) -> dict[str, Any]:
    return {
        "model": ctx.model,
        "created_at": _now(),
        "message": message,
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": usage.input_tokens,
        "prompt_eval_duration": 100_000,
        "eval_count": usage.output_tokens,
        "eval_duration": 500_000,
    }


def _tool_calls(turn: ToolCall) -> list[dict[str, Any]]:
    return [{"function": {"name": turn.name, "arguments": dict(turn.arguments)}}]


def render(turn: Text | ToolCall, ctx: Context) -> Reply:
    """The ``/api/chat`` answer for a text or tool-call turn, streamed or not."""
    if not ctx.stream:
        message: dict[str, Any] = {"role": "assistant", "content": turn.text}
        if isinstance(turn, ToolCall):
            message["tool_calls"] = _tool_calls(turn)
        return Reply(json=_final(ctx, message, turn.usage))
    deltas = [
        ndjson(_line(ctx, {"role": "assistant", "content": piece}))
        for piece in pieces(turn.text, turn.chunk_size)
        if piece or isinstance(turn, Text)
    ]
    if isinstance(turn, ToolCall):
        call = {"role": "assistant", "content": "", "tool_calls": _tool_calls(turn)}
        deltas.append(ndjson(_line(ctx, call)))
    closing = (ndjson(_final(ctx, {"role": "assistant", "content": ""}, turn.usage)),)
    return Reply(stream=StreamPlan(NDJSON, (), tuple(deltas), closing))


def tags(models: tuple[str, ...]) -> dict[str, Any]:
    """``GET /api/tags``: the locally available models."""
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 1,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "fake", "parameter_size": "1B"},
            }
            for name in models
        ]
    }


def show(name: str) -> dict[str, Any]:
    """``POST /api/show``: enough model details for clients that look up a context size."""
    return {
        "modelfile": f"FROM {name}",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {"format": "gguf", "family": "fake", "parameter_size": "1B"},
        "model_info": {"general.architecture": "fake", "fake.context_length": 32768},
        "capabilities": ["completion", "tools"],
    }
