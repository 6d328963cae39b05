"""``bosun.toml`` -> validated :class:`Settings`.

This module owns finding the file (explicit path, ``BOSUN_CONFIG``, ``./bosun.toml``),
parsing it, validating every table with pydantic (unknown keys are errors), resolving paths
against the file's directory, and turning every problem into a :class:`ConfigError` that
names the file, the table and key, and how to fix it. ``bosun init`` writes the commented
starting point from :func:`init_config_text`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from bosun.agents.builtin import resolve_agents
from bosun.agents.spec import AgentSpec
from bosun.errors import ConfigError, InputError

__all__ = [
    "AgentConfig",
    "DatabaseConfig",
    "ForgeConfig",
    "HostConfig",
    "LimitsConfig",
    "NotificationsConfig",
    "RepoConfig",
    "ServerConfig",
    "Settings",
    "find_config",
    "init_config_text",
    "load_settings",
    "read_secret",
    "settings_from_data",
    "write_init",
]

CONFIG_NAME = "bosun.toml"
ENV_VAR = "BOSUN_CONFIG"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class _Table(BaseModel):
    # strict: TOML already has types, so "yes" for a bool or 1 for a string is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatabaseConfig(_Table):
    """``[database]``: where tasks and events are stored."""

    url: str | None = None  # None: sqlite at <state_dir>/bosun.db


#: Keys that would put a secret into bosun.toml itself, and the keys to use instead.
_INLINE_SECRETS = {
    "token": "token_env",
    "webhook_secret": "webhook_secret_env",
    "secret": "secret_env",
    "password": "token_env",
    "api_key": "token_env",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _no_inline_secrets(data: Any) -> Any:
    """Refuse a secret written into the config text (it is often committed or shared)."""
    if isinstance(data, Mapping):
        for key, instead in _INLINE_SECRETS.items():
            if key in data:
                base = instead.removesuffix("_env")
                raise ValueError(
                    f"{key} is written in the config itself, but secrets are never read from "
                    f"bosun.toml (it is often committed or shared): put the value in an "
                    f'environment variable and write {instead} = "VARIABLE_NAME", or in a '
                    f'file and write {base}_file = "path/to/file"'
                )
    return data


def _check_secret_source(table: BaseModel, name: str, *, required: bool) -> None:
    env = getattr(table, f"{name}_env")
    path = getattr(table, f"{name}_file")
    if env is not None and path is not None:
        raise ValueError(f"give either {name}_env or {name}_file, not both")
    if required and env is None and path is None:
        raise ValueError(
            f'{name} is needed: write {name}_env = "VARIABLE_NAME" (an environment variable '
            f'that holds it) or {name}_file = "path/to/file"'
        )
    if env is not None and not _ENV_NAME.fullmatch(env):
        raise ValueError(
            f"{name}_env is not an environment variable name "
            "(letters, digits and '_'; the name of the variable, not its value)"
        )


class ForgeConfig(_Table):
    """``[repos.NAME.forge]``: the forge (Forgejo, Gitea, GitHub) that hosts a repository:
    bosun opens a pull request for each task there and follows its review through signed
    webhooks. Secrets come from environment variables (``*_env``) or files (``*_file``)."""

    kind: Literal["forgejo", "gitea", "github"]
    api_url: str = Field(min_length=1)  # https://forge.example/api/v1, https://api.github.com
    repo: str = Field(min_length=3)  # "owner/name" on the forge
    token_env: str | None = None
    token_file: str | None = None
    webhook_secret_env: str | None = None
    webhook_secret_file: str | None = None
    draft: bool = False  # open pull requests as drafts
    on_close: Literal["cancel", "ignore"] = "cancel"  # closed without merging
    command_prefix: str = Field(default="/bosun", min_length=1)  # "/bosun fix the tests"
    mention: str | None = "@bosun"  # a comment mentioning this is addressed to bosun
    max_reviews: PositiveInt = 3  # rework rounds before the task needs a human
    issue_label: str | None = None  # an issue given this label becomes a task
    issue_agent: str | None = None  # the agent of tasks made from issues
    poll_interval: NonNegativeFloat = 300.0  # seconds between polls of open PRs; 0: never
    timeout: PositiveFloat = 30.0  # seconds for one REST request

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        return _no_inline_secrets(data)

    @model_validator(mode="after")
    def _consistent(self) -> ForgeConfig:
        _check_secret_source(self, "token", required=True)
        _check_secret_source(self, "webhook_secret", required=False)
        if not re.fullmatch(r"[^/\s]+/[^/\s]+", self.repo):
            raise ValueError(f'repo = {self.repo!r} is not "owner/name"')
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(
                f"api_url = {self.api_url!r} is not an http(s) URL "
                '(e.g. "https://forge.example/api/v1" or "https://api.github.com")'
            )
        if self.issue_label is not None and self.issue_agent is None:
            raise ValueError("issue_label needs issue_agent: the agent of tasks made from issues")
        return self

    def token(self, environ: Mapping[str, str] = os.environ) -> str:
        """The API token (``ConfigError`` naming the variable or file when it is missing)."""
        value = read_secret(self.token_env, self.token_file, "token", self.repo, environ)
        assert value is not None  # required by the validator
        return value

    def webhook_secret(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The webhook secret, or None when none is configured."""
        return read_secret(
            self.webhook_secret_env, self.webhook_secret_file, "webhook secret", self.repo, environ
        )


