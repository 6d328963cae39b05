"""SSH host keys: strict checking, clear refusals, and ``bosun hosts trust``.

bosun trusts a host key found in any of these known_hosts files (OpenSSH format):

1. ``~/.ssh/known_hosts`` (what ``ssh`` itself trusts),
2. ``<state_dir>/known_hosts`` (bosun's own: ``bosun hosts trust HOST`` appends there),
3. the host's ``known_hosts`` setting in ``bosun.toml``.

During the handshake asyncssh asks :class:`KnownHostsCheck` which keys are trusted for the
host; the check remembers the answer, so that a refused key can be told apart: *unknown*
(no key recorded for the host) or *changed* (keys recorded, none of them the one offered:
possibly a man-in-the-middle). Either way the error shows the offered key's type and
SHA256 fingerprint and says how to trust it. ``strict_host_keys = false`` turns the check
off for one host.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import asyncssh

from bosun.config import HostConfig
from bosun.errors import HostKeyError, ProviderError

__all__ = [
    "HostKey",
    "KnownHostsCheck",
    "host_key_of",
    "known_hosts_files",
    "known_hosts_pattern",
]

DEFAULT_PORT = 22


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


def user_known_hosts() -> Path:
    return Path.home() / ".ssh" / "known_hosts"


def known_hosts_files(cfg: HostConfig, state_dir: str | os.PathLike[str]) -> list[Path]:
    """Every known_hosts file bosun reads for ``cfg`` (existing or not), in order."""
    files = [user_known_hosts(), Path(state_dir) / "known_hosts"]
    if cfg.known_hosts:
        files.append(Path(cfg.known_hosts).expanduser())
    return files


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
