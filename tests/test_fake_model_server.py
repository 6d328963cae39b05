"""The fake model server answers every API it fakes, in that API's wire format.

Real server on 127.0.0.1, real HTTP through httpx. Streams are decoded the way the
official clients decode them (SSE event/data pairs, NDJSON lines) and reassembled, so a
wrong field name or a missing terminator fails here, not in a CLI run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import (
    FakeModelServer,
    Hang,
    HttpError,
    RecordedRequest,
    Text,
    ToolCall,
    Usage,
    auth_error,
    rate_limited,
    server_error,
)
from tests.fakes.decode import call, decode, error_fields, from_json, sse_events, usage_of
from tests.fakes.turns import REDACTED

ARGS = {"file_path": "notes/a.txt", "content": 'line one\nline "two"'}
LONG = "The quick brown fox jumps over the lazy dog."
APIS = ["anthropic", "openai-chat", "openai-responses", "gemini", "ollama"]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer(models=("fake-model", "other-model")) as fake:
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # One client for the module: building one per request costs more than the request.
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def fake(server: FakeModelServer) -> Iterator[FakeModelServer]:
    server.reset()
    yield server
    server.reset()


def stop_in_background(fake: FakeModelServer) -> threading.Thread:
    """Stop the server from another thread while this one reads a stream."""
    stopper = threading.Thread(target=fake.stop)
    stopper.start()
    return stopper


def post(
    http: httpx.Client, fake: FakeModelServer, api: str, *, stream: bool, **kw: Any
) -> httpx.Response:
    path, body, query = call(api, stream=stream, **kw)
    headers = {"x-api-key": "sk-secret", "authorization": "Bearer sk-secret"}
    return http.post(fake.url + path, json=body, params=query, headers=headers)


@pytest.mark.parametrize("api", APIS)
def test_text_turn_non_streaming(fake: FakeModelServer, api: str, http: httpx.Client) -> None:
    fake.push(Text(LONG, usage=Usage(input_tokens=100, output_tokens=20)))
    resp = post(http, fake, api, stream=False)
    assert resp.status_code == 200
    assert from_json(api, resp.json()) == (LONG, [])
    assert usage_of(api, resp.json()) == (100, 20)


@pytest.mark.parametrize("api", APIS)
def test_text_turn_streaming(fake: FakeModelServer, api: str, http: httpx.Client) -> None:
    fake.push(Text(LONG, chunk_size=5))
    resp = post(http, fake, api, stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith(
        "application/x-ndjson" if api == "ollama" else "text/event-stream"
    )
    text, calls, kinds = decode(api, resp.text)
    assert (text, calls) == (LONG, [])
    expected_kinds = {
        "anthropic": ["message_start", "content_block_start", "ping"]
        + ["content_block_delta"] * 9
        + ["content_block_stop", "message_delta", "message_stop"],
        "openai-responses": [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        + ["response.output_text.delta"] * 9
        + [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ],
        "openai-chat": [None] * 10 + ["stop", "usage"],
        "gemini": ["chunk"] * 9 + ["STOP"],
        "ollama": ["done"],
    }
    assert kinds == expected_kinds[api]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
def test_tool_call_turn(fake: FakeModelServer, api: str, stream: bool, http: httpx.Client) -> None:
    fake.push(ToolCall("write_it", ARGS, text="Writing the file.", chunk_size=7))
    resp = post(http, fake, api, stream=stream)
    assert resp.status_code == 200
    text, calls = decode(api, resp.text)[:2] if stream else from_json(api, resp.json())
    assert text == "Writing the file."
    assert calls == [("write_it", ARGS)]


def test_stream_terminal_events_carry_stop_reason_and_usage(
    fake: FakeModelServer, http: httpx.Client
) -> None:
    fake.push(ToolCall("Write", ARGS, call_id="toolu_1"), ToolCall("shell", {"command": ["ls"]}))
    anthropic = sse_events(post(http, fake, "anthropic", stream=True).text)
    start = json.loads(anthropic[0][1])["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    message_delta = json.loads(anthropic[-2][1])
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert message_delta["usage"]["output_tokens"] == 5
    assert json.loads(anthropic[2][1])["content_block"]["id"] == "toolu_1"

    responses = [
        json.loads(data)
        for _, data in sse_events(post(http, fake, "openai-responses", stream=True).text)
    ]
    assert [e["sequence_number"] for e in responses] == list(range(len(responses)))
    completed = responses[-1]["response"]
    assert completed["status"] == "completed" and completed["id"].startswith("resp_")
    assert completed["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    }
    assert completed["output"][0]["type"] == "function_call"


def test_responses_custom_tool_call(fake: FakeModelServer, http: httpx.Client) -> None:
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
    fake.push(ToolCall("apply_patch", custom_input=patch, chunk_size=10))
    events = [
        json.loads(d) for _, d in sse_events(post(http, fake, "openai-responses", stream=True).text)
    ]
    deltas = "".join(
        e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"
    )
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert deltas == patch
    assert done == [
        {
            "id": "ctc_fake_" + done[0]["id"].rsplit("_", 1)[1],
            "type": "custom_tool_call",
            "status": "completed",
            "call_id": done[0]["call_id"],
            "name": "apply_patch",
            "input": patch,
        }
    ]


def test_gemini_stream_without_alt_sse_is_a_json_array(
    fake: FakeModelServer, http: httpx.Client
) -> None:
    fake.push(Text(LONG, chunk_size=20))
    _, body, _ = call("gemini", stream=True)
    resp = http.post(fake.url + "/v1beta/models/gem:streamGenerateContent", json=body)
    chunks = resp.json()
    assert (
        "".join(p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"]) == LONG
    )
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


ERROR_KINDS = {
    "anthropic": {401: "authentication_error", 429: "rate_limit_error", 500: "api_error"},
    "openai-chat": {401: "invalid_api_key", 429: "rate_limit_exceeded", 500: "server_error"},
    "openai-responses": {401: "invalid_api_key", 429: "rate_limit_exceeded", 500: "server_error"},
    "gemini": {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"},
    "ollama": {401: "", 429: "", 500: ""},
}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("make", [auth_error, lambda: rate_limited(42), server_error])
def test_error_turns(
    fake: FakeModelServer, api: str, stream: bool, make: Callable[[], HttpError], http: httpx.Client
) -> None:
    err = make()
    fake.push(err)
    resp = post(http, fake, api, stream=stream)
    assert resp.status_code == err.status
    kind, message = error_fields(api, resp.json())
    assert kind == ERROR_KINDS[api][err.status]
    assert message == err.text()
    if err.status == 429:
        assert resp.headers["retry-after"] == "42"
        assert resp.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert int(resp.headers["anthropic-ratelimit-unified-reset"]) > 0
        assert "try again in 42s" in message
        if api == "gemini":
            assert resp.json()["error"]["details"] == [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "42s"}
            ]


def test_error_turn_with_custom_body_code_and_headers(
    fake: FakeModelServer, http: httpx.Client
) -> None:
    fake.push(
        HttpError(529, "busy", headers={"x-should-retry": "false"}),
        HttpError(429, code="insufficient_quota"),
        HttpError(400, body={"whatever": True}),
    )
    first = post(http, fake, "anthropic", stream=True)
    assert (first.status_code, first.headers["x-should-retry"]) == (529, "false")
    assert error_fields("anthropic", first.json()) == ("overloaded_error", "busy")
    assert (
        post(http, fake, "openai-responses", stream=True).json()["error"]["code"]
        == "insufficient_quota"
    )
    assert post(http, fake, "gemini", stream=False).json() == {"whatever": True}


def test_requests_are_recorded_with_secrets_redacted(
    fake: FakeModelServer, http: httpx.Client
) -> None:
    post(http, fake, "anthropic", stream=False, prompt="first question")
    http.post(
        fake.url + "/v1beta/models/gem:generateContent",
        params={"key": "AIza-secret"},
        json=call("gemini", stream=False, prompt="second")[1],
        headers={"x-goog-api-key": "AIza-secret"},
    )
    first, second = fake.model_requests
    assert (first.method, first.path, first.api) == ("POST", "/v1/messages", "anthropic")
    assert first.headers["x-api-key"] == REDACTED
    assert first.headers["authorization"] == REDACTED
    assert first.body["messages"][0]["content"] == "first question"
    assert "first question" in first.body_text()
    assert first.turn == Text("ok")
    assert (second.api, second.query["key"], second.headers["x-goog-api-key"]) == (
        "gemini",
        REDACTED,
        REDACTED,
    )
    assert all("secret" not in json.dumps([r.headers, r.query]) for r in fake.requests)


def test_turns_are_taken_in_order_then_the_default(
    fake: FakeModelServer, http: httpx.Client
) -> None:
    fake.push(Text("one"), Text("two"))
    fake.set_default(Text("fallback"))
    answers = [
        from_json("openai-chat", post(http, fake, "openai-chat", stream=False).json())[0]
        for _ in range(4)
    ]
    assert answers == ["one", "two", "fallback", "fallback"]
    assert fake.pending == 0
    fake.push(Text("left over"))
    fake.reset()
    assert (fake.pending, fake.requests) == (0, [])
    assert from_json("ollama", post(http, fake, "ollama", stream=False).json())[0] == "ok"


def test_probes_answer_without_taking_a_turn(fake: FakeModelServer) -> None:
    fake.push(Text("kept for the model call"))
    with httpx.Client(base_url=fake.url) as client:
        assert client.get("/").json()["ok"] is True
        assert client.head("/").status_code == 200
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [
            "fake-model",
            "other-model",
        ]
        assert client.get("/v1/models/fake-model").json()["id"] == "fake-model"
        assert [m["name"] for m in client.get("/api/tags").json()["models"]] == [
            "fake-model",
            "other-model",
        ]
        assert client.get("/v1beta/models").json()["models"][0]["name"] == "models/fake-model"
        assert (
            client.post("/v1/messages/count_tokens", json={"messages": []}).json()["input_tokens"]
            >= 1
        )
        assert client.post("/v1beta/models/gem:countTokens", json={}).json()["totalTokens"] >= 1
        missing = client.post("/api/event_logging/batch", json={})
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"
        bad = client.post("/v1/messages", content=b"not json")
        assert (bad.status_code, bad.json()["error"]["type"]) == (400, "invalid_request_error")
    assert fake.pending == 1
    assert fake.model_requests == []
    assert all(r.api is None for r in fake.requests)
    assert "/api/event_logging/batch" in [r.path for r in fake.requests]


def test_side_turn_answers_without_consuming_the_queue(http: httpx.Client) -> None:
    def titles(req: RecordedRequest) -> Text | None:
        return Text("A title") if "title" in req.body_text() else None

    with FakeModelServer(side_turn=titles) as fake:
        fake.push(Text("real answer"))
        assert (
            from_json(
                "anthropic",
                post(http, fake, "anthropic", stream=False, prompt="make a title").json(),
            )[0]
            == "A title"
        )
        assert (
            from_json("anthropic", post(http, fake, "anthropic", stream=False).json())[0]
            == "real answer"
        )
        assert [r.turn for r in fake.model_requests] == [Text("A title"), Text("real answer")]


def test_slow_stream_delivers_everything(fake: FakeModelServer, http: httpx.Client) -> None:
    fake.push(Text(LONG, chunk_size=11, delay=0.01))
    assert decode("anthropic", post(http, fake, "anthropic", stream=True).text)[0] == LONG


def test_slow_stream_is_paced_and_cut_by_stop() -> None:
    # A delay far longer than the test: the client must see the opening events at once,
    # and stopping the server must end the stream without its closing events.
    with FakeModelServer() as fake, httpx.Client(timeout=30) as client:
        fake.push(Text(LONG, delay=3600))
        path, body, _ = call("anthropic", stream=True)
        seen: list[str] = []
        stopper = None
        with client.stream("POST", fake.url + path, json=body) as resp:
            for line in resp.iter_lines():
                seen.append(line)
                if line == "event: ping":
                    stopper = stop_in_background(fake)
        assert stopper is not None
        stopper.join()
        assert "event: ping" in seen
        assert "event: message_stop" not in seen
        assert not any("text_delta" in line for line in seen)


async def test_hang_holds_until_the_server_stops() -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        async with FakeModelServer() as fake:
            fake.push(Hang())
            path, body, _ = call("openai-responses", stream=True)
            pending = asyncio.create_task(client.post(fake.url + path, json=body))
            await fake.wait_for_requests_async(1)
            await asyncio.sleep(0.05)
            assert not pending.done()
        resp = await pending
        assert resp.status_code == 503
        assert resp.json()["error"]["message"] == "The fake model server is shutting down."
        with pytest.raises(httpx.ConnectError):
            await client.get(fake.url)


async def test_hang_ends_when_the_client_gives_up() -> None:
    async with FakeModelServer() as fake:
        fake.push(Hang(), Text("after"))
        path, body, _ = call("anthropic", stream=False)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.2)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(fake.url + path, json=body)
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.post(fake.url + path, json=body)
        assert from_json("anthropic", resp.json())[0] == "after"


@pytest.mark.parametrize("api", APIS)
def test_hang_with_partial_text_stalls_mid_stream(api: str) -> None:
    with FakeModelServer() as fake, httpx.Client(timeout=30) as client:
        fake.push(Hang(partial_text="Thinking"))
        path, body, query = call(api, stream=True)
        raw = ""
        stopper = None
        with client.stream("POST", fake.url + path, json=body, params=query) as resp:
            for chunk in resp.iter_text():
                raw += chunk
                if stopper is None and "Thinking" in raw:
                    stopper = stop_in_background(fake)
        assert stopper is not None
        stopper.join()
    if api == "ollama":
        lines = [json.loads(line) for line in raw.splitlines() if line]
        assert [line["message"]["content"] for line in lines] == ["Thinking"]
        assert not any(line["done"] for line in lines)
        return
    events = sse_events(raw)
    assert any("Thinking" in data for _, data in events)
    # No terminator: the stream is cut, not finished.
    assert all(data != "[DONE]" and "finishReason" not in data for _, data in events)
    assert not any(name in ("message_stop", "response.completed") for name, _ in events)


def test_wait_for_requests_times_out_naming_what_arrived(
    fake: FakeModelServer, http: httpx.Client
) -> None:
    http.get(fake.url + "/v1/models")
    with pytest.raises(TimeoutError, match="GET /v1/models"):
        fake.wait_for_requests(1, timeout=0.05)


def test_start_twice_and_url_before_start_fail() -> None:
    fake = FakeModelServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    with fake:
        assert fake.url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="already started"):
            fake.start()
    fake.stop()  # stopping a stopped server is a no-op
