"""Real OpenSSH ``sshd`` hosts for tests: one unprivileged user, address and key per host.

Every test that needs SSH hosts (the SSH provider, the host registry, fault tests) uses
the ``sshd`` fixture and marks itself ``@pytest.mark.ssh``. This module is a pytest plugin
(``pytest_plugins`` in ``tests/conftest.py``): its fixtures ``sshd``, ``ssh_client_key``
and ``ssh_client_home`` are there in every test module, which imports only the classes it
names in annotations (``from tests.sshd import SshdFleet, SshHost``), never the fixture
functions. Importing this module starts nothing: the fixtures do their work (and skip, or
fail under CI, without sshd or root) only in the tests that ask for them.

``ssh_client_home`` (optional) gives the client side a HOME of its own, so that root's
``~/.ssh`` never plays a part::

    @pytest.mark.ssh
    async def test_something(sshd: SshdFleet, tmp_path: Path) -> None:
        h1, h2 = sshd.start(2)                # two sshd processes, 127.0.0.2 and .3
        sshd.trust(h1, h2)                    # their keys into sshd.known_hosts
        table = sshd.host_table(h1, max_channels=4)  # a [hosts.X] table (dict)
        provider = SshProvider("h1", HostConfig(**table), str(tmp_path / "state"))

The fleet (:class:`SshdFleet`, the ``sshd`` fixture): ``start(n, max_sessions=10,
extra_config=())`` -> new hosts named h1, h2, ...; ``trust(*hosts)`` appends their keys to
``sshd.known_hosts``; ``host_table(host, **overrides)`` -> a ``[hosts.X]`` dict (kind ssh,
address, identity_file = ``sshd.client_key``, known_hosts, ssh_config = an empty file,
fast keepalives); ``hosts_tables(**overrides)`` -> ``{name: table}`` of every host, for
``make_settings(hosts=...)``.

What a host is (:class:`SshHost`):

- an ``sshd -D`` process running as its own user (leased from a pool ``bosun-h1`` ..
  ``bosun-h32``, created with ``useradd -m -s /bin/sh`` when missing; we are root; the
  user's number need not match the host's name), with a home (``host.home``, owned by
  ``host.uid``) emptied at start (no ``.profile``: a clean shell), listening on
  ``127.0.0.N:PORT`` (N = 2, 3, ... in the order started; PORT free), with its own ed25519
  host key (``host.host_key``), the client key of ``ssh_client_key`` in its
  AuthorizedKeysFile, ``UsePAM no``, ``StrictModes no``, SFTP, TCP forwarding, a PidFile
  and a log file (``host.log``, printed at teardown: pytest shows it when the test failed);
- ``host.address`` (``user@127.0.0.N:PORT``), ``host.known_hosts_line``,
  ``host.sessions()`` (how many SSH connections sshd authenticated), ``host.processes()``
  (the live processes of the host's user, read from /proc: pid, pgid, argv);
- faults: ``host.kill_listener()`` (SIGKILL the listening sshd only: sessions already
  open go on), ``host.restart()`` (listen again, same key and port; set
  ``host.host_key`` first to simulate a reinstalled host), ``host.kill_all()`` (SIGKILL
  every process of the host's user: the whole host dies), ``host.block()`` /
  ``host.unblock()`` (an nftables table drops every packet to and from the host's
  address; the test skips outside a loopback-only network namespace).

Users are leased from a pool with ``flock`` on ``/tmp/bosun-sshd/<user>.lock``, so
several pytest processes (each in its own ``unshare -n`` namespace) never share a user,
a home or a process. At teardown, also when the test failed, every sshd started is
killed by PID, every process of the leased users is killed, the nftables table is
deleted and the users are released. The ``sshd`` fixture skips (fails under CI) when
``/usr/sbin/sshd`` is missing or the tests do not run as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import asyncssh
import pytest

from tests.agent_clis import in_ci

__all__ = ["SshHost", "SshdFleet"]

SSHD = "/usr/sbin/sshd"
_SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
)
USER_PREFIX = "bosun-h"
POOL_SIZE = 32
LOCK_DIR = Path("/tmp/bosun-sshd")
_NFT_TABLE = f"bosun_test_{os.getpid()}"


def _skip_or_fail(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def private_netns() -> bool:
    """Whether this process runs in a network namespace of its own whose only interface
    is ``lo`` (as under ``unshare -n``): the only place where nftables rules are safe."""
    return [name for _index, name in socket.if_nameindex()] == ["lo"]


def _sftp_server() -> str:
    for path in _SFTP_SERVERS:
        if os.path.exists(path):
            return path
    return "internal-sftp"


def _free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def _uid_processes(uid: int) -> list[tuple[int, int, str, list[str]]]:
    """(pid, pgid, state, argv) of every process of ``uid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
        if not uid_line or int(uid_line.split()[1]) != uid:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
        found.append((int(entry), int(fields[2]), fields[0].decode(), argv))
    return found


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (by PID), until none is left."""
    for _ in range(100):
        procs = [p for p in _uid_processes(uid) if p[2] not in ("Z", "X")]
        if not procs:
            return
        for pid, *_ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    raise AssertionError(f"processes of uid {uid} survive SIGKILL")


# -- users ----------------------------------------------------------------------------
def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    for _ in range(50):  # another process may hold /etc/passwd's lock for a moment
        done = subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", "-p", "*", name],
            capture_output=True,
            text=True,
            check=False,
        )
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        time.sleep(0.1)
    raise AssertionError(f"useradd {name} failed: {done.stderr.strip()}")


def _shadow_password(user: str) -> str | None:
    try:
        lines = Path("/etc/shadow").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if fields[0] == user and len(fields) > 1:
            return fields[1]
    return None


class _Lease:
    """A user of the pool, held with an exclusive flock for as long as the lease lives."""

    def __init__(self, user: str, lock: TextIO) -> None:
        self.user = user
        self._lock = lock
        entry = _ensure_user(user)
        # "!" in the password field is a locked account, which sshd refuses even for keys.
        if _shadow_password(user) != "*":
            subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
        kill_uid(self.uid)  # left over by a crashed earlier run
        self.home.mkdir(parents=True, exist_ok=True)
        for child in self.home.iterdir():  # a clean home: no profile, no earlier runs
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        os.chown(self.home, self.uid, self.gid)
        self.home.chmod(0o755)

    def release(self) -> None:
        kill_uid(self.uid)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def _lease_user(taken: set[str]) -> _Lease:
    LOCK_DIR.mkdir(mode=0o755, exist_ok=True)
    for n in range(1, POOL_SIZE + 1):
        user = f"{USER_PREFIX}{n}"
        if user in taken:
            continue
        lock = (LOCK_DIR / f"{user}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return _Lease(user, lock)
    raise AssertionError(f"all {POOL_SIZE} test users are in use by other test processes")


# -- hosts ----------------------------------------------------------------------------
@dataclass
class SshHost:
    """One real sshd (see the module docstring)."""

    name: str
    lease: _Lease
    addr: str
    port: int
    dir: Path  # sshd's own files, owned by the user
    host_key: asyncssh.SSHKey
    client_public: str
    max_sessions: int = 10
    extra_config: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # every listener started, for teardown
    blocked: bool = False

    @property
    def user(self) -> str:
        return self.lease.user

    @property
    def uid(self) -> int:
        return self.lease.uid

    @property
    def home(self) -> Path:
        return self.lease.home

    @property
    def address(self) -> str:
        return f"{self.user}@{self.addr}:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def work_dir(self) -> Path:
        """``~/work`` on the host, owned by its user: an agent's working directory."""
        path = self.home / "work"
        path.mkdir(exist_ok=True)
        os.chown(path, self.uid, self.lease.gid)
        return path

    @property
    def known_hosts_line(self) -> str:
        key = self.host_key.export_public_key("openssh").decode().split()
        return f"[{self.addr}]:{self.port} {key[0]} {key[1]}"

    def _write_files(self) -> Path:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        key_path = self.dir / "host_key"
        key_path.write_bytes(self.host_key.export_private_key("openssh"))
        key_path.chmod(0o600)
        (self.dir / "authorized_keys").write_text(self.client_public + "\n")
        config = [
            f"ListenAddress {self.addr}:{self.port}",
            f"HostKey {key_path}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AllowTcpForwarding yes",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            f"MaxSessions {self.max_sessions}",
            "MaxStartups 200",
            f"Subsystem sftp {_sftp_server()}",
            *self.extra_config,
        ]
        cfg = self.dir / "sshd_config"
        cfg.write_text("\n".join(config) + "\n")
        for path in (self.dir, key_path, cfg, self.dir / "authorized_keys"):
            os.chown(path, self.uid, self.lease.gid)
        return cfg

    def start(self) -> None:
        """Start (or restart) the listening sshd and wait until it accepts connections."""
        cfg = self._write_files()
        pidfile = self.dir / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(cfg), "-E", str(self.log)],
            user=self.uid,
            group=self.lease.gid,
            extra_groups=[],
            env={
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": str(self.home),
                "USER": self.user,
                "LOGNAME": self.user,
                "LANG": "C.UTF-8",
            },
            cwd=str(self.home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pids.append(self.proc.pid)
        for _ in range(500):
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd of {self.name} exited at start:\n{self.log_text()}")
            with contextlib.suppress(OSError, ValueError):
                if int(pidfile.read_text()) == self.proc.pid:
                    return
            time.sleep(0.01)
        raise AssertionError(f"sshd of {self.name} did not start:\n{self.log_text()}")

    restart = start

    def kill_listener(self) -> None:
        """SIGKILL the listening sshd only: connections already open keep working."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def kill_all(self) -> None:
        """SIGKILL every process of the host's user: listener, sessions and runs."""
        self.kill_listener()
        kill_uid(self.uid)

    def block(self) -> None:
        """Drop every packet to and from the host's address (nftables)."""
        if not private_netns():
            pytest.skip("blocking packets needs a private network namespace (unshare -n)")
        _nft("add", "table", "inet", _NFT_TABLE)
        for chain, hook in (("out", "output"), ("in", "input")):
            _nft(
                "add", "chain", "inet", _NFT_TABLE, chain,
                f"{{ type filter hook {hook} priority 0 ; policy accept ; }}",
            )  # fmt: skip
        for chain, what in (("out", "daddr"), ("in", "saddr")):
            _nft(
                "add", "rule", "inet", _NFT_TABLE, chain,
                "ip", what, self.addr, "counter", "drop", "comment", f'"{self.name}"',
            )  # fmt: skip
        self.blocked = True

    def unblock(self) -> None:
        """Remove this host's drop rules again."""
        if not self.blocked:
            return
        listing = _nft("-a", "list", "table", "inet", _NFT_TABLE)
        for line in listing.splitlines():
            if f'comment "{self.name}"' in line and "# handle" in line:
                handle = line.rsplit("# handle", 1)[1].strip()
                chain = "out" if "daddr" in line else "in"
                _nft("delete", "rule", "inet", _NFT_TABLE, chain, "handle", handle)
        self.blocked = False

    def sessions(self) -> int:
        """SSH connections this host's sshd has authenticated so far."""
        return self.log_text().count("Accepted publickey for")

    def processes(self) -> list[tuple[int, int, list[str]]]:
        """(pid, pgid, argv) of the live (non-zombie) processes of the host's user."""
        return [(p, g, a) for p, g, s, a in _uid_processes(self.uid) if s not in ("Z", "X")]

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _nft(*args: str) -> str:
    done = subprocess.run(["nft", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"nft {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class SshdFleet:
    """The hosts of one test (see the module docstring)."""

    def __init__(self, tmp_path: Path, client_key: Path) -> None:
        self.client_key = client_key
        self.client_public = Path(f"{client_key}.pub").read_text().strip()
        self.dir = tmp_path / "ssh-client"
        self.dir.mkdir(exist_ok=True)
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.touch()
        self.ssh_config = self.dir / "ssh_config"  # empty: root's ~/.ssh/config never applies
        self.ssh_config.touch()
        self.hosts: list[SshHost] = []
        self._leases: list[_Lease] = []

    def start(
        self, count: int = 1, *, max_sessions: int = 10, extra_config: tuple[str, ...] = ()
    ) -> list[SshHost]:
        """Start ``count`` more hosts, named h1, h2, ... in the order started."""
        started = []
        for _ in range(count):
            n = len(self.hosts) + 1
            lease = _lease_user({lease.user for lease in self._leases})
            self._leases.append(lease)
            addr = f"127.0.0.{n + 1}"
            host = SshHost(
                name=f"h{n}",
                lease=lease,
                addr=addr,
                port=_free_port(addr),
                dir=Path(tempfile.mkdtemp(prefix=f"bosun-sshd-{lease.user}-")),
                host_key=asyncssh.generate_private_key("ssh-ed25519"),
                client_public=self.client_public,
                max_sessions=max_sessions,
                extra_config=extra_config,
            )
            self.hosts.append(host)
            host.start()
            started.append(host)
        return started

    def trust(self, *hosts: SshHost, path: Path | None = None) -> Path:
        """Append the hosts' keys to ``path`` (default: ``self.known_hosts``)."""
        target = path or self.known_hosts
        with target.open("a") as f:
            for host in hosts:
                f.write(host.known_hosts_line + "\n")
        return target

    def host_table(self, host: SshHost, **overrides: Any) -> dict[str, Any]:
        """A ``[hosts.NAME]`` table for ``host``: strict keys against ``self.known_hosts``,
        the test client key, an empty ssh config, fast keepalives."""
        table: dict[str, Any] = {
            "kind": "ssh",
            "address": host.address,
            "identity_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "ssh_config": str(self.ssh_config),
            "keepalive_interval": 1.0,
            "keepalive_count_max": 3,
            "connect_timeout": 5.0,
        }
        table.update(overrides)
        return table

    def hosts_tables(self, **overrides: Any) -> dict[str, dict[str, Any]]:
        """``{name: table}`` of every host, ready for ``make_settings(hosts=...)``."""
        return {h.name: self.host_table(h, **overrides) for h in self.hosts}

    def close(self) -> None:
        for host in self.hosts:
            for pid in host.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if host.proc is not None:
                host.proc.wait()
        if any(h.blocked for h in self.hosts):
            with contextlib.suppress(AssertionError):
                _nft("delete", "table", "inet", _NFT_TABLE)
        for lease in self._leases:
            lease.release()
        for host in self.hosts:
            text = host.log_text()
            if text:  # pytest shows teardown output only for failed tests
                print(f"----- sshd log of {host.name} ({host.address}) -----\n{text}")
            shutil.rmtree(host.dir, ignore_errors=True)


@pytest.fixture(scope="session", name="ssh_client_key")
def ssh_client_key_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ed25519 client key (``path`` and ``path.pub``) every test sshd accepts."""
    path = tmp_path_factory.mktemp("ssh-client-key") / "id_ed25519"
    key = asyncssh.generate_private_key("ssh-ed25519", comment="bosun-tests")
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    Path(f"{path}.pub").write_bytes(key.export_public_key("openssh"))
    return path


@pytest.fixture(name="ssh_client_home")
def ssh_client_home_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own for the SSH client (bosun): root's ``~/.ssh`` (config,
    known_hosts, keys) is never read; a test may write ``home/.ssh/...`` there."""
    home = tmp_path / "client-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture(name="sshd")
def sshd_fixture(tmp_path: Path, ssh_client_key: Path) -> Iterator[SshdFleet]:
    """Real sshd hosts for one test; everything is stopped and removed afterwards."""
    if not os.path.exists(SSHD):
        _skip_or_fail(f"{SSHD} is missing: apt-get install openssh-server (scripts/check does)")
    if os.geteuid() != 0:
        _skip_or_fail("the sshd fixture creates test users and must run as root")
    fleet = SshdFleet(tmp_path, ssh_client_key)
    try:
        yield fleet
    finally:
        fleet.close()
