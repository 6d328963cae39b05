"""SSH host keys: strict checking, clear refusals, and ``bosun hosts trust``.

bosun trusts a host key found in any of these known_hosts files (OpenSSH format):

1. the files ``ssh`` itself reads for the host, by the ssh config bosun uses for it
   (:func:`ssh_config_files`: ``ssh_config``, else ``~/.ssh/config`` then
   ``/etc/ssh/ssh_config``): ``UserKnownHostsFile`` (default
   ``~/.ssh/known_hosts ~/.ssh/known_hosts2``) and ``GlobalKnownHostsFile`` (default
   ``/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2``), each possibly ``none`` or
   several files, expanded as OpenSSH expands them (``~``, ``%d``, ``%h``, ``%u``, ...,
   ``${VAR}`` in ``UserKnownHostsFile``; only ``~`` in ``GlobalKnownHostsFile``): see
   :func:`ssh_known_hosts`;
2. ``<state_dir>/known_hosts`` (bosun's own: ``bosun hosts trust HOST`` appends there);
3. the host's ``known_hosts`` setting in ``bosun.toml``.

During the handshake asyncssh asks :class:`KnownHostsCheck` which keys are trusted for the
host; the check remembers the answer, so that a refused key can be told apart: *unknown*
(no key recorded for the host) or *changed* (keys recorded, none of them the one offered:
possibly a man-in-the-middle). Either way the error shows the offered key's type and
SHA256 fingerprint and says how to trust it. ``strict_host_keys = false`` turns the check
off for one host.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import pwd
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import asyncssh
from asyncssh.config import SSHClientConfig

from bosun.config import HostConfig
from bosun.errors import ConfigError, HostKeyError, ProviderError

__all__ = [
    "HostKey",
    "KnownHostsCheck",
    "host_key_of",
    "known_hosts_files",
    "known_hosts_pattern",
    "own_known_hosts",
    "ssh_config_error",
    "ssh_config_files",
    "ssh_known_hosts",
]

DEFAULT_PORT = 22

#: The system-wide ssh client config, read after ``~/.ssh/config`` unless ``ssh_config``
#: is set (OpenSSH's ``_PATH_HOST_CONFIG_FILE``; tests point it elsewhere).
SYSTEM_SSH_CONFIG = Path("/etc/ssh/ssh_config")

#: What ``ssh`` reads when its config names no file (ssh_config(5)).
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


class HostKey(NamedTuple):
    """A host's public key as ``bosun hosts trust`` shows and records it."""

    key_type: str  # e.g. "ssh-ed25519"
    fingerprint: str  # "SHA256:..."
    line: str  # the known_hosts line: "[host]:port ssh-ed25519 AAAA..."


def known_hosts_pattern(host: str, port: int | None) -> str:
    """The host part of a known_hosts line, as OpenSSH writes it."""
    return host if port in (None, DEFAULT_PORT) else f"[{host}]:{port}"


def host_key_of(key: asyncssh.SSHKey, host: str, port: int | None) -> HostKey:
    key_type, blob = key.export_public_key("openssh").decode().split()[:2]
    pattern = known_hosts_pattern(host, port)
    return HostKey(key_type, key.get_fingerprint("sha256"), f"{pattern} {key_type} {blob}")


def own_known_hosts(state_dir: str | os.PathLike[str]) -> Path:
    """bosun's own known_hosts file, where ``bosun hosts trust`` writes."""
    return Path(state_dir) / "known_hosts"


def known_hosts_files(
    cfg: HostConfig, state_dir: str | os.PathLike[str], name: str | None = None
) -> list[Path]:
    """Every known_hosts file bosun reads for ``cfg`` (existing or not), in order, each
    once: those of the ssh config (:func:`ssh_known_hosts`), bosun's own, the host's
    ``known_hosts`` setting. ``name`` (the host's name in bosun) goes into errors."""
    files = [*ssh_known_hosts(cfg, name), own_known_hosts(state_dir)]
    if cfg.known_hosts:
        files.append(Path(cfg.known_hosts).expanduser())
    return list(dict.fromkeys(files))


