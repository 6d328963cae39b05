"""aider (``aider-chat``) as a built-in agent.

Headless: ``aider --message-file FILE --yes-always`` sends the prompt once and exits. aider
talks Chat Completions without tools: the model answers with whole files in aider's
``whole`` edit format (a path line, then a fenced block), which aider writes into the
worktree and reports as ``Applied edit to PATH``. Its analytics log (``--analytics-log``,
written even with analytics off) goes to stderr, where the ``aider`` parser reads exact
token counts, cost, and the id that names the run's home (below).

Model: ``openai/{model}`` at ``{base_url}`` (any OpenAI-compatible endpoint; the defaults
are OpenAI's), key from ``OPENAI_API_KEY``. The model metadata file tells aider the
model's context size, so it does not download litellm's price list on every run; its zero
prices read as "cost not known" (aider uses litellm's own prices for models litellm knows).
The model settings file turns off the OpenAI client's retries inside each of aider's
attempts.

Git: bosun commits the worktree, so aider must not: no auto or dirty commits, no
``.gitignore`` edits, chat and input history in the agent's home, and the repository map
off by default (``map_tokens = "0"``), because its cache directory
(``.aider.tags.cache.v4/``) would land in the worktree and be committed. Set
``vars = { map_tokens = "1024" }`` to give aider the map anyway.

Resuming: aider has no session id. Its chat history lives in the run's home; a resumed
run gets a copy of the previous run's home from bosun and ``--restore-chat-history``
replays it. The "session id" the parser reports is the analytics ``user_id``: a fresh
UUID per isolated home, kept with the home - it names the history to resume.

Retries: aider retries rate limits and server errors itself, doubling a delay from 0.25 s
until it would pass 60 s (about 64 s in all, not configurable), then prints the error and
exits 0; the parser reads the error from the text.
"""

from __future__ import annotations

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

_METADATA = """{{
  "openai/{model}": {{
    "max_input_tokens": {max_input_tokens},
    "max_output_tokens": {max_output_tokens},
    "input_cost_per_token": 0,
    "output_cost_per_token": 0,
    "litellm_provider": "openai",
    "mode": "chat"
  }}
}}
"""

_SETTINGS = """- name: openai/{model}
  extra_params:
    max_retries: 0
"""

SPEC = AgentSpec(
    name="aider",
    description="aider (any OpenAI-compatible endpoint): whole-file edits, analytics log",
    command=(
        "aider",
        "--model",
        "openai/{model}",
        "--openai-api-base",
        "{base_url}",
        "--model-metadata-file",
        "{home}/.aider.model.metadata.json",
        "--model-settings-file",
        "{home}/.aider.model.settings.yml",
        "--no-show-model-warnings",
        "--edit-format",
        "{edit_format}",
        "--map-tokens",
        "{map_tokens}",
        "--yes-always",
        "--no-check-update",
        "--no-show-release-notes",
        "--no-analytics",
        "--analytics-log",
        "/dev/stderr",
        "--no-pretty",
        "--no-fancy-input",
        "--no-detect-urls",
        "--no-auto-commits",
        "--no-dirty-commits",
        "--no-gitignore",
        "--chat-history-file",
        "{home}/.aider.chat.history.md",
        "--input-history-file",
        "{home}/.aider.input.history",
        "--message-file",
        "{prompt_file}",
    ),
    prompt=PromptDelivery.FILE,
    parser="aider",
    env_allow=(*DEFAULT_ENV_ALLOW, "OPENAI_API_KEY"),
    env={
        # litellm's bundled price list, not a download
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # aider's console wraps at 80 columns without a terminal: one error, one line
        "COLUMNS": "4096",
        # with --yes-always aider "opens" URLs from error messages; make that a no-op
        "BROWSER": "true",
    },
    files={
        "home/.aider.model.metadata.json": _METADATA,
        "home/.aider.model.settings.yml": _SETTINGS,
    },
    resume=("--restore-chat-history",),
    vars={
        "base_url": "https://api.openai.com/v1",
        "model": "gpt-4.1",
        "edit_format": "whole",
        "map_tokens": "0",
        "max_input_tokens": "128000",
        "max_output_tokens": "8192",
    },
    version_command=("aider", "--version"),
)
