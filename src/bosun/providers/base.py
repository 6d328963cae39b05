"""Where a command runs: the Provider and RunHandle protocols.

The dispatcher cannot tell providers apart. A provider launches an agent *detached* (its
own session and process group) with stdout, stderr and the exit code going to files in a
run directory on the host, so the run outlives bosun and the connection that started it.
``attach(ref)`` rebuilds the handle of a run from the ``ref`` stored in the database.

Output is consumed line by line from stored byte offsets: a chunk carries complete lines
and the offset just after the last one, so a reader that persists both in one transaction
never loses or repeats a line across a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class TmuxSession:
    """Tmux mode: the run starts inside this detached tmux session (see bosun.providers.tmux).

    ``socket`` is an absolute path (``tmux -S``) or a bare socket name (``tmux -L``, in
    tmux's private per-user directory), on the host the run is on.
    """

    name: str
    socket: str
    width: int = 200
    height: int = 50

    def socket_args(self) -> list[str]:
        """The tmux options that select this session's server."""
        return ["-S", self.socket] if self.socket.startswith("/") else ["-L", self.socket]

    def to_json(self) -> dict[str, Any]:
        return {"session": self.name, "socket": self.socket}


@dataclass(frozen=True, slots=True)
class Command:
    """A fully resolved agent invocation: argv (never a shell string), env, cwd, stdin."""

    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes | None = None  # written to the run dir and fed on stdin; None: /dev/null
    files: Mapping[str, bytes] = field(default_factory=dict)  # run-dir-relative name -> bytes
    #: create ``cwd`` (and its parents) if it is missing, as part of the launch: a scratch
    #: directory, which costs an SSH host no round trip of its own this way
    make_cwd: bool = False
    #: tmux mode: start the run inside this session (a provider honours it at launch)
    tmux: TmuxSession | None = None


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The result of a short, attached command (git, version checks)."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: Stream
    lines: tuple[str, ...]  # without the trailing newline
    end_offset: int  # byte offset just after the last line in ``lines``


@runtime_checkable
class RunHandle(Protocol):
    """A detached run on some host."""

    @property
    def ref(self) -> dict[str, Any]:
        """JSON-able data that ``Provider.attach`` turns back into this handle."""
        ...

    @property
    def run_dir(self) -> str: ...

    async def read(
        self, stdout_offset: int, stderr_offset: int, *, final: bool = False
    ) -> list[OutputChunk]:
        """Complete lines written since the offsets; with ``final`` also a last line that
        has no trailing newline. Empty list when nothing new."""
        ...

    async def exit_code(self) -> int | None:
        """The exit code once the run has ended, else ``None``."""
        ...

    async def alive(self) -> bool:
        """Whether any process of the run's process group still exists."""
        ...

    async def cancel(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds."""
        ...


@runtime_checkable
class Provider(Protocol):
    name: str

    async def ensure_ready(self) -> None: ...

    def host_env(self) -> Mapping[str, str]:
        """Variables that belong to the host rather than to bosun (``PATH`` of a remote
        user): they replace bosun's own in the environment an agent there is given.
        Empty for this machine; known after ``ensure_ready``."""
        ...

    async def run_dir(self, key: str) -> str:
        """The run directory for ``key``: it exists once ``launch`` into it returned (a
        provider may create it here already; the SSH provider creates it in the launch)."""
        ...

    async def makedirs(self, path: str) -> None:
        """``mkdir -p`` on the host (a scratch dir is on the path to every launch: a
        subprocess for it would cost more than the rest of the dispatch)."""
        ...

    async def launch(self, command: Command, run_dir: str) -> RunHandle: ...

    async def attach(self, ref: Mapping[str, Any]) -> RunHandle: ...

    async def exec(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a short command attached and return its output (git, version probes)."""
        ...

    async def aclose(self) -> None: ...
