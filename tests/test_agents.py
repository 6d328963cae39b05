"""AgentSpec templates, delivery, env and resume; the raw / jsonl parsers; built-in agents."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bosun.agents import (
    BUILTIN_AGENTS,
    PARSERS,
    AgentSpec,
    PromptDelivery,
    get_parser,
    parse_lines,
    resolve_agents,
)
from bosun.config import AgentConfig
from bosun.errors import ConfigError, InputError
from bosun.models import AgentEvent, ErrorKind
from bosun.providers.base import Command, Stream

ENVIRON = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/home/me",
    "XDG_CONFIG_HOME": "/home/me/.config",
    "ANTHROPIC_API_KEY": "sk-secret",
    "AWS_SECRET_ACCESS_KEY": "also-secret",
}
RUN = "/runs/task-1"
WORK = "/work/task-1"


def build(spec: AgentSpec, prompt: str = "do it", **kw: Any) -> Command:
    kw.setdefault("environ", ENVIRON)
    return spec.build(prompt=prompt, workdir=WORK, run_dir=RUN, **kw)


def spec(**kw: Any) -> AgentSpec:
    kw.setdefault("command", ("tool", "--cwd", "{workdir}"))
    return AgentSpec(name=kw.pop("name", "tool"), **kw)


# -- delivery ------------------------------------------------------------------------------
def test_stdin_delivery_renders_argv_and_feeds_prompt() -> None:
    cmd = build(spec(), prompt="héllo\nworld")
    assert cmd.argv == ("tool", "--cwd", WORK)
    assert cmd.cwd == WORK
    assert cmd.stdin == "héllo\nworld".encode()
    assert "prompt.md" not in cmd.files


def test_file_delivery_writes_prompt_md_and_closes_stdin() -> None:
    s = spec(command=("aider", "--message-file", "{prompt_file}"), prompt=PromptDelivery.FILE)
    cmd = build(s, prompt="the task")
    assert cmd.argv == ("aider", "--message-file", f"{RUN}/prompt.md")
    assert cmd.stdin is None
    assert cmd.files["prompt.md"] == b"the task"


@pytest.mark.parametrize(
    "prompt", ["plain", "two words; rm -rf / $(reboot) `id` 'q' \"dq\"", "-starts-with-dash", ""]
)
def test_arg_delivery_passes_prompt_as_one_element(prompt: str) -> None:
    s = spec(command=("gemini", "-p", "{prompt}", "-o", "json"), prompt="arg")
    cmd = build(s, prompt=prompt)
    assert cmd.argv == ("gemini", "-p", prompt, "-o", "json")
    assert cmd.stdin is None


def test_arg_delivery_replaces_nul_and_refuses_oversized_prompts() -> None:
    s = spec(command=("t", "{prompt}"), prompt="arg")
    assert build(s, prompt="a\x00b\ud800").argv == ("t", "a\ufffdb?")
    assert build(spec(), prompt="x\ud800").stdin == b"x?"
    with pytest.raises(InputError, match="too long") as info:
        build(s, prompt="x" * 200_000)
    assert info.value.hint is not None
    assert "stdin" in info.value.hint


def test_prompt_text_is_never_substituted_as_a_template() -> None:
    s = spec(command=("t", "{prompt}"), prompt="arg")
    assert build(s, prompt="{workdir} {{x}} {nope").argv == ("t", "{workdir} {{x}} {nope")


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"command": ("t",), "prompt": "arg"}, 'exactly one "{prompt}"'),
        ({"command": ("t", "{prompt}", "{prompt}"), "prompt": "arg"}, 'exactly one "{prompt}"'),
        ({"command": ("t", "{prompt}")}, 'needs prompt = "arg"'),
        ({"command": ("t", "--p={prompt}"), "prompt": "arg"}, "unknown placeholder {prompt}"),
        ({"command": ("t", "{prompt_file}")}, "unknown placeholder {prompt_file}"),
        ({"command": ("t", "{session_id}")}, "unknown placeholder {session_id}"),
        ({"command": ("t", "{model}")}, "unknown placeholder {model}"),
        ({"command": ("t", "{a.b}")}, "bad template"),
        ({"command": ("t", "{x!r}")}, "bad template"),
        ({"command": ("t", "{x:>5}")}, "bad template"),
        ({"command": ("t", "{}")}, "bad template"),
        ({"command": ("t", "{oops")}, "bad template"),
        ({"command": ("t", "oops}")}, "bad template"),
        ({"command": ()}, "command is empty"),
        ({"env": {"K": "{nope}"}}, "env.K: unknown placeholder {nope}"),
        ({"env": {"bad-name": "1"}}, "env name"),
        ({"env": {"HOME": "/x"}}, "isolated_home controls"),
        ({"env_allow": ("PA TH",)}, "env_allow entry"),
        ({"files": {"/etc/passwd": "x"}}, "relative to the run directory"),
        ({"files": {"home/../../x": "x"}}, "relative to the run directory"),
        ({"files": {"prompt.md": "x"}}, "relative to the run directory"),
        ({"files": {"stdout": "x"}}, "bosun's own run files"),
        ({"files": {"a": "{nope}"}}, "unknown placeholder {nope}"),
        ({"resume": ("--resume", "{prompt}")}, "unknown placeholder {prompt}"),
        ({"vars": {"workdir": "x"}}, "vars key 'workdir'"),
        ({"parser": "nope"}, "unknown parser 'nope'"),
        ({"prompt": "pipe"}, "is not a delivery"),
        ({"timeout": 0.0}, "timeout must be positive"),
        ({"stall_timeout": -1.0}, "stall_timeout must be positive"),
        ({"name": "bad name"}, "agent name 'bad name'"),
    ],
)
def test_invalid_specs_fail_on_creation_naming_the_agent(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        spec(**kw)
    assert needle in info.value.message
    assert info.value.hint
    if "name" not in kw:
        assert "agent 'tool'" in info.value.message


def test_unknown_placeholder_hint_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        spec(command=("t", "{modle}"), vars={"model": "m"})
    assert info.value.hint is not None
    assert "{model}" in info.value.hint
    assert "{workdir}" in info.value.hint


def test_literal_braces_and_fixed_placeholders() -> None:
    s = spec(
        command=("{python}", "-c", "print({{1: 2}})", "{home}", "{run_dir}/x"),
        vars={"model": "small"},
        env={"CFG": '{{"model": "{model}"}}'},
    )
    cmd = build(s)
    assert cmd.argv == (sys.executable, "-c", "print({1: 2})", f"{RUN}/home", f"{RUN}/x")
    assert cmd.env["CFG"] == '{"model": "small"}'


def test_extra_overrides_vars_and_may_not_redefine_fixed_names() -> None:
    s = spec(command=("t", "--model", "{model}"), vars={"model": "small"})
    assert build(s).argv == ("t", "--model", "small")
    assert build(s, extra={"model": "big"}).argv == ("t", "--model", "big")
    with pytest.raises(ConfigError, match="workdir"):
        build(s, extra={"workdir": "/elsewhere"})


# -- environment ---------------------------------------------------------------------------
def test_env_passes_only_allowlisted_names_then_fixed_values_then_isolated_home() -> None:
    s = spec(env={"TOOL_MODE": "ci", "TOOL_LOG": "{run_dir}/tool.log"})
    env = dict(build(s).env)
    home = f"{RUN}/home"
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TOOL_MODE": "ci",
        "TOOL_LOG": f"{RUN}/tool.log",
        "HOME": home,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_DATA_HOME": f"{home}/.local/share",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "XDG_STATE_HOME": f"{home}/.local/state",
    }


def test_env_allow_patterns_pass_secrets_only_when_asked() -> None:
    s = spec(env_allow=("PATH", "ANTHROPIC_*"))
    env = build(s).env
    assert env["ANTHROPIC_API_KEY"] == "sk-secret"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "LANG" not in env


def test_shared_home_passes_home_through() -> None:
    s = spec(isolated_home=False, command=("t", "{home}"))
    cmd = build(s)
    assert cmd.env["HOME"] == "/home/me"
    assert cmd.env["XDG_CONFIG_HOME"] == "/home/me/.config"
    assert cmd.argv == ("t", "/home/me")


def test_files_are_rendered_into_the_run_dir() -> None:
    s = spec(files={"home/.tool/settings.json": '{{"home": "{home}"}}'})
    assert build(s).files["home/.tool/settings.json"] == f'{{"home": "{RUN}/home"}}'.encode()


# -- resume --------------------------------------------------------------------------------
def test_resume_args_are_appended_only_when_resuming() -> None:
    s = spec(command=("claude", "-p"), resume=("--resume", "{session_id}"))
    assert s.supports_resume
    assert build(s).argv == ("claude", "-p")
    assert build(s, session_id="abc").argv == ("claude", "-p", "--resume", "abc")


def test_resume_args_go_at_the_resume_element() -> None:
    s = spec(
        command=("qwen", "{resume}", "-p", "{prompt}"),
        prompt="arg",
        resume=("--resume", "{session_id}"),
    )
    assert build(s, prompt="P").argv == ("qwen", "-p", "P")
    assert build(s, prompt="P", session_id="s1").argv == ("qwen", "--resume", "s1", "-p", "P")


def test_resume_command_replaces_the_template() -> None:
    s = spec(
        command=("codex", "exec", "--json", "-C", "{workdir}", "{prompt}"),
        resume_command=("codex", "exec", "resume", "{session_id}", "--json", "{prompt}"),
        prompt="arg",
    )
    assert build(s, prompt="P").argv == ("codex", "exec", "--json", "-C", WORK, "P")
    resumed = build(s, prompt="P", session_id="th_1").argv
    assert resumed == ("codex", "exec", "resume", "th_1", "--json", "P")


def test_resume_command_needs_its_own_prompt_element() -> None:
    with pytest.raises(ConfigError, match="resume_command"):
        spec(command=("t", "{prompt}"), resume_command=("t", "resume"), prompt="arg")


def test_without_resume_support_a_session_id_starts_fresh() -> None:
    s = spec()
    assert not s.supports_resume
    assert build(s, session_id="abc").argv == build(s).argv


def test_version_argv() -> None:
    s = spec(version_command=("{python}", "--version"))
    assert s.version_argv() == (sys.executable, "--version")


# -- every CLI of the next issue fits the format ------------------------------------------
CLI_SPECS: Mapping[str, dict[str, Any]] = {
    "claude": {
        "command": (
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "acceptEdits",
            "--model",
            "{model}",
        ),
        "vars": {"model": "sonnet"},
        "resume": ("--resume", "{session_id}"),
        "env_allow": ("PATH", "LANG", "ANTHROPIC_*"),
        "env": {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"},
    },
    "codex": {
        "command": (
            "codex",
            "exec",
            "--json",
            "--skip-git-repo-check",
            "-C",
            "{workdir}",
            "-s",
            "workspace-write",
            "{prompt}",
        ),
        "resume_command": ("codex", "exec", "resume", "{session_id}", "--json", "{prompt}"),
        "prompt": "arg",
        "env": {"CODEX_HOME": "{home}/.codex"},
        "files": {"home/.codex/config.toml": 'model_provider = "local"\n'},
    },
    "gemini": {
        "command": (
            "gemini",
            "-p",
            "{prompt}",
            "--output-format",
            "json",
            "--yolo",
            "-m",
            "{model}",
        ),
        "prompt": "arg",
        "vars": {"model": "gemini-2.5-flash"},
        "resume": ("--resume", "{session_id}"),
        "env": {"GEMINI_CLI_TRUST_WORKSPACE": "true"},
        "files": {"home/.gemini/settings.json": '{{"telemetry": {{"enabled": false}}}}'},
    },
    "aider": {
        "command": (
            "aider",
            "--yes-always",
            "--no-auto-commits",
            "--analytics-disable",
            "--analytics-log",
            "{run_dir}/analytics.jsonl",
            "--message-file",
            "{prompt_file}",
        ),
        "prompt": "file",
        "resume": ("--restore-chat-history",),
    },
    "opencode": {
        "command": ("opencode", "run", "--format", "json", "--dir", "{workdir}", "{prompt}"),
        "prompt": "arg",
        "resume": ("--session", "{session_id}"),
        "env": {"OPENCODE_CONFIG_CONTENT": '{{"permission": {{"edit": "allow"}}}}'},
    },
    "qwen": {
        "command": ("qwen", "-p", "{prompt}", "--output-format", "json", "--yolo"),
        "prompt": "arg",
        "resume": ("--resume", "{session_id}"),
    },
}


@pytest.mark.parametrize("name", sorted(CLI_SPECS))
def test_the_format_expresses_each_agent_cli(name: str) -> None:
    s = AgentSpec(name=name, **CLI_SPECS[name])
    fresh = build(s, prompt="PROMPT TEXT")
    resumed = build(s, prompt="PROMPT TEXT", session_id="S-1")
    assert fresh.argv[0] == name
    in_argv = "PROMPT TEXT" in fresh.argv
    assert in_argv == (s.prompt is PromptDelivery.ARG)
    assert (fresh.stdin is not None) == (s.prompt is PromptDelivery.STDIN)
    assert "S-1" in resumed.argv or name == "aider"
    assert fresh.env["HOME"] == f"{RUN}/home"
    for content in fresh.files.values():
        text = content.decode()
        if text.startswith("{"):
            json.loads(text)


# -- parsers -------------------------------------------------------------------------------
def test_raw_parser_events_and_success() -> None:
    lines: list[tuple[Stream, str]] = [
        ("stdout", "working"),
        ("stderr", "warn: x"),
        ("stdout", ""),
        ("stdout", "done"),
    ]
    events, outcome = parse_lines("raw", lines, 0)
    assert events == [
        AgentEvent("output", text="working"),
        AgentEvent("output", text="warn: x", data={"stream": "stderr"}),
        AgentEvent("output", text=""),
        AgentEvent("output", text="done"),
    ]
    assert outcome.success
    assert outcome.summary == "working\ndone"
    assert outcome.error is None


def test_raw_parser_summary_keeps_the_last_lines_within_bounds() -> None:
    lines: list[tuple[Stream, str]] = [("stdout", f"line {i}") for i in range(20)]
    _, outcome = parse_lines("raw", lines, 0)
    assert outcome.summary == "\n".join(f"line {i}" for i in range(15, 20))
    _, outcome = parse_lines("raw", [("stdout", "x" * 2000)], 0)
    assert len(outcome.summary) == 500
    assert outcome.summary.startswith("…")


def test_raw_parser_failure_names_exit_code_and_last_stderr_line() -> None:
    lines: list[tuple[Stream, str]] = [
        ("stderr", "first"),
        ("stderr", "boom: disk full"),
        ("stderr", "  "),
    ]
    _, outcome = parse_lines("raw", lines, 3)
    assert not outcome.success
    assert outcome.error_kind is ErrorKind.AGENT
    assert outcome.error == "exited with code 3: boom: disk full"
    _, outcome = parse_lines("raw", [], -9)
    assert outcome.error == "killed by signal 9"


def test_raw_parser_lost_run() -> None:
    _, outcome = parse_lines("raw", [("stdout", "half")], None)
    assert not outcome.success
    assert outcome.error_kind is ErrorKind.LOST
    assert outcome.summary == "half"


def test_jsonl_parser_reads_session_and_result() -> None:
    lines: list[tuple[Stream, str]] = [
        ("stdout", json.dumps({"type": "init", "session_id": "s-42"})),
        ("stdout", "not json {"),
        ("stdout", "[1, 2]"),
        ("stdout", json.dumps({"type": "result", "result": "all done"})),
    ]
    events, outcome = parse_lines("jsonl", lines, 0)
    assert events[0].data == {"json": {"type": "init", "session_id": "s-42"}}
    assert events[1] == AgentEvent("output", text="not json {")
    assert events[2] == AgentEvent("output", text="[1, 2]")
    assert outcome.success
    assert outcome.session_id == "s-42"
    assert outcome.summary == "all done"
    _, failed = parse_lines("jsonl", [("stdout", '{"thread_id": "t"}')], 1)
    assert not failed.success
    assert failed.session_id == "t"


def test_get_parser_unknown_lists_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_parser("no-such-parser")
    assert info.value.hint == f"use one of: {', '.join(sorted(PARSERS))}"
    assert get_parser("raw") is not get_parser("raw")  # fresh state per run


stream_lines = st.lists(
    st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(max_size=80)), max_size=30
)


@given(lines=stream_lines, code=st.one_of(st.none(), st.integers(-64, 255)))
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_never_raise_and_emit_one_event_per_line(
    name: str, lines: list[tuple[Stream, str]], code: int | None
) -> None:
    events, outcome = parse_lines(name, lines, code)
    assert len(events) == len(lines)
    assert [e.text for e in events] == [text for _, text in lines]
    assert outcome.success == (code == 0)
    assert len(outcome.summary) <= 500


# -- built-ins -----------------------------------------------------------------------------
def test_demo_builtin_is_described_as_not_an_ai() -> None:
    demo = BUILTIN_AGENTS["demo"]
    assert demo.command == ("{python}", "-I", "-m", "bosun.demo_agent")
    assert demo.prompt is PromptDelivery.STDIN
    assert demo.parser == "raw"
    assert "NOT an AI" in demo.description


def test_resolve_agents_overrides_single_fields_of_a_builtin() -> None:
    agents = resolve_agents({"demo": AgentConfig(timeout=60.0, env={"X": "1"})})
    demo = agents["demo"]
    assert demo.timeout == 60.0
    assert demo.env == {"X": "1"}
    assert demo.command == BUILTIN_AGENTS["demo"].command
    assert BUILTIN_AGENTS["demo"].timeout is None  # the built-in itself is untouched


def test_resolve_agents_adds_command_agents() -> None:
    agents = resolve_agents(
        {"echo": AgentConfig(command=["sh", "-c", "cat > NOTES.md"], prompt="stdin")}
    )
    assert set(agents) == {*BUILTIN_AGENTS, "echo"}
    assert agents["echo"].command == ("sh", "-c", "cat > NOTES.md")
    assert agents["echo"].prompt is PromptDelivery.STDIN


def test_resolve_agents_new_agent_needs_a_command() -> None:
    with pytest.raises(ConfigError, match=r"\[agents.mine\] has no command"):
        resolve_agents({"mine": AgentConfig(timeout=5.0)})


def test_overriding_a_builtin_table_merges_key_by_key() -> None:
    from bosun.config import AgentConfig

    claude = BUILTIN_AGENTS["claude"]
    agents = resolve_agents({"claude": AgentConfig(vars={"model": "opus"}, env={"X_EXTRA": "1"})})
    merged = agents["claude"]
    assert merged.vars == {**claude.vars, "model": "opus"}
    assert merged.env == {**claude.env, "X_EXTRA": "1"}