def read_secret(
    env: str | None, path: str | None, what: str, owner: str, environ: Mapping[str, str]
) -> str | None:
    """A secret from the environment variable ``env`` or the file ``path`` (stripped of
    surrounding whitespace); None when neither is configured. The value is never part of
    an error message."""
    if env is not None:
        value = environ.get(env, "").strip()
        if not value:
            raise ConfigError(
                f"the {what} of {owner} is read from the environment variable {env}, "
                "which is not set (or empty)",
                f"export {env}=... in the environment of bosun",
            )
        return value
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"the {what} of {owner} is read from {path}, which cannot be read: {reason}",
                "create the file with the secret in it, readable by bosun",
            ) from None
        if not value:
            raise ConfigError(f"the {what} file {path} of {owner} is empty", "put the secret in it")
        return value
    return None


NotifyOn = Literal["needs_input", "failed", "completed"]


def _notify_on() -> list[NotifyOn]:
    return ["needs_input", "failed", "completed"]


class NotificationsConfig(_Table):
    """``[notifications]``: an outgoing webhook (a JSON POST) when a task needs input,
    fails or completes; each change of status is sent once."""

    url: str | None = None
    url_env: str | None = None  # when the URL itself is a secret (Slack-style hooks)
    secret_env: str | None = None  # signs the body: X-Bosun-Signature-256: sha256=<hex>
    secret_file: str | None = None
    on: list[NotifyOn] = Field(default_factory=_notify_on)
    timeout: PositiveFloat = 10.0
    retries: NonNegativeInt = 3  # attempts after the first failed one

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, data: Any) -> Any:
        return _no_inline_secrets(data)

    @model_validator(mode="after")
    def _consistent(self) -> NotificationsConfig:
        if self.url is not None and self.url_env is not None:
            raise ValueError("give either url or url_env, not both")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url = {self.url!r} is not an http(s) URL")
        if self.url_env is not None and not _ENV_NAME.fullmatch(self.url_env):
            raise ValueError("url_env is not an environment variable name")
        _check_secret_source(self, "secret", required=False)
        return self

    @property
    def enabled(self) -> bool:
        return self.url is not None or self.url_env is not None

    def target(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The URL to POST to (None when notifications are off)."""
        if self.url is not None:
            return self.url
        return read_secret(self.url_env, None, "notification URL", "[notifications]", environ)

    def secret(self, environ: Mapping[str, str] = os.environ) -> str | None:
        return read_secret(
            self.secret_env, self.secret_file, "signing secret", "[notifications]", environ
        )


class RepoConfig(_Table):
    """``[repos.NAME]``: a repository tasks can work on."""

    url: str = Field(min_length=1)
    default_branch: str = Field(default="main", min_length=1)
    copy_files: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list)  # one argv run in a fresh worktree
    push: bool = True
    # how commits reach the url: "auto" (the host's git; bosun's connection when the host
    # cannot reach the url), "git" (the host's git only) or "bosun" (always through bosun)
    transport: Literal["auto", "git", "bosun"] = "auto"
    forge: ForgeConfig | None = None  # [repos.NAME.forge]: pull requests and reviews


class AgentConfig(_Table):
    """``[agents.NAME]``: fields of :class:`~bosun.agents.AgentSpec`; unset keeps the
    built-in's value (or the default for a new agent)."""

    command: list[str] | None = None
    resume_command: list[str] | None = None
    prompt: Literal["stdin", "file", "arg"] | None = None
    parser: str | None = None
    env_allow: list[str] | None = None
    env: dict[str, str] | None = None
    vars: dict[str, str] | None = None
    files: dict[str, str] | None = None
    resume: list[str] | None = None
    isolated_home: bool | None = None
    timeout: PositiveFloat | None = None
    stall_timeout: PositiveFloat | None = None
    version_command: list[str] | None = None
    description: str | None = None
    tmux: bool | None = None  # run inside a detached tmux session (see docs/attach.md)


class HostConfig(_Table):
    """``[hosts.NAME]``: a machine that runs agents (this one, or one reached over SSH)."""

    kind: Literal["local", "ssh"] = "local"
    max_concurrent: PositiveInt = 4
    agents: list[str] = Field(default_factory=list)  # empty: every agent
    labels: list[str] = Field(default_factory=list)
    priority: int = 0
    enabled: bool = True
    # --- kind = "ssh" only ---
    # "[user@]host[:port]" or a Host alias of the user's ~/.ssh/config.
    address: str | None = None
    # Strict host-key checking; false is the explicit, per-host opt-out.
    strict_host_keys: bool = True
    known_hosts: str | None = None  # extra known_hosts file (default: ~/.ssh/known_hosts)
    identity_file: str | None = None  # default: ssh config, ssh-agent, ~/.ssh/id_*
    ssh_config: str | None = None  # default: ~/.ssh/config, then /etc/ssh/ssh_config
    work_dir: str = ".bosun"  # repo caches, worktrees and run dirs; relative to remote $HOME
    # concurrent SSH channels, two long-lived (SFTP, the host session) and at least one for
    # commands; keep under sshd's MaxSessions
    max_channels: int = Field(default=8, ge=3)
    # two spare run wrappers wait on the host (idle shells) so that a launch starts no
    # process before the agent's; false: every launch starts its wrapper with setsid
    spares: bool = True
    keepalive_interval: PositiveFloat = 5.0  # seconds between keepalives
    keepalive_count_max: PositiveInt = 3  # missed keepalives before the link counts as dead
    connect_timeout: PositiveFloat = 10.0
    wake_command: list[str] = Field(default_factory=list)  # argv run here before connecting
    # Remote port forwards "REMOTE_PORT:LOCAL_HOST:LOCAL_PORT" (as ssh -R): agents on the
    # host reach LOCAL_HOST:LOCAL_PORT (as seen from bosun) at 127.0.0.1:REMOTE_PORT.
    remote_forwards: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _kind_fields(self) -> HostConfig:
        if self.kind == "ssh" and not (self.address or "").strip():
            raise ValueError(
                'kind = "ssh" needs an address: address = "user@host:22" or an ssh config alias'
            )
        if self.kind == "local" and self.address is not None:
            raise ValueError('address is only for kind = "ssh" hosts')
        for spec in self.remote_forwards:
            parts = spec.rsplit(":", 2)
            if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
                raise ValueError(
                    f"remote_forwards entry {spec!r} is not REMOTE_PORT:LOCAL_HOST:LOCAL_PORT "
                    '(e.g. "11434:127.0.0.1:11434")'
                )
        return self


class ServerConfig(_Table):
    """``[server]``: the HTTP API that ``bosun serve`` runs next to the dispatcher."""

    bind: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    public_url: str | None = None  # base URL used in links (pull requests, notifications)
    pull_lease_seconds: PositiveFloat = 120.0  # a pull agent must report within this


class LimitsConfig(_Table):
    """``[limits]``: global caps, retries, timeouts and the dispatcher's clocks (seconds)."""

    max_concurrent: PositiveInt = 8
    per_agent: dict[str, PositiveInt] = Field(default_factory=dict)
    max_attempts: PositiveInt = 3
    retry_backoff: NonNegativeFloat = 5.0
    retry_backoff_max: NonNegativeFloat = 300.0
    run_timeout: PositiveFloat = 3600.0
    stall_timeout: PositiveFloat = 600.0
    lease_seconds: PositiveFloat = 30.0
    heartbeat_seconds: PositiveFloat = 10.0
    poll_interval: PositiveFloat = 1.0
    cancel_grace: NonNegativeFloat = 5.0

    @model_validator(mode="after")
    def _consistent(self) -> LimitsConfig:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be smaller than "
                f"lease_seconds ({self.lease_seconds:g}), or leases expire between heartbeats"
            )
        if self.retry_backoff_max < self.retry_backoff:
            raise ValueError(
                f"retry_backoff_max ({self.retry_backoff_max:g}) is below "
                f"retry_backoff ({self.retry_backoff:g})"
            )
        return self