def ssh_config_files(cfg: HostConfig, name: str | None = None) -> list[Path]:
    """The ssh config files bosun reads for ``cfg``, in order, as ``ssh`` reads them: with
    ``ssh_config`` set, only that file (as ``ssh -F FILE``; it must exist); else
    ``~/.ssh/config`` then :data:`SYSTEM_SSH_CONFIG` (``/etc/ssh/ssh_config``), each when
    it is a readable file (``ssh`` skips a file it cannot open). The first value obtained
    for an option wins across the files, as within one. The one list both the connection
    (asyncssh's ``config=``) and :func:`ssh_known_hosts` use; ``name`` (the host's name in
    bosun) goes into the error."""
    if cfg.ssh_config:
        path = Path(cfg.ssh_config).expanduser()
        if not path.is_file():
            where = f"[hosts.{name}] ssh_config" if name else "ssh_config"
            raise ConfigError(
                f"{where} {path} does not exist",
                "fix the path, or remove ssh_config to use ~/.ssh/config and "
                f"{SYSTEM_SSH_CONFIG} (as ssh does)",
            )
        return [path]
    candidates = (Path.home() / ".ssh" / "config", SYSTEM_SSH_CONFIG)
    return [p for p in candidates if p.is_file() and os.access(p, os.R_OK)]


def ssh_config_error(
    paths: Sequence[str | os.PathLike[str]], exc: BaseException, name: str | None = None
) -> ConfigError | None:
    """The error for an ssh config asyncssh cannot read (``exc``, raised while it read
    ``paths``), or None when ``exc`` is not about the ssh config. asyncssh's
    ``ConfigParseError`` names the file (an included one too) and the line; text that is
    not in the locale's encoding is pinned on the file that holds it."""
    files = [Path(p) for p in paths]
    shown = ", ".join(map(str, files))
    if isinstance(exc, UnicodeDecodeError):
        bad = next((p for p in files if not _decodes(p)), None)
        if bad is None:
            return None
        detail = f"{bad} is not {exc.encoding} text ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, asyncssh.ConfigParseError):
        detail = str(exc)
    else:
        return None
    where = f"[hosts.{name}]: " if name else ""
    table = f"[hosts.{name}]" if name else "the host's table"
    system = (
        f"; if it is in {SYSTEM_SSH_CONFIG} (or a file it includes) and you cannot change "
        f"it, set ssh_config in {table} to a config file of your own: bosun then reads "
        "only that file, as `ssh -F FILE` does"
        if SYSTEM_SSH_CONFIG in files
        else ""
    )
    return ConfigError(
        f"{where}cannot read the ssh config ({shown}): {detail}",
        "fix the file (`ssh -G HOST` shows what ssh makes of it; bosun reads it with "
        f"asyncssh, which refuses some lines ssh skips){system}",
    )


def _decodes(path: Path) -> bool:
    """Whether ``path`` reads as text the way asyncssh opens it (the locale's encoding)."""
    try:
        with open(path) as f:  # (the call asyncssh makes)
            f.read()
    except UnicodeDecodeError:
        return False
    except OSError:
        return True
    return True


