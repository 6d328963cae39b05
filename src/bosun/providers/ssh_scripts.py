"""The constant shell texts the SSH provider runs on a host, and the one place that
quotes words for a remote shell.

Every script is a constant: data reaches it only as positional arguments (``"$@"``), and
:func:`remote_command` (``exec`` plus words quoted by :func:`quote`) is the only text bosun
hands to the remote login shell. The scripts need a POSIX ``sh`` and its ``kill``,
``env``, ``rm`` and ``mkdir``; ``setsid``, ``/proc``, ``mkfifo`` and ``chmod`` (spares)
are used when present.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

from bosun.errors import ProviderError
from bosun.providers.local import WRAPPER_SCRIPT

__all__ = [
    "ENV_NAME",
    "EXEC_SCRIPT",
    "LAUNCH_SCRIPT",
    "NO_DIR",
    "NO_PROGRAM",
    "PREPARE_SCRIPT",
    "SESSION_SCRIPT",
    "SPARES",
    "SPARE_LINE",
    "SPARE_SCRIPT",
    "env_pairs",
    "env_script",
    "quote",
    "remote_command",
    "session_request",
    "spare_payload",
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


#: A spare run wrapper (started ahead of need by the host session, see
#: :data:`SESSION_SCRIPT`): ``setsid -f /bin/sh -c SPARE_SCRIPT bosun-spare ID FIFO`` with
#: fd 3 on the session's stdout. It says ``ID spare PID`` at once, then sources its FIFO
#: (``.``: the shell reads it in blocks, where ``read`` takes a byte per system call), in
#: which the session writes one command for one launch, :data:`SPARE_LINE`: a brace group
#: ``{ bosun_run REQUEST-ID WORDS`` newline ``}``, the words made by :func:`quote`
#: (:func:`spare_payload`). ``bosun_run`` exports the run's variables, answers
#: ``REQUEST-ID ok PID`` and goes on as the run's wrapper (the text of
#: :data:`~bosun.providers.local.WRAPPER_SCRIPT`, which ends with ``exit``), so a launch
#: costs the host no process but the agent's. End of file on the FIFO (the session shell
#: is gone, and with it the FIFO's only writer) ends a spare that is still waiting.
#:
#: The spare runs a launch only when all of it arrived. A line may be longer than
#: PIPE_BUF (4 KiB), whose writes to a FIFO are not atomic, so a session shell killed while
#: it writes one leaves the spare a prefix and then end of file. A bare ``bosun_run``
#: line cut at a word boundary, inside an unquoted word or between the quoted pieces of a
#: word that holds a ``'`` would be a shorter command that runs (fewer variables, a
#: truncated argv); but a shell runs a compound command only once it has parsed all of
#: it, up to its ``}`` (what follows the ``}`` could be a redirection of the whole group),
#: so every prefix short of the ``}`` is a syntax error: the spare exits there (dash, and
#: bash as ``sh``; a bash not in POSIX mode goes on to ``exit 0``), having exported
#: nothing, run nothing and answered nothing. That launch is then one whose session shell
#: died after ``cmd.json`` and before a wrapper had the run
#: (``SshProvider._launch_in_session``): it fails, naming the run directory.
SPARE_SCRIPT = (
    r"""echo "$1 spare $$" >&3
bosun_run() {
i=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n - 1)); done
echo "$i ok $$" >&3
unset i n
"""
    + WRAPPER_SCRIPT
    + r"""}
