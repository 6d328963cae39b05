"""The system-wide ssh config: bosun reads ``~/.ssh/config`` then ``/etc/ssh/ssh_config``
as ``ssh`` does (the first value obtained wins), and only the ``ssh_config`` file when it
is set (as ``ssh -F FILE``), for the connection and for the host-key check alike.

The system path is the module constant ``ssh_keys.SYSTEM_SSH_CONFIG``, pointed at a file
of the test (the real ``/etc/ssh`` is never written); ``HOME`` is the test's
(``ssh_client_home``). Connections go to real sshd hosts (``tests/sshd.py``).

The real OpenSSH client is the reference. It does not take ``$HOME`` (it reads
``~/.ssh/config`` in the passwd entry's home) and always reads the real
``/etc/ssh/ssh_config``, so it runs in a private mount namespace (``unshare -m``, gone with
the process) in which the test's client home is bind-mounted over the passwd home and the
test's system file over ``/etc/ssh/ssh_config`` (:func:`real_ssh`). Then ``ssh`` picks its
files itself: its own order, its "first value wins" across the two files, its skipping
of a missing user file. (``ssh -F FILE`` with a FILE that ``Include``\\ s both files would
compare bosun with the test's imitation of that order instead of with ssh's, and ``~`` in
it would not be the passwd home.) In ssh's output the passwd home is mapped back to the
test's home, which is the same directory there.
"""

from __future__ import annotations

import codecs
import locale
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bosun.config import HostConfig
from bosun.errors import ConfigError
from bosun.providers import ssh_keys
from bosun.providers.ssh import SshProvider, trust_host_key
from bosun.providers.ssh_keys import ssh_config_files, ssh_known_hosts
from tests.agent_clis import in_ci
from tests.sshd import SshdFleet, SshHost
from tests.test_known_hosts_config import alias_block, bosun_decides, strict_login

pytestmark = [pytest.mark.ssh]

#: Debian 12's stock /etc/ssh/ssh_config without its comments (Ubuntu's is the same), with
#: its ``Include`` pointed at the test's directory.
DEBIAN_SSH_CONFIG = """\
Include {d}/ssh_config.d/*.conf

Host *
    SendEnv LANG LC_*
    HashKnownHosts yes
    GSSAPIAuthentication yes
"""

#: A remote command: the login user, then what the host got in LC_BOSUN_TEST.
WHO_AND_ENV = 'printf "%s|%s" "$(id -un)" "$LC_BOSUN_TEST"'


