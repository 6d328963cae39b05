"""Local models through Ollama's HTTP API, as a built-in, text-only agent.

There is no Ollama coding-agent CLI to install: the command is bosun's own small program,
``python -m bosun.ollama_agent`` (:mod:`bosun.ollama_agent`, standard library only). It
reads the prompt on stdin, streams one ``/api/chat`` answer and prints JSON lines parsed by
``ollama``. It has no tools: it answers in text and edits no files, so a task run on it
commits nothing; the answer is the task's result summary.

Endpoint: ``vars.base_url`` (default ``http://127.0.0.1:11434``), unless ``OLLAMA_HOST`` is
set in bosun's environment (Ollama's own variable wins, as with the ``ollama`` CLI).
``OLLAMA_API_KEY``, when set, is sent as a bearer token (hosted Ollama-compatible servers).
Model: ``vars.model`` (default ``llama3.1``; it must be pulled on the server).

Sessions live in the isolated home (``home/.ollama-agent/sessions/<id>.json``) and are
resumed by exact id (``--resume ID``); bosun gives a resumed run a copy of the home of the
run that recorded the session. The program never retries (bosun retries whole runs and
pauses on usage limits) and talks to nothing but the configured server: no telemetry.
"""

from __future__ import annotations

from bosun.agents.spec import DEFAULT_ENV_ALLOW, AgentSpec, PromptDelivery

__all__ = ["SPEC"]

SPEC = AgentSpec(
    name="ollama",
    description="Local models through Ollama's /api/chat (text only, no tools): bosun's agent",
    command=(
        "{python}",
        "-I",  # isolated: the worktree (cwd) must not shadow bosun's own modules
        "-m",
        "bosun.ollama_agent",
        "--model",
        "{model}",
        "--base-url",
        "{base_url}",
    ),
    prompt=PromptDelivery.STDIN,
    parser="ollama",
    env_allow=(*DEFAULT_ENV_ALLOW, "OLLAMA_HOST", "OLLAMA_API_KEY"),
    resume=("--resume", "{session_id}"),
    vars={"model": "llama3.1", "base_url": "http://127.0.0.1:11434"},
    version_command=("{python}", "-I", "-m", "bosun.ollama_agent", "--version"),
)