def ssh_known_hosts(cfg: HostConfig, name: str | None = None) -> list[Path]:
    """The known_hosts files ``ssh`` reads for the host of ``cfg``, by the ssh config
    bosun uses for it: ``UserKnownHostsFile`` then ``GlobalKnownHostsFile`` (the first
    value set for the host wins; ``none``: no file; unset: OpenSSH's defaults). As in
    OpenSSH 9, ``UserKnownHostsFile`` gets ``~``, ``${VAR}`` and the ``%`` tokens of
    ssh_config(5) (``%%``, ``%C``, ``%d``, ``%h``, ``%i``, ``%j``, ``%k``, ``%L``, ``%l``,
    ``%n``, ``%p``, ``%r``, ``%u``) and ``GlobalKnownHostsFile`` only ``~``. ``~`` and
    ``%d`` are ``$HOME`` (where bosun reads ``~/.ssh/config`` too; ``ssh`` takes the
    passwd entry's home, the same unless ``$HOME`` was changed). An unknown token or an
    unset variable is a ``ConfigError``, as ``ssh`` refuses to run then, and so is a config
    asyncssh cannot read (:func:`ssh_config_error`). ``name`` (the host's name in bosun)
    goes into errors."""
    from bosun.providers.ssh_conn import parse_address  # (ssh_conn imports this module)

    if cfg.address is None:
        raise ConfigError("an ssh host has no address", 'add address = "user@host"')
    target = parse_address(cfg.address)
    paths = ssh_config_files(cfg, name)
    local_user = _local_user()
    try:
        config = _load_config(paths, local_user, target.host, target.user, target.port)
    except ValueError as exc:  # asyncssh's ConfigParseError, an unsafe user name, ...
        error = ssh_config_error(paths, exc, name)
        if error is None:
            where = ", ".join(map(str, paths)) or "the ssh config"
            error = ConfigError(
                f"cannot read {where}: {exc}", "fix the ssh config (`ssh -G HOST` checks it)"
            )
        raise error from exc
    user_files = _config_list(config.get("UserKnownHostsFile"), DEFAULT_USER_KNOWN_HOSTS)
    global_files = _config_list(config.get("GlobalKnownHostsFile"), DEFAULT_GLOBAL_KNOWN_HOSTS)
    if not user_files and not global_files:
        return []
    home = str(Path.home())
    host = str(config.get("Hostname") or target.host).lower()
    port = str(config.get("Port") or DEFAULT_PORT)
    remote_user = str(config.get("User") or getpass.getuser())
    jump = str(config.get("ProxyJump") or "")
    if jump.lower() == "none":
        jump = ""
    this_host = socket.gethostname()
    alias = config.get("HostKeyAlias")
    tokens = {
        "%": "%",
        "C": hashlib.sha1(  # OpenSSH's %C (a name, not a security use)
            f"{this_host}{host}{port}{remote_user}{jump}".encode(), usedforsecurity=False
        ).hexdigest(),
        "d": home,
        "h": host,
        "i": str(os.getuid()),
        "j": jump,
        "k": str(alias).lower() if alias else target.host,
        "L": this_host.split(".", 1)[0],
        "l": this_host,
        "n": target.host,
        "p": port,
        "r": remote_user,
        "u": local_user,
    }
    found = [
        Path(_expand(_tilde(f, home), tokens, option="UserKnownHostsFile")) for f in user_files
    ]
    found += [Path(_tilde(f, home)) for f in global_files]
    return found


def _local_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def _load_config(
    paths: Sequence[Path], local_user: str, host: str, user: str | None, port: int | None
) -> SSHClientConfig:
    """The ssh config for ``host`` as asyncssh reads it for the connection (its
    ``Match final`` pass included)."""
    args = (local_user, user if user else (), host, port if port else ())
    config = SSHClientConfig.load(None, list(paths), False, False, False, *args)
    if config.has_match_final():
        config = SSHClientConfig.load(config, list(paths), True, False, True, *args)
    assert isinstance(config, SSHClientConfig)
    return config


def _config_list(value: object, default: Sequence[str]) -> list[str]:
    """A file-list option's value: unset -> ``default``; ``none`` (an empty list) -> []."""
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [value]
    assert isinstance(value, list)
    return [str(v) for v in value]


def _tilde(path: str, home: str) -> str:
    """``~`` and ``~/...`` -> ``$HOME``; ``~user/...`` -> that user's home."""
    if not path.startswith("~"):
        return path
    head, sep, rest = path[1:].partition("/")
    if not head:
        return home + sep + rest
    try:
        return pwd.getpwnam(head).pw_dir + sep + rest
    except KeyError:
        raise ConfigError(
            f"known_hosts path {path!r}: no user {head!r} on this machine",
            "fix the path in the ssh config",
        ) from None


