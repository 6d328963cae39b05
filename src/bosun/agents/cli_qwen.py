"""Qwen Code (``@qwen-code/qwen-code``) as a built-in agent.

Headless: ``qwen`` with no prompt argument reads the prompt from stdin and runs one-shot;
``--output-format stream-json`` prints one message a line (``system/init``, ``assistant``,
``user`` tool results, the final ``result``), parsed by ``qwen-stream-json``. Sessions are
resumed by exact id (``--resume ID``, only from the same working directory; qwen keeps them
under ``$HOME/.qwen/projects/<cwd>/chats``, so a resumed run needs the previous run's home).

Model API: any OpenAI-compatible Chat Completions endpoint. qwen reads ``OPENAI_API_KEY``
and ``OPENAI_BASE_URL`` from the environment (passed through); the model is
``vars.model``. Settings written into the isolated home select that auth, turn telemetry,
usage statistics, auto-update and the managed auto-memory (an extra model request after
every answer) off, and set the OpenAI client's own retries to 0.

Unattended: ``--approval-mode yolo`` (without it qwen does not even offer its write tools
in a headless run). Its write tool is ``write_file`` (``file_path`` must be absolute).

Known limit (qwen 0.15.10): on a 429 or 5xx qwen itself retries the request up to 7 times
with backoff (1.5 s doubling to 30 s, about 80 s in all, silent on stdout) whatever
``maxRetries`` says, and ignores ``Retry-After``; then it exits 0 with a result starting
``[API Error: 429 ...]``, which the parser reads as the failure.
"""

from __future__ import annotations

import json

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

__all__ = ["SETTINGS", "SPEC"]

#: ``$HOME/.qwen/settings.json`` for every run (``$version`` 4 is the schema qwen 0.15
#: migrates to; writing it as such keeps qwen from rewriting the file).
SETTINGS: dict[str, object] = {
    "$version": 4,
    "security": {"auth": {"selectedType": "openai"}},
    "general": {"enableAutoUpdate": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    # the OpenAI client's retries; qwen's own retry loop is not configurable (see above)
    "model": {"generationConfig": {"maxRetries": 0}},
    # auto-memory sends a second chat request after every answer (tokens the user pays);
    # dream and skill review are further background model calls
    "memory": {
        "enableManagedAutoMemory": False,
        "enableManagedAutoDream": False,
        "enableAutoSkill": False,
    },
}


def _template(value: object) -> str:
    # files contents are templates: literal braces are doubled
    return json.dumps(value, indent=2).replace("{", "{{").replace("}", "}}") + "\n"


SPEC = AgentSpec(
    name="qwen",
    description="Qwen Code: qwen (prompt on stdin), stream-json output, OpenAI-compatible API",
    command=(
        "qwen",
        "--output-format",
        "stream-json",
        "--approval-mode",
        "yolo",
        "--model",
        "{model}",
    ),
    prompt=PromptDelivery.STDIN,
    parser="qwen-stream-json",
    env_allow=(*DEFAULT_ENV_ALLOW, "OPENAI_API_KEY", "OPENAI_BASE_URL"),
    env={
        # a warm-up connection to the default API host before the first request
        "QWEN_CODE_DISABLE_PRECONNECT": "1",
    },
    resume=("--resume", "{session_id}"),
    vars={"model": "qwen3-coder-plus"},
    files={"home/.qwen/settings.json": _template(SETTINGS)},
    version_command=("qwen", "--version"),
)
