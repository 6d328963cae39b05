"""Strict host keys against real sshd hosts: unknown, trusted, changed, opted out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

from bosun.config import HostConfig
from bosun.errors import HostKeyError, HostUnreachable
from bosun.providers.ssh import SshProvider, fetch_host_key, trust_host_key
from tests.sshd import SshdFleet, SshHost

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_client_home")]


def config(fleet: SshdFleet, host: SshHost, **overrides: Any) -> HostConfig:
    return HostConfig(**fleet.host_table(host, **overrides))


async def works(cfg: HostConfig, state: Path) -> None:
    provider = SshProvider("h1", cfg, str(state))
    try:
        await provider.ensure_ready()
        assert (await provider.exec(["echo", "in"])).stdout == "in\n"
    finally:
        await provider.aclose()


def new_key(host: SshHost) -> None:
    """The host is reinstalled: a new host key, same address and port."""
    host.kill_listener()
    host.host_key = asyncssh.generate_private_key("ssh-ed25519")
    host.restart()


async def test_unknown_key_is_refused_with_its_fingerprint_and_the_fix(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    state = tmp_path / "state"
    provider = SshProvider(h.name, config(sshd, h), str(state))
    with pytest.raises(HostKeyError) as info:
        await provider.ensure_ready()
    err = info.value
    fingerprint = h.host_key.get_fingerprint("sha256")
    assert err.fingerprint == fingerprint
    assert err.key_type == "ssh-ed25519"
    assert not err.changed
    assert fingerprint in err.message and "ssh-ed25519" in err.message
    assert "unknown" in err.message
    assert err.hint is not None and f"bosun hosts trust {h.name}" in err.hint
    assert "strict_host_keys = false" in err.hint
    assert h.sessions() == 0  # refused before any login
    # every use fails the same way (no login, no fallback)
    with pytest.raises(HostKeyError):
        await provider.exec(["true"])
    await provider.aclose()


async def test_trust_records_the_key_once_and_then_the_host_works(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    state = tmp_path / "state"
    cfg = config(sshd, h)
    fetched = await fetch_host_key(cfg)
    key_type, fingerprint, line = fetched
    assert (key_type, fingerprint) == ("ssh-ed25519", h.host_key.get_fingerprint("sha256"))
    assert line == h.known_hosts_line
    assert not (state / "known_hosts").exists()  # fetching trusts nothing

    trusted = await trust_host_key(cfg, str(state))
    assert trusted == fetched
    own = state / "known_hosts"
    assert own.read_text() == line + "\n"
    assert own.stat().st_mode & 0o077 == 0
    assert await trust_host_key(cfg, str(state)) == fetched  # already trusted: no-op
    assert own.read_text() == line + "\n"
    await works(cfg, state)


async def test_keys_in_user_known_hosts_and_host_setting_are_trusted(
    sshd: SshdFleet,
    tmp_path: Path,
    ssh_client_home: Path,
) -> None:
    h1, h2 = sshd.start(2)
    (ssh_client_home / ".ssh" / "known_hosts").write_text(h1.known_hosts_line + "\n")
    sshd.trust(h2)  # sshd.known_hosts is the host's known_hosts setting
    await works(config(sshd, h1, known_hosts=None), tmp_path / "state")
    await works(config(sshd, h2), tmp_path / "state")


async def test_changed_key_is_refused_loudly(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    state = tmp_path / "state"
    cfg = config(sshd, h)
    await works(cfg, state)
    new_key(h)
    provider = SshProvider(h.name, cfg, str(state))
    with pytest.raises(HostKeyError) as info:
        await provider.ensure_ready()
    err = info.value
    new = h.host_key.get_fingerprint("sha256")
    assert err.changed
    assert err.fingerprint == new
    assert "CHANGED" in err.message and "man-in-the-middle" in err.message
    assert new in err.message and str(sshd.known_hosts) in err.message
    assert err.hint is not None and "ssh-keygen -R" in err.hint
    assert f"[{h.addr}]:{h.port}" in err.hint
    await provider.aclose()
    # `bosun hosts trust` does not paper over it either (the old key is not bosun's own)
    with pytest.raises(HostKeyError) as again:
        await trust_host_key(cfg, str(state), replace=True, name=h.name)
    assert again.value.changed
    assert f"host key of {h.name} " in again.value.message
    assert again.value.hint is not None and str(sshd.known_hosts) in again.value.hint


async def test_replace_swaps_a_changed_key_in_bosuns_own_file(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    state = tmp_path / "state"
    cfg = config(sshd, h)
    old = await trust_host_key(cfg, str(state))
    new_key(h)
    with pytest.raises(HostKeyError, match="CHANGED"):
        await trust_host_key(cfg, str(state))
    assert (state / "known_hosts").read_text() == old.line + "\n"
    new = await trust_host_key(cfg, str(state), replace=True)
    assert new.fingerprint == h.host_key.get_fingerprint("sha256") != old.fingerprint
    assert (state / "known_hosts").read_text() == new.line + "\n"
    await works(cfg, state)


async def test_strict_host_keys_false_is_the_explicit_opt_out(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    await works(config(sshd, h, strict_host_keys=False), tmp_path / "state")


async def test_fetching_the_key_of_a_dead_host_says_unreachable(
    sshd: SshdFleet,
) -> None:
    (h,) = sshd.start(1)
    h.kill_listener()
    with pytest.raises(HostUnreachable, match="cannot fetch the host key"):
        await fetch_host_key(config(sshd, h))
