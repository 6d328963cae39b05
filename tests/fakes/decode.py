"""Client-side decoding of what the fake model server sends, for tests.

Splits SSE and NDJSON streams the way the official clients do and reassembles text, tool
calls, usage and errors per API, checking the framing rules those clients depend on
(event name equal to the payload type, ``[DONE]`` last, ``done`` only on the last line).
"""

from __future__ import annotations

import json
from typing import Any

JSON = dict[str, Any]


def call(api: str, *, stream: bool, prompt: str = "hello") -> tuple[str, JSON, JSON]:
    """(path, body, query) of a model request to ``api``."""
    if api == "anthropic":
        body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}
        return "/v1/messages", {**body, "stream": stream}, {}
    if api == "openai-chat":
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body, {}
    if api == "openai-responses":
        return "/v1/responses", {"model": "m", "input": prompt, "stream": stream}, {}
    if api == "gemini":
        action = "streamGenerateContent" if stream else "generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        return f"/v1beta/models/gem:{action}", body, {"alt": "sse"} if stream else {}
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    return "/api/chat", body, {}


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event, as an SSE client splits them."""
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        events.append((name, "\n".join(data)))
    return events


def decode(api: str, raw: str) -> tuple[str, list[tuple[str, JSON]], list[str | None]]:
    """Reassemble a stream: (text, tool calls as (name, args), event kinds in order).

    Also checks the framing rules each API's clients depend on.
    """
    text, calls, kinds = "", [], []
    if api == "ollama":
        lines = [json.loads(line) for line in raw.splitlines() if line]
        assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])
        for line in lines:
            text += line["message"]["content"]
            for tc in line["message"].get("tool_calls", []):
                calls.append((tc["function"]["name"], tc["function"]["arguments"]))
        return text, calls, ["done"]
    events = sse_events(raw)
    if api == "openai-chat":
        assert events[-1][1] == "[DONE]"
        events = events[:-1]
    pending: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for name, data in events:
        payload = json.loads(data)
        if api in ("anthropic", "openai-responses"):
            assert name == payload["type"], "the SSE event name must equal the payload type"
            kinds.append(name)
        if api == "anthropic":
            delta = payload.get("delta", {})
            if (
                payload["type"] == "content_block_start"
                and payload["content_block"]["type"] == "tool_use"
            ):
                names[payload["index"]] = payload["content_block"]["name"]
                pending[payload["index"]] = []
            if delta.get("type") == "text_delta":
                text += delta["text"]
            if delta.get("type") == "input_json_delta":
                pending[payload["index"]].append(delta["partial_json"])
        elif api == "openai-responses":
            if name == "response.output_text.delta":
                text += payload["delta"]
            if name == "response.output_item.done" and payload["item"]["type"] == "function_call":
                calls.append((payload["item"]["name"], json.loads(payload["item"]["arguments"])))
        elif api == "openai-chat":
            for choice in payload["choices"]:
                delta = choice["delta"]
                text += delta.get("content") or ""
                for tc in delta.get("tool_calls", []):
                    if "id" in tc:
                        names[tc["index"]] = tc["function"]["name"]
                    pending.setdefault(tc["index"], []).append(tc["function"]["arguments"])
            kinds.append(payload["choices"][0]["finish_reason"] if payload["choices"] else "usage")
        else:  # gemini
            for part in payload["candidates"][0]["content"]["parts"]:
                text += part.get("text", "")
                if "functionCall" in part:
                    calls.append((part["functionCall"]["name"], part["functionCall"]["args"]))
            kinds.append(payload["candidates"][0].get("finishReason") or "chunk")
    calls += [(names[i], json.loads("".join(parts))) for i, parts in sorted(pending.items())]
    return text, calls, kinds


def from_json(api: str, body: JSON) -> tuple[str, list[tuple[str, JSON]]]:
    """(text, tool calls) of a non-streaming answer."""
    if api == "anthropic":
        text = "".join(b["text"] for b in body["content"] if b["type"] == "text")
        return text, [(b["name"], b["input"]) for b in body["content"] if b["type"] == "tool_use"]
    if api == "openai-chat":
        msg = body["choices"][0]["message"]
        calls = [
            (tc["function"]["name"], json.loads(tc["function"]["arguments"]))
            for tc in msg.get("tool_calls", [])
        ]
        return msg["content"] or "", calls
    if api == "openai-responses":
        text, calls = "", []
        for item in body["output"]:
            if item["type"] == "message":
                text += "".join(c["text"] for c in item["content"])
            if item["type"] == "function_call":
                calls.append((item["name"], json.loads(item["arguments"])))
        return text, calls
    if api == "gemini":
        parts = body["candidates"][0]["content"]["parts"]
        calls = [
            (p["functionCall"]["name"], p["functionCall"]["args"])
            for p in parts
            if "functionCall" in p
        ]
        return "".join(p.get("text", "") for p in parts), calls
    msg = body["message"]
    return msg["content"], [
        (t["function"]["name"], t["function"]["arguments"]) for t in msg.get("tool_calls", [])
    ]


def usage_of(api: str, body: JSON) -> tuple[int, int]:
    """(input, output) tokens of a non-streaming answer."""
    if api == "anthropic":
        return body["usage"]["input_tokens"], body["usage"]["output_tokens"]
    if api == "openai-chat":
        return body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]
    if api == "openai-responses":
        return body["usage"]["input_tokens"], body["usage"]["output_tokens"]
    if api == "gemini":
        meta = body["usageMetadata"]
        return meta["promptTokenCount"], meta["candidatesTokenCount"]
    return body["prompt_eval_count"], body["eval_count"]


def error_fields(api: str, body: JSON) -> tuple[str, str]:
    """(error kind, message) of an API error body."""
    if api == "anthropic":
        assert body["type"] == "error"
        return body["error"]["type"], body["error"]["message"]
    if api in ("openai-chat", "openai-responses"):
        return body["error"]["code"] or body["error"]["type"], body["error"]["message"]
    if api == "gemini":
        return body["error"]["status"], body["error"]["message"]
    return "", body["error"]
