"""The host registry through ``Service``: bosun.toml hosts plus registered ones, their
state, conflicts, and capability detection on this machine (a real local check)."""

from __future__ import annotations

import os
import platform

import pytest

from bosun.errors import ConfigError, InputError, NotFound
from bosun.hosts.capabilities import PROBE_SCRIPT, Capabilities, parse_probe
from bosun.models import TaskSpec
from bosun.service import Service
from bosun.store.base import HostStore
from tests.conftest import SettingsFactory


def _hs(svc: Service) -> HostStore:
    assert isinstance(svc.store, HostStore)
    return svc.store


async def test_config_and_registered_hosts_are_listed_with_their_state(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        hosts={"local": {"kind": "local", "max_concurrent": 3, "labels": ["here"]}}
    )
    async with await Service.open(settings) as svc:
        added = await svc.add_host(
            "box", {"kind": "local", "max_concurrent": 2, "labels": ["fast"], "agents": ["echo"]}
        )
        rows = [h.to_json() for h in await svc.hosts()]
    assert [r["name"] for r in rows] == ["local", "box"]
    local, box = rows
    assert local["source"] == "config" and local["health"] == "unknown"
    assert local["max_concurrent"] == 3 and local["labels"] == ["here"]
    assert local["agents"] == sorted(settings.agents)  # no list: every agent
    assert box["source"] == "cli" and box["kind"] == "local" and box["agents"] == ["echo"]
    # it was checked before it was stored: healthy, with what the check found
    assert box["health"] == "healthy" and box["checked_at"] is not None
    caps = box["capabilities"]
    assert caps["os"] == platform.system() and caps["cpus"] == os.cpu_count()
    assert caps["memory_bytes"] > 0
    assert caps["agents"]["echo"]["installed"] is True  # sh
    assert set(caps["agents"]) == {"echo"}  # only its agents are looked for
    assert {"fast", "os:linux", f"arch:{platform.machine()}"} <= set(box["labels"])
    assert added.to_json() == box


async def test_capabilities_of_every_agent_with_versions_and_missing_programs(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        agents={
            "echo": {"command": ["sh", "-c", "cat > NOTES.md"]},
            "versioned": {"command": ["git", "status"], "version_command": ["git", "--version"]},
            "ghost": {"command": ["bosun-no-such-cli-x"], "version_command": ["x", "--version"]},
            "broken": {"command": ["sh"], "version_command": ["sh", "-c", "echo bad >&2; exit 3"]},
        }
    )
    async with await Service.open(settings) as svc:
        result = await svc.check_host("local")
        row = (await svc.host("local")).to_json()
    assert result.ok and result.reachable and result.host_key == "local"
    assert result.capabilities is not None
    agents = result.capabilities.agents
    assert agents["versioned"].installed and agents["versioned"].version is not None
    assert agents["versioned"].version.startswith("git version")
    assert agents["versioned"].path is not None and agents["versioned"].path.endswith("/git")
    assert not agents["ghost"].installed and agents["ghost"].version is None
    assert agents["broken"].installed and agents["broken"].error is not None
    assert "exited 3" in agents["broken"].error
    # the check is stored: the config host now has a state row with it
    assert "ghost" in row["missing_agents"] and row["health"] == "healthy"
    assert not {"echo", "versioned", "broken"} & set(row["missing_agents"])
    assert "ghost" in row["agents"]  # allowed, but the dispatcher skips it (see dispatch tests)


def test_probe_output_is_parsed_without_trusting_it() -> None:
    facts, paths = parse_probe(
        "os\tLinux\nrelease\t6.1\nmachine\taarch64\ncpus\t8\nmemory\t1024\n"
        "program\t1\t/usr/bin/git\nprogram\t2\t\nprogram\t9\t/evil\ngarbage\n",
        2,
    )
    assert facts == {"os": "Linux", "release": "6.1", "machine": "aarch64", "cpus": "8",
                     "memory": "1024"}  # fmt: skip
    assert paths == ["/usr/bin/git", None]
    # program names reach the probe only as "$@"
    assert "$@" in PROBE_SCRIPT and "{" not in PROBE_SCRIPT.replace("${", "")


def test_stored_capabilities_survive_a_round_trip() -> None:
    assert Capabilities.from_json({}) is None
    caps = Capabilities.from_json(
        {"os": "Linux", "cpus": "4", "memory_bytes": True, "agents": {"a": {"installed": 1}}}
    )
    assert caps is not None and caps.cpus == 4 and caps.memory_bytes is None
    assert caps.missing_agents() == frozenset()
    assert Capabilities.from_json(caps.to_json()) == caps


async def test_a_name_of_bosun_toml_cannot_be_registered(make_settings: SettingsFactory) -> None:
    async with await Service.open(make_settings()) as svc:
        with pytest.raises(InputError, match=r"already defined in .*bosun.toml") as err:
            await svc.add_host("local", {"kind": "local"}, check=False)
        assert err.value.hint is not None and "[hosts.local]" in err.value.hint
        assert await _hs(svc).list_hosts() == []