class _File(_Table):
    state_dir: str = Field(default=".bosun", min_length=1)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    repos: dict[str, RepoConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    hosts: dict[str, HostConfig] | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)


@dataclass(frozen=True, slots=True)
class Settings:
    """A loaded configuration: absolute paths, agents resolved with the built-ins."""

    config_path: Path
    config_dir: Path
    state_dir: Path
    database_url: str
    repos: dict[str, RepoConfig]
    agents: dict[str, AgentSpec]
    hosts: dict[str, HostConfig]
    limits: LimitsConfig
    server: ServerConfig = field(default_factory=ServerConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)

    def run_timeout(self, agent: str) -> float:
        """Wall-clock limit of one run of ``agent`` (its own, else ``[limits]``)."""
        return self.agents[agent].timeout or self.limits.run_timeout

    def stall_timeout(self, agent: str) -> float:
        """Seconds without output after which a run of ``agent`` counts as stalled."""
        return self.agents[agent].stall_timeout or self.limits.stall_timeout


# -- loading ---------------------------------------------------------------------------
def find_config(path: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The config file to use: ``path``, else ``$BOSUN_CONFIG``, else ``./bosun.toml``."""
    if path is not None:
        source = f"config file {path}"
    elif environ.get(ENV_VAR):
        path, source = environ[ENV_VAR], f"{ENV_VAR}={environ[ENV_VAR]}"
    else:
        path, source = CONFIG_NAME, f"{CONFIG_NAME} in {Path.cwd()}"
    found = Path(path).expanduser().absolute()
    if found.is_dir():
        found = found / CONFIG_NAME
    if not found.is_file():
        raise ConfigError(
            f"no configuration found: {source} ({found}) does not exist",
            "create one with `bosun init`, or point --config or BOSUN_CONFIG at it",
        )
    return found


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Find, read and validate ``bosun.toml``; every problem is a :class:`ConfigError`."""
    config_path = find_config(path, environ).resolve()
    try:
        with config_path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{config_path}: invalid TOML: {exc}",
            "fix the syntax there: strings need quotes, tables look like [repos.NAME]",
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{config_path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
            "save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{config_path}: cannot read: {exc.strerror}", "check the file's permissions"
        ) from None
    return settings_from_data(data, config_path)


def settings_from_data(data: Mapping[str, Any], config_path: str | Path) -> Settings:
    """Validate already-parsed TOML ``data`` as if read from ``config_path``."""
    config_path = Path(config_path).absolute()
    config_dir = config_path.parent
    try:
        raw = _File.model_validate(dict(data))
    except ValidationError as exc:
        raise _config_error(config_path, exc) from None

    def fail(message: str, hint: str) -> ConfigError:
        return ConfigError(f"{config_path}: {message}", hint)

    for table in ("repos", "agents", "hosts"):
        for name in getattr(raw, table) or {}:
            if not _NAME.fullmatch(name):
                raise fail(
                    f"[{table}.{name}]: the name {name!r} is not allowed",
                    "start with a letter or digit; then letters, digits, '_' and '-' only",
                )
    try:
        agents = resolve_agents(raw.agents)
    except ConfigError as exc:
        raise fail(exc.message, exc.hint or "fix the [agents] table") from None
    hosts = dict(raw.hosts) if raw.hosts is not None else {"local": HostConfig()}
    if not hosts:
        raise fail(
            "[hosts] is empty: no host could run a task",
            'add [hosts.local] with kind = "local", or remove the empty [hosts] table',
        )
    known = ", ".join(sorted(agents))
    for name in raw.limits.per_agent:
        if name not in agents:
            raise fail(f"[limits] per_agent: unknown agent {name!r}", f"use one of: {known}")
    for host_name, host in hosts.items():
        for name in host.agents:
            if name not in agents:
                raise fail(
                    f"[hosts.{host_name}] agents: unknown agent {name!r}",
                    f"use one of: {known} (or [] for every agent)",
                )
    for repo_name, repo in raw.repos.items():
        forge = repo.forge
        if forge is not None and not repo.push:
            raise fail(
                f"[repos.{repo_name}] push = false, but it has a forge: its pull requests need "
                "the task branches pushed",
                f"set push = true, or remove [repos.{repo_name}.forge]",
            )
        if forge is not None and forge.issue_agent is not None and forge.issue_agent not in agents:
            raise fail(
                f"[repos.{repo_name}.forge] issue_agent: unknown agent {forge.issue_agent!r}",
                f"use one of: {known}",
            )
    state_dir = _absolute(raw.state_dir, config_dir)
    return Settings(
        config_path=config_path,
        config_dir=config_dir,
        state_dir=state_dir,
        database_url=_database_url(raw.database.url, config_dir, state_dir),
        repos={
            name: repo.model_copy(
                update={"url": _repo_url(repo.url, config_dir), "forge": _forge(repo, config_dir)}
            )
            for name, repo in raw.repos.items()
        },
        agents=agents,
        hosts=hosts,
        limits=raw.limits,
        server=raw.server,
        notifications=raw.notifications.model_copy(
            update={"secret_file": _opt_path(raw.notifications.secret_file, config_dir)}
        ),
    )


def _opt_path(path: str | None, base: Path) -> str | None:
    return None if path is None else str(_absolute(path, base))


def _forge(repo: RepoConfig, config_dir: Path) -> ForgeConfig | None:
    """The forge table with its secret files made absolute."""
    if repo.forge is None:
        return None
    return repo.forge.model_copy(
        update={
            "token_file": _opt_path(repo.forge.token_file, config_dir),
            "webhook_secret_file": _opt_path(repo.forge.webhook_secret_file, config_dir),
        }
    )


def _absolute(path: str, base: Path) -> Path:
    return Path(os.path.normpath(base / Path(path).expanduser()))


def _repo_url(url: str, config_dir: Path) -> str:
    """Local paths become absolute; URLs and scp-like ``host:path`` stay as written."""
    if "://" in url:
        return url
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash == -1 or colon < slash):  # git's rule for scp-like syntax
        return url
    return str(_absolute(url, config_dir))


