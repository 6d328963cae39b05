"""What bosun must derive from each captured agent output in tests/fixtures/agent-output.

One entry per fixture (``<parser>/<case>.stdout|.stderr|.exit``): the exact
:class:`Outcome` and the events other than ``output``, in order. When a fixture is replaced
by a capture from the real CLI, its entry here is reviewed with it (see the fixtures' README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bosun.models import AgentEvent, ErrorKind, Outcome

CLAUDE = "5f1c2a9e-3b7d-4c1e-9a2f-8d6e4b3c2a10"
QWEN = "8e2d6f4a-1c3b-4f5e-a7d9-2b4c6e8f0a13"
CODEX = "01a1fed9-a44f-7912-9df8-e500d7eddf0f"
CLAUDE_WT = "/work/runs/task-7/wt"
QWEN_WT = "/var/tmp/bosun-qwen-capture/wt"

AUTH, LIMIT, SERVER = ErrorKind.AUTH, ErrorKind.USAGE_LIMIT, ErrorKind.SERVER
AUTH_HEAD = "authentication failed (HTTP 401): "
LIMIT_HEAD = "usage or rate limit reached"
SERVER_HEAD = "the model API failed with a server error (HTTP 500): "
ANSWER = "The answer is 4."
CREATED = "Created hello.py, which prints hello."


@dataclass(frozen=True)
class Case:
    outcome: Outcome
    events: list[AgentEvent] = field(default_factory=list)


def at(hour: int, minute: int, second: int = 0) -> datetime:
    """A time on 2026-03-10, the day every fixture was "captured" (UTC)."""
    return datetime(2026, 3, 10, hour, minute, second, tzinfo=UTC)


def T(text: str) -> AgentEvent:
    return AgentEvent("text", text=text)


def U(name: str, summary: str) -> AgentEvent:
    return AgentEvent("tool_use", text=f"{name}: {summary}", data={"name": name, "input": summary})


def F(path: str, kind: str) -> AgentEvent:
    return AgentEvent("file_change", text=f"{kind} {path}", data={"path": path, "kind": kind})


def E(kind: ErrorKind, message: str, *, fatal: bool = True) -> AgentEvent:
    data = {"kind": kind.value, "message": message, "fatal": fatal}
    return AgentEvent("error", text=message, data=data)


def failed(
    kind: ErrorKind, error: str, events: list[AgentEvent] | None = None, **fields: Any
) -> Case:
    """A failed run whose last event announces ``error`` (``events`` come before it)."""
    outcome = Outcome(success=False, error_kind=kind, error=error, **fields)
    return Case(outcome, [*(events or []), E(kind, error)])


# -- claude (stream-json and json) -------------------------------------------------------
CLAUDE_401 = AUTH_HEAD + "Invalid API key · Fix external API key"
CLAUDE_429 = (
    f"{LIMIT_HEAD} (HTTP 429): API Error: 429 - "
    "This request would exceed your account's rate limit. Please try again later."
)
CLAUDE_LIMIT = f"{LIMIT_HEAD}: You've hit your limit · resets 3pm (Europe/Berlin)"
CLAUDE_500 = SERVER_HEAD + "API Error: 500 - Internal server error"
CLAUDE_MAX = "the agent reached its turn limit: stopped after 2 turns"
CLAUDE_DENIED = f"permission denied: Write {CLAUDE_WT}/note.txt was refused; no file was written"
CLAUDE_ASKED = (
    f"permission denied: Claude requested permissions to write to {CLAUDE_WT}/note.txt,"
    " but you haven't granted it yet."
)
_claude: dict[str, Any] = {"session_id": CLAUDE, "turns": 1, "cost_usd": 0.0}
_claude_denied: dict[str, Any] = {
    "session_id": CLAUDE,
    "turns": 2,
    "tokens_in": 3340,
    "tokens_out": 62,
}
_claude_max: dict[str, Any] = {
    "session_id": CLAUDE,
    "turns": 2,
    "tokens_in": 3320,
    "tokens_out": 45,
}
CLAUDE_COMMON = {
    "success": Case(
        Outcome(True, ANSWER, CLAUDE, 1, 12, 6, 0.000126),
        [T(ANSWER)],
    ),
    "tool-call-writes-file": Case(
        Outcome(True, CREATED, CLAUDE, 2, 4426, 52, 0.004215),
        [
            T("I'll create hello.py."),
            U("Write", f"{CLAUDE_WT}/hello.py"),
            F(f"{CLAUDE_WT}/hello.py", "write"),
            T(CREATED),
        ],
    ),
    "401": failed(AUTH, CLAUDE_401, **_claude),
    "500": failed(SERVER, CLAUDE_500, **_claude),
}
CLAUDE_STREAM = {
    **CLAUDE_COMMON,
    "429": failed(LIMIT, CLAUDE_429, resume_at=at(15, 0), **_claude),
    "max-turns": failed(
        ErrorKind.MAX_TURNS, CLAUDE_MAX, [U("Bash", "ls -la")], cost_usd=0.00321, **_claude_max
    ),
    "permission": Case(
        Outcome(
            False,
            "I need permission to write note.txt.",
            cost_usd=0.00287,
            error_kind=ErrorKind.PERMISSION,
            error=CLAUDE_DENIED,
            **_claude_denied,
        ),
        [
            U("Write", f"{CLAUDE_WT}/note.txt"),
            E(ErrorKind.PERMISSION, CLAUDE_ASKED, fatal=False),
            T("I need permission to write note.txt."),
        ],
    ),
}
# json mode: the result object alone, so no tool calls or file changes are seen.
CLAUDE_JSON = {
    **CLAUDE_COMMON,
    "success": Case(CLAUDE_COMMON["success"].outcome),
    "tool-call-writes-file": Case(CLAUDE_COMMON["tool-call-writes-file"].outcome),
    "429": failed(LIMIT, CLAUDE_LIMIT, **_claude),
    "max-turns": failed(ErrorKind.MAX_TURNS, CLAUDE_MAX, cost_usd=0.00321, **_claude_max),
    "permission": Case(CLAUDE_STREAM["permission"].outcome),
}

# -- qwen (captured from qwen-code 0.15.10 run by bosun's spec against the fake; json mode
# is the same run with --output-format json; --session-id fixed the id) -------------------
QWEN_401 = AUTH_HEAD + "[API Error: 401 Invalid API key: authentication failed.]"
# relative: the dispatcher resolves "try again in 20s" with its clock
QWEN_429 = f"{LIMIT_HEAD} (HTTP 429): [API Error: 429 Rate limit reached. Please try again in 20s.]"
QWEN_500 = SERVER_HEAD + "[API Error: 500 Internal server error.]"
QWEN_MAX = (
    "the agent reached its turn limit: Reached max session turns for this session. "
    "Increase the number of turns by specifying maxSessionTurns in settings.json."
)
QWEN_NO_KEY = (
    "authentication failed: Missing API key for OpenAI-compatible auth. Set "
    "settings.security.auth.apiKey, or set the 'OPENAI_API_KEY' environment variable."
)
QWEN_NO_SESSION = (
    "the session to resume was not found (qwen looks in its home, per directory): No saved "
    f"session found with ID {QWEN}. Run `qwen --resume` without an ID to choose from existing "
    "sessions."
)
_qwen: dict[str, Any] = {"session_id": QWEN, "turns": 1}
QWEN_CASES = {
    # input_tokens 5120 include the 4096 cached ones
    "success": Case(Outcome(True, ANSWER, QWEN, 1, 5120, 7), [T(ANSWER)]),
    "tool-call-writes-file": Case(
        Outcome(True, CREATED, QWEN, 2, 10500, 49),
        [
            T("I'll create hello.py."),
            U("write_file", f"{QWEN_WT}/hello.py"),
            F(f"{QWEN_WT}/hello.py", "write"),
            T(CREATED),
        ],
    ),
    # --resume: the result's usage (150 / 10) counts the first run too; this run's is 50 / 3
    "resumed": Case(Outcome(True, "It is still 4.", QWEN, 1, 50, 3), [T("It is still 4.")]),
    "401": failed(AUTH, QWEN_401, **_qwen),
    # after qwen's own 7 attempts (about 70 s; it ignores Retry-After)
    "429": failed(LIMIT, QWEN_429, **_qwen),
    "500": failed(SERVER, QWEN_500, **_qwen),
    # --max-session-turns 1: exit 53; the read_file ran, the second model call did not
    "max-turns": failed(
        ErrorKind.MAX_TURNS,
        QWEN_MAX,
        [U("read_file", f"{QWEN_WT}/hello.py")],
        session_id=QWEN,
        tokens_in=12,
        tokens_out=5,
    ),
    # OPENAI_API_KEY unset: an error_during_execution result, exit 1
    "no-api-key": failed(AUTH, QWEN_NO_KEY, session_id=QWEN),
    # --resume ID in a fresh home: exit 1, a plain line on stderr, nothing on stdout
    "resume-unknown-session": failed(ErrorKind.CONFIG, QWEN_NO_SESSION),
}
# json mode: the messages in one array on stdout, a fatal error as a JSON document on stderr
QWEN_JSON = {
    **QWEN_CASES,
    "max-turns": failed(ErrorKind.MAX_TURNS, QWEN_MAX),
}

# -- codex (captured from codex-cli 0.169.0, run by bosun's spec against the fake) --------
CODEX_WT = "/var/tmp/bosun-codex-capture/wt"
CODEX_TOOL = "01a1fed9-a802-7992-a987-3bc29ddaa8e7"
CODEX_401 = (
    AUTH_HEAD + "unexpected status 401 Unauthorized: Invalid API key: authentication failed., "
    "url: http://127.0.0.1:35297/v1/responses"
)
CODEX_429 = f"{LIMIT_HEAD} (HTTP 429): exceeded retry limit, last status: 429 Too Many Requests"
CODEX_LIMIT = (
    f"{LIMIT_HEAD}: You’ve hit your usage limit. Visit https://chatgpt.com/settings/usage to "
    "purchase more credits or try again at Mar 10th, 2026 3:00 PM."
)
CODEX_500 = (
    "the model API failed with a server error: "
    "We’re currently experiencing high demand, which may cause temporary errors."
)
CODEX_SANDBOX = (
    "patch rejected: writing is blocked by read-only sandbox; rejected by user approval settings"
)
CODEX_NO_ROLLOUT = (
    f"codex cannot resume session {CODEX}: no rollout found for it in $CODEX_HOME/sessions "
    "(the session was recorded under another home)"
)
CODEX_METADATA = (
    "the agent reported an error: Model metadata for `local-coder` not found. Defaulting to "
    "fallback metadata; this can degrade performance and cause issues."
)
CODEX_CASES = {
    "success": Case(Outcome(True, ANSWER, CODEX, 1, 12, 5), [T(ANSWER)]),
    "tool-call-writes-file": Case(
        Outcome(True, CREATED, CODEX_TOOL, 1, 36, 15),
        [
            U("shell", "/bin/bash -lc ls"),
            U("apply_patch", f"{CODEX_WT}/hello.py"),
            F(f"{CODEX_WT}/hello.py", "add"),
            T(CREATED),
        ],
    ),
    "401": failed(AUTH, CODEX_401, session_id="01a1fed9-ad49-77f2-be3c-360c2ebd1be9", turns=1),
    # codex drops Retry-After: a plain 429 names no reset time (the dispatcher backs off)
    "429": failed(LIMIT, CODEX_429, session_id="01a1fed9-b089-7152-b42c-576d8819bfc7", turns=1),
    # a local wall-clock time without a zone: only the dispatcher, with a clock, resolves it
    "usage-limit": failed(
        LIMIT, CODEX_LIMIT, session_id="01a1fed9-b40e-7da3-bc65-8763b9fe6ffd", turns=1
    ),
    "500": failed(SERVER, CODEX_500, session_id="01a1fed9-b833-7f52-9ec2-e050429e7263", turns=1),
    "permission": Case(
        Outcome(
            False,
            "I could not write hello.py.",
            "01a1fed9-bc39-72f1-9c85-494cabb1f2a1",
            1,
            24,
            10,
            error_kind=ErrorKind.PERMISSION,
            error=f"permission denied: {CODEX_SANDBOX}; no file was written",
        ),
        [
            T("I could not write hello.py."),
            E(ErrorKind.PERMISSION, f"the sandbox refused a change: {CODEX_SANDBOX}", fatal=False),
        ],
    ),
    "unknown-model": Case(
        Outcome(True, ANSWER, "01a1fed9-c0f2-7853-ada9-fbf49adaa73d", 1, 12, 5),
        [E(ErrorKind.AGENT, CODEX_METADATA, fatal=False), T(ANSWER)],
    ),
    # the thread's running total: 12 + 5 from "success", then 12 + 5 for this run
    "resumed": Case(Outcome(True, "It is still 4.", CODEX, 1, 24, 10), [T("It is still 4.")]),
    "resume-unknown-session": failed(ErrorKind.AGENT, CODEX_NO_ROLLOUT),
}

# -- gemini (captured from gemini-cli 0.61.0 against the fake; exit = HTTP status mod 256) --
# Every capture is its own session. The fake reports 12 prompt and 5 output tokens a call.
GEMINI_MAX = (
    "the agent reached its turn limit: Reached max session turns for this session. "
    "Increase the number of turns by specifying maxSessionTurns in settings.json."
)
GEMINI_401 = AUTH_HEAD + "Invalid API key: authentication failed."
GEMINI_500 = SERVER_HEAD + "Internal server error."
GEMINI_RETRY = "Rate limit reached. Please try again in 37s. Suggested retry after 37s."
GEMINI_ADVICE = (
    "Please wait and try again later. To increase your limits, request a quota increase "
    "through AI Studio, or switch to another /auth method"
)
GEMINI_NO_SESSION = (
    "the session to resume was not found (gemini looks in its home, per directory): "
    "Error resuming session: No previous sessions found for this project."
)
GEMINI_JSON = {
    "success": Case(
        Outcome(True, ANSWER, "b24d7ae9-adc3-4d6d-9562-b4d37755e799", None, 12, 5), [T(ANSWER)]
    ),
    "tool-call-writes-file": Case(
        Outcome(True, CREATED, "4df451d8-1169-4861-8429-acc57ae7f849", None, 24, 10),
        [T(CREATED)],
    ),
    "401": failed(AUTH, GEMINI_401, session_id="a9f25f7b-6993-42fb-8667-20a27a5da656"),
    # no timestamp in json mode: the dispatcher resolves "try again in 37s" with its clock
    "429": failed(
        LIMIT,
        f"{LIMIT_HEAD} (HTTP 429): {GEMINI_RETRY}",
        session_id="f79ac2be-b84a-4e66-a5a8-975c379352b9",
    ),
    "500": failed(SERVER, GEMINI_500, session_id="07c1fc27-d79d-45f7-9a1d-c58a2ea24330"),
    "max-turns": failed(
        ErrorKind.MAX_TURNS, GEMINI_MAX, session_id="04a9339a-67b6-4a24-a6d3-d171b3d053df"
    ),
}
GEMINI_STREAM = {
    "success": Case(
        Outcome(True, ANSWER, "2ccb77b2-a0d1-4495-a58b-7be1db123422", None, 12, 5), [T(ANSWER)]
    ),
    "tool-call-writes-file": Case(
        Outcome(True, CREATED, "614eb6d5-4401-45fd-a185-9ab1bc4836ae", None, 24, 10),
        [
            T("I'll create hello.py."),
            U("write_file", "hello.py"),
            F("hello.py", "write"),
            T(CREATED),
        ],
    ),
    "401": failed(AUTH, GEMINI_401, session_id="e53be164-4a48-4fd7-b4a0-34b610fefb5e"),
    # The event is announced before the exit code (173) names the status; the outcome has it.
    "429": Case(
        Outcome(
            False,
            "",
            "0079471f-d3c7-4b25-99b1-da6071b38f76",
            error_kind=LIMIT,
            error=f"{LIMIT_HEAD} (HTTP 429): {GEMINI_RETRY} {GEMINI_ADVICE}",
            # the result's timestamp (16:06:22.374) + 37 s
            resume_at=datetime(2026, 11, 21, 16, 6, 59, 374000, tzinfo=UTC),
        ),
        [E(LIMIT, f"{LIMIT_HEAD}: {GEMINI_RETRY} {GEMINI_ADVICE}")],
    ),
    "500": failed(SERVER, GEMINI_500, session_id="099b09a3-ba25-4831-bf8f-2116a2fc3a99"),
    # maxSessionTurns = 1: the tool ran, then the turn limit stopped the second model call
    "max-turns": failed(
        ErrorKind.MAX_TURNS,
        GEMINI_MAX,
        [U("write_file", "hello.py"), F("hello.py", "write")],
        session_id="b4c5d75f-083f-4d1e-9e03-d869fde24ee9",
        tokens_in=12,
        tokens_out=5,
    ),
    # --resume ID with a copy of the first run's home, in the same directory
    "resumed": Case(
        Outcome(True, "It is still 4.", "4912a92b-a20b-434d-8f0c-88c17d152a14", None, 12, 5),
        [T("It is still 4.")],
    ),
    # --resume ID in a fresh home: exit 42, a plain line on stderr, nothing on stdout
    "resume-unknown-session": Case(
        Outcome(False, "", error_kind=ErrorKind.CONFIG, error=GEMINI_NO_SESSION)
    ),
}

# -- opencode (captured from opencode 1.18.33 through bosun, see the fixtures' README) -----
OC_WT = "/tmp/ocpt/test_tool_call_writes_a_file_t0/cfg/.bosun/worktrees/1-write-hello"
OC_DENIED = (
    "permission denied: write /tmp/ocw5145mbyj/hello.txt was refused: "
    "The user rejected permission to use this specific tool call"
)
OC_401 = AUTH_HEAD + "APIError: Invalid API key: authentication failed."
OC_429 = (
    f"{LIMIT_HEAD} (HTTP 429): APIError: Rate limit reached. Please try again in 30s. "
    "(retry-after: 30)"
)
OC_500 = SERVER_HEAD + "APIError: Internal server error. (retry-after: 10 ms)"
# opencode's log lines on stderr: one per failed request (its own retries included)
OC_401_LOG = E(AUTH, "authentication failed: Invalid API key: authentication failed.", fatal=False)
OC_429_LOG = E(LIMIT, f"{LIMIT_HEAD}: Rate limit reached. Please try again in 1s.", fatal=False)
OC_429_LAST = E(LIMIT, f"{LIMIT_HEAD}: Rate limit reached. Please try again in 30s.", fatal=False)
OC_500_LOG = E(
    SERVER, "the model API failed with a server error: Internal server error.", fatal=False
)
OPENCODE_CASES = {
    # cost 0 (opencode knows no price for a custom model) reads as "not reported"
    "success": Case(
        Outcome(True, "Hello from the fake model.", "ses_e011ef6e0ffeCmr5GwPy7uZdn4", 1, 12, 5),
        [T("Hello from the fake model.")],
    ),
    "tool-call-writes-file": Case(
        Outcome(True, "Wrote hello.txt.", "ses_e011ecbedffemp8YAtYEGqG1RH", 2, 24, 10),
        [
            T("On it."),
            U("write", f"{OC_WT}/hello.txt"),
            F(f"{OC_WT}/hello.txt", "write"),
            T("Wrote hello.txt."),
        ],
    ),
    "401": Case(
        Outcome(False, session_id="ses_e011e9565ffet0pSiBNCPxc3LU", error_kind=AUTH, error=OC_401),
        [E(AUTH, OC_401), OC_401_LOG],
    ),
    "429": Case(
        Outcome(
            False,
            session_id="ses_e011e72faffe84r3t054eHOYfX",
            error_kind=LIMIT,
            error=OC_429,
            # the error event's timestamp (16:12:42.427) + 30 s
            resume_at=datetime(2026, 11, 21, 16, 13, 12, 427000, tzinfo=UTC),
        ),
        [E(LIMIT, OC_429), *[OC_429_LOG] * 5, OC_429_LAST],
    ),
    "500": Case(
        Outcome(
            False, session_id="ses_e011e4c93ffeNOmyAzqcnJSM5Y", error_kind=SERVER, error=OC_500
        ),
        [E(SERVER, OC_500), *[OC_500_LOG] * 6],
    ),
    # opencode run refuses the request itself and ends the run: exit 0, no second step
    "permission": Case(
        Outcome(
            False,
            "",
            "ses_e011d0cc4ffeM18tyE5lLRC4zN",
            1,
            12,
            5,
            error_kind=ErrorKind.PERMISSION,
            error=f"{OC_DENIED}; no file was written",
        ),
        [
            U("write", "/tmp/ocw5145mbyj/hello.txt"),
            E(ErrorKind.PERMISSION, OC_DENIED, fatal=False),
        ],
    ),
    # --session ID: the resumed run keeps the session's id
    "resumed": Case(
        Outcome(True, "It was 42.", "ses_e011df69affeV3QL6z7z8Suxdg", 1, 12, 5), [T("It was 42.")]
    ),
}

# -- aider (captured from aider 0.86.2 through bosun, see the fixtures' README) -----------
# text on stdout, the analytics log on stderr; exit 0 on API errors. The session id is the
# analytics user_id (the id of the run's home, where the chat history is kept).
AIDER_401 = (
    "authentication failed: litellm.BadRequestError: OpenAIException - "
    "Invalid API key: authentication failed."
)
AIDER_429 = (
    f"{LIMIT_HEAD}: litellm.RateLimitError: RateLimitError: OpenAIException - "
    "Rate limit reached. Please try again in 30s."
)
AIDER_500 = (
    "the model API failed with a server error: litellm.InternalServerError: "
    "InternalServerError: OpenAIException - Internal server error."
)
AIDER_CASES = {
    # the fake's model has no price: cost not reported
    "success": Case(
        Outcome(
            True, "Hello from the fake model.", "06c9fce2-02cd-49a5-8efb-fd2f32f307c8", 1, 679, 6
        )
    ),
    "tool-call-writes-file": Case(
        # the whole-format file listing is not summary material
        Outcome(True, "Creating hello.txt.", "575be0e0-556a-4c2c-bad1-b1acbce51439", 1, 678, 13),
        [F("hello.txt", "write")],
    ),
    # a 401 from an OpenAI-compatible server reads as BadRequestError: known by its wording
    "401": Case(
        Outcome(
            False,
            session_id="f65c3789-03ee-415b-8d4c-e759f98f4b06",
            error_kind=AUTH,
            error=AIDER_401,
        ),
        [E(AUTH, AIDER_401)],
    ),
    "429": Case(
        # aider's retry limit was 1 s here (three retries); the analytics "exit" record
        # (16:24:43) anchors "try again in 30s"
        Outcome(
            False,
            session_id="bbff32c8-700a-4936-9be8-8979abef68e3",
            error_kind=LIMIT,
            error=AIDER_429,
            resume_at=datetime(2026, 11, 21, 16, 25, 13, tzinfo=UTC),
        ),
        [E(LIMIT, AIDER_429, fatal=False)] * 4,
    ),
    "429-then-success": Case(
        Outcome(True, ANSWER, "277311bb-dea5-49c9-bb3c-8d61f09e01e8", 1, 599, 6),
        [E(LIMIT, AIDER_429, fatal=False)],
    ),
    "500": Case(
        Outcome(
            False,
            session_id="9e8b0f6a-ec8b-48c1-9d8e-105cf205f3e2",
            error_kind=SERVER,
            error=AIDER_500,
        ),
        [E(SERVER, AIDER_500, fatal=False)] * 4,
    ),
    # --restore-chat-history with a copy of the first run's home: the same user_id
    "resumed": Case(Outcome(True, "It was 42.", "8b516fad-bdfb-4fbe-8e2a-fb27069077d9", 1, 703, 5)),
}

# -- ollama (bosun's own agent, python -m bosun.ollama_agent, captured against the fake) ---
OLLAMA = "2c618fd8c61942da943bdccf87ad5dab"
OLLAMA_URL = "http://127.0.0.1:44821/api/chat"
OLLAMA_HOME = "/tmp/bosun-ollama-capture-zlkv4u7c/resume-unknown-session/home"
OLLAMA_UNKNOWN = "0123456789abcdef0123456789abcdef"
OLLAMA_401 = AUTH_HEAD + "Invalid API key: authentication failed."
OLLAMA_429 = f"{LIMIT_HEAD} (HTTP 429): Rate limit reached. Please try again in 30s."
OLLAMA_500 = SERVER_HEAD + "Internal server error."
OLLAMA_404 = (
    'the model is not on the server (HTTP 404): model "llama3.1" not found, try pulling it first'
)
OLLAMA_REFUSED = (
    f"cannot reach the Ollama server: connection refused at {OLLAMA_URL} (is `ollama serve` "
    "running there? point the agent elsewhere with OLLAMA_HOST or --base-url)"
)
OLLAMA_TIMEOUT = f"the model API timed out: the answer from {OLLAMA_URL} stalled for 1s (timed out)"
OLLAMA_NO_SESSION = (
    f"the agent reported an error: cannot resume session {OLLAMA_UNKNOWN}: no "
    f"{OLLAMA_UNKNOWN}.json in {OLLAMA_HOME}/.ollama-agent/sessions"
)
OLLAMA_CASES = {
    "success": Case(Outcome(True, "The answer is 4.", OLLAMA, 1, 12, 5), [T("The answer is 4.")]),
    # --resume ID: the same session id, the earlier conversation sent again
    "resumed": Case(Outcome(True, "It was 4.", OLLAMA, 1, 12, 5), [T("It was 4.")]),
    "401": failed(AUTH, OLLAMA_401),
    "429": failed(LIMIT, OLLAMA_429),
    "500": failed(SERVER, OLLAMA_500),
    "model-not-found": failed(ErrorKind.CONFIG, OLLAMA_404),
    "connection-refused": failed(SERVER, OLLAMA_REFUSED),
    # the pieces that arrived before the stream stalled are the summary
    "read-timeout": failed(ErrorKind.TIMEOUT, OLLAMA_TIMEOUT, summary="Let me think"),
    "resume-unknown-session": failed(ErrorKind.AGENT, OLLAMA_NO_SESSION),
}

EXPECTED: dict[str, dict[str, Case]] = {
    "claude-stream-json": CLAUDE_STREAM,
    "claude-json": CLAUDE_JSON,
    "qwen-stream-json": QWEN_CASES,
    "qwen-json": QWEN_JSON,
    "codex-jsonl": CODEX_CASES,
    "gemini-json": GEMINI_JSON,
    "gemini-stream-json": GEMINI_STREAM,
    "opencode-jsonl": OPENCODE_CASES,
    "aider": AIDER_CASES,
    "ollama": OLLAMA_CASES,
}
