"""``bosun attach TASK``: join the tmux session of a running task, or follow its output.

A run started in tmux mode (``tmux = true`` in ``[agents.NAME]``) records its session in
its ref (``{"tmux": {"session", "socket"}}``, see :mod:`bosun.providers.tmux`).
:func:`plan_attach` decides what attaching means for a task:

- the task's current run is in tmux mode, its session still exists and the user has a
  terminal: run ``tmux attach-session`` for it, on this machine directly, on an SSH host
  through the OpenSSH client (``ssh -t``) with the host's address, port, identity, ssh
  config and known-hosts settings (:func:`ssh_attach_argv`);
- otherwise (``--follow-only``, no terminal, a run that is not in tmux mode, a session that
  has just ended) follow the task's output live, as ``bosun logs -f`` does, with a note
  that says why.

Errors say what to do: a task that is not running, a host that is no longer configured,
tmux missing on the run's host.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bosun.config import HostConfig
from bosun.errors import BosunError, ConfigError, InputError, ProviderError
from bosun.models import Run, RunStatus, Task, TaskStatus
from bosun.providers.base import Provider, TmuxSession

__all__ = [
    "AttachPlan",
    "local_attach_argv",
    "plan_attach",
    "session_of",
    "ssh_attach_argv",
    "tmux_attach_args",
]


@dataclass(frozen=True, slots=True)
class AttachPlan:
    """What ``bosun attach`` does: exec ``argv`` (attach), or follow (``argv`` is None)."""

    task: Task
    run: Run | None
    session: TmuxSession | None
    argv: tuple[str, ...] | None
    note: str | None = None  # why it follows instead of attaching (printed on stderr)


def session_of(run: Run) -> TmuxSession | None:
    """The tmux session recorded in ``run``'s ref, or None when it is not in tmux mode."""
    data = run.ref.get("tmux")
    if not isinstance(data, Mapping):
        return None
    name, socket = data.get("session"), data.get("socket")
    if not (isinstance(name, str) and name and isinstance(socket, str) and socket):
        return None
    return TmuxSession(name, socket)


def tmux_attach_args(session: TmuxSession) -> list[str]:
    """``tmux ... attach-session`` for ``session`` (``=`` makes the name match exactly)."""
    return ["tmux", *session.socket_args(), "attach-session", "-t", f"={session.name}"]


def local_attach_argv(session: TmuxSession, tmux: str = "tmux") -> list[str]:
    """The argv that attaches this terminal to a session on this machine."""
    return [tmux, *tmux_attach_args(session)[1:]]


def _option_path(path: str) -> str:
    """A path as the value of an ``ssh -o`` option (quoted if it holds white space)."""
    path = os.path.expanduser(path)
    if any(c.isspace() for c in path) or '"' in path:
        if '"' in path:
            raise ConfigError(
                f"the path {path!r} contains a double quote, which ssh options cannot hold",
                "move the file to a path without quotes",
            )
        return f'"{path}"'
    return path


def ssh_attach_argv(
    host: HostConfig, session: TmuxSession, state_dir: str, ssh: str = "ssh"
) -> list[str]:
    """The OpenSSH client argv that attaches this terminal to ``session`` on ``host``.

    The same settings as bosun's own connection (:mod:`bosun.providers.ssh_conn`): the
    ssh config file (``-F``), user and port of the address, the identity file, strict
    host keys against the known_hosts files bosun reads (those the ssh config names for
    the host, ``<state_dir>/known_hosts``, the host's ``known_hosts``: see
    :func:`bosun.providers.ssh_keys.known_hosts_files`), or no host key checking where
    ``strict_host_keys = false``. The remote command crosses the remote user's shell, so it
    is the one place here where each argument is quoted (:func:`shlex.join`).
    """
    from bosun.providers.ssh_conn import parse_address
    from bosun.providers.ssh_keys import known_hosts_files

    if host.kind != "ssh" or not host.address:
        raise ConfigError(
            "an ssh attach needs a host of kind ssh with an address",
            'set kind = "ssh" and address = "user@host:22"',
        )
    address = parse_address(host.address)
    argv = [ssh, "-t"]
    if host.ssh_config:
        argv += ["-F", os.path.expanduser(host.ssh_config)]
    if address.port is not None:
        argv += ["-p", str(address.port)]
    if host.identity_file:
        argv += ["-i", os.path.expanduser(host.identity_file)]
    if host.strict_host_keys:
        files = " ".join(_option_path(str(p)) for p in known_hosts_files(host, state_dir))
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={files}"]
    else:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "LogLevel=ERROR"]
    argv += ["-o", f"ConnectTimeout={max(1, round(host.connect_timeout))}"]
    if address.user:
        argv += ["-l", address.user]
    return [*argv, "--", address.host, shlex.join(tmux_attach_args(session))]


