"""Claude Code (``@anthropic-ai/claude-code``) as a built-in agent.

Headless: ``claude -p`` reads the prompt on stdin and prints ``stream-json`` (one event a
line: ``system/init``, ``assistant``, ``user`` tool results, the final ``result``), parsed
by ``claude-stream-json``. Sessions are resumed by exact id (``--resume ID``).

Permissions: ``acceptEdits`` by default (the agent edits files in its worktree; shell
commands are denied and reported as permission denials). Set
``[agents.claude] vars = { permission_mode = "bypassPermissions" }`` to let it run
commands too (as root, Claude Code also wants ``IS_SANDBOX=1`` in ``env``).
"""

from __future__ import annotations

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

SPEC = AgentSpec(
    name="claude",
    description="Claude Code (Anthropic): claude -p, stream-json output",
    command=(
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "{permission_mode}",
        "--model",
        "{model}",
    ),
    prompt=PromptDelivery.STDIN,
    parser="claude-stream-json",
    env_allow=(
        *DEFAULT_ENV_ALLOW,
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "API_TIMEOUT_MS",
    ),
    env={
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # bosun retries failed attempts itself, with backoff and usage-limit pauses
        "CLAUDE_CODE_MAX_RETRIES": "{max_retries}",
    },
    resume=("--resume", "{session_id}"),
    vars={"model": "sonnet", "permission_mode": "acceptEdits", "max_retries": "2"},
    version_command=("claude", "--version"),
)
