"""One SSH connection per host: connect, keep alive, reconnect, channels, SFTP, forwards.

:class:`SshLink` owns the single asyncssh connection of one host. Every command of the
host is a channel on it (at most ``max_channels - 2`` exec channels at a time, plus two
long-lived ones: SFTP for files and the host session of
:mod:`bosun.providers.ssh_session`; keep ``max_channels`` under sshd's ``MaxSessions``,
10 by default). Keepalives (``keepalive_interval`` x
``keepalive_count_max``) detect a dead link; asyncssh then closes the connection, every
channel on it ends without an exit status, and the pending operations raise
:class:`~bosun.errors.HostUnreachable`, never an exit code. The next use reconnects;
after a failed attempt the next one waits (0.5 s, doubling up to 30 s), and uses in the
meantime fail at once with the last error instead of piling up connection attempts.

Connection settings come from the host's ``address`` (``[user@]host[:port]``, IPv6 in
brackets, or a Host alias), the OpenSSH client config (``ssh_config``, else
``~/.ssh/config`` then ``/etc/ssh/ssh_config``, as ``ssh`` reads them:
:func:`bosun.providers.ssh_keys.ssh_config_files`; HostName, User, Port, IdentityFile,
ProxyJump, ...), ``identity_file`` and ssh-agent (``SSH_AUTH_SOCK``), all through asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from bosun.config import HostConfig
from bosun.errors import BosunError, ConfigError, HostKeyError, HostUnreachable, ProviderError
from bosun.providers import ssh_keys
from bosun.providers.ssh_cork import CorkedTransport, cork
from bosun.providers.ssh_keys import HostKey, KnownHostsCheck

__all__ = ["Address", "Forward", "SshLink", "parse_address", "parse_forward"]

log = logging.getLogger(__name__)

#: The ciphers bosun offers first unless the ssh config names its own (``Ciphers``): AES-GCM
#: runs on the CPU's AES instructions and halves the client's CPU per packet against
#: asyncssh's default (ChaCha20-Poly1305), measured in bench/ssh.py; all are strong.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
FORWARD_RETRY_MAX = 30.0


@dataclass(frozen=True, slots=True)
class Address:
    """``[user@]host[:port]``; ``user``/``port`` None: from the ssh config or defaults."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.user}@{host}" if self.user else host
        return f"{text}:{self.port}" if self.port else text


def _bad_address(text: str, why: str) -> ConfigError:
    return ConfigError(
        f"SSH address {text!r}: {why}",
        'write address = "[user@]host[:port]" (IPv6 in brackets: "user@[::1]:22") '
        "or a Host alias of your ssh config",
    )


