"""The agent-CLI parsers on captured outputs, and their helpers.

Every fixture in tests/fixtures/agent-output (``<parser>/<case>.stdout|.stderr|.exit``) is
parsed and compared with its exact expectation in tests/parser_cases.py; then the rules the
fixtures do not pin (lost processes, exit codes, transient errors), the reset-time and
classification helpers, and properties: no input makes a parser raise.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bosun.agents.parse_common import JsonDocBuffer
from bosun.agents.parse_errors import classify, find_status
from bosun.agents.parsers import PARSERS, get_parser, parse_capture, split_output
from bosun.agents.reset_time import find_reset_hint, parse_reset_time
from bosun.errors import ConfigError
from bosun.models import ErrorKind, Outcome
from bosun.providers.base import Stream
from tests.parser_cases import EXPECTED, at

FIXTURES = Path(__file__).parent / "fixtures" / "agent-output"
CLI_PARSERS = sorted(set(PARSERS) - {"raw", "jsonl"})
CASES = sorted((parser, case) for parser, cases in EXPECTED.items() for case in cases)


def load(parser: str, case: str) -> tuple[str, str, int]:
    def read(ext: str) -> str:
        return (FIXTURES / parser / f"{case}.{ext}").read_text(encoding="utf-8")

    return read("stdout"), read("stderr"), int(read("exit"))


def capture(parser: str, case: str, exit_code: int | None = -1000) -> Outcome:
    stdout, stderr, code = load(parser, case)
    return parse_capture(parser, stdout, stderr, code if exit_code == -1000 else exit_code)[1]


# -- fixtures ------------------------------------------------------------------------------
def test_every_fixture_has_an_expectation_and_every_cli_parser_has_fixtures() -> None:
    on_disk = {(p.parent.name, p.name.split(".")[0]) for p in FIXTURES.glob("*/*.stdout")}
    assert on_disk == set(CASES)
    assert sorted(EXPECTED) == CLI_PARSERS
    for parser, case in CASES:
        assert (FIXTURES / parser / f"{case}.stderr").is_file()
        assert (FIXTURES / parser / f"{case}.exit").is_file()


@pytest.mark.parametrize(("parser", "case"), CASES)
def test_parser_derives_the_expected_outcome_and_events(parser: str, case: str) -> None:
    stdout, stderr, code = load(parser, case)
    events, outcome = parse_capture(parser, stdout, stderr, code)
    expected = EXPECTED[parser][case]
    assert outcome == expected.outcome
    assert [e for e in events if e.kind != "output"] == expected.events


@pytest.mark.parametrize(("parser", "case"), CASES)
def test_each_line_yields_events_and_a_replay_rebuilds_the_same_state(
    parser: str, case: str
) -> None:
    stdout, stderr, code = load(parser, case)
    lines: list[tuple[Stream, str]] = [("stdout", x) for x in split_output(stdout)]
    lines += [("stderr", x) for x in split_output(stderr)]
    first, second = get_parser(parser), get_parser(parser)
    for stream, line in lines:
        events = first.feed(stream, line)
        assert events, f"no event for {line!r}"
        assert second.feed(stream, line) == events
    assert first.finish(code) == second.finish(code)


def test_the_dispatcher_can_resolve_a_wall_clock_reset_left_in_the_error() -> None:
    # claude's json result names "resets 3pm (Europe/Berlin)": no date, so no resume_at.
    outcome = capture("claude-json", "429")
    assert outcome.resume_at is None and outcome.error is not None
    now = at(12, 0)
    assert parse_reset_time(outcome.error, now) == at(14, 0)  # 15:00 CET
    gemini = capture("gemini-json", "429")
    assert gemini.error is not None
    assert parse_reset_time(gemini.error, now) == now + timedelta(seconds=37)


# -- outcome rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("parser", CLI_PARSERS)
def test_a_vanished_process_is_lost_but_keeps_what_the_output_said(parser: str) -> None:
    outcome = capture(parser, "success", exit_code=None)
    expected = EXPECTED[parser]["success"].outcome
    assert not outcome.success
    assert outcome.error_kind is ErrorKind.LOST
    assert (outcome.session_id, outcome.tokens_in) == (expected.session_id, expected.tokens_in)


@pytest.mark.parametrize("parser", CLI_PARSERS)
def test_a_reported_api_error_outlives_a_vanished_process(parser: str) -> None:
    assert capture(parser, "401", exit_code=None).error_kind is ErrorKind.AUTH


def test_a_reported_success_with_a_failing_exit_code_fails() -> None:
    outcome = capture("claude-stream-json", "success", exit_code=1)
    assert (outcome.success, outcome.error_kind) == (False, ErrorKind.AGENT)
    assert outcome.error == "exited with code 1"
    killed = capture("codex-jsonl", "success", exit_code=-9)
    assert killed.error == "killed by signal 9"


def test_plain_stderr_on_failure_is_classified() -> None:
    _, resume = parse_capture("claude-json", "", "No conversation found with session ID: 42\n", 1)
    assert (resume.error_kind, resume.error) == (
        ErrorKind.AGENT,
        "exited with code 1: No conversation found with session ID: 42",
    )
    _, login = parse_capture("claude-stream-json", "", "Invalid API key · Please run /login\n", 1)
    assert login.error_kind is ErrorKind.AUTH
    assert login.error == (
        "exited with code 1: authentication failed: Invalid API key · Please run /login"
    )


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        (145, ErrorKind.AUTH, "HTTP 401"),
        (173, ErrorKind.USAGE_LIMIT, "HTTP 429"),
        (244, ErrorKind.SERVER, "HTTP 500"),
        (53, ErrorKind.MAX_TURNS, None),
        (41, ErrorKind.AUTH, None),
        (55, ErrorKind.CONFIG, None),
        (1, ErrorKind.AGENT, None),
    ],
)
def test_gemini_exit_codes_name_the_failure(code: int, kind: ErrorKind, status: str | None) -> None:
    for name in ("gemini-json", "gemini-stream-json"):
        _, outcome = parse_capture(name, "", "Error when talking to Gemini API\n", code)
        assert outcome.error_kind is kind
        assert outcome.error is not None and (status is None or status in outcome.error)


def test_permission_denials_do_not_fail_a_run_that_wrote_a_file() -> None:
    stdout, _, _ = load("claude-stream-json", "tool-call-writes-file")
    result = json.loads(stdout.splitlines()[-1])
    denial = {"tool_name": "Bash", "tool_use_id": "t9", "tool_input": {"command": "rm -rf x"}}
    result["permission_denials"] = [denial]
    patched = "\n".join([*stdout.splitlines()[:-1], json.dumps(result)])
    _, outcome = parse_capture("claude-stream-json", patched, "", 0)
    assert outcome.success
    _, json_mode = parse_capture("claude-json", json.dumps(result), "", 0)
    assert json_mode.error == "permission denied: Bash rm -rf x was refused; no file was written"


def test_codex_survives_reconnects_and_errors_its_turn_outlived() -> None:
    lines = [
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "turn.started"},
        {"type": "error", "message": "Reconnecting... 1/5"},
        {"type": "error", "message": "stream disconnected before completion"},
        {"type": "item.completed", "item": {"id": "i", "type": "agent_message", "text": "ok"}},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}},
    ]
    events, outcome = parse_capture(
        "codex-jsonl", "".join(json.dumps(x) + "\n" for x in lines), "", 0
    )
    assert outcome == Outcome(True, "ok", "t-1", 1, 10, 2)
    assert [e.kind for e in events] == ["output", "output", "output", "error", "text", "output"]


def test_aider_reads_its_analytics_log_from_either_stream() -> None:
    stdout, stderr, code = load("aider", "success")
    assert parse_capture("aider", stdout + stderr, "", code)[1] == capture("aider", "success")


# -- helpers ---------------------------------------------------------------------------------
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "absolute", "relative"),
    [
        ("Claude AI usage limit reached|1773154800", at(15, 0), at(15, 0)),
        ('{"resets_at":1773154800000}', at(15, 0), at(15, 0)),
        ("rate limited until 2026-03-10T15:30:00+01:00", at(14, 30), at(14, 30)),
        ("You've hit your limit · resets 3pm (Europe/Berlin)", None, at(14, 0)),
        ("resets 1:30am (Asia/Dhaka)", None, at(19, 30)),
        ("Limits will reset at 9:30 AM.", None, datetime(2026, 3, 11, 9, 30, tzinfo=UTC)),
        (
            "try again at Mar 12th, 2026 3:04 PM (UTC)",
            datetime(2026, 3, 12, 15, 4, tzinfo=UTC),
            None,
        ),
        ("Please try again in 20s.", None, at(12, 0, 20)),
        ("try again in 1h2m3s", None, at(13, 2, 3)),
        ("try again in 2 hours 5 minutes", None, at(14, 5)),
        ("Retry-After: 30", None, at(12, 0, 30)),
        ('"retryDelay": "37s"', None, at(12, 0, 37)),
        ('"resets_in_seconds":7200', None, at(14, 0)),
        ("Retrying in 0.2 seconds...", None, None),
        ("resets 5 files", None, None),
        ("resets at 25:00", None, None),
    ],
)
def test_parse_reset_time(text: str, absolute: datetime | None, relative: datetime | None) -> None:
    assert parse_reset_time(text, None) == absolute
    assert parse_reset_time(text, NOW) == (relative if relative is not None else absolute)
    assert (find_reset_hint(text) is not None) == ((absolute or relative) is not None)


def test_parse_reset_time_reads_a_naive_now_as_utc() -> None:
    assert parse_reset_time("try again in 1m", datetime(2026, 3, 10, 12, 0)) == at(12, 1)


@pytest.mark.parametrize(
    ("text", "status", "kind"),
    [
        ("API Error: 401 invalid x-api-key", 401, ErrorKind.AUTH),
        ('{"statusCode":429,"message":"slow down"}', 429, ErrorKind.USAGE_LIMIT),
        ("exceeded retry limit, last status: 500 Internal Server Error", 500, ErrorKind.SERVER),
        ("Error code: 403 - forbidden", 403, ErrorKind.AUTH),
        ("504 Gateway Timeout", 504, ErrorKind.SERVER),
        ("Request timed out.", None, ErrorKind.TIMEOUT),
        ("Resource has been exhausted (e.g. check quota).", None, ErrorKind.USAGE_LIMIT),
        ("Overloaded", None, ErrorKind.SERVER),
        ("Invalid API key · Fix external API key", None, ErrorKind.AUTH),
        ("wrote 200 lines", None, ErrorKind.AGENT),
    ],
)
def test_classify_reads_the_status_then_the_wording(
    text: str, status: int | None, kind: ErrorKind
) -> None:
    assert find_status(text) == status
    info = classify(text)
    assert info.kind is kind
    assert ("HTTP" in info.message) == (status is not None)


def test_classify_keeps_a_clipped_reset_hint() -> None:
    info = classify("rate limit " + "x" * 400 + " try again in 5m")
    assert info.message.startswith("usage or rate limit reached (try again in 5m): rate limit")
    assert parse_reset_time(info.message, NOW) == at(12, 5)


def test_json_doc_buffer_reads_pretty_documents_and_gives_up_on_text() -> None:
    buf = JsonDocBuffer()
    doc = {"a": [1, {"b": "}"}], "c": "x"}
    pieces = json.dumps(doc, indent=2).split("\n")
    assert [buf.push(line) for line in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert buf.active
    assert buf.push(pieces[-1]) == doc
    assert buf.push('{"one": 1}') == {"one": 1}
    assert buf.push("{ not json") is None and buf.active
    assert buf.push("plain text") is None and not buf.active


def test_split_output_matches_how_providers_cut_lines() -> None:
    assert split_output("") == []
    assert split_output("a\r\nb\n") == ["a", "b"]
    assert split_output("a\n\nb") == ["a", "", "b"]


def test_parse_capture_unknown_parser() -> None:
    with pytest.raises(ConfigError, match="unknown parser 'nope'"):
        parse_capture("nope", "", "", 0)


# -- properties ------------------------------------------------------------------------------
KEYS = (  # noqa: SIM905
    "type subtype message content text role delta item items changes path kind part state "
    "status input tool tool_name tool_id parameters usage tokens cache cost total_cost_usd "
    "result is_error api_error_status permission_denials error errors data statusCode name "
    "session_id sessionID thread_id num_turns stats models response event properties time "
    "timestamp id tool_use_id rate_limit_info resetsAt model"
).split()
TYPES = (  # noqa: SIM905
    "system assistant user result rate_limit_event thread.started turn.started item.started "
    "item.completed turn.completed turn.failed error init message tool_use tool_result "
    "step_start step_finish text file_change agent_message command_execution "
    "success error_max_turns message_send message_send_exception exit write edit Write"
).split()
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(TYPES),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=15,
)
structured_lines = st.lists(
    st.tuples(
        st.sampled_from(["stdout", "stderr"]),
        st.one_of(
            st.text(max_size=60),
            json_values.map(lambda v: json.dumps(v)),
            json_values.map(lambda v: json.dumps(v, indent=2)),
        ),
    ),
    max_size=8,
)
exit_codes = st.one_of(st.none(), st.integers(-64, 255))


@settings(max_examples=60)  # each example runs all nine parsers
@given(lines=structured_lines, code=exit_codes)
def test_no_input_makes_a_parser_raise(lines: list[tuple[Stream, str]], code: int | None) -> None:
    for name in CLI_PARSERS:  # one example for all parsers: generating JSON is the slow part
        parser = get_parser(name)
        for stream, text in lines:
            for line in split_output(text) or [""]:
                assert parser.feed(stream, line)
        outcome = parser.finish(code)
        assert isinstance(outcome, Outcome)
        assert len(outcome.summary) <= 500
        assert outcome.success == (outcome.error is None)
        if outcome.error is not None:
            assert "\n" not in outcome.error and len(outcome.error) <= 600
        if code is None:
            assert not outcome.success


def _json_lines(parser: str) -> list[Any]:
    values = []
    for path in sorted((FIXTURES / parser).glob("*.std*")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(("{", "[")):
                with contextlib.suppress(ValueError):
                    values.append(json.loads(line))
    return values


FIXTURE_JSON = {name: _json_lines(name) for name in CLI_PARSERS}


def mutated(value: Any) -> st.SearchStrategy[Any]:
    """``value`` with some of its leaves replaced by arbitrary JSON."""
    if isinstance(value, dict):
        return st.fixed_dictionaries({k: mutated(v) for k, v in value.items()})
    if isinstance(value, list):
        return st.tuples(*(mutated(v) for v in value)).map(list)
    return st.one_of(st.just(value), st.just(value), scalars)


# Built once: strategies over big fixture objects are costly to construct per example.
MUTATED_RUNS = st.one_of(
    *(
        st.tuples(st.just(name), st.lists(st.one_of(*map(mutated, pool)), max_size=6))
        for name, pool in FIXTURE_JSON.items()
        if pool
    )
)


@settings(max_examples=60)
@given(run=MUTATED_RUNS, code=exit_codes)
def test_real_shapes_with_arbitrary_values_never_make_a_parser_raise(
    run: tuple[str, list[Any]], code: int | None
) -> None:
    name, values = run
    parser = get_parser(name)
    for value in values:
        for stream in ("stdout", "stderr"):
            assert parser.feed(stream, json.dumps(value))
    outcome = parser.finish(code)
    assert outcome.success == (outcome.error is None)
    assert outcome.error is None or "\n" not in outcome.error


@given(text=st.text(max_size=200), offset=st.integers(-(10**6), 10**6))
def test_parse_reset_time_never_raises(text: str, offset: int) -> None:
    now = NOW + timedelta(seconds=offset)
    for when in (parse_reset_time(text, None), parse_reset_time(text, now)):
        assert when is None or when.tzinfo is not None
