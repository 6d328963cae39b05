"""opencode (``opencode-ai``) as a built-in agent.

Headless: ``opencode run --format json`` reads the prompt on stdin (when no message is
given on the command line) and prints one JSON event a line (``step_start``, ``text``,
``tool_use``, ``step_finish``, ``error``), parsed by ``opencode-jsonl``. Sessions are
resumed by exact id (``--session ses_...``); they live in the SQLite database under the
agent's isolated home, which bosun carries into a resumed run.

Model: one provider named ``bosun`` using opencode's bundled ``@ai-sdk/openai-compatible``
package, so any Chat Completions endpoint works: ``vars = { base_url = "...", model = "..." }``
(the defaults are OpenAI's). The key comes from ``OPENAI_API_KEY``. ``enabled_providers``
keeps opencode from loading its other providers from keys it happens to see.

Unattended: edits and shell commands are allowed by the ``permission`` table; anything
else that asks (a path outside the worktree, ...) is refused by ``opencode run`` itself and
shows up as a refused tool call. ``--title`` is given so that opencode does not spend an
extra model request on naming the session. Logs at ``WARN`` and above go to stderr, where
they become part of the run's output: opencode retries a failed request up to five times
on its own (honouring ``retry-after``; no setting turns that off), and the log lines are
the only sign of those retries while they happen.
"""

from __future__ import annotations

import json

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

# Stand-ins for the spec's placeholders, swapped in after json.dumps has escaped the rest.
_BASE_URL, _MODEL = "@@BASE_URL@@", "@@MODEL@@"


def _config_template() -> str:
    """opencode.json as an AgentSpec template: literal braces doubled, ``{base_url}`` and
    ``{model}`` left as placeholders (opencode's own ``{env:...}`` survives as text)."""
    config = {
        "provider": {
            "bosun": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "bosun",
                "options": {"baseURL": _BASE_URL, "apiKey": "{env:OPENAI_API_KEY}"},
                "models": {_MODEL: {"name": _MODEL, "tool_call": True}},
            }
        },
        "enabled_providers": ["bosun"],
        "model": f"bosun/{_MODEL}",
        "permission": {"edit": "allow", "bash": "allow"},
        "autoupdate": False,
        "share": "disabled",
        # snapshots copy the whole worktree into a private git store on every step; bosun
        # commits the worktree itself
        "snapshot": False,
    }
    text = json.dumps(config, indent=2) + "\n"
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace(_BASE_URL, "{base_url}").replace(_MODEL, "{model}")


SPEC = AgentSpec(
    name="opencode",
    description="opencode (any OpenAI-compatible endpoint): opencode run, JSON events",
    command=("opencode", "run", "--format", "json", "--title", "bosun"),
    prompt=PromptDelivery.STDIN,
    parser="opencode-jsonl",
    env_allow=(*DEFAULT_ENV_ALLOW, "OPENAI_API_KEY"),
    env={
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_PRINT_LOGS": "1",
        "OPENCODE_LOG_LEVEL": "{log_level}",
    },
    files={"home/.config/opencode/opencode.json": _config_template()},
    resume=("--session", "{session_id}"),
    vars={"base_url": "https://api.openai.com/v1", "model": "gpt-4.1", "log_level": "WARN"},
    version_command=("opencode", "--version"),
)