def _database_url(url: str | None, config_dir: Path, state_dir: Path) -> str:
    """Default SQLite file in the state dir; relative SQLite paths resolve to ``config_dir``."""
    if url is None:
        return f"sqlite:///{state_dir / 'bosun.db'}"
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[0] != "sqlite":
        return url
    path, question, query = rest.partition("?")
    if path in ("", ":memory:"):
        return url
    return f"{scheme}:///{_absolute(path, config_dir)}{question}{query}"


# -- error messages --------------------------------------------------------------------
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "database": DatabaseConfig,
    "limits": LimitsConfig,
    "server": ServerConfig,
    "notifications": NotificationsConfig,
}
_NAMED_MODELS: dict[str, type[BaseModel]] = {
    "repos": RepoConfig,
    "agents": AgentConfig,
    "hosts": HostConfig,
}


def _split_loc(loc: tuple[int | str, ...]) -> tuple[str, tuple[int | str, ...], type[BaseModel]]:
    """``("repos", "demo", "setup", 0)`` -> ``("[repos.demo]", ("setup", 0), RepoConfig)``."""
    if loc and loc[0] == "repos" and len(loc) >= 3 and loc[2] == "forge":
        return f"[repos.{loc[1]}.forge]", loc[3:], ForgeConfig
    if loc and loc[0] in _NAMED_MODELS and len(loc) >= 2:
        return f"[{loc[0]}.{loc[1]}]", loc[2:], _NAMED_MODELS[str(loc[0])]
    if loc and loc[0] in _SECTION_MODELS:
        return f"[{loc[0]}]", loc[1:], _SECTION_MODELS[str(loc[0])]
    return "", loc, _File


