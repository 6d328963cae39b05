"""AgentSpec: how one agent CLI is invoked, as data.

A spec turns a prompt into a :class:`~bosun.providers.base.Command` (argv, env, cwd, stdin,
run-dir files) and never builds a shell string. Adding an agent needs configuration only.

Templates
---------
Every element of ``command``, ``resume_command``, ``resume`` and ``version_command``, every
``env`` value and every ``files`` content is a template. Placeholders come from a fixed set:

=================  ============================================================
``{workdir}``      the task's working directory (also the command's cwd)
``{run_dir}``      the run directory on the host (logs, exit code, prompt file)
``{home}``         the agent's HOME: ``{run_dir}/home`` when ``isolated_home``
``{python}``       bosun's own interpreter (``sys.executable``; local hosts only)
``{prompt_file}``  ``{run_dir}/prompt.md``; only with ``prompt = "file"``
``{session_id}``   the session being resumed; only in ``resume`` / ``resume_command``
``{NAME}``         any key of ``vars`` (defaults), overridable per build via ``extra``
=================  ============================================================

Two placeholders must be a *whole* argv element: ``{prompt}`` (only with ``prompt = "arg"``;
the element becomes the prompt text as one argument, never spliced into a larger string)
and ``{resume}`` (where the ``resume`` arguments go; removed when not resuming). Literal
braces are written ``{{`` and ``}}``. Anything else is a :class:`ConfigError` raised when
the spec is created, so a bad ``bosun.toml`` fails at load time, not at run time.

Resuming a session
------------------
``build(session_id=...)`` starts from ``resume_command`` when one is given (a whole
template, for CLIs whose resume is a sub-command: ``codex exec resume {session_id}
{prompt}``), else from ``command``. The ``resume`` arguments (``--resume {session_id}``)
are then put at the ``{resume}`` element, or appended. A spec with neither cannot resume:
``supports_resume`` is false and ``build`` starts a fresh session (the prompt carries the
review feedback anyway).

Environment
-----------
The agent sees only: names from bosun's environment matching ``env_allow`` (names or
``fnmatch`` patterns), then the fixed ``env`` values, then - with ``isolated_home`` - HOME
and the XDG base directories pointing into ``{run_dir}/home``. Without ``isolated_home``,
HOME and the XDG variables are passed through from bosun's environment.

Files
-----
``files`` maps run-dir-relative paths to template contents written before launch, e.g.
``"home/.gemini/settings.json"`` (CLIs read their settings from their home). A provider
writes them before starting the command, creating sub-directories as needed. The isolated
home directory itself (``{run_dir}/home``) is created by the provider, not listed here.

Tmux mode
---------
With ``tmux = true`` the built command carries a :class:`~bosun.providers.base.TmuxSession`
named after the run key (the run directory's name): the provider starts the run inside that
detached tmux session (see :mod:`bosun.providers.tmux`), and ``bosun attach`` joins it.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import NoReturn

from bosun.agents.parsers import PARSERS
from bosun.errors import ConfigError, InputError
from bosun.providers.base import Command
from bosun.providers.tmux import session_for_run

__all__ = ["DEFAULT_ENV_ALLOW", "AgentSpec", "PromptDelivery"]


class PromptDelivery(StrEnum):
    """How the prompt reaches the agent."""

    STDIN = "stdin"  # written to the agent's stdin
    FILE = "file"  # written to {run_dir}/prompt.md; stdin is /dev/null
    ARG = "arg"  # one argv element, at the {prompt} element of the template


#: Passed through from bosun's environment unless a spec says otherwise. Not HOME: agents
#: get an isolated home by default, and no tokens: each agent lists the ones it needs.
DEFAULT_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TERM",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "SHELL",
    "NO_COLOR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)

#: What ``isolated_home`` sets, relative to the home directory.
_XDG = {
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "XDG_CACHE_HOME": ".cache",
    "XDG_STATE_HOME": ".local/state",
}
_PROMPT_FILE = "prompt.md"
#: Run-dir names a provider writes itself (see bosun.providers.local).
_RUN_DIR_NAMES = frozenset(
    {_PROMPT_FILE, "cmd.json", "stdin", "stdout", "stderr", "pid", "exit", "tmux.sock"}
)
_RUN_VALUES = frozenset({"workdir", "run_dir", "home", "python"})
_RESERVED = _RUN_VALUES | {"prompt", "prompt_file", "session_id", "resume"}
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_PATTERN = re.compile(r"[A-Za-z0-9_*?\[\]!-]+")
#: Linux refuses a single argv element longer than MAX_ARG_STRLEN (32 pages).
_MAX_ARG_BYTES = 131_071
_FORMATTER = string.Formatter()


def _freeze(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@functools.lru_cache(maxsize=64)
def _allow_pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regular expression for an ``env_allow`` list (``fnmatchcase`` semantics): the
    environment is filtered on every launch, name by name."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """How to run one agent CLI; validated on creation (raises :class:`ConfigError`)."""

    name: str
    command: tuple[str, ...]
    prompt: PromptDelivery = PromptDelivery.STDIN
    parser: str = "raw"
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    env: Mapping[str, str] = field(default_factory=dict)
    resume: tuple[str, ...] = ()
    resume_command: tuple[str, ...] = ()
    isolated_home: bool = True
    timeout: float | None = None  # wall-clock seconds; None: [limits] run_timeout
    stall_timeout: float | None = None  # seconds without output; None: [limits]
    version_command: tuple[str, ...] = ()
    vars: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    #: tmux mode: each run starts inside a detached tmux session (``bosun attach``)
    tmux: bool = False

    def __post_init__(self) -> None:
        # Accept lists and plain strings from callers (config), store immutable values.
        set_ = object.__setattr__
        for name in ("command", "resume", "resume_command", "env_allow", "version_command"):
            set_(self, name, tuple(getattr(self, name)))
        for name in ("env", "vars", "files"):
            set_(self, name, _freeze(getattr(self, name)))
        try:
            set_(self, "prompt", PromptDelivery(self.prompt))
        except ValueError:
            self._fail(
                f"prompt = {self.prompt!r} is not a delivery",
                'use prompt = "stdin", "file" or "arg"',
            )
        self._validate()

    # -- public ------------------------------------------------------------------------
    @property
    def supports_resume(self) -> bool:
        """Whether ``build(session_id=...)`` continues a session instead of starting anew."""
        return bool(self.resume or self.resume_command)

    def build(
        self,
        *,
        prompt: str,
        workdir: str,
        run_dir: str,
        session_id: str | None = None,
        environ: Mapping[str, str],
        extra: Mapping[str, str] | None = None,
    ) -> Command:
        """The command that runs this agent on ``prompt`` in ``workdir``.

        ``run_dir`` is a POSIX path on the host the command runs on; ``environ`` is bosun's
        environment (only allowlisted names reach the agent); ``extra`` overrides ``vars``.
        """
        extra = dict(extra or {})
        if bad := sorted(set(extra) & _RESERVED):
            raise ConfigError(
                f"agent {self.name!r}: extra values may not redefine {{{bad[0]}}}",
                "pick another name for the value",
            )
        home = self._home(run_dir, environ)
        values: dict[str, str] = {
            **self.vars,
            **extra,
            "workdir": workdir,
            "run_dir": run_dir,
            "home": home,
            "python": sys.executable,
        }
        if self.prompt is PromptDelivery.FILE:
            values["prompt_file"] = posixpath.join(run_dir, _PROMPT_FILE)
        resuming = bool(session_id) and self.supports_resume
        if session_id and resuming:
            values["session_id"] = session_id
        argv = self._argv(values, prompt, resuming)
        env = self._env(values, environ, home)
        files = {path: _render(text, values).encode() for path, text in self.files.items()}
        stdin: bytes | None = None
        # "replace": a lone surrogate (possible in JSON input) must not stop the run.
        if self.prompt is PromptDelivery.STDIN:
            stdin = prompt.encode("utf-8", "replace")
        elif self.prompt is PromptDelivery.FILE:
            files[_PROMPT_FILE] = prompt.encode("utf-8", "replace")
        if self.isolated_home and not any(p.startswith("home/") for p in files):
            # the provider creates a file's parent directories: this makes HOME exist
            files["home/.bosun-home"] = b"This directory is the agent's HOME for one run.\n"
        session = session_for_run(run_dir) if self.tmux else None
        return Command(argv=argv, cwd=workdir, env=env, stdin=stdin, files=files, tmux=session)

    def version_argv(self) -> tuple[str, ...]:
        """``version_command`` with ``{python}`` and ``vars`` filled in (for preflight)."""
        values = {**self.vars, "python": sys.executable}
        return tuple(_render(arg, values) for arg in self.version_command)

    # -- building ----------------------------------------------------------------------
    def _home(self, run_dir: str, environ: Mapping[str, str]) -> str:
        if self.isolated_home or not environ.get("HOME"):
            return posixpath.join(run_dir, "home")
        return environ["HOME"]

    def _argv(self, values: Mapping[str, str], prompt: str, resuming: bool) -> tuple[str, ...]:
        template = self.resume_command if resuming and self.resume_command else self.command
        resume_args = [_render(a, values) for a in self.resume] if resuming else []
        argv: list[str] = []
        placed = False
        for element in template:
            if element == "{prompt}":
                argv.append(_prompt_arg(self.name, prompt))
            elif element == "{resume}":
                argv.extend(resume_args)
                placed = True
            else:
                argv.append(_render(element, values))
        if not placed:
            argv.extend(resume_args)
        return tuple(argv)

    def _env(
        self, values: Mapping[str, str], environ: Mapping[str, str], home: str
    ) -> dict[str, str]:
        allowed = _allow_pattern(self.env_allow)
        env = {key: value for key, value in environ.items() if allowed.match(key)}
        if not self.isolated_home:
            for key in ("HOME", *_XDG):
                if key in environ:
                    env[key] = environ[key]
        env.update({key: _render(value, values) for key, value in self.env.items()})
        if self.isolated_home:
            env["HOME"] = home
            env.update({key: posixpath.join(home, sub) for key, sub in _XDG.items()})
        return env

    # -- validation --------------------------------------------------------------------
    def _fail(self, problem: str, hint: str) -> NoReturn:
        raise ConfigError(f"agent {self.name!r}: {problem}", hint)

    def _validate(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"agent name {self.name!r} is not allowed",
                "use letters, digits, '_' and '-' only",
            )
        if not self.command:
            self._fail("command is empty", 'give the argv, e.g. command = ["my-agent", "-p"]')
        if self.parser not in PARSERS:
            self._fail(
                f"unknown parser {self.parser!r}",
                f"use one of: {', '.join(sorted(PARSERS))}",
            )
        for key in self.vars:
            if not _IDENT.fullmatch(key) or key in _RESERVED:
                self._fail(
                    f"vars key {key!r} is not allowed",
                    f"use an identifier that is not one of: {', '.join(sorted(_RESERVED))}",
                )
        for key in self.env:
            if not _IDENT.fullmatch(key):
                self._fail(f"env name {key!r} is not valid", "use A-Z, 0-9 and _ only")
            if self.isolated_home and (key == "HOME" or key in _XDG):
                self._fail(
                    f"env sets {key}, which isolated_home controls",
                    "remove it, or set isolated_home = false",
                )
        for pattern in self.env_allow:
            if not _ENV_PATTERN.fullmatch(pattern):
                self._fail(
                    f"env_allow entry {pattern!r} is not a name or pattern",
                    "use names like PATH or patterns like LC_*",
                )
        for path in self.files:
            parts = path.split("/")
            if path.startswith("/") or ".." in parts or "" in parts or path in _RUN_DIR_NAMES:
                self._fail(
                    f"files path {path!r} must be relative to the run directory and not one "
                    f"of bosun's own run files ({', '.join(sorted(_RUN_DIR_NAMES))})",
                    "write it like home/.config/tool/settings.json (no leading /, no ..)",
                )
        for value, where in ((self.timeout, "timeout"), (self.stall_timeout, "stall_timeout")):
            if value is not None and not value > 0:
                self._fail(f"{where} must be positive", f"set {where} to a number of seconds")
        self._validate_templates()

    def _validate_templates(self) -> None:
        base = set(_RUN_VALUES) | set(self.vars)
        if self.prompt is PromptDelivery.FILE:
            base.add("prompt_file")
        arg = self.prompt is PromptDelivery.ARG
        self._check_argv("command", self.command, base, whole=True)
        if self.resume_command:
            self._check_argv("resume_command", self.resume_command, base | {"session_id"}, True)
        self._check_argv("resume", self.resume, base | {"session_id"}, whole=False)
        self._check_argv("version_command", self.version_command, {"python", *self.vars}, False)
        for key, value in self.env.items():
            self._check_template(f"env.{key}", value, base)
        for path, text in self.files.items():
            self._check_template(f"files.{path!r}", text, base)
        templates = [("command", self.command)]
        if self.resume_command:
            templates.append(("resume_command", self.resume_command))
        for label, argv in templates:
            count = argv.count("{prompt}")
            if arg and count != 1:
                self._fail(
                    f'prompt = "arg" needs exactly one "{{prompt}}" element in {label}',
                    f'put "{{prompt}}" where the prompt goes, e.g. {label} = ["tool", "-p", '
                    '"{prompt}"]',
                )
            if not arg and count:
                self._fail(
                    f'"{{prompt}}" in {label} needs prompt = "arg" (it is {self.prompt.value})',
                    'set prompt = "arg", or remove the "{prompt}" element',
                )
            if argv.count("{resume}") > 1:
                self._fail(f'"{{resume}}" appears more than once in {label}', "keep one")

    def _check_argv(self, label: str, argv: Sequence[str], allowed: set[str], whole: bool) -> None:
        for index, element in enumerate(argv):
            if whole and element in ("{prompt}", "{resume}"):
                continue
            self._check_template(f"{label}[{index}]", element, allowed)

    def _check_template(self, where: str, template: str, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        try:
            names = _placeholders(template)
        except ValueError as exc:
            self._fail(
                f"{where}: bad template {template!r} ({exc})",
                "write literal braces as {{ and }}",
            )
        for name in names:
            if name in allowed:
                continue
            if name in ("prompt", "resume"):
                hint = f"{{{name}}} must be a whole argv element of command or resume_command"
                if name == "prompt":
                    hint += ' with prompt = "arg"'
            elif name == "session_id":
                hint = "{session_id} is only known in resume and resume_command"
            elif name == "prompt_file":
                hint = '{prompt_file} needs prompt = "file"'
            else:
                known = ", ".join(f"{{{n}}}" for n in sorted(allowed))
                hint = f"use one of {known}, or declare a default in vars = {{ {name} = ... }}"
            self._fail(f"{where}: unknown placeholder {{{name}}}", hint)


def _placeholders(template: str) -> list[str]:
    """Names used by ``template``; ValueError on syntax the renderer does not support."""
    names = []
    for _literal, name, spec, conversion in _FORMATTER.parse(template):
        if name is None:
            continue
        if not name or not _IDENT.fullmatch(name):
            raise ValueError(f"placeholder {{{name}}} is not a plain name")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} may not carry a format or conversion")
        names.append(name)
    return names


def _render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``{name}`` from ``values``; templates were validated on creation."""
    out = []
    for literal, name, _spec, _conversion in _FORMATTER.parse(template):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


def _prompt_arg(agent: str, prompt: str) -> str:
    # execve cannot carry NUL bytes or lone surrogates; replacement characters keep the rest.
    data = prompt.replace("\x00", "\ufffd").encode("utf-8", "replace")
    if len(data) > _MAX_ARG_BYTES:
        raise InputError(
            f"the prompt is too long to pass to agent {agent!r} as one argument "
            f"({len(data)} bytes, the system limit is {_MAX_ARG_BYTES})",
            'shorten the task, or deliver the prompt with prompt = "stdin" or "file"',
        )
    return data.decode("utf-8")
