"""The ssh config's ``UserKnownHostsFile`` and ``GlobalKnownHostsFile``: bosun trusts what
``ssh`` trusts.

Each case writes an ssh config and known_hosts files, then asks the real OpenSSH client
(``ssh -F CONFIG ... true`` with ``StrictHostKeyChecking=yes``) and bosun (a real
connection through ``SshProvider``) to connect to a real sshd host (``tests/sshd.py``):
both must take the same decision, and it must be the expected one. ``ssh -G`` (OpenSSH's
own reading of a config) checks the file names bosun derives, tokens included. What the
real client cannot be pointed at without touching root's home (``~``, ``%d``, the
default ``~/.ssh/known_hosts2``) is checked against bosun alone, with ``HOME`` set to a
directory of the test (``ssh_client_home``).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from bosun.config import HostConfig
from bosun.errors import ConfigError, HostKeyError
from bosun.providers.ssh import SshProvider, trust_host_key
from bosun.providers.ssh_keys import known_hosts_files, ssh_known_hosts
from tests.sshd import SshdFleet, SshHost

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_client_home")]

SSH = shutil.which("ssh")


def needs_ssh() -> str:
    if SSH is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    return SSH


def alias_block(host: SshHost, alias: str, *lines: str) -> str:
    """A ``Host alias`` block for ``host`` with ``lines`` added."""
    body = [f"HostName {host.addr}", f"Port {host.port}", f"User {host.user}", *lines]
    return f"Host {alias}\n" + "".join(f"  {line}\n" for line in body)


def host_config(sshd: SshdFleet, host: SshHost, ssh_config: Path, address: str) -> HostConfig:
    """The host as bosun sees it: this ssh config, and no known_hosts setting (so that
    only the ssh config's files and bosun's own, empty, file count)."""
    table: dict[str, Any] = sshd.host_table(host, ssh_config=str(ssh_config), known_hosts=None)
    table["address"] = address
    return HostConfig(**table)


async def bosun_decides(cfg: HostConfig, state: Path) -> str:
    """``trusted``, ``unknown`` or ``changed``: what bosun makes of the host's key."""
    provider = SshProvider("h", cfg, str(state))
    try:
        await provider.ensure_ready()
        return "trusted"
    except HostKeyError as exc:
        return "changed" if exc.changed else "unknown"
    finally:
        await provider.aclose()