. "$2"
exit 0
"""
)

#: The ``printf`` format of the one line a launch writes to a spare's FIFO (see
#: :data:`SPARE_SCRIPT`): the launch request's id and :func:`spare_payload`'s words, in a
#: brace group, so that a spare runs none of a line that was cut off.
SPARE_LINE = "{ bosun_run %s %s\n}\n"

#: Spares a host session keeps waiting (each a FIFO held open by the session on fd 4+N).
#: :data:`SESSION_SCRIPT` spells the slots out (FIFOs ``.1`` and ``.2``, fds 5 and 6):
#: change both together.
SPARES = 2

#: The host session (:mod:`bosun.providers.ssh_session`): sent once on the stdin of
#: ``env -i /bin/sh -s PATH SPARE_DIR`` on a channel that stays open, then followed by
#: requests (:func:`session_request`), each a brace group calling one of these functions;
#: the shell parses a whole group before running it, so a request cut off by a lost link
#: never runs. Every answer is one line: the request id, then words.
#:
#: The shell's environment is empty (``env -i``) and its variables are not exported, so
#: a run gets exactly the variables its launch exports, with no ``env`` or loader
#: process. Only builtins run in the shell itself, except where a run or a spare starts:
#: ``setsid -f /bin/sh -c WRAPPER`` (the wrapper of :mod:`bosun.providers.local`): setsid
#: forks, its child starts the wrapper as the leader of a new session, and the shell goes
#: on with the next request at once. The launch's answer comes from the wrapper itself
#: (its ``$0`` is ``bosun-run-ID``; fd 3 is the session's stdout), once it runs in its own
#: session, so a liveness check or a cancel right after the launch cannot miss the run.
#: Nothing is started with ``&``: a shell without job control would start it with SIGINT
#: and SIGQUIT ignored, and so would the agent be. The session launches only where
#: ``setsid -f`` works (util-linux 2.31+).
#:
#: Spares (:data:`SPARE_SCRIPT`): where ``mkfifo`` works and ``/bin/sh`` is not bash or
#: zsh (they read a sourced FIFO to its end before running any of it, and the session
#: holds every FIFO open, so a spare there would wait for ever), the session makes
#: :data:`SPARES` FIFOs ``SPARE_DIR/PID.N`` (removing those of sessions that are gone) and
#: holds each open read-write on fd 4+N; ``refill N`` starts a spare reading FIFO N. A
#: launch given a spare (``launch ID N SPARE_PID ...``) writes the run's files as always
#: and then one command to that FIFO (:data:`SPARE_LINE`, a brace group: a spare runs none
#: of a line cut off by the shell's death): the wrapper is already running in a session of
#: its own. No spare ever reads another's launch: bosun refills a slot only once its
#: spare has answered (it has read its command and runs it), or, when a launch never
#: had an answer, with ``refill N PID``, which kills that spare and gives the slot a new
#: FIFO (the killed one may hold the old one a moment longer, with what it left unread).
#:
#: ``launched ID RUN_DIR`` tells what a launch cut off by the end of a session left in its
#: run directory: ``none`` (no ``cmd.json``: it never ran), ``pid PID PGID`` (the wrapper
#: wrote its pid) or ``nopid`` (``cmd.json`` and no pid, or not yet).
SESSION_SCRIPT = (
    r"""PATH=$1; sd=$2; umask 077; set -f
bosun_wrapper="""
    + shlex.quote(WRAPPER_SCRIPT)
    + r"""
bosun_spare="""
    + shlex.quote(SPARE_SCRIPT)
    + r"""
bosun_line="""
    + shlex.quote(SPARE_LINE)
    + r"""