async def _tmux_on_host(provider: Provider, host: str, session: TmuxSession, task_id: int) -> bool:
    """Whether ``session`` still exists on ``host``; ProviderError when tmux is missing."""
    found = await provider.exec(["sh", "-c", "command -v tmux"], timeout=20)
    if not found.ok or not found.stdout.strip():
        raise ProviderError(
            f"tmux is not installed on host {host} (not on the PATH of a login there)",
            f"install tmux on {host} to attach, or follow the output with "
            f"`bosun attach {task_id} --follow-only`",
        )
    probe = ["tmux", *session.socket_args(), "has-session", "-t", f"={session.name}"]
    return (await provider.exec(probe, timeout=20)).ok


def _current_run(runs: Sequence[Run]) -> Run | None:
    active = [r for r in runs if r.status in (RunStatus.STARTING, RunStatus.RUNNING)]
    return active[-1] if active else None


async def plan_attach(
    task: Task,
    runs: Sequence[Run],
    *,
    hosts: Mapping[str, HostConfig] | None,
    providers: Mapping[str, Provider],
    follow_only: bool = False,
    tty: bool = True,
    agents_tmux: Mapping[str, bool] | None = None,
    state_dir: str = ".",
) -> AttachPlan:
    """Decide how to attach to ``task`` (see the module docstring).

    ``hosts`` is None where no host settings are at hand (the CLI talks to a bosun server):
    then it follows. ``providers`` (by host name) check that tmux and the session exist on
    the run's host; ``agents_tmux`` (agent name -> tmux option) only improves the note
    for a run that is not in tmux mode; ``state_dir`` is bosun's state directory (where
    its own known_hosts file is).
    """
    if task.status is not TaskStatus.RUNNING:
        hint = (
            f"`bosun logs {task.id} -f` prints its output once it runs"
            if task.status in (TaskStatus.QUEUED, TaskStatus.BLOCKED, TaskStatus.REWORK)
            else f"`bosun logs {task.id}` prints the output it had"
        )
        raise InputError(
            f"task {task.id} is {task.status.value}, not running: there is nothing to attach to",
            hint,
        )
    run = _current_run(runs)
    if follow_only:
        return AttachPlan(task, run, None, None)
    if run is None:
        note = f"task {task.id} has no run yet (its workspace is being prepared): following"
        return AttachPlan(task, None, None, None, note)
    session = session_of(run)
    if session is None:
        how = ""
        if agents_tmux is not None and not agents_tmux.get(run.agent, False):
            how = f"; set tmux = true in [agents.{run.agent}] to attach to later runs"
        note = f"run {run.id} of task {task.id} is not in tmux mode: following its output{how}"
        return AttachPlan(task, run, None, None, note)
    if not tty:
        note = "not a terminal: following the output instead of attaching to tmux"
        return AttachPlan(task, run, session, None, note)
    if hosts is None:
        note = (
            "attaching to tmux works where the hosts are configured (bosun.toml), not "
            "through a bosun server: following the output"
        )
        return AttachPlan(task, run, session, None, note)
    host = hosts.get(run.host)
    if host is None:
        raise ConfigError(
            f"run {run.id} of task {task.id} is on host {run.host!r}, which is not configured",
            f"add [hosts.{run.host}] back to bosun.toml, or use `bosun attach {task.id} "
            "--follow-only`",
        )
    provider = providers.get(run.host)
    if provider is not None and not await _tmux_on_host(provider, run.host, session, task.id):
        note = f"the tmux session {session.name} of run {run.id} has ended: following"
        return AttachPlan(task, run, session, None, note)
    if host.kind == "local":
        tmux = shutil.which("tmux")
        if tmux is None:
            raise ProviderError(
                "tmux is not installed on this machine (not on PATH)",
                f"install tmux to attach, or follow with `bosun attach {task.id} --follow-only`",
            )
        return AttachPlan(task, run, session, tuple(local_attach_argv(session, tmux)))
    ssh = shutil.which("ssh")
    if ssh is None:
        raise ProviderError(
            "the OpenSSH client (ssh) is not installed on this machine",
            f"install openssh-client to attach, or use `bosun attach {task.id} --follow-only`",
        )
    return AttachPlan(task, run, session, tuple(ssh_attach_argv(host, session, state_dir, ssh)))


async def close_all(providers: Mapping[str, Any]) -> None:
    """Close every provider, ignoring errors (attach only probed with them)."""
    for provider in providers.values():
        with contextlib.suppress(BosunError, OSError):
            await provider.aclose()