async def test_a_clash_that_appears_later_is_a_clear_error_and_rm_resolves_it(
    make_settings: SettingsFactory,
) -> None:
    async with await Service.open(make_settings()) as svc:
        await svc.add_host("gpu", {"kind": "local"}, check=False)
    # later, bosun.toml gains a [hosts.gpu] too
    both = make_settings(hosts={"local": {"kind": "local"}, "gpu": {"kind": "local"}})
    async with await Service.open(both) as svc:
        with pytest.raises(ConfigError, match=r"'gpu' is defined in .* and was also added") as err:
            await svc.hosts()
        assert err.value.hint is not None and "bosun hosts rm gpu" in err.value.hint
        await svc.remove_host("gpu")
        assert [h.name for h in await svc.hosts()] == ["local", "gpu"]
        assert (await svc.host("gpu")).host.source == "config"


async def test_bad_registrations_are_refused_and_store_nothing(
    make_settings: SettingsFactory,
) -> None:
    async with await Service.open(make_settings()) as svc:
        cases: list[tuple[str, dict[str, object], str]] = [
            ("bad name!", {"kind": "local"}, "invalid host name"),
            ("h", {"kind": "ssh"}, "needs an address"),
            ("h", {"kind": "local", "max_concurrent": 0}, "max_concurrent"),
            ("h", {"kind": "local", "agents": ["nope"]}, "unknown agent 'nope'"),
            ("h", {"kind": "telnet"}, "kind"),
            ("h", {"kind": "local", "colour": "red"}, "colour"),
        ]
        for name, fields, message in cases:
            with pytest.raises(InputError, match=message):
                await svc.add_host(name, fields, check=False)
        # what names programs or files on the server is for bosun.toml only
        with pytest.raises(InputError, match=r"wake_command can only be set in bosun.toml"):
            await svc.add_host(
                "h", {"address": "a@b", "wake_command": ["rm", "-rf", "/"]}, source="api"
            )
        assert await _hs(svc).list_hosts() == []


async def test_an_unreachable_host_is_not_added(make_settings: SettingsFactory) -> None:
    async with await Service.open(make_settings()) as svc:
        # nothing listens on port 1 of 127.0.0.1: the connection is refused
        with pytest.raises(InputError, match="host far was not added") as err:
            await svc.add_host("far", {"address": "nobody@127.0.0.1:1", "connect_timeout": 1.0})
        assert err.value.hint
        assert await _hs(svc).list_hosts() == []
        # --no-check stores it without connecting; its health is unknown until checked
        far = {"address": "nobody@127.0.0.1:1", "connect_timeout": 1.0}
        info = await svc.add_host("far", far, check=False)
        assert info.host.health == "unknown" and info.host.kind == "ssh"
        result = await svc.check_host("far")
        assert not result.ok and not result.reachable and result.error
        assert (await svc.host("far")).host.health == "unhealthy"


async def test_drain_enable_and_rm(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        hosts={"local": {"kind": "local"}, "off": {"kind": "local", "enabled": False}}
    )
    async with await Service.open(settings) as svc:
        drained = await svc.drain_host("local")  # a config host: a state row is made
        assert drained.host.drained and not drained.host.enabled
        assert (await _hs(svc).get_host("local")).source == "config"
        assert (await svc.enable_host("local")).host.enabled
        with pytest.raises(InputError, match=r"disabled in .*enabled = false"):
            await svc.enable_host("off")
        with pytest.raises(NotFound, match="'nope' does not exist"):
            await svc.drain_host("nope")
        with pytest.raises(InputError, match=r"defined in .*bosun.toml"):
            await svc.remove_host("local")
        with pytest.raises(NotFound):
            await svc.remove_host("nope")
        await svc.add_host("box", {"kind": "local"}, check=False)
        await svc.drain_host("box")
        removed = await svc.remove_host("box")
        assert removed.name == "box" and removed.host.drained
        assert [h.name for h in await svc.hosts()] == ["local", "off"]


async def test_rm_refuses_a_host_with_running_tasks_unless_forced(
    make_settings: SettingsFactory,
) -> None:
    async with await Service.open(make_settings()) as svc:
        await svc.add_host("box", {"kind": "local"}, check=False)
        task = await svc.submit(TaskSpec(title="pinned", host="box"))
        assert task.host == "box"  # a registered host may be pinned
        claimed = await svc.store.claim(
            task.id, owner="o", host="box", lease_seconds=30, now=task.created_at
        )
        assert claimed is not None
        with pytest.raises(InputError, match="1 running task"):
            await svc.remove_host("box")
        assert (await svc.host("box")).running == 1
        await svc.remove_host("box", force=True)
        with pytest.raises(InputError, match="unknown host 'box'"):
            await svc.submit(TaskSpec(title="pinned again", host="box"))