def _expand(text: str, tokens: Mapping[str, str], *, option: str) -> str:
    """OpenSSH's ``%`` token and ``${VAR}`` expansion of ``text`` (one pass)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "$" and text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise _bad_expansion(option, text, "${ without }")
            name = text[i + 2 : end]
            value = os.environ.get(name)
            if value is None:
                raise _bad_expansion(option, text, f"the environment variable {name} is not set")
            out.append(value)
            i = end + 1
        elif c == "%":
            if i + 1 >= len(text):
                raise _bad_expansion(option, text, "it ends with a lone %")
            key = text[i + 1]
            if key not in tokens:
                raise _bad_expansion(option, text, f"unknown token %{key}")
            out.append(tokens[key])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _bad_expansion(option: str, text: str, why: str) -> ConfigError:
    return ConfigError(
        f"{option} {text!r} in the ssh config cannot be expanded: {why}",
        "fix it in the ssh config (ssh refuses it too; `ssh -G HOST` shows what it makes "
        "of the config)",
    )


def _load(path: Path) -> asyncssh.SSHKnownHosts | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProviderError(
            f"cannot read known_hosts file {path}: {exc.strerror}",
            hint="fix the file's permissions",
        ) from exc
    try:
        return asyncssh.import_known_hosts(text)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise ProviderError(
            f"known_hosts file {path} is malformed: {exc}",
            hint="fix or remove the bad line (each line: HOSTS KEYTYPE BASE64KEY)",
        ) from exc


@dataclass
class KnownHostsCheck:
    """The trusted keys of a host, as asyncssh asks for them during the handshake."""

    files: Sequence[Path]
    asked: tuple[str, str, int | None] | None = None
    matched: dict[Path, list[asyncssh.SSHKey]] = field(default_factory=dict)

    def __call__(self, host: str, addr: str, port: int | None) -> Any:
        self.asked = (host, addr, port)
        self.matched = {}
        keys: list[asyncssh.SSHKey] = []
        cas: list[asyncssh.SSHKey] = []
        revoked: list[asyncssh.SSHKey] = []
        for path in self.files:
            known = _load(path)
            if known is None:
                continue
            found = known.match(host, addr, port)
            if found[0]:
                self.matched[path] = list(found[0])
            keys += found[0]
            cas += found[1]
            revoked += found[2]
        return keys, cas, revoked

    @property
    def recorded(self) -> list[asyncssh.SSHKey]:
        return [k for keys in self.matched.values() for k in keys]


def refusal(
    name: str,
    address: str,
    offered: HostKey | None,
    check: KnownHostsCheck,
    fetch_error: str | None = None,
) -> HostKeyError:
    """The error for a host key the handshake refused: unknown or changed."""
    files = ", ".join(str(p) for p in check.files)
    host, _addr, port = check.asked or ("?", "", None)
    pattern = known_hosts_pattern(host, port)
    shown = (
        f"{offered.key_type} key {offered.fingerprint}"
        if offered is not None
        else f"a key that could not be read ({fetch_error})"
    )
    if not check.matched:
        return HostKeyError(
            f"host {name} ({address}) offered an unknown {shown}: bosun connects only to "
            "hosts whose key it can verify (strict host keys)",
            hint=(
                f"check that fingerprint with the host's administrator (on the host: "
                f"`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), then run "
                f"`bosun hosts trust {name}` (or add the key for {pattern} to one of: "
                f"{files}); strict_host_keys = false in [hosts.{name}] turns the check off"
            ),
            key_type=offered.key_type if offered else None,
            fingerprint=offered.fingerprint if offered else None,
        )
    where = ", ".join(str(p) for p in check.matched)
    return HostKeyError(
        f"WARNING: the host key of {name} ({address}) has CHANGED: it now offers {shown}, "
        f"which is not the key recorded for {pattern} in {where}. Someone may be "
        "intercepting the connection (man-in-the-middle), or the host was reinstalled; "
        "bosun refuses to connect",
        hint=(
            "verify the new fingerprint with the host's administrator; only if the change "
            f"is expected, remove the old key (`ssh-keygen -R '{pattern}' -f FILE` for "
            f"each of: {where}) and run `bosun hosts trust {name}`"
        ),
        key_type=offered.key_type if offered else None,
        fingerprint=offered.fingerprint if offered else None,
        changed=True,
    )


def remove_entries(path: Path, pattern: str) -> int:
    """Drop the lines of ``path`` for exactly ``pattern`` (plain, not hashed); count them."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    kept = [
        ln
        for ln in lines
        if not ln.strip() or ln.lstrip().startswith("#") or pattern not in ln.split()[0].split(",")
    ]
    removed = len(lines) - len(kept)
    if removed:
        path.write_text("".join(kept), encoding="utf-8")
    return removed


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` (created with mode 0600, parents too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() > 0:
            with path.open("rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write("\n")
        f.write(line + "\n")
