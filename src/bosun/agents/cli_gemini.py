"""Gemini CLI (``@google/gemini-cli``) as a built-in agent.

Headless: ``gemini --prompt ""`` reads the prompt on stdin (the empty ``--prompt`` forces
headless mode and adds nothing: gemini puts stdin first) and prints ``stream-json`` (one
event a line: ``init``, ``message`` deltas, ``tool_use``, ``tool_result``, ``result``),
parsed by ``gemini-stream-json``. Sessions are resumed by exact id (``--resume ID``); gemini
finds them in ``$HOME/.gemini/tmp/<project>/chats``, keyed by the working directory, so a
resumed run needs the same worktree path and the files of the previous run's home; with a
home that lacks the session gemini exits 42 ("No previous sessions found").

Settings live in the isolated home (``home/.gemini/settings.json``): API-key auth, no usage
statistics, telemetry, update checks or IDE integration, and the chat model's attempts
capped at ``{max_attempts}`` (gemini retries 429 and 5xx itself, up to 10 times with
backoff; bosun retries whole runs and pauses on usage limits instead). They are user
settings, so a trusted repository's own ``.gemini/settings.json`` could override them; the
stronger *system* scope (``GEMINI_CLI_SYSTEM_SETTINGS_PATH``) is not used because gemini
ignores that file, with a warning, when any directory above it is writable by others (a
state directory under /tmp).

Endpoint and key come from bosun's environment: ``GEMINI_API_KEY`` and, for another
endpoint (a proxy, a local fake), ``GOOGLE_GEMINI_BASE_URL``. The exit code is the HTTP
status mod 256 on API errors; the parser reads the error from the ``result`` event.
"""

from __future__ import annotations

import json

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

__all__ = ["SETTINGS", "SPEC"]

#: ``home/.gemini/settings.json``, before template escaping; ``{max_attempts}`` is a var.
SETTINGS: dict[str, object] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {
        "enableAutoUpdate": False,
        "enableAutoUpdateNotification": False,
        "maxAttempts": "__MAX_ATTEMPTS__",
    },
    "ide": {"enabled": False},
}


def _settings_template() -> str:
    text = json.dumps(SETTINGS, indent=2) + "\n"
    # A spec's file contents are templates: literal braces are doubled, then the one
    # placeholder is put where the number goes (unquoted: gemini wants a JSON number).
    text = text.replace("{", "{{").replace("}", "}}")
    return text.replace('"__MAX_ATTEMPTS__"', "{max_attempts}")


SPEC = AgentSpec(
    name="gemini",
    description="Gemini CLI (Google): gemini --prompt with the prompt on stdin, stream-json",
    command=(
        "gemini",
        "--prompt",
        "",
        "--output-format",
        "stream-json",
        "--approval-mode",
        "yolo",
        "--skip-trust",
        "--model",
        "{model}",
    ),
    prompt=PromptDelivery.STDIN,
    parser="gemini-stream-json",
    env_allow=(*DEFAULT_ENV_ALLOW, "GEMINI_API_KEY", "GOOGLE_GEMINI_BASE_URL"),
    env={
        # One process instead of a launcher that re-executes node with a bigger heap and
        # ignores SIGTERM itself: starts ~1.5 s sooner and dies with its group.
        "GEMINI_CLI_NO_RELAUNCH": "true",
        # gemini writes a full error report (the whole request) to the temp directory on
        # every API error: keep it with the run, not in the machine's /tmp.
        "TMPDIR": "{run_dir}/tmp",
    },
    resume=("--resume", "{session_id}"),
    vars={"model": "gemini-2.5-pro", "max_attempts": "1"},
    files={
        "home/.gemini/settings.json": _settings_template(),
        "tmp/.bosun-tmp": "The agent's TMPDIR for one run.\n",
    },
    version_command=("gemini", "--version"),
)
