"""OpenAI Codex CLI (``@openai/codex``) as a built-in agent.

Headless: ``codex exec --json`` reads the prompt from stdin (the ``-`` argument) and prints
one thread event a line (``thread.started``, ``item.*``, ``turn.completed`` /
``turn.failed``), parsed by ``codex-jsonl``. ``--skip-git-repo-check`` lets it run in a
working directory that is not a git checkout (tasks without a repository).

Endpoint: environment variables alone do not move codex to another server, so the spec
writes ``$CODEX_HOME/config.toml`` (``CODEX_HOME`` = ``{home}/.codex``) with a provider
``bosun`` that talks the Responses API to ``{base_url}`` with the key in
``OPENAI_API_KEY``. Point it elsewhere with
``[agents.codex] vars = { base_url = "http://127.0.0.1:8080/v1", model = "...",
sandbox = "workspace-write" }`` (a ``vars`` table replaces the defaults as a whole, so give
all three). A model codex does not know works, with a warning event.

Unattended: codex exec never asks for approval (``approval_policy = "never"``); the
``workspace-write`` sandbox lets it write in the worktree and temporary directories only
(and, by codex's default, gives its shell commands no network). Where the Linux sandbox
cannot run (some containers), set ``sandbox = "danger-full-access"``.

Quiet: update checks, analytics, feedback and plugins are off; retries are off
(``request_max_retries`` / ``stream_max_retries`` = 0) because bosun retries attempts
itself and pauses on usage limits. ``TZ`` is pinned to UTC because codex names a usage
limit's reset as a local wall-clock time without a zone ("try again at 3:00 PM"), which
bosun reads as UTC.

Resume: ``codex exec ... resume THREAD_ID -`` (by exact id). Codex finds the thread in
``$CODEX_HOME/sessions``, which lives in the run's isolated home, so the resumed run must
start from a copy of the home of the run that recorded the session; without it codex exits
1 with "no rollout found for thread id ...".
"""

from __future__ import annotations

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

__all__ = ["CONFIG_TOML", "SPEC"]

#: ``$CODEX_HOME/config.toml``; ``{base_url}`` and ``{model}`` are placed in TOML strings.
CONFIG_TOML = """\
# Written by bosun for one run of codex.
model = "{model}"
model_provider = "bosun"
approval_policy = "never"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[features]
plugins = false

[model_providers.bosun]
name = "bosun"
base_url = "{base_url}"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""

SPEC = AgentSpec(
    name="codex",
    description="OpenAI Codex CLI: codex exec --json; Responses API at vars base_url, model",
    command=(
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "-C",
        "{workdir}",
        "-s",
        "{sandbox}",
        "{resume}",
        "-",
    ),
    prompt=PromptDelivery.STDIN,
    parser="codex-jsonl",
    env_allow=(*DEFAULT_ENV_ALLOW, "OPENAI_API_KEY"),
    env={"CODEX_HOME": "{home}/.codex", "TZ": "UTC0"},
    # A sub-command of exec: "codex exec [options] resume THREAD_ID -".
    resume=("resume", "{session_id}"),
    vars={
        "base_url": "https://api.openai.com/v1",
        "model": "gpt-5.5",
        "sandbox": "workspace-write",
    },
    files={"home/.codex/config.toml": CONFIG_TOML},
    version_command=("codex", "--version"),
)