def parse_address(text: str) -> Address:
    """Parse ``[user@]host[:port]``, ``[user@][v6addr][:port]`` or an ssh config alias."""
    raw = text.strip()
    if not raw or any(c.isspace() or ord(c) < 32 for c in raw):
        raise _bad_address(text, "empty or contains spaces or control characters")
    user: str | None = None
    if "@" in raw:
        user, raw = raw.rsplit("@", 1)
        if not user:
            raise _bad_address(text, "empty user name before '@'")
    port_text: str | None = None
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise _bad_address(text, "'[' without a closing ']'")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad_address(text, f"unexpected {rest!r} after ']'")
            port_text = rest[1:]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    else:
        host = raw  # a name, IPv4, or a bare IPv6 address (no port possible then)
    if not host:
        raise _bad_address(text, "no host name")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad_address(text, f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    return Address(host, user, port)


@dataclass(frozen=True, slots=True)
class Forward:
    """``REMOTE_PORT:LOCAL_HOST:LOCAL_PORT`` (as ``ssh -R``)."""

    remote_port: int
    local_host: str
    local_port: int

    def __str__(self) -> str:
        host = f"[{self.local_host}]" if ":" in self.local_host else self.local_host
        return f"{self.remote_port}:{host}:{self.local_port}"


def parse_forward(spec: str) -> Forward:
    """``REMOTE_PORT:LOCAL_HOST:LOCAL_PORT``; LOCAL_HOST may be an IPv6 address in []."""
    bad = ConfigError(
        f"remote_forwards entry {spec!r} is not REMOTE_PORT:LOCAL_HOST:LOCAL_PORT",
        'write e.g. "11434:127.0.0.1:11434" (ports from 1 to 65535)',
    )
    remote, _, rest = spec.partition(":")
    host, _, local = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (remote.isdigit() and local.isdigit() and host):
        raise bad
    if not (0 < int(remote) < 65536 and 0 < int(local) < 65536):
        raise bad
    return Forward(int(remote), host, int(local))


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


class _Client(asyncssh.SSHClient):
    def __init__(self, link: SshLink) -> None:
        self._link = link
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._link._lost(self._conn, exc)


class SshLink:
    """The one connection to one SSH host (see the module docstring)."""

    def __init__(self, name: str, cfg: HostConfig, state_dir: str) -> None:
        if cfg.address is None:
            raise ConfigError(f"[hosts.{name}] has no address", 'add address = "user@host"')
        self.name = name
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.target = parse_address(cfg.address)
        self.forwards = [parse_forward(spec) for spec in cfg.remote_forwards]
        self.connects = 0  # connections established so far (one per reconnect)
        self.corked: CorkedTransport | None = None  # the live connection's (packets, writes)
        self.forward_errors: dict[str, str] = {}
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_conn: asyncssh.SSHClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._sftp_lock = asyncio.Lock()
        # two channels stay open: SFTP and the host session
        self._channels = asyncio.Semaphore(max(1, cfg.max_channels - 2))
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: ProviderError | None = None
        self._lost_reason: str | None = None
        self._forward_task: asyncio.Task[None] | None = None

    @property
    def display(self) -> str:
        return f"{self.name} ({self.cfg.address})"

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # -- errors --------------------------------------------------------------------------
    def unreachable(self, reason: str) -> HostUnreachable:
        return HostUnreachable(
            f"host {self.display} is unreachable: {reason}",
            hint=(
                f"check that the host is up and reachable from here (`bosun hosts check "
                f"{self.name}`); bosun reconnects on its next use, and runs on the host "
                "keep going meanwhile"
            ),
        )

    def _lost_error(self, exc: BaseException | None = None) -> HostUnreachable:
        reason = self._lost_reason or (str(exc) if exc else "") or "the connection was lost"
        return self.unreachable(f"the SSH connection was lost ({reason})")

    # -- connecting ----------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        cfg = self.cfg
        opts: dict[str, Any] = {
            "keepalive_interval": cfg.keepalive_interval,
            "keepalive_count_max": cfg.keepalive_count_max,
            "connect_timeout": cfg.connect_timeout,
        }
        if self.target.user:
            opts["username"] = self.target.user
        if self.target.port:
            opts["port"] = self.target.port
        # Always explicit: `config=()` (asyncssh's default) would read ~/.ssh/config only,
        # `[]` reads nothing, several files give the first value obtained, as in ssh.
        paths = ssh_keys.ssh_config_files(cfg, self.name)
        opts["config"] = [str(p) for p in paths]
        if not _names_ciphers(paths):
            opts["encryption_algs"] = list(CIPHERS)
        if cfg.identity_file:
            path = Path(cfg.identity_file).expanduser()
            if not path.is_file():
                raise ConfigError(
                    f"[hosts.{self.name}] identity_file {path} does not exist",
                    "fix the path, or remove identity_file to use ssh-agent and ~/.ssh/id_*",
                )
            opts["client_keys"] = [str(path)]
        return opts

    async def _check(self) -> KnownHostsCheck | None:
        if not self.cfg.strict_host_keys:
            return None
        # (reading the ssh config may run its `Match exec` commands: not on the loop)
        files = await asyncio.to_thread(
            ssh_keys.known_hosts_files, self.cfg, self.state_dir, self.name
        )
        return KnownHostsCheck(files)

    async def connection(self, *, wait: bool = False) -> asyncssh.SSHClientConnection:
        """The live connection, connecting first if needed. While a failed attempt's
        backoff runs, raise its error again (or, with ``wait``, sleep it out)."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                return conn
            left = self._retry_at - time.monotonic()
            if self._last_error is not None and left > 0:
                if not wait:
                    raise _again(self._last_error, left)
                await asyncio.sleep(left)
            try:
                conn = await self._connect()
            except ProviderError as exc:
                self._failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                self._last_error = exc
                raise
            self._failures = 0
            self._last_error = None
            self._lost_reason = None
            self._conn = conn
            self.connects += 1
            await self._open_forwards(conn)
            return conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        opts = self._options()
        check = await self._check()
        try:
            conn = await asyncssh.connect(
                self.target.host,
                known_hosts=check,
                client_factory=lambda: _Client(self),
                **opts,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            assert check is not None
            raise await self._refusal(check, opts) from exc
        except asyncssh.PermissionDenied as exc:
            raise ProviderError(
                f"host {self.display} refused the login: {exc.reason}",
                hint=(
                    "check the user name, that the key (identity_file, ssh-agent or "
                    "~/.ssh/id_*) is in the user's authorized_keys on the host, and "
                    "that `ssh` with the same settings works"
                ),
            ) from exc
        except (OSError, asyncssh.DisconnectError) as exc:  # incl. TimeoutError, refused
            raise self.unreachable(_describe(exc)) from exc
        except (asyncssh.Error, ValueError) as exc:  # key files, config syntax, ...
            problem = ssh_keys.ssh_config_error(opts["config"], exc, self.name)
            if problem is not None:
                raise problem from exc
            raise ProviderError(
                f"cannot connect to host {self.display}: {_describe(exc)}",
                hint="check the host's ssh settings (address, ssh_config, identity_file)",
            ) from exc
        # the packets of one turn of the loop go out in one write (bosun.providers.ssh_cork)
        self.corked = cork(conn)
        return conn

    async def _refusal(self, check: KnownHostsCheck, opts: dict[str, Any]) -> HostKeyError:
        """Fetch the key the host offers (the type of the recorded one, if any) to show
        it in the error."""
        algs = [a.decode() for k in check.recorded for a in k.sig_algorithms]
        offered: HostKey | None = None
        problem: str | None = None
        for attempt in ([algs] if algs else []) + [()]:
            try:
                offered = await fetch_key(self.target, opts, algs=attempt)
                break
            except BosunError as exc:
                problem = exc.message
        return ssh_keys.refusal(self.name, str(self.cfg.address), offered, check, problem)

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        if conn is not self._conn:
            return
        self._lost_reason = _describe(exc) if exc is not None else "closed by the host"
        self._conn = None
        self._sftp = None
        self._sftp_conn = None
        if self._forward_task is not None:
            self._forward_task.cancel()
            self._forward_task = None

    # -- remote port forwards ------------------------------------------------------------
    async def _open_forwards(self, conn: asyncssh.SSHClientConnection) -> None:
        self.forward_errors = {}
        failed = [fw for fw in self.forwards if not await self._forward(conn, fw)]
        if failed:
            self._forward_task = asyncio.get_running_loop().create_task(
                self._retry_forwards(conn, failed), name=f"bosun-ssh-forwards-{self.name}"
            )

    async def _forward(self, conn: asyncssh.SSHClientConnection, fw: Forward) -> bool:
        try:
            await conn.forward_remote_port(
                "127.0.0.1", fw.remote_port, fw.local_host, fw.local_port
            )
        except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as exc:
            self.forward_errors[str(fw)] = _describe(exc)
            log.warning("host %s: remote forward %s failed: %s", self.name, fw, exc)
            return False
        self.forward_errors.pop(str(fw), None)
        return True

    async def _retry_forwards(
        self, conn: asyncssh.SSHClientConnection, todo: list[Forward]
    ) -> None:
        """A port still held by the host's side of a dead connection frees up later."""
        delay = 1.0
        while todo and conn is self._conn:
            await asyncio.sleep(delay)
            todo = [fw for fw in todo if not await self._forward(conn, fw)]
            delay = min(delay * 2, FORWARD_RETRY_MAX)

    def forwards_problem(self) -> ProviderError | None:
        if not self.forward_errors:
            return None
        failed = "; ".join(f"{spec}: {why}" for spec, why in self.forward_errors.items())
        return ProviderError(
            f"host {self.display}: remote port forward not open ({failed})",
            hint=(
                "another process on the host holds the remote port (maybe the host's side "
                "of an older connection: bosun keeps retrying), or the host's sshd has "
                "AllowTcpForwarding off; pick another REMOTE_PORT in remote_forwards"
            ),
        )

    # -- channels --------------------------------------------------------------------------
    async def run(
        self, command: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run ``command`` (a remote shell command line) on its own channel: exit code
        (128+N for signal N), stdout, stderr. Timeout and cancellation kill the remote
        command's process group (an SSH ``signal`` request: sshd does ``killpg``)."""
        conn = await self.connection()
        async with self._channels:
            proc = await self._open_channel(conn, command)
            try:
                if stdin:
                    proc.stdin.write(stdin)
                proc.stdin.write_eof()
                out, err = await asyncio.wait_for(proc.communicate(), timeout)
            except TimeoutError:
                _kill(proc)
                raise
            except asyncio.CancelledError:
                _kill(proc)
                raise
            except (asyncssh.Error, OSError) as exc:
                _kill(proc)
                raise self._lost_error(exc) from exc
            finally:
                proc.close()
                # sshd frees the session slot once the close is acknowledged: wait for
                # it, or the next channel may find MaxSessions still taken.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait_closed(), 5)
        signal = proc.exit_signal
        if signal is not None:
            return 128 + _signal_number(signal[0]), bytes(out or b""), bytes(err or b"")
        status = proc.exit_status
        if status is None or status < 0:
            # The channel closed without an exit status: the connection died under it.
            raise self._lost_error()
        return status, bytes(out or b""), bytes(err or b"")

    async def start_process(self, command: str) -> asyncssh.SSHClientProcess[bytes]:
        """A long-lived channel running ``command`` (the host session), outside the
        exec channels' limit: the caller writes its stdin and reads its output."""
        conn = await self.connection()
        return await self._open_channel(conn, command)

    async def _open_channel(
        self, conn: asyncssh.SSHClientConnection, command: str
    ) -> asyncssh.SSHClientProcess[bytes]:
        delay = 0.01
        while True:
            try:
                return await conn.create_process(command, encoding=None)
            except asyncssh.ChannelOpenError as exc:
                if conn.is_closed():
                    raise self._lost_error(exc) from exc
                # sshd frees a session only after the close of its channel went through
                # its main loop: a channel opened right after another closed may find
                # MaxSessions still taken. Retry briefly before calling it a limit.
                # (OpenSSH answers "open failed", code OPEN_CONNECT_FAILED.)
                if delay < 1:
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                raise ProviderError(
                    f"host {self.display} refused a new SSH channel: {exc.reason}",
                    hint=(
                        f"max_channels ({self.cfg.max_channels}) must stay below the "
                        "MaxSessions of the host's sshd (10 by default): lower it"
                    ),
                ) from exc
            except (asyncssh.Error, OSError) as exc:
                raise self._lost_error(exc) from exc

    async def sftp(self) -> asyncssh.SFTPClient:
        """The connection's SFTP session (one channel, opened once per connection)."""
        conn = await self.connection()
        if self._sftp is not None and self._sftp_conn is conn:
            return self._sftp
        async with self._sftp_lock:
            if self._sftp is not None and self._sftp_conn is conn:
                return self._sftp
            try:
                sftp = await conn.start_sftp_client()
            except (asyncssh.ChannelOpenError, asyncssh.SFTPError) as exc:
                if conn.is_closed():
                    raise self._lost_error(exc) from exc
                raise ProviderError(
                    f"host {self.display} offers no SFTP: {_describe(exc)}",
                    hint=(
                        "bosun reads run files over SFTP: enable the sftp subsystem in the "
                        "host's sshd_config (`Subsystem sftp internal-sftp`)"
                    ),
                ) from exc
            except (asyncssh.Error, OSError) as exc:
                raise self._lost_error(exc) from exc
            self._sftp, self._sftp_conn = sftp, conn
            return sftp

    @contextlib.asynccontextmanager
    async def files(self) -> AsyncIterator[asyncssh.SFTPClient]:
        """The SFTP session, with a lost connection turned into HostUnreachable (other
        SFTP errors are the caller's)."""
        sftp = await self.sftp()
        try:
            yield sftp
        except (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection) as exc:
            raise self._lost_error(exc) from exc
        except (asyncssh.DisconnectError, ConnectionError, BrokenPipeError) as exc:
            raise self._lost_error(exc) from exc

    async def aclose(self) -> None:
        """Close the connection (the host's runs are detached and keep going)."""
        if self._forward_task is not None:
            self._forward_task.cancel()
            self._forward_task = None
        conn, self._conn = self._conn, None
        sftp, self._sftp, self._sftp_conn = self._sftp, None, None
        if sftp is not None:
            sftp.exit()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()


def _names_ciphers(paths: Iterable[Path], depth: int = 0) -> bool:
    """Whether the ssh config files, or the files they ``Include``, name ``Ciphers``
    anywhere (then asyncssh follows the config). ``Include`` is followed as asyncssh
    follows it (e.g. a system config's ``Include /etc/ssh/ssh_config.d/*.conf`` naming
    crypto-policies' file), 16 levels deep at most (as ``ssh``)."""
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.strip().replace("=", " ", 1).split()
            keyword = words[0].lower() if words else ""
            if keyword == "ciphers":
                return True
            if (
                keyword == "include"
                and depth < 16
                and _names_ciphers(_included(words[1:]), depth + 1)
            ):
                return True
    return False


def _included(patterns: list[str]) -> list[Path]:
    """The files an ``Include`` line names, as asyncssh finds them: ``~`` expanded, a
    relative pattern under ``~/.ssh``, globs expanded (in lexical order, as ``ssh``)."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern.strip("\"'")).expanduser()
        base = Path(path.anchor) if path.anchor else Path.home() / ".ssh"
        relative = str(path.relative_to(path.anchor)) if path.anchor else str(path)
        if relative in ("", "."):
            continue
        try:
            found += sorted(p for p in base.glob(relative) if p.is_file())
        except (OSError, ValueError):
            continue
    return found


def _kill(proc: asyncssh.SSHClientProcess[bytes]) -> None:
    with contextlib.suppress(Exception):
        proc.send_signal("KILL")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _again(exc: ProviderError, left: float) -> ProviderError:
    """A fresh copy of the last connect error (one exception object is never re-raised
    from several tasks), saying when the next attempt will be made."""
    message = f"{exc.message} (next attempt in {left:.1f}s)"
    if isinstance(exc, HostKeyError):
        return HostKeyError(
            message,
            exc.hint,
            key_type=exc.key_type,
            fingerprint=exc.fingerprint,
            changed=exc.changed,
        )
    return type(exc)(message, exc.hint)


async def resolve(target: Address, opts: dict[str, Any]) -> tuple[str, int | None]:
    """The name and port known_hosts lines use for ``target`` (after the ssh config:
    HostKeyAlias, else HostName)."""
    try:
        options = await asyncssh.SSHClientConnectionOptions.construct(
            config=opts.get("config", ()),
            host=target.host,
            port=opts.get("port", ()),
        )
    except ValueError as exc:
        problem = ssh_keys.ssh_config_error(opts.get("config", ()), exc)
        if problem is not None:
            raise problem from exc
        raise
    host = options.host_key_alias or options.host or target.host
    return str(host), int(options.port) if options.port else None


async def fetch_key(target: Address, opts: dict[str, Any], *, algs: Any = ()) -> ssh_keys.HostKey:
    """The host key ``target`` offers (no verification), as ``HostKey``."""
    try:
        key = await asyncssh.get_server_host_key(
            target.host,
            opts.get("port", ()),
            config=opts.get("config", ()),
            server_host_key_algs=algs,
        )
    except (OSError, asyncssh.Error, ValueError) as exc:
        problem = ssh_keys.ssh_config_error(opts.get("config", ()), exc)
        if problem is not None:
            raise problem from exc
        raise HostUnreachable(
            f"cannot fetch the host key of {target}: {_describe(exc)}",
            hint="check that the host is up and its address is right",
        ) from exc
    if key is None:
        raise ProviderError(
            f"host {target} sent no host key", hint="the server is not a usable SSH server"
        )
    host, port = await resolve(target, opts)
    return ssh_keys.host_key_of(key, host, port)
