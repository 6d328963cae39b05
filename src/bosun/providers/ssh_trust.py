"""``bosun hosts trust`` and ``check``: fetch a host's key, record it in bosun's own
known_hosts (see :mod:`bosun.providers.ssh_keys` for how keys are checked)."""

from __future__ import annotations

import asyncio
import contextlib

from bosun.config import HostConfig
from bosun.errors import HostUnreachable
from bosun.providers import ssh_keys
from bosun.providers.ssh_conn import SshLink, fetch_key, resolve
from bosun.providers.ssh_keys import HostKey

__all__ = ["HostKey", "fetch_host_key", "trust_host_key"]


async def fetch_host_key(host_config: HostConfig, *, name: str = "host") -> HostKey:
    """The key the host of ``host_config`` offers (not verified): type, SHA256
    fingerprint and the known_hosts line that would trust it. Raises HostUnreachable."""
    link = SshLink(name, host_config, ".")
    return await fetch_key(link.target, link._options())


async def trust_host_key(
    host_config: HostConfig, state_dir: str, *, replace: bool = False, name: str | None = None
) -> HostKey:
    """Fetch the host's key and append it to ``<state_dir>/known_hosts`` (bosun's own).

    Already trusted: nothing is written. A *different* key already recorded for the host
    is refused (HostKeyError, ``changed``) unless ``replace``: then the old lines for the
    host are removed from bosun's own file first (other files are never edited).
    ``name`` (the host's name in bosun) is used in error messages.
    """
    link = SshLink("host", host_config, state_dir)
    opts = link._options()
    host, port = await resolve(link.target, opts)
    pattern = ssh_keys.known_hosts_pattern(host, port)
    files = ssh_keys.known_hosts_files(host_config, state_dir)
    own = ssh_keys.own_known_hosts(state_dir)
    check = ssh_keys.KnownHostsCheck(files)
    addr = await _address_of(host)
    check(host, addr, None if port == ssh_keys.DEFAULT_PORT else port)
    algs = [a.decode() for k in check.recorded for a in k.sig_algorithms]
    key = None
    if algs:
        with contextlib.suppress(HostUnreachable):
            key = await fetch_key(link.target, opts, algs=algs)
    if key is None:
        key = await fetch_key(link.target, opts)
    blob = key.line.split()[1:]
    if any(ssh_keys.host_key_of(k, host, port).line.split()[1:] == blob for k in check.recorded):
        return key  # already trusted
    if check.matched:
        elsewhere = [p for p in check.matched if p != own]
        if not replace or elsewhere:
            shown = name or str(host_config.address)
            error = ssh_keys.refusal(shown, str(host_config.address), key, check)
            if replace and elsewhere:
                error.hint = (
                    f"the old key is in {', '.join(map(str, elsewhere))}, which bosun does "
                    f"not edit: remove it there (`ssh-keygen -R '{pattern}' -f FILE`) first"
                )
            raise error
        ssh_keys.remove_entries(own, pattern)
    ssh_keys.append_line(own, key.line)
    return key


async def _address_of(host: str) -> str:
    """The IP address ``host`` resolves to ('' when it does not), for known_hosts lines
    that name the address instead of the host name."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=1)
    except OSError:
        return ""
    return str(infos[0][4][0]) if infos else ""
