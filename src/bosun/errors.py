"""bosun's exception hierarchy.

Every error a user can cause says what was wrong and how to fix it. Library errors
(SQLAlchemy, pydantic, OSError from git) are translated into these at the boundary::

    BosunError
    ├── ConfigError          bosun.toml is missing, malformed, or invalid
    ├── InputError           a task, id, or argument given by a user is invalid
    ├── NotFound             a task / run / host that does not exist
    ├── InvalidTransition    a task state change the lifecycle does not allow
    ├── StoreError           the database could not be opened or migrated
    ├── WorkspaceError       git could not prepare, commit or clean a worktree
    ├── ProviderError        a command could not be launched or followed on a host
    │   ├── HostUnreachable  the host cannot be reached now (down, network, keepalive)
    │   └── HostKeyError     an SSH host key is unknown or changed (strict host keys)
    ├── LeaseLost            another dispatcher (or a cancel) took a task this one ran
    └── Forbidden            the caller may not act on this (a pull agent and another's task)
"""

from __future__ import annotations


class BosunError(Exception):
    """Base of every error bosun raises on purpose.

    ``message`` says what went wrong; ``hint`` (optional) says how to fix it.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")


class ConfigError(BosunError):
    """bosun.toml is missing, unreadable or invalid."""


class InputError(BosunError):
    """A task, id or argument given by a user is invalid."""


class NotFound(BosunError):
    """A task, run or host that does not exist."""


class InvalidTransition(BosunError):
    """A task state change that the lifecycle table does not allow."""


class StoreError(BosunError):
    """The database could not be opened, migrated or written."""


class WorkspaceError(BosunError):
    """git could not prepare, commit or clean up a worktree."""


class ProviderError(BosunError):
    """A command could not be launched, followed or cancelled on a host."""


class HostUnreachable(ProviderError):
    """The host cannot be reached now: connection refused or timed out, or the link died
    (keepalive). Not the agent's fault: runs on the host may well still be going."""


class HostKeyError(ProviderError):
    """An SSH host's key is not trusted: unknown (``changed`` False) or different from
    the one recorded (``changed`` True: possibly a man-in-the-middle)."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        key_type: str | None = None,
        fingerprint: str | None = None,
        changed: bool = False,
    ) -> None:
        super().__init__(message, hint)
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.changed = changed


class LeaseLost(BosunError):
    """This dispatcher no longer holds the lease on a task (another one took it over)."""


class Forbidden(BosunError):
    """The caller is known but may not act on this: a pull agent reporting on a task it
    was not given, or on a task bosun dispatches itself (HTTP 403)."""


#: The HTTP status and API error ``code`` of each error, most specific class first: the
#: server answers with them (``bosun.server.errors``) and the client raises the class a
#: code names (``bosun.client``).
API_ERRORS: tuple[tuple[type[BosunError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (InputError, 400, "invalid_input"),
    (ConfigError, 400, "config_error"),
    (InvalidTransition, 409, "invalid_transition"),
    (LeaseLost, 409, "lease_lost"),
    (StoreError, 503, "store_unavailable"),
    (WorkspaceError, 500, "workspace_error"),
    (ProviderError, 502, "provider_error"),
)