@pytest.fixture(name="system_config")
def system_config_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The path bosun takes for /etc/ssh/ssh_config in this test (not created)."""
    path = tmp_path / "etc-ssh" / "ssh_config"
    path.parent.mkdir()
    monkeypatch.setattr(ssh_keys, "SYSTEM_SSH_CONFIG", path)
    return path


def _unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(why)
    pytest.skip(why)


def real_ssh(
    home: Path, system: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The real ``ssh ARGS`` with ``home`` as its home and ``system`` as its
    /etc/ssh/ssh_config (see the module docstring)."""
    ssh, unshare = shutil.which("ssh"), shutil.which("unshare")
    if ssh is None or unshare is None or shutil.which("mount") is None:
        _unavailable("comparing with ssh needs ssh, unshare and mount (util-linux)")
    real_system = Path("/etc/ssh/ssh_config")
    if not real_system.is_file():
        _unavailable(f"{real_system} is missing: nothing to mount the test's file over")
    passwd_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if home.is_relative_to(passwd_home) or system.is_relative_to(passwd_home):
        _unavailable(f"the test's files are under {passwd_home}, which the test mounts over")
    script = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
    mounts = [str(home), str(passwd_home), str(system), str(real_system)]
    done = subprocess.run(
        [str(unshare), "-m", "sh", "-c", script, "sh", *mounts, str(ssh), *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def real_ssh_g(home: Path, system: Path, *args: str) -> dict[str, str]:
    """``ssh -G ARGS`` (ssh's reading of its config: no connection), the passwd home in
    its paths mapped back to ``home``."""
    passwd_home = pwd.getpwuid(os.getuid()).pw_dir
    out = real_ssh(home, system, "-G", *args).stdout
    seen: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        words = [
            str(home) + w[len(passwd_home) :] if w.startswith(passwd_home + "/") else w
            for w in value.split(" ")
        ]
        seen[key] = " ".join(words)
    return seen


def files_of(seen: dict[str, str]) -> list[str]:
    """The known_hosts files of an ``ssh -G`` reading, in the order ssh reads them."""
    return [
        f
        for key in ("userknownhostsfile", "globalknownhostsfile")
        for f in seen[key].split()
        if f != "none"
    ]


def real_ssh_login(
    sshd: SshdFleet, home: Path, system: Path, address: str, command: str
) -> subprocess.CompletedProcess[str]:
    """A real ``ssh`` login, strict about host keys and writing none."""
    return real_ssh(home, system, *strict_login(sshd), address, command, check=False)


def host(sshd: SshdFleet, h: SshHost, **overrides: Any) -> HostConfig:
    """The host as bosun sees it: by default no ssh_config setting (so ~/.ssh/config and
    the system file count) and no known_hosts setting."""
    table: dict[str, Any] = sshd.host_table(h, ssh_config=None, known_hosts=None)
    table.update(overrides)
    return HostConfig(**table)


async def bosun_runs(cfg: HostConfig, state: Path, command: str) -> str:
    """The output of ``sh -c COMMAND`` run by bosun on the host of ``cfg``."""
    provider = SshProvider("fleet", cfg, str(state))
    try:
        await provider.ensure_ready()
        result = await provider.exec(["sh", "-c", command])
        assert result.exit_code == 0, result.stderr
        return result.stdout
    finally:
        await provider.aclose()


async def test_debians_stock_system_config_and_an_alias_defined_there(
    sshd: SshdFleet,
    tmp_path: Path,
    ssh_client_home: Path,
    system_config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alias whose HostName and Port are in the system file and User in a file it
    includes (no ~/.ssh/config at all): bosun connects as ssh does, and Debian's
    ``SendEnv LANG LC_*`` sends the variables to a host whose sshd accepts them (Debian's
    sshd_config does: ``AcceptEnv LANG LC_*``), with bosun as with ssh."""
    (h,) = sshd.start(1, extra_config=("AcceptEnv LANG LC_*",))
    sshd.trust(h, path=ssh_client_home / ".ssh" / "known_hosts")
    included = system_config.parent / "ssh_config.d"
    included.mkdir()
    (included / "50-fleet.conf").write_text(f"Host fleet\n    User {h.user}\n")
    system_config.write_text(
        DEBIAN_SSH_CONFIG.format(d=system_config.parent)
        + f"\nHost fleet\n    HostName {h.addr}\n    Port {h.port}\n"
    )
    monkeypatch.setenv("LC_BOSUN_TEST", "sent-by-the-client")
    cfg = host(sshd, h, address="fleet")
    assert ssh_config_files(cfg) == [system_config]

    got = await bosun_runs(cfg, tmp_path / "state", WHO_AND_ENV)
    assert got == f"{h.user}|sent-by-the-client"
    assert h.sessions() == 1
    seen = real_ssh_g(ssh_client_home, system_config, "fleet")
    assert (seen["hostname"], seen["port"], seen["user"]) == (h.addr, str(h.port), h.user)
    login = real_ssh_login(sshd, ssh_client_home, system_config, "fleet", WHO_AND_ENV)
    assert (login.returncode, login.stdout) == (0, got), login.stderr


async def test_the_user_file_wins_over_the_system_file(
    sshd: SshdFleet, tmp_path: Path, ssh_client_home: Path, system_config: Path
) -> None:
    """HostName and Port in both files: the user's; User only in the system file: used."""
    h1, h2 = sshd.start(2)
    sshd.trust(h1, h2)
    (ssh_client_home / ".ssh" / "config").write_text(
        f"Host fleet\n  HostName {h2.addr}\n  Port {h2.port}\n"
    )
    system_config.write_text(
        f"Host fleet\n  HostName {h1.addr}\n  Port {h1.port}\n  User {h2.user}\n"
    )
    cfg = host(sshd, h2, address="fleet", known_hosts=str(sshd.known_hosts))
    assert ssh_config_files(cfg) == [ssh_client_home / ".ssh" / "config", system_config]

    assert await bosun_runs(cfg, tmp_path / "state", "id -un") == h2.user + "\n"
    assert (h1.sessions(), h2.sessions()) == (0, 1)
    seen = real_ssh_g(ssh_client_home, system_config, "fleet")
    assert (seen["hostname"], seen["port"], seen["user"]) == (h2.addr, str(h2.port), h2.user)


async def test_with_ssh_config_set_the_system_file_is_ignored(
    sshd: SshdFleet,
    tmp_path: Path,
    ssh_client_home: Path,
    system_config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Everything in the system file (and in ~/.ssh/config) would show: a ProxyJump to a
    closed port, SendEnv, known_hosts files. None of it counts, as with ``ssh -F``."""
    (h,) = sshd.start(1, extra_config=("AcceptEnv LC_*",))
    sshd.trust(h)
    (ssh_client_home / ".ssh" / "config").write_text("Host fleet\n  Port 9\n")
    theirs = tmp_path / "system_known_hosts"
    system_config.write_text(
        "Host *\n  ProxyJump 127.0.0.1:9\n  SendEnv LC_*\n"
        f"  UserKnownHostsFile {theirs}\n  GlobalKnownHostsFile {theirs}\n"
    )
    mine = tmp_path / "my_ssh_config"
    mine.write_text(alias_block(h, "fleet"))
    monkeypatch.setenv("LC_BOSUN_TEST", "sent-by-the-client")
    cfg = host(sshd, h, address="fleet", ssh_config=str(mine), known_hosts=str(sshd.known_hosts))
    assert ssh_config_files(cfg) == [mine]

    assert await bosun_runs(cfg, tmp_path / "state", WHO_AND_ENV) == f"{h.user}|"
    read = [str(p) for p in ssh_known_hosts(cfg)]
    assert str(theirs) not in read
    assert read == files_of(real_ssh_g(ssh_client_home, system_config, "-F", str(mine), "fleet"))


async def test_known_hosts_files_named_only_in_the_system_file(
    sshd: SshdFleet, tmp_path: Path, ssh_client_home: Path, system_config: Path
) -> None:
    """The host-key check reads the files the system file names, as ssh does; a value in
    ~/.ssh/config comes first and wins."""
    (h,) = sshd.start(1)
    sys_user, sys_global = tmp_path / "sys_user_hosts", tmp_path / "sys_global_hosts"
    sys_user.write_text("")
    sys_global.write_text(h.known_hosts_line + "\n")
    system_config.write_text(
        f"Host fleet\n  UserKnownHostsFile {sys_user}\n  GlobalKnownHostsFile {sys_global}\n"
    )
    user_config = ssh_client_home / ".ssh" / "config"
    user_config.write_text(alias_block(h, "fleet"))
    cfg = host(sshd, h, address="fleet")

    assert [str(p) for p in ssh_known_hosts(cfg)] == [str(sys_user), str(sys_global)]
    assert files_of(real_ssh_g(ssh_client_home, system_config, "fleet")) == [
        str(sys_user),
        str(sys_global),
    ]
    assert await bosun_decides(cfg, tmp_path / "state") == "trusted"
    login = real_ssh_login(sshd, ssh_client_home, system_config, "fleet", "true")
    assert login.returncode == 0, login.stderr

    # the user's own (empty) file and `none` come first: the system file's no longer count
    empty = tmp_path / "user_hosts"
    empty.write_text("")
    user_config.write_text(
        alias_block(h, "fleet", f"UserKnownHostsFile {empty}", "GlobalKnownHostsFile none")
    )
    read = [str(p) for p in ssh_known_hosts(cfg)]
    assert read == [str(empty)]
    assert read == files_of(real_ssh_g(ssh_client_home, system_config, "fleet"))
    assert await bosun_decides(cfg, tmp_path / "state") == "unknown"
    login = real_ssh_login(sshd, ssh_client_home, system_config, "fleet", "true")
    assert login.returncode != 0 and "Host key verification failed" in login.stderr


async def test_a_system_file_asyncssh_cannot_parse_is_a_config_error_naming_it(
    sshd: SshdFleet, tmp_path: Path, ssh_client_home: Path, system_config: Path
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    system_config.write_text("Host *\n  Port not-a-number\n")
    (ssh_client_home / ".ssh" / "config").write_text(alias_block(h, "fleet"))
    assert real_ssh(ssh_client_home, system_config, "-G", "fleet", check=False).returncode != 0
    strict = host(sshd, h, address="fleet", known_hosts=str(sshd.known_hosts))
    lax = host(sshd, h, address="fleet", strict_host_keys=False)
    # checked host keys (the check reads the config first), unchecked ones (asyncssh
    # reads it in the connection), `bosun hosts trust`
    for cfg in (strict, lax):
        provider = SshProvider("fleet", cfg, str(tmp_path / "state"))
        with pytest.raises(ConfigError) as info:
            await provider.ensure_ready()
        await provider.aclose()
        message = info.value.message
        assert message.startswith("[hosts.fleet]: cannot read the ssh config")
        assert f"{system_config} line 2: Invalid Port integer value: not-a-number" in message
        assert "set ssh_config in [hosts.fleet]" in (info.value.hint or "")
    with pytest.raises(ConfigError, match=f"{system_config} line 2"):
        await trust_host_key(strict, str(tmp_path / "state"))
    assert h.sessions() == 0
    # with ssh_config set the system file is not read, so it does not matter
    mine = tmp_path / "my_ssh_config"
    mine.write_text(alias_block(h, "fleet"))
    own = host(sshd, h, address="fleet", ssh_config=str(mine), known_hosts=str(sshd.known_hosts))
    assert await bosun_runs(own, tmp_path / "state", "id -un") == h.user + "\n"


async def test_a_system_file_in_another_encoding_is_a_config_error_naming_it(
    sshd: SshdFleet, tmp_path: Path, ssh_client_home: Path, system_config: Path
) -> None:
    """ssh reads bytes; asyncssh reads text in the locale's encoding (UTF-8 here)."""
    if codecs.lookup(locale.getpreferredencoding(False)).name != "utf-8":
        pytest.skip("the locale's encoding is not UTF-8: a Latin-1 byte may decode")
    (h,) = sshd.start(1)
    system_config.write_bytes(b"# R\xe9seau du labo\nHost *\n  SendEnv LC_*\n")
    (ssh_client_home / ".ssh" / "config").write_text(alias_block(h, "fleet"))
    assert real_ssh(ssh_client_home, system_config, "-G", "fleet").returncode == 0
    for strict in (True, False):
        cfg = host(sshd, h, address="fleet", strict_host_keys=strict)
        provider = SshProvider("fleet", cfg, str(tmp_path / "state"))
        with pytest.raises(ConfigError) as info:
            await provider.ensure_ready()
        await provider.aclose()
        assert f"{system_config} is not utf-8 text" in info.value.message
    assert h.sessions() == 0


async def test_ciphers_named_in_a_file_the_system_file_includes_are_followed(
    sshd: SshdFleet, tmp_path: Path, ssh_client_home: Path, system_config: Path
) -> None:
    """Fedora/RHEL style: /etc/ssh/ssh_config includes ssh_config.d/*.conf, which includes
    crypto-policies' file naming ``Ciphers``: bosun then offers those (not its AES-GCM
    first), as ssh does."""
    (h,) = sshd.start(1)
    sshd.trust(h)
    d = system_config.parent
    (d / "ssh_config.d").mkdir()
    (d / "crypto-policies").mkdir()
    (d / "crypto-policies" / "openssh.config").write_text(
        "Ciphers aes256-ctr,aes128-gcm@openssh.com\n"
    )
    (d / "ssh_config.d" / "50-redhat.conf").write_text(
        f"Include {d}/crypto-policies/openssh.config\n"
    )
    system_config.write_text(f"Include {d}/ssh_config.d/*.conf\n")
    (ssh_client_home / ".ssh" / "config").write_text(alias_block(h, "fleet"))
    seen = real_ssh_g(ssh_client_home, system_config, "fleet")
    assert seen["ciphers"] == "aes256-ctr,aes128-gcm@openssh.com"
    cfg = host(sshd, h, address="fleet", known_hosts=str(sshd.known_hosts))
    provider = SshProvider("fleet", cfg, str(tmp_path / "state"))
    try:
        conn = await provider.link.connection()
        assert conn.get_extra_info("send_cipher") == "aes256-ctr"
    finally:
        await provider.aclose()