proc=; [ -r /proc/self/stat ] && proc=1
bosun_fifos() {
  [ -n "$sd" ] || return 1
  # bash and zsh read a sourced file to its end before they run any of it, and a spare's
  # FIFO has no end while this shell holds it open: a spare there would never start its
  # launch. No spares where /bin/sh is one of them (each launch starts with setsid).
  [ -z "${BASH_VERSION-}${ZSH_VERSION-}" ] || return 1
  [ -d "$sd" ] || mkdir -p -- "$sd" 2>/dev/null || return 1
  # a spare runs what its FIFO says: only this user may make or replace one there
  chmod 700 -- "$sd" 2>/dev/null || return 1
  set -- "$sd/$$.1" "$sd/$$.2"
  set +f
  for f in "$sd"/*.[0-9]; do
    set -f
    [ -p "$f" ] || continue
    p=${f##*/}; p=${p%.*}
    case $p in *[!0-9]*|'') continue ;; esac
    kill -0 "$p" 2>/dev/null && continue
    # A spare of that session may be blocked opening this FIFO (its shell died between
    # starting it and its open): a writer for a moment lets it open, read the end, exit.
    { command exec 7<>"$f" && exec 7>&-; } 2>/dev/null
    set -- "$@" "$f"
  done
  set -f
  rm -f -- "$@" && mkfifo -m 600 -- "$sd/$$.1" "$sd/$$.2" 2>/dev/null || return 1
  trap 'rm -f -- "$sd/$$.1" "$sd/$$.2"' EXIT
  command exec 5<>"$sd/$$.1" 6<>"$sd/$$.2" 2>/dev/null
}
bosun_launch() {
  i=$1; k=$2; p=$3; d=$4; cwd=$5; kp=$6; nd=$7; shift 7
  if [ ! -d "$d" ]; then echo "$i nodir"; return 0; fi
  while [ "$nd" -gt 0 ]; do
    if [ ! -d "$1" ]; then echo "$i nodir"; return 0; fi
    shift; nd=$((nd - 1))
  done
  if [ ! -d "$cwd" ]; then echo "$i nocwd"; return 0; fi
  nf=$1; shift
  if [ "$k" != 0 ]; then
    if [ -n "$proc" ]; then bosun_leader "$p"; else kill -0 "$p" 2>/dev/null; fi ||
      { echo "$i nospare"; return 0; }
  fi
  set -C
  if ! printf '%s' "$2" 2>/dev/null >"$d/$1"; then set +C; echo "$i used"; return 0; fi
  set +C; shift 2; nf=$((nf - 1))
  while [ "$nf" -gt 0 ]; do
    if ! printf '%s' "$2" 2>/dev/null >"$d/$1"; then echo "$i nofile"; return 0; fi
    shift 2; nf=$((nf - 1))
  done
  case $k in
  1) printf "$bosun_line" "$i" "$1" >&5 ;;
  2) printf "$bosun_line" "$i" "$1" >&6 ;;
  *) ( ne=$1; shift
       while [ "$ne" -gt 0 ]; do export "$1"; shift; ne=$((ne - 1)); done
       exec setsid -f /bin/sh -c "$bosun_wrapper" "bosun-run-$i" "$d" "$cwd" "$kp" "$@"
     ) 3>&1 </dev/null >>"$d/stdout" 2>>"$d/stderr" 5>&- 6>&- || echo "$i failed" ;;
  esac
}
bosun_refill() {
  f="$sd/$$.$2"
  case $2 in 1|2) ;; *) echo "$1 failed"; return 0 ;; esac
  if [ -n "$3" ]; then
    kill -KILL -"$3" 2>/dev/null || kill -KILL "$3" 2>/dev/null
    case $2 in 1) exec 5>&- ;; 2) exec 6>&- ;; esac
    rm -f -- "$f" && mkfifo -m 600 -- "$f" 2>/dev/null || { echo "$1 failed"; return 0; }
    case $2 in 1) command exec 5<>"$f" ;; 2) command exec 6<>"$f" ;; esac 2>/dev/null ||
      { echo "$1 failed"; return 0; }
  fi
  [ -p "$f" ] || { echo "$1 failed"; return 0; }
  setsid -f /bin/sh -c "$bosun_spare" bosun-spare "$1" "$f" </dev/null 3>&1 >/dev/null 2>&1 \
    5>&- 6>&- || echo "$1 failed"
}
bosun_scan() {
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
bosun_leader() {
  read -r l 2>/dev/null <"/proc/$1/stat" || return 1
  set -- "$1" ${l##*") "}
  case $2 in Z|X) return 1 ;; esac
  [ "$4" = "$1" ]
}
bosun_alive() {
  kill -0 -"$1" 2>/dev/null || return 1
  [ -n "$proc" ] || return 0
  bosun_leader "$1" && return 0
  [ -n "$live" ] || bosun_scan
  case $live in *" $1 "*) return 0 ;; esac
  return 1
}
bosun_probe() {
  r=$1; shift; live=
  while [ "$#" -ge 3 ]; do
    e=; read -r e 2>/dev/null <"$1/exit" || e=
    case $e in "") e=- ;; *[!0-9]*) e=bad ;; esac
    o=0; [ -s "$1/stdout" ] && o=1
    x=0; [ -s "$1/stderr" ] && x=1
    a=-
    if [ "$e" = - ] || [ "$3" = 1 ]; then if bosun_alive "$2"; then a=1; else a=0; fi; fi
    r="$r $e:$o$x$a"; shift 3
  done
  echo "$r"
}
bosun_signal() {
  if kill -"$2" -"$3" 2>/dev/null; then echo "$1 sent"; else echo "$1 gone"; fi
}
bosun_launched() {
  if [ ! -e "$2/cmd.json" ]; then echo "$1 none"; return 0; fi
  p=; read -r p 2>/dev/null <"$2/pid"
  case $p in ''|*[!0-9]*) echo "$1 nopid"; return 0 ;; esac
  g=; read -r g 2>/dev/null <"$2/pgid"
  case $g in ''|*[!0-9]*) g=$p ;; esac
  echo "$1 pid $p $g"
}
if ! setsid -f true </dev/null >/dev/null 2>&1; then echo "0 ready nosetsid"
elif bosun_fifos; then echo "0 ready setsid spares"
else echo "0 ready setsid"; fi
"""
)


def session_request(function: str, request_id: int, args: Sequence[str]) -> bytes:
    """One request to the host session: ``{ bosun_FUNCTION ID 'arg'...; }`` with every
    argument made by :func:`quote`. Arguments are text; bytes that are not UTF-8 travel
    as they are (``surrogateescape``). NUL cannot cross a shell: ``ProviderError``."""
    words = [f"bosun_{function}", str(request_id), *_quoted(args)]
    return ("{ " + " ".join(words) + "\n}\n").encode("utf-8", "surrogateescape")


def spare_payload(words: Sequence[str]) -> str:
    """What a launch hands a spare (:data:`SPARE_SCRIPT`): the words, each made by
    :func:`quote`, for the command ``bosun_run`` that the spare reads from its FIFO (the
    session writes them there in :data:`SPARE_LINE`)."""
    return " ".join(_quoted(words))


def remote_command(argv: Sequence[str]) -> str:
    """The one place bosun writes text for a remote shell: ``exec`` + quoted argv.

    sshd hands the text to the user's login shell (which must be POSIX-like: sh, bash,
    dash, ksh, zsh); every element is quoted with ``shlex.quote``, so the argv arrives unchanged.
    """
    return "exec " + " ".join(_quoted(argv))


def _quoted(words: Sequence[str]) -> list[str]:
    """Every word made by :func:`quote`; NUL cannot cross a shell: ``ProviderError``."""
    if any("\0" in word for word in words):
        raise ProviderError(
            "a value sent to the host contains a NUL byte", hint="remove it from the value"
        )
    return [quote(word) for word in words]


def quote(word: str) -> str:
    """The one place where bosun quotes a word for a remote shell (``shlex.quote``)."""
    return shlex.quote(word)


def env_pairs(env: Mapping[str, str]) -> list[str]:
    """``NAME=value`` words for a run's environment (``export "$1"`` in the session),
    every name and value checked."""
    for name, value in env.items():
        if not ENV_NAME.fullmatch(name) or "\0" in value:
            raise ProviderError(
                f"invalid environment variable {name!r} for a remote run",
                hint="names use letters, digits and '_' (not first a digit); no NUL in values",
            )
    return [f"{name}={value}" for name, value in env.items()]


def env_script(env: Mapping[str, str]) -> bytes:
    """``export NAME='value'`` lines for the run's ``env.sh`` (sourced by the launch
    script's loader), each value made by :func:`quote`."""
    env_pairs(env)  # the checks
    return "".join(f"export {name}={quote(value)}\n" for name, value in env.items()).encode()
