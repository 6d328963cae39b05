"""The constant shell texts the SSH provider runs on a host, and the one place that
quotes words for a remote shell.

Every script is a constant: data reaches it only as positional arguments (``"$@"``), and
:func:`remote_command` (``exec`` plus words quoted by :func:`quote`) is the only text bosun
hands to the remote login shell. The scripts need a POSIX ``sh`` and its ``kill``,
``env``, ``rm`` and ``mkdir``; ``setsid`` and ``/proc`` are used when present.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from bosun.errors import ProviderError

__all__ = [
    "ALIVE_SCRIPT",
    "ENV_NAME",
    "EXEC_SCRIPT",
    "LAUNCH_SCRIPT",
    "NO_DIR",
    "NO_PROGRAM",
    "PREPARE_SCRIPT",
    "SIGNAL_SCRIPT",
    "env_script",
    "quote",
    "remote_command",
]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Positional arguments: mode ("auto", "nosetsid", "tmux"), run dir, cwd, then the argv
#: to run with exactly the run's environment (the wrapper's, or tmux mode's start argv).
#: Prints "PID PGID", or "nocwd" when the working directory does not exist.
#:
#: With setsid, the run's process group exists only once the background child has called
#: setsid(): the child holds the channel's stdout (fd 3) until its loader, which runs
#: after setsid, closes it; sshd ends the channel only then, so when the launch returns
#: the group is there (a liveness check or a cancel right after it cannot miss the run).
LAUNCH_SCRIPT = r"""m=$1; d=$2; cwd=$3; shift 3
[ -d "$cwd" ] || { echo nocwd; exit 0; }
load='exec 3>&-; . "$1/env.sh" || { echo "bosun: cannot load the run environment" >&2
  echo 126 >"$1/exit"; exit 126; }
command -p rm -f -- "$1/env.sh"; shift; exec "$@"'
set -- env -i /bin/sh -c "$load" bosun-env "$d" "$@"
ss=
if [ "$m" != nosetsid ] && command -v setsid >/dev/null 2>&1; then ss=1; fi
if [ "$m" = tmux ]; then
  if [ -n "$ss" ]; then setsid "$@"; else "$@"; fi </dev/null >>"$d/stdout" 2>>"$d/stderr"
  read -r p <"$d/pid" && echo "$p $p"
elif [ -n "$ss" ]; then
  setsid "$@" 3>&1 </dev/null >>"$d/stdout" 2>>"$d/stderr" &
  echo "$! $!"
else
  echo "$$" >"$d/pgid"
  "$@" </dev/null >>"$d/stdout" 2>>"$d/stderr" &
  echo "$! $$"
fi
"""

#: Positional arguments: process group ids. Prints those with a live (non-zombie) member.
ALIVE_SCRIPT = r"""set -f
scan() {
  live=" "
  set +f
  for f in /proc/[0-9]*/stat; do
    set -f
    read -r l 2>/dev/null <"$f" || continue
    set -- ${l##*") "}
    case $1 in Z|X) ;; *) live="$live$3 " ;; esac
  done
  set -f
}
leader() {
  read -r l 2>/dev/null <"/proc/$1/stat" || return 1
  set -- "$1" ${l##*") "}
  case $2 in Z|X) return 1 ;; esac
  [ "$4" = "$1" ]
}
live=
for g in "$@"; do
  kill -0 -"$g" 2>/dev/null || continue
  if [ ! -r /proc/self/stat ]; then echo "$g"; continue; fi
  if leader "$g"; then echo "$g"; continue; fi
  [ -n "$live" ] || scan
  case $live in *" $g "*) echo "$g" ;; esac
done
"""

#: Positional arguments: signal name, process group id. Prints "sent" if it existed.
SIGNAL_SCRIPT = r"""kill -"$1" -"$2" 2>/dev/null && echo sent
exit 0
"""

#: Positional arguments: cwd ("" for $HOME), n, n x NAME=VALUE, argv.
EXEC_SCRIPT = r"""c=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
if [ -n "$c" ]; then
  cd -- "$c" 2>/dev/null || { echo "bosun-exec: no such directory" >&2; exit 200; }
fi
command -v -- "$1" >/dev/null 2>&1 || { echo "bosun-exec: program not found" >&2; exit 201; }
exec "$@"
"""
NO_DIR = (200, b"bosun-exec: no such directory\n")
NO_PROGRAM = (201, b"bosun-exec: program not found\n")

#: Positional argument: work dir (relative to $HOME or absolute). Prints "proc" or
#: "noproc" (whether the host has a Linux /proc) on a line, then $HOME on a line, then the
#: PATH that commands on the host run with (agents there get it instead of bosun's).
PREPARE_SCRIPT = r"""cd || exit 90
mkdir -p -- "$1/runs" || exit 91
if [ -r /proc/self/stat ]; then echo proc; else echo noproc; fi
printf '%s\n%s' "$HOME" "$PATH"
"""


def quote(word: str) -> str:
    """The one place where bosun quotes a word for a remote shell (``shlex.quote``)."""
    return shlex.quote(word)


def remote_command(argv: Sequence[str]) -> str:
    """The one place bosun writes text for a remote shell: ``exec`` + quoted argv.

    sshd hands the text to the user's login shell (which must be POSIX-like: sh, bash,
    dash, ksh, zsh); every element is quoted with ``shlex.quote``, so the argv arrives unchanged.
    """
    for arg in argv:
        if "\0" in arg:
            raise ProviderError(
                "a command argument contains a NUL byte", hint="remove it from the argument"
            )
    return "exec " + " ".join(quote(a) for a in argv)


def env_script(env: Mapping[str, str]) -> bytes:
    """``export NAME='value'`` lines for the run's ``env.sh`` (sourced by the launch
    script's loader), each value made by :func:`quote`."""
    lines = []
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name) or "\0" in value:
            raise ProviderError(
                f"invalid environment variable {name!r} for a remote run",
                hint="names use letters, digits and '_' (not first a digit); no NUL in values",
            )
        lines.append(f"export {name}={quote(value)}\n")
    return "".join(lines).encode()
