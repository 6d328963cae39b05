"""Tmux mode: a durable run that starts inside a detached tmux session.

Both providers honour :attr:`Command.tmux <bosun.providers.base.Command.tmux>` with the
same two constant shell texts, so the durable-run protocol stays what it is for plain runs:

1. :data:`START_SCRIPT` runs where the plain wrapper would run (detached, with exactly the
   agent's environment). It starts a tmux server of the run's own (``-f /dev/null``: no user
   configuration, so ``remain-on-exit`` or hooks cannot keep it alive) and in it a
   detached session whose only pane runs :data:`PANE_SCRIPT`, writes the pane's pid into
   the run directory's ``pid`` file and exits. The pane process leads its own session and
   process group (tmux starts it with ``forkpty``), so ``pid`` names the group to follow
   and to cancel, as for a plain run. Without tmux on the host it records exit 127 and a
   ``bosun: tmux mode ...`` line on stderr.
2. :data:`PANE_SCRIPT` is the run wrapper of tmux mode: the agent's stdout and stderr go
   to the run directory's files exactly as in a plain run (appended, byte for byte, so
   offsets and parsers do not change), its stdin is the ``stdin`` file or ``/dev/null``,
   and the exit code is written atomically to ``exit``. A ``tail -f`` of both files in
   the same process group mirrors the output to the pane; the pane's terminal stays the
   agent's controlling terminal, so a program that asks on ``/dev/tty`` (a password
   prompt, a confirmation) asks there, and a user attached with ``bosun attach`` can
   answer, or press Ctrl-C to interrupt the agent.

The tmux server inherits the environment of ``tmux new-session`` (the agent's); tmux adds
``TMUX`` and ``TMUX_PANE`` and overrides ``SHELL``, ``TERM`` and ``TERM_PROGRAM[_VERSION]``,
which the pane script puts back as they were. When the pane's process ends the session
ends, and with it the run's tmux server.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Sequence

from bosun.providers.base import TmuxSession

__all__ = ["PANE_SCRIPT", "START_SCRIPT", "session_for_run", "start_argv"]

#: Longest socket path used inside a run directory (``sun_path`` holds 108 bytes).
_SOCKET_PATH_MAX = 100
_SESSION_BAD = re.compile(r"[^A-Za-z0-9_-]")

# Positional arguments: sh, pane script, socket option (-S or -L), socket, session name,
# width, height, run dir, then cwd, keep_pwd and the agent's argv (passed on as "$@").
# ``x`` + value marks a variable that was set (an empty value is still "set").
START_SCRIPT = r"""sh=$1; pane=$2; sopt=$3; sock=$4; name=$5; w=$6; h=$7; d=$8; shift 8
fail() {
  echo "$$" >"$d/pid"
  echo "$1" >"$d/exit.tmp" && command -p mv -f "$d/exit.tmp" "$d/exit"
  exit "$1"
}
if ! command -v tmux >/dev/null 2>&1; then
  echo "bosun: tmux mode needs tmux on this host, and it is not on PATH ($PATH):" \
    "install tmux, or set tmux = false for this agent" >&2
  fail 127
fi
s=${SHELL+x}${SHELL-}; t=${TERM+x}${TERM-}
tp=${TERM_PROGRAM+x}${TERM_PROGRAM-}; tv=${TERM_PROGRAM_VERSION+x}${TERM_PROGRAM_VERSION-}
unset TMUX TMUX_PANE
pid=$(tmux -f /dev/null "$sopt" "$sock" new-session -d -P -F '#{pane_pid}' \
  -s "$name" -x "$w" -y "$h" -- "$sh" -c "$pane" bosun-tmux-run "$d" "$s" "$t" "$tp" "$tv" "$@")
code=$?
if [ "$code" -ne 0 ] || [ -z "$pid" ]; then
  echo "bosun: tmux mode: tmux new-session failed (exit $code)" >&2
  [ "$code" -ne 0 ] || code=1
  fail "$code"
fi
echo "$pid" >"$d/pid"
"""

# Positional arguments: run dir, the saved SHELL, TERM, TERM_PROGRAM and
# TERM_PROGRAM_VERSION (see START_SCRIPT), cwd, keep_pwd, argv. Like the plain wrapper in
# bosun.providers.local: the trap outlives a signal sent to the group so that the code is
# recorded, and ``(exec "$@")`` runs the program with default signal dispositions.
PANE_SCRIPT = r"""d=$1
restore() { case $2 in x*) export "$1=${2#x}" ;; *) unset "$1" ;; esac; }
restore SHELL "$2"; restore TERM "$3"; restore TERM_PROGRAM "$4"
restore TERM_PROGRAM_VERSION "$5"
cwd=$6; keep_pwd=$7; shift 7
trap : HUP INT TERM
echo "$$" >"$d/pid"
finish() { echo "$1" >"$d/exit.tmp" && command -p mv -f "$d/exit.tmp" "$d/exit"; exit "$1"; }
if [ -f "$d/stdin" ]; then i=$d/stdin; else i=/dev/null; fi
o_set=${OLDPWD+x}; o_val=${OLDPWD-}
cd "$cwd" 2>>"$d/stderr" || finish 126
[ "$keep_pwd" = 1 ] || unset PWD
if [ -n "$o_set" ]; then OLDPWD=$o_val; else unset OLDPWD; fi
tail -q -n +1 -f "$d/stdout" "$d/stderr" 2>/dev/null &
mirror=$!
(exec "$@") <"$i" >>"$d/stdout" 2>>"$d/stderr"
code=$?
kill "$mirror" 2>/dev/null
finish "$code"
"""


def session_for_run(run_dir: str, *, width: int = 200, height: int = 50) -> TmuxSession:
    """The tmux session of the run in ``run_dir`` (a POSIX path on the run's host).

    The session is named after the run key (the run directory's name); its server's socket
    is ``<run_dir>/tmux.sock``, or, where that path would be too long for a Unix socket, a
    socket name derived from the run directory in tmux's private per-user directory.
    """
    run_dir = posixpath.normpath(run_dir)
    name = _SESSION_BAD.sub("_", posixpath.basename(run_dir)) or "bosun"
    path = posixpath.join(run_dir, "tmux.sock")
    if posixpath.isabs(path) and len(path.encode()) <= _SOCKET_PATH_MAX:
        return TmuxSession(name, path, width, height)
    digest = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
    return TmuxSession(name, f"bosun-{name[:40]}-{digest}", width, height)


def start_argv(
    sh: str, session: TmuxSession, run_dir: str, cwd: str, keep_pwd: bool, argv: Sequence[str]
) -> list[str]:
    """The argv that starts a tmux-mode run (instead of the plain wrapper's argv).

    It runs attached and briefly: once it has exited, the run directory's ``pid`` file
    names the pane's process group (or ``exit`` holds why tmux could not start).
    """
    sopt, sock = session.socket_args()
    return [
        sh,
        "-c",
        START_SCRIPT,
        "bosun-tmux-start",
        sh,
        PANE_SCRIPT,
        sopt,
        sock,
        session.name,
        str(session.width),
        str(session.height),
        run_dir,
        cwd,
        "1" if keep_pwd else "0",
        *argv,
    ]