def _key_path(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """One pydantic error as (where: what, hint)."""
    loc = tuple(error["loc"])
    kind: str = error["type"]
    section, rest, model = _split_loc(loc)
    where = " ".join(p for p in (section, _key_path(rest)) if p) or "top level"
    if kind == "extra_forbidden":
        parent_section, _parent_rest, parent_model = _split_loc(loc[:-1])
        key = str(loc[-1])
        valid = list(parent_model.model_fields)
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"remove it or use one of: {', '.join(valid)}"
        if close:
            hint += f" (did you mean {close[0]}?)"
        return f"{parent_section or 'top level'}: unknown key {key!r}", hint
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return f"{where}: required key is missing", f"add {_key_path(rest)} = ... to {section}"
    if kind == "literal_error" and rest == ("kind",) and model is HostConfig:
        return (
            f"{where}: {message}",
            'use kind = "local" (this machine) or kind = "ssh" (with address = "user@host")',
        )
    if kind == "literal_error":
        return f"{where}: {message}", "use one of the values listed"
    if kind.startswith(("model_type", "dict_type")):
        return f"{where}: {message}", f"write it as a table: {section or '[' + where + ']'}"
    key = _key_path(rest) or "the value"
    hint = _TYPE_HINTS.get(kind, "fix the value (`bosun init` writes an example of every key)")
    ctx = error.get("ctx") or {}
    bounds = {k: _bound(ctx.get(k, 0)) for k in ("ge", "gt")}
    return f"{where}: {message}", hint.format(key=key, **bounds)


def _bound(value: Any) -> str:
    """A limit from a pydantic error, for a hint: ``zero``, ``3``, ``0.5``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if number == 0:
        return "zero"
    return str(int(number)) if number.is_integer() else str(number)


_TYPE_HINTS = {
    "string_type": 'write a quoted string: {key} = "..."',
    "int_type": "write a whole number: {key} = 4",
    "float_type": "write a number: {key} = 5.0",
    "bool_type": "write {key} = true or {key} = false",
    "list_type": "write a list: {key} = [...]",
    "greater_than": "use a number above {gt}",
    "greater_than_equal": "use {ge} or more",
    "string_too_short": 'write a non-empty string: {key} = "..."',
    "value_error": "change the values so that the rule above holds",
}


def _config_error(path: Path, exc: ValidationError) -> ConfigError:
    described = [_describe(e) for e in exc.errors()]
    messages = [f"{path}: {what}" for what, _ in described]
    hints = list(dict.fromkeys(hint for _, hint in described))
    return ConfigError("\n".join(messages), "; ".join(hints))


# -- bosun init ------------------------------------------------------------------------
_INIT_TEXT = """\
# bosun.toml: configuration of bosun, the orchestrator for AI coding agents.
# Relative paths are relative to the directory of this file. Values shown are defaults.

# Where bosun keeps its database, repository caches, worktrees and run logs.
state_dir = ".bosun"

[database]
# SQLite by default; a relative path is relative to this file's directory.
# url = "sqlite:///.bosun/bosun.db"
# PostgreSQL, which lets several `bosun serve` replicas share one queue, takes a URL like
# postgresql://bosun@127.0.0.1:5432/bosun (see docs/postgres.md).

# --- repositories -------------------------------------------------------------------
# One [repos.NAME] table per repository that tasks may change. Each task gets its own
# git worktree and branch (task/<id>-<slug>) made from the repository.
#
# [repos.demo]
# url = "../demo-repo"          # a local path (relative to this file) or a git URL
# default_branch = "main"       # base of new task branches
# copy_files = [".env"]         # untracked files copied into every new worktree
# setup = ["npm", "ci"]         # a command (argv list) run in each new worktree first
# push = true                   # push the task branch when the run ends
# transport = "auto"            # "bosun": commits travel through bosun's own connection
#                               # (for hosts that cannot reach the url); "git": never
#
# [repos.demo.forge]            # pull requests and reviews (docs/forges.md)
# kind = "forgejo"              # "forgejo", "gitea" or "github"
# api_url = "https://forge.example/api/v1"  # GitHub: "https://api.github.com"
# repo = "team/app"             # owner/name on the forge
# token_env = "BOSUN_FORGE_TOKEN"            # or token_file = "path"; never the token itself
# webhook_secret_env = "BOSUN_WEBHOOK_SECRET"  # or webhook_secret_file = "path"
# on_close = "cancel"           # a PR closed without merging cancels the task ("ignore")
# command_prefix = "/bosun"     # PR comments starting with this (or the mention) are rework
# mention = "@bosun"
# max_reviews = 3               # rework rounds; then the task needs input
# issue_label = "bosun"         # an issue given this label becomes a task...
# issue_agent = "claude"        # ...for this agent
# poll_interval = 300.0         # polling fallback for open PRs, seconds (0: off)

# --- agents -------------------------------------------------------------------------
# "demo" is built in: a deterministic stand-in that is NOT an AI. It applies lines like
#   Create hello.txt with: Hello
#   Replace "old" with "new" in README.md
# from the task, so you can try bosun without an API key:  bosun submit --agent demo ...
#
# Any program is an agent. Templates in command / env may use {workdir}, {run_dir},
# {home}, {python}, {prompt_file} (prompt = "file"), {session_id} (in resume) and the
# keys of vars; write literal braces as {{ and }}. The prompt is never put in a shell
# string: it goes on stdin, in {run_dir}/prompt.md, or as one "{prompt}" argv element.
[agents.echo]
description = "Writes the prompt it receives to NOTES.md (a minimal command agent)"
command = ["sh", "-c", "cat > NOTES.md"]
prompt = "stdin"                # "stdin", "file" or "arg"
parser = "raw"                  # "raw" (any program) or "jsonl" (one JSON object a line)
# env_allow = ["PATH", "LANG", "LC_*", "MY_API_KEY"]  # replaces the default list of
#                               # variables passed through from bosun's environment
#                               # (PATH, LANG, LANGUAGE, LC_*, TERM, TZ, TMPDIR, USER,
#                               # LOGNAME, SHELL, NO_COLOR, SSL_CERT_*, NODE_EXTRA_CA_CERTS)
# env = { MY_SETTING = "1" }    # fixed variables for the agent
# vars = { model = "small" }    # defaults for your own placeholders, like {model}
# resume = ["--resume", "{session_id}"]  # arguments that continue an agent session
# resume_command = [...]        # a whole argv used instead of command when resuming
# files = { "home/.tool/settings.json" = "..." }  # written into the run dir first
# isolated_home = true          # HOME and XDG_* inside the run directory
# timeout = 3600.0              # wall-clock seconds (default: [limits] run_timeout)
# stall_timeout = 600.0         # seconds without output (default: [limits])
# tmux = false                  # true: run in a detached tmux session (`bosun attach`)

# --- hosts --------------------------------------------------------------------------
# Machines that run agents. Without any [hosts] table there is one local host.
[hosts.local]
kind = "local"                  # "local" (this machine) or "ssh"
max_concurrent = 4              # runs at the same time on this host
agents = []                     # agents this host may run; empty means every agent
labels = []
priority = 0                    # higher is preferred when several hosts fit
enabled = true
#
# [hosts.gpu1]
# kind = "ssh"
# address = "dev@gpu1.example:22" # [user@]host[:port], or a Host alias of the ssh config
# strict_host_keys = true       # unknown keys are refused: `bosun hosts trust gpu1`
# identity_file = "~/.ssh/id_ed25519"  # default: ssh config, ssh-agent, ~/.ssh/id_*
# work_dir = ".bosun"           # on the host, relative to its $HOME
# max_channels = 8              # SSH channels at once; keep under sshd's MaxSessions
# spares = true                 # two idle wrappers wait on the host: faster launches
# keepalive_interval = 5.0      # a dead link is noticed after interval x count_max
# keepalive_count_max = 3
# wake_command = ["virsh", "start", "gpu1"]  # run here before connecting (optional)
# remote_forwards = ["11434:127.0.0.1:11434"]  # REMOTE_PORT:LOCAL_HOST:LOCAL_PORT

# --- server -------------------------------------------------------------------------
# `bosun serve` runs the HTTP API next to the dispatcher.
[server]
bind = "127.0.0.1"
port = 8765
# public_url = "https://bosun.example"  # base of links in pull requests
pull_lease_seconds = 120.0      # a pull agent must report progress within this

# --- notifications ------------------------------------------------------------------
# A JSON POST when a task needs input, fails or completes (docs/review-loop.md).
# [notifications]
# url_env = "BOSUN_NOTIFY_URL"        # a variable holding the URL (or: url = "https://...")
# secret_env = "BOSUN_NOTIFY_SECRET"   # optional: X-Bosun-Signature-256 over the body
# on = ["needs_input", "failed", "completed"]

# --- limits -------------------------------------------------------------------------
[limits]
max_concurrent = 8              # runs at the same time, all hosts together
per_agent = {}                  # per-agent caps, e.g. { demo = 2 }
max_attempts = 3                # attempts of a task before it fails
retry_backoff = 5.0             # seconds before the 2nd attempt, doubling after that
retry_backoff_max = 300.0       # the longest wait between attempts
run_timeout = 3600.0            # wall-clock limit of one run
stall_timeout = 600.0           # a run without output for this long is stalled
lease_seconds = 30.0            # a dispatcher that stops heartbeating loses its tasks
heartbeat_seconds = 10.0        # must be smaller than lease_seconds
poll_interval = 1.0             # how often idle dispatchers look for work
cancel_grace = 5.0              # seconds between SIGTERM and SIGKILL on cancel
"""


def init_config_text() -> str:
    """The commented ``bosun.toml`` that ``bosun init`` writes; it loads as is."""
    return _INIT_TEXT


def write_init(path: str | Path = CONFIG_NAME, force: bool = False) -> Path:
    """Write :func:`init_config_text` to ``path``; an existing file needs ``force``."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        target = target / CONFIG_NAME
    if target.exists() and not force:
        raise InputError(f"{target} already exists", "edit it, or pass --force to overwrite it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_INIT_TEXT, encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot write {target}: {exc.strerror}", "pick a directory you can write to"
        ) from None
    return target