def strict_login(sshd: SshdFleet) -> list[str]:
    """``ssh`` options for a login with the harness's key: strict about host keys,
    writing none, never asking."""
    return [
        "-i",
        str(sshd.client_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "ConnectTimeout=5",
    ]


def ssh_decides(sshd: SshdFleet, ssh_config: Path, address: str) -> str:
    """``trusted`` or ``refused``: what ``ssh`` makes of it (strict, no key updates)."""
    done = subprocess.run(
        [needs_ssh(), "-F", str(ssh_config), *strict_login(sshd), address, "true"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode == 0:
        return "trusted"
    assert "Host key verification failed" in done.stderr, done.stderr
    return "refused"


def ssh_g(ssh_config: Path, address: str, *options: str) -> dict[str, str]:
    """``ssh -G``: OpenSSH's reading of the config for ``address`` (no connection)."""
    done = subprocess.run(
        [needs_ssh(), "-G", "-F", str(ssh_config), *options, address],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return {k: v for k, _, v in (line.partition(" ") for line in done.stdout.splitlines())}


def ssh_refuses(ssh_config: Path, address: str) -> bool:
    """Whether ``ssh -G`` refuses the config for ``address``."""
    done = subprocess.run(
        [needs_ssh(), "-G", "-F", str(ssh_config), address],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return done.returncode != 0


def wrong_line(host: SshHost) -> str:
    """A known_hosts line for ``host`` with a key that is not its key."""
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    return f"[{host.addr}]:{host.port} {' '.join(other.split()[:2])}"


# Each case: (ssh config lines for alias "fleet", {file: known_hosts lines}, expected).
# Files are relative to the test's directory; "KEY" is the host's line, "WRONG" another key.
CASES: dict[str, tuple[list[str], dict[str, list[str]], str]] = {
    "another file": (["UserKnownHostsFile {d}/fleet_hosts"], {"fleet_hosts": ["KEY"]}, "trusted"),
    "none": (
        ["UserKnownHostsFile none", "GlobalKnownHostsFile none"],
        {"fleet_hosts": ["KEY"]},
        "unknown",
    ),
    "several, key in the second": (
        ["UserKnownHostsFile {d}/first {d}/second", "GlobalKnownHostsFile none"],
        {"first": [], "second": ["KEY"]},
        "trusted",
    ),
    "tokens %h %p %n %r": (
        ["UserKnownHostsFile {d}/by-host/%h_%p_%n_%r", "GlobalKnownHostsFile none"],
        {"by-host/{addr}_{port}_fleet_{user}": ["KEY"]},
        "trusted",
    ),
    "token %C and %%": (
        ["UserKnownHostsFile {d}/%C-100%%", "GlobalKnownHostsFile none"],
        {"{hash}-100%": ["KEY"]},
        "trusted",
    ),
    "an environment variable": (
        ["UserKnownHostsFile ${{BOSUN_TEST_KH}}/env_hosts", "GlobalKnownHostsFile none"],
        {"env_hosts": ["KEY"]},
        "trusted",
    ),
    "global file only": (
        ["UserKnownHostsFile none", "GlobalKnownHostsFile {d}/global"],
        {"global": ["KEY"]},
        "trusted",
    ),
    "changed key in the config's file": (
        ["UserKnownHostsFile {d}/fleet_hosts", "GlobalKnownHostsFile none"],
        {"fleet_hosts": ["WRONG"]},
        "changed",
    ),
    "StrictHostKeyChecking no in the config changes nothing": (
        ["UserKnownHostsFile {d}/empty", "GlobalKnownHostsFile none", "StrictHostKeyChecking no"],
        {"empty": []},
        "unknown",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bosun_trusts_what_ssh_trusts(
    sshd: SshdFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    lines, files, expected = CASES[case]
    (h,) = sshd.start(1)
    where = tmp_path / "kh"
    where.mkdir()
    monkeypatch.setenv("BOSUN_TEST_KH", str(where))
    this = socket.gethostname()
    conn = f"{this}{h.addr}{h.port}{h.user}"
    names = {
        "addr": h.addr,
        "port": h.port,
        "user": h.user,
        "hash": hashlib.sha1(conn.encode(), usedforsecurity=False).hexdigest(),
    }
    content = {"KEY": h.known_hosts_line, "WRONG": wrong_line(h)}
    for name, entries in files.items():
        path = where / name.format(**names)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(content[e] + "\n" for e in entries))
    config = tmp_path / "ssh_config"
    config.write_text(alias_block(h, "fleet", *(line.format(d=where) for line in lines)))

    ssh = ssh_decides(sshd, config, "fleet")
    bosun = await bosun_decides(host_config(sshd, h, config, "fleet"), tmp_path / "state")
    assert bosun == expected
    assert ssh == ("trusted" if expected == "trusted" else "refused")
    # and the files are the ones ssh reads (its own reading of the config: ssh -G)
    read = [str(p) for p in ssh_known_hosts(host_config(sshd, h, config, "fleet"))]
    shown = ssh_g(config, "fleet")["userknownhostsfile"]
    user_files = [] if shown == "none" else shown.split()
    assert read[: len(user_files)] == user_files


async def test_every_token_is_expanded_as_ssh_expands_it(
    sshd: SshdFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole token set against ``ssh -G`` (``~`` and ``%d``: ssh takes the passwd
    home, bosun ``$HOME``; here they are the same)."""
    (h,) = sshd.start(1)
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    monkeypatch.setenv("BOSUN_TEST_KH", str(tmp_path))
    tokens = "%C %d %h %i %k %L %l %n %p %r %u %%"
    files = [f"/kh/{t.strip('%') or 'pct'}-{t}" for t in tokens.split()]
    files += ["~/kh-tilde", "${BOSUN_TEST_KH}/kh-env", "relative/kh-%h"]
    config = tmp_path / "ssh_config"
    config.write_text(
        alias_block(h, "fleet", "UserKnownHostsFile " + " ".join(files))
        + alias_block(h, "keyed", "HostKeyAlias Gpu-Key", "UserKnownHostsFile /kh/%k /kh/%h")
        + "Host Named\n  HostName Gpu1.Example\n  UserKnownHostsFile /kh/%h /kh/%n /kh/%k\n"
    )
    cases = [
        ("fleet", [], "fleet"),
        ("keyed", [], "keyed"),
        ("Named", [], "Named"),
        ("fleet", ["-l", "other", "-p", str(h.port + 1)], f"other@fleet:{h.port + 1}"),
    ]
    for name, options, address in cases:
        want = ssh_g(config, name, *options)["userknownhostsfile"].split()
        got = ssh_known_hosts(host_config(sshd, h, config, address))
        assert [str(p) for p in got[: len(want)]] == want, address
        assert got[len(want) :] == [
            Path("/etc/ssh/ssh_known_hosts"),
            Path("/etc/ssh/ssh_known_hosts2"),
        ]


def test_the_defaults_are_sshs(
    sshd: SshdFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (h,) = sshd.start(1)
    monkeypatch.setenv("HOME", pwd.getpwuid(os.getuid()).pw_dir)
    config = tmp_path / "ssh_config"
    config.write_text(alias_block(h, "fleet"))
    seen = ssh_g(config, "fleet")
    want = seen["userknownhostsfile"].split() + seen["globalknownhostsfile"].split()
    assert [str(p) for p in ssh_known_hosts(host_config(sshd, h, config, "fleet"))] == want


async def test_home_files_and_the_default_known_hosts2(
    sshd: SshdFleet, tmp_path: Path, ssh_client_home: Path
) -> None:
    """``~``, ``%d`` and the default second file, under bosun's ``$HOME``."""
    h1, h2, h3 = sshd.start(3)
    (ssh_client_home / ".ssh" / "fleet").mkdir()
    (ssh_client_home / ".ssh" / "fleet" / "one").write_text(h1.known_hosts_line + "\n")
    (ssh_client_home / "two_hosts").write_text(h2.known_hosts_line + "\n")
    (ssh_client_home / ".ssh" / "known_hosts2").write_text(h3.known_hosts_line + "\n")
    config = tmp_path / "ssh_config"
    config.write_text(
        alias_block(h1, "one", "UserKnownHostsFile ~/.ssh/fleet/%n")
        + alias_block(h2, "two", "UserKnownHostsFile %d/two_hosts")
        + alias_block(h3, "three")
    )
    for host, alias in ((h1, "one"), (h2, "two"), (h3, "three")):
        cfg = host_config(sshd, host, config, alias)
        assert await bosun_decides(cfg, tmp_path / "state") == "trusted", alias
    # `none` means none: the key in the default file no longer counts
    config.write_text(alias_block(h3, "three", "UserKnownHostsFile none"))
    cfg = host_config(sshd, h3, config, "three")
    assert await bosun_decides(cfg, tmp_path / "state") == "unknown"


async def test_trust_writes_bosuns_own_file_whatever_the_config_names(
    sshd: SshdFleet, tmp_path: Path
) -> None:
    (h,) = sshd.start(1)
    theirs = tmp_path / "fleet_hosts"
    theirs.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(alias_block(h, "fleet", f"UserKnownHostsFile {theirs}"))
    cfg = host_config(sshd, h, config, "fleet")
    state = tmp_path / "state"
    assert await bosun_decides(cfg, state) == "unknown"
    trusted = await trust_host_key(cfg, str(state))
    assert (state / "known_hosts").read_text() == trusted.line + "\n"
    assert theirs.read_text() == ""  # the config's file is never written
    assert await bosun_decides(cfg, state) == "trusted"
    files = known_hosts_files(cfg, state)
    assert files[0] == theirs and files[-1] == state / "known_hosts"


async def test_what_ssh_refuses_to_expand_bosun_refuses_too(
    sshd: SshdFleet, tmp_path: Path
) -> None:
    (h,) = sshd.start(1)
    config = tmp_path / "ssh_config"
    for value, why in (
        ("/kh/%Z", "unknown token %Z"),
        ("/kh/${BOSUN_TEST_UNSET}", "BOSUN_TEST_UNSET is not set"),
    ):
        config.write_text(alias_block(h, "fleet", f"UserKnownHostsFile {value}"))
        assert ssh_refuses(config, "fleet")
        provider = SshProvider("h", host_config(sshd, h, config, "fleet"), str(tmp_path / "s"))
        with pytest.raises(ConfigError) as info:
            await provider.ensure_ready()
        await provider.aclose()
        assert "UserKnownHostsFile" in info.value.message and why in info.value.message
    assert h.sessions() == 0
