"""The SSH connection of a host against real sshd: dead links, reconnects, ssh config,
ProxyJump, remote port forwards, wake commands; address parsing."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bosun.config import HostConfig
from bosun.errors import ConfigError, HostUnreachable, ProviderError
from bosun.providers.ssh import SshProvider
from bosun.providers.ssh_conn import Address, Forward, parse_address, parse_forward
from bosun.service import make_providers
from tests.conftest import SettingsFactory
from tests.sshd import SshdFleet, SshHost

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ssh_client_home")]


def provider_for(fleet: SshdFleet, host: SshHost, state: Path, **overrides: Any) -> SshProvider:
    return SshProvider(host.name, HostConfig(**fleet.host_table(host, **overrides)), str(state))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_link_is_detected_by_keepalive(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    p = provider_for(
        sshd, h, tmp_path / "state", keepalive_interval=0.3, keepalive_count_max=2,
        connect_timeout=1.0,
    )  # fmt: skip
    try:
        await p.ensure_ready()
        work = h.home / "work"
        work.mkdir()
        os.chown(work, h.uid, h.lease.gid)
        run_dir = await p.run_dir("survivor")
        from bosun.providers.base import Command

        run = await p.launch(
            Command(("sh", "-c", "echo up; sleep 300"), str(work), {"PATH": "/usr/bin:/bin"}),
            run_dir,
        )
        h.block()
        # A command in flight when the packets stop: keepalive ends it as unreachable
        # (the 60 s only guards the test; TCP alone would take many minutes).
        with pytest.raises(HostUnreachable) as info:
            await asyncio.wait_for(p.exec(["sleep", "1"]), 60)
        assert "unreachable" in info.value.message
        assert info.value.hint is not None and "bosun hosts check h1" in info.value.hint
        # Followers get the same answer, never an exit code; no connection storm either.
        with pytest.raises(HostUnreachable):
            await asyncio.wait_for(run.exit_code(), 60)
        h.unblock()
        await asyncio.wait_for(p.ensure_ready(), 60)  # reconnects after its backoff
        assert p.link.connects >= 2
        assert await run.alive()  # the run went on meanwhile
        assert [c.lines for c in await run.read(0, 0)] == [("up",)]
        await run.cancel(grace=2)
    finally:
        await p.aclose()


async def test_a_refused_connection_is_unreachable_with_backoff(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    h.kill_listener()
    p = provider_for(sshd, h, tmp_path / "state", connect_timeout=1.0)
    try:
        with pytest.raises(HostUnreachable, match="unreachable"):
            await p.ensure_ready()
        # during the backoff the last error comes back at once, saying when to retry
        with pytest.raises(HostUnreachable, match="next attempt in"):
            await p.exec(["true"])
        h.restart()
        for _ in range(100):
            with contextlib.suppress(HostUnreachable):
                await p.exec(["true"])
                break
            await asyncio.sleep(0.2)
        assert (await p.exec(["echo", "up"])).stdout == "up\n"
    finally:
        await p.aclose()


async def test_ssh_config_alias_user_port_and_identity(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host devbox\n  HostName {h.addr}\n  Port {h.port}\n  User {h.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
    )
    cfg = HostConfig(
        kind="ssh", address="devbox", ssh_config=str(config), known_hosts=str(sshd.known_hosts)
    )
    p = SshProvider("dev", cfg, str(tmp_path / "state"))
    try:
        await p.ensure_ready()
        res = await p.exec(["sh", "-c", 'id -un; echo "$HOME"'])
        assert res.stdout == f"{h.user}\n{h.home}\n"
    finally:
        await p.aclose()


async def test_proxyjump_and_the_users_own_ssh_files(
    sshd: SshdFleet,
    tmp_path: Path,
    ssh_client_home: Path,
) -> None:
    jump, target = sshd.start(2)
    ssh_dir = ssh_client_home / ".ssh"
    (ssh_dir / "known_hosts").write_text(f"{jump.known_hosts_line}\n{target.known_hosts_line}\n")
    (ssh_dir / "config").write_text(
        f"Host jump\n  HostName {jump.addr}\n  Port {jump.port}\n  User {jump.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
        f"Host inner\n  HostName {target.addr}\n  Port {target.port}\n  User {target.user}\n"
        f"  IdentityFile {sshd.client_key}\n  ProxyJump jump\n"
    )
    p = SshProvider("inner", HostConfig(kind="ssh", address="inner"), str(tmp_path / "state"))
    try:
        await p.ensure_ready()
        assert (await p.exec(["id", "-un"])).stdout == f"{target.user}\n"
        assert jump.sessions() == 1 and target.sessions() == 1
    finally:
        await p.aclose()


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the orchestrator: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# A constant sh/bash script: GET http://127.0.0.1:$1$2 with bash's /dev/tcp.
_GET = (
    'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 9\n'
    'printf "GET %s HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n" "$2" >&3\n'
    "cat <&3\n"
)


async def test_remote_forward_reaches_the_orchestrator_and_comes_back(
    sshd: SshdFleet,
    tmp_path: Path,
    http_server: int,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    remote = free_port()
    p = provider_for(
        sshd, h, tmp_path / "state", remote_forwards=[f"{remote}:127.0.0.1:{http_server}"]
    )
    try:
        await p.ensure_ready()
        res = await p.exec(["bash", "-c", _GET, "get", str(remote), "/v1/models"])
        assert res.ok, res.stderr
        assert res.stdout.endswith("hello from the orchestrator: /v1/models")
        # the host's side of the connection dies: the forward comes back on reconnect
        h.kill_all()
        h.restart()
        with contextlib.suppress(HostUnreachable):
            await p.exec(["true"])
        await p.ensure_ready()
        assert p.link.connects == 2
        again = await p.exec(["bash", "-c", _GET, "get", str(remote), "/again"])
        assert again.stdout.endswith("hello from the orchestrator: /again")
    finally:
        await p.aclose()


async def test_a_forward_that_cannot_open_is_reported(
    sshd: SshdFleet,
    tmp_path: Path,
    http_server: int,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = provider_for(sshd, h, tmp_path / "state", remote_forwards=[f"{port}:127.0.0.1:1"])
        try:
            with pytest.raises(ProviderError, match="remote port forward not open") as info:
                await p.ensure_ready()
            assert info.value.hint is not None and "REMOTE_PORT" in info.value.hint
            assert (await p.exec(["echo", "usable"])).stdout == "usable\n"
        finally:
            await p.aclose()


async def test_wake_command_runs_first_then_bosun_waits_for_ssh(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    h.kill_listener()  # the "VM" is stopped
    marker = tmp_path / "woken"
    wake = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').close()", str(marker)]
    p = provider_for(sshd, h, tmp_path / "state", wake_command=wake, connect_timeout=1.0)

    async def boot() -> None:  # the "VM" boots a moment after it was woken
        while not marker.exists():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        h.restart()

    booting = asyncio.ensure_future(boot())
    try:
        await asyncio.wait_for(p.ensure_ready(), 60)
        assert marker.exists()
        assert (await p.exec(["echo", "awake"])).stdout == "awake\n"
    finally:
        booting.cancel()
        await p.aclose()


async def test_a_failing_wake_command_is_reported(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    h.kill_listener()
    p = provider_for(
        sshd, h, tmp_path / "state", wake_command=["sh", "-c", "echo no vm >&2; exit 3"],
        connect_timeout=1.0,
    )  # fmt: skip
    try:
        with pytest.raises(ProviderError, match="wake_command of host h1 failed") as info:
            await p.ensure_ready()
        assert "no vm" in info.value.message
    finally:
        await p.aclose()


async def test_make_providers_builds_ssh_providers(
    sshd: SshdFleet,
    make_settings: SettingsFactory,
) -> None:
    h1, h2 = sshd.start(2)
    sshd.trust(h1, h2)
    settings = make_settings(hosts={"local": {"kind": "local"}, **sshd.hosts_tables()})
    providers = make_providers(settings)
    try:
        assert set(providers) == {"local", "h1", "h2"}
        for host in (h1, h2):
            provider = providers[host.name]
            assert isinstance(provider, SshProvider)
            await provider.ensure_ready()
            assert (await provider.exec(["id", "-un"])).stdout == f"{host.user}\n"
    finally:
        for provider in providers.values():
            await provider.aclose()


async def test_the_packets_of_one_turn_share_a_write_and_keep_their_order(
    sshd: SshdFleet,
    tmp_path: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    p = provider_for(sshd, h, tmp_path / "state", max_channels=10)
    try:
        await p.ensure_ready()
        corked = p.link.corked
        assert corked is not None and p.link._conn is not None
        transport: object = p.link._conn._transport
        assert transport is corked  # every packet goes through it
        packets, writes = corked.packets, corked.writes
        # eight commands at once: their channel opens leave in the same turns
        results = await asyncio.gather(*(p.exec(["echo", str(i)]) for i in range(8)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
        sent, made = corked.packets - packets, corked.writes - writes
        assert sent >= 8 * 3  # (an open, a request and a close per command at least)
        assert made < sent / 2, (sent, made)
        # a burst bigger than the channel's window, in order (SFTP write and read back)
        data = os.urandom(3 << 20)
        path = f"{p.root}/blob"
        (tmp_path / "blob").write_bytes(data)
        await p.upload(str(tmp_path / "blob"), path)
        await p.download(path, str(tmp_path / "back"))
        assert (tmp_path / "back").read_bytes() == data
    finally:
        await p.aclose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", Address("host")),
        ("dev@host", Address("host", "dev")),
        ("dev@host:2222", Address("host", "dev", 2222)),
        ("10.0.0.5:22", Address("10.0.0.5", None, 22)),
        ("[::1]:2200", Address("::1", None, 2200)),
        ("me@[fe80::1]", Address("fe80::1", "me")),
        ("fe80::1", Address("fe80::1")),
        ("a.b@c@host", Address("host", "a.b@c")),
        ("  alias  ", Address("alias")),
    ],
)
def test_address_parsing(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "a b", "@host", "user@", "host:0", "host:x", "host:70000", "[::1", "[::1]x"]
)
def test_bad_addresses_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert info.value.hint is not None and "[user@]host[:port]" in info.value.hint


def test_forward_parsing() -> None:
    assert parse_forward("11434:127.0.0.1:11434") == Forward(11434, "127.0.0.1", 11434)
    assert parse_forward("8080:[::1]:80") == Forward(8080, "::1", 80)
    assert str(Forward(8080, "::1", 80)) == "8080:[::1]:80"
    for bad in ("x:h:1", "1:h", "0:h:1", "1::1"):
        with pytest.raises(ConfigError):
            parse_forward(bad)


@pytest.fixture
def ssh_agent(tmp_path: Path, ssh_client_key: Path) -> Iterator[Path]:
    """A real ssh-agent holding the test client key; yields its socket."""
    agent_bin, add_bin = shutil.which("ssh-agent"), shutil.which("ssh-add")
    if agent_bin is None or add_bin is None:
        pytest.skip("ssh-agent is not installed (package openssh-client)")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        [agent_bin, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run([add_bin, str(ssh_client_key)], env=env, check=True, capture_output=True)
        yield sock
    finally:
        agent.kill()
        agent.wait()


async def test_keys_from_ssh_agent(
    sshd: SshdFleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ssh_agent: Path,
) -> None:
    (h,) = sshd.start(1)
    sshd.trust(h)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(ssh_agent))
    # no identity_file and no ~/.ssh/id_*: only the agent has the key
    p = provider_for(sshd, h, tmp_path / "state", identity_file=None)
    try:
        await p.ensure_ready()
        assert (await p.exec(["id", "-un"])).stdout == f"{h.user}\n"
    finally:
        await p.aclose()
    monkeypatch.delenv("SSH_AUTH_SOCK")
    without = provider_for(sshd, h, tmp_path / "state", identity_file=None)
    try:
        with pytest.raises(ProviderError, match="refused the login") as info:
            await without.ensure_ready()
        assert info.value.hint is not None and "authorized_keys" in info.value.hint
    finally:
        await without.aclose()
