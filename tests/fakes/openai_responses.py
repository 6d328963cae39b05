"""OpenAI Responses API (``POST /v1/responses``) rendering for the fake model server.

Stream (named SSE events, every payload with ``type`` and an increasing
``sequence_number``; no ``[DONE]``): ``response.created``, ``response.in_progress``; for a
message item ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``; for a function call
``response.output_item.added`` (``function_call`` item), ``response.function_call_arguments
.delta``..., ``response.function_call_arguments.done``, ``response.output_item.done``; for
a custom tool call the same with ``custom_tool_call`` and
``response.custom_tool_call_input.delta`` / ``.done``; finally ``response.completed`` with
the whole response and its ``usage``. codex reads ``output_item.done`` items and needs
``response.completed`` (with ``response.id``) before the stream ends.
"""

from __future__ import annotations

import time
from typing import Any

# Errors are shaped like the Chat Completions ones.
from tests.fakes.openai_chat import error_body as error_body
from tests.fakes.turns import Text, ToolCall, Usage
from tests.fakes.wire import SSE, Context, Reply, StreamPlan, pieces, sse


def usage_json(usage: Usage) -> dict[str, Any]:
    """Responses API usage object (codex requires every one of these fields)."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _response(
    ctx: Context, status: str, output: list[dict[str, Any]], usage: Usage | None
) -> dict[str, Any]:
    return {
        "id": f"resp_fake_{ctx.seq}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": ctx.body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None if usage is None else usage_json(usage),
        "metadata": {},
    }


def _message_item(ctx: Context, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
    if status == "completed" and not content:
        content = [{"type": "output_text", "text": "", "annotations": []}]
    return {
        "id": f"msg_fake_{ctx.seq}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(turn: ToolCall, ctx: Context, done: bool) -> dict[str, Any]:
    status = "completed" if done else "in_progress"
    call_id = turn.call_id or f"call_fake_{ctx.seq}"
    if turn.custom_input is not None:
        return {
            "id": f"ctc_fake_{ctx.seq}",
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": turn.name,
            "input": turn.custom_input if done else "",
        }
    return {
        "id": f"fc_fake_{ctx.seq}",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": turn.name,
        "arguments": turn.arguments_json() if done else "",
    }


def _output(turn: Text | ToolCall, ctx: Context) -> list[dict[str, Any]]:
    if isinstance(turn, Text):
        return [_message_item(ctx, turn.text, "completed")]
    items = [_message_item(ctx, turn.text, "completed")] if turn.text else []
    return [*items, _call_item(turn, ctx, done=True)]


def render(turn: Text | ToolCall, ctx: Context) -> Reply:
    """The Responses API answer for a text or tool-call turn, streamed or not."""
    if not ctx.stream:
        return Reply(json=_response(ctx, "completed", _output(turn, ctx), turn.usage))
    return Reply(stream=_stream(turn, ctx))


class _Events:
    """Numbers events in order, as the API's ``sequence_number`` does."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(payload, kind)


def _message_events(
    ev: _Events, ctx: Context, index: int, text: str, size: int
) -> tuple[list[str], list[str], list[str]]:
    item_id = f"msg_fake_{ctx.seq}"
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    start = [
        ev(
            "response.output_item.added",
            output_index=index,
            item=_message_item(ctx, "", "in_progress"),
        ),
        ev(
            "response.content_part.added",
            **where,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
    ]
    deltas = [
        ev("response.output_text.delta", **where, delta=piece, logprobs=[])
        for piece in pieces(text, size)
    ]
    end = [
        ev("response.output_text.done", **where, text=text, logprobs=[]),
        ev(
            "response.content_part.done",
            **where,
            part={"type": "output_text", "text": text, "annotations": []},
        ),
        ev(
            "response.output_item.done",
            output_index=index,
            item=_message_item(ctx, text, "completed"),
        ),
    ]
    return start, deltas, end


def _stream(turn: Text | ToolCall, ctx: Context) -> StreamPlan:
    ev = _Events()
    opening = [
        ev("response.created", response=_response(ctx, "in_progress", [], None)),
        ev("response.in_progress", response=_response(ctx, "in_progress", [], None)),
    ]
    deltas: list[str] = []
    closing: list[str] = []
    if isinstance(turn, Text):
        start, text_deltas, end = _message_events(ev, ctx, 0, turn.text, turn.chunk_size)
        opening += start
        deltas = text_deltas
        closing += end
    else:
        index = 0
        if turn.text:
            start, text_deltas, end = _message_events(ev, ctx, 0, turn.text, turn.chunk_size)
            deltas += [*start, *text_deltas, *end]
            index = 1
        item = _call_item(turn, ctx, done=False)
        where = {"item_id": item["id"], "output_index": index}
        deltas.append(ev("response.output_item.added", output_index=index, item=item))
        if turn.custom_input is not None:
            for piece in pieces(turn.custom_input, turn.chunk_size):
                deltas.append(ev("response.custom_tool_call_input.delta", **where, delta=piece))
            closing.append(
                ev("response.custom_tool_call_input.done", **where, input=turn.custom_input)
            )
        else:
            arguments = turn.arguments_json()
            for piece in pieces(arguments, turn.chunk_size):
                deltas.append(ev("response.function_call_arguments.delta", **where, delta=piece))
            closing.append(
                ev(
                    "response.function_call_arguments.done",
                    **where,
                    name=turn.name,
                    arguments=arguments,
                )
            )
        closing.append(
            ev(
                "response.output_item.done",
                output_index=index,
                item=_call_item(turn, ctx, done=True),
            )
        )
    closing.append(
        ev(
            "response.completed",
            response=_response(ctx, "completed", _output(turn, ctx), turn.usage),
        )
    )
    return StreamPlan(SSE, tuple(opening), tuple(deltas), tuple(closing))
