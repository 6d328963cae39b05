"""Loading bosun.toml: finding the file, resolving paths, defaults, and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from bosun.agents import BUILTIN_AGENTS, PromptDelivery
from bosun.config import (
    HostConfig,
    LimitsConfig,
    find_config,
    init_config_text,
    load_settings,
    settings_from_data,
    write_init,
)
from bosun.errors import ConfigError, InputError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bosun.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.hint, "every config error carries a fix"
    return info.value


# -- init ----------------------------------------------------------------------------------
def test_init_text_loads_and_describes_every_section(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, init_config_text()), environ={})
    assert set(settings.agents) == {*BUILTIN_AGENTS, "echo"}
    assert settings.agents["echo"].command == ("sh", "-c", "cat > NOTES.md")
    assert settings.hosts == {"local": HostConfig()}
    assert settings.limits == LimitsConfig()
    assert settings.repos == {}
    text = init_config_text()
    for needle in ("[database]", "# [repos.demo]", "[agents.echo]", "[hosts.local]", "[limits]"):
        assert needle in text


def test_init_text_repo_example_loads_when_uncommented(tmp_path: Path) -> None:
    text = init_config_text().replace("# [repos.demo]", "[repos.demo]")
    for key in ("url", "default_branch", "copy_files", "setup", "push"):
        text = text.replace(f"# {key} = ", f"{key} = ")
    repo = load_settings(write(tmp_path, text), environ={}).repos["demo"]
    assert repo.url == str(tmp_path.parent / "demo-repo")
    assert repo.setup == ["npm", "ci"]


def test_write_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = write_init(tmp_path / "sub" / "bosun.toml")
    assert target.read_text() == init_config_text()
    target.write_text("# mine\n")
    with pytest.raises(InputError, match="already exists") as info:
        write_init(target)
    assert info.value.hint is not None
    assert "--force" in info.value.hint
    assert target.read_text() == "# mine\n"
    write_init(target, force=True)
    assert target.read_text() == init_config_text()
    assert write_init(tmp_path / "sub", force=True) == target  # a directory means its bosun.toml


# -- finding the file ----------------------------------------------------------------------
def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path, "")
    other = tmp_path / "other"
    other.mkdir()
    env_file = write(other, "")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cwd_file = write(cwd, "")
    monkeypatch.chdir(cwd)
    assert find_config(explicit, environ={"BOSUN_CONFIG": str(env_file)}) == explicit
    assert find_config(None, environ={"BOSUN_CONFIG": str(env_file)}) == env_file
    assert find_config(None, environ={}) == cwd_file
    assert find_config(other, environ={}) == env_file  # a directory means its bosun.toml


def test_missing_config_points_at_bosun_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for path, env in ((None, {}), (None, {"BOSUN_CONFIG": "nope.toml"}), ("x.toml", {})):
        with pytest.raises(ConfigError, match="no configuration found") as info:
            load_settings(path, environ=env)
        assert info.value.hint is not None
        assert "bosun init" in info.value.hint
    with pytest.raises(ConfigError, match=r"BOSUN_CONFIG=nope\.toml"):
        load_settings(None, environ={"BOSUN_CONFIG": "nope.toml"})


# -- paths and defaults --------------------------------------------------------------------
def test_defaults_and_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), environ={})
    assert settings.config_path == tmp_path.resolve() / "bosun.toml"
    assert settings.config_dir == tmp_path.resolve()
    assert settings.state_dir == tmp_path.resolve() / ".bosun"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/.bosun/bosun.db"
    assert settings.hosts == {"local": HostConfig()}
    assert settings.agents == dict(BUILTIN_AGENTS)
    assert settings.run_timeout("demo") == 3600.0
    assert settings.stall_timeout("demo") == 600.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///db/b.db", "sqlite:///{dir}/db/b.db"),
        ("sqlite+aiosqlite:///b.db?timeout=5", "sqlite+aiosqlite:///{dir}/b.db?timeout=5"),
        ("sqlite:////abs/b.db", "sqlite:////abs/b.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+asyncpg://u@127.0.0.1/bosun", "postgresql+asyncpg://u@127.0.0.1/bosun"),
    ],
)
def test_database_url(tmp_path: Path, url: str, expected: str) -> None:
    settings = load_settings(write(tmp_path, f'[database]\nurl = "{url}"\n'), environ={})
    assert settings.database_url == expected.format(dir=tmp_path.resolve())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("../up", "{parent}/up"),
        ("repo", "{dir}/repo"),
        ("./a:b", "{dir}/a:b"),
        ("/abs/repo", "/abs/repo"),
        ("https://example.invalid/x.git", "https://example.invalid/x.git"),
        ("git@example.invalid:org/x.git", "git@example.invalid:org/x.git"),
        ("file:///srv/x.git", "file:///srv/x.git"),
    ],
)
def test_repo_urls_local_paths_become_absolute(tmp_path: Path, url: str, expected: str) -> None:
    text = f'[repos.r]\nurl = "{url}"\n'
    repo = load_settings(write(tmp_path, text), environ={}).repos["r"]
    root = tmp_path.resolve()
    assert repo.url == expected.format(dir=root, parent=root.parent)
    assert repo.default_branch == "main"
    assert repo.push is True


def test_state_dir_relative_and_absolute(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'state_dir = "var/../state"\n'), environ={})
    assert settings.state_dir == tmp_path.resolve() / "state"
    assert settings.database_url.endswith("/state/bosun.db")
    settings = load_settings(write(tmp_path, f'state_dir = "{tmp_path}/abs"\n'), environ={})
    assert settings.state_dir == tmp_path / "abs"


def test_full_configuration(tmp_path: Path) -> None:
    text = """
[repos.app]
url = "app"
default_branch = "trunk"
copy_files = [".env"]
setup = ["make", "deps"]
push = false

[agents.demo]
timeout = 30

[agents.fmt]
command = ["{python}", "-m", "fmt", "{prompt_file}"]
prompt = "file"
env_allow = ["PATH"]
resume = ["--again"]

[hosts.big]
max_concurrent = 2
agents = ["fmt"]
labels = ["gpu"]
priority = 5

[hosts.off]
enabled = false

[limits]
max_concurrent = 3
per_agent = { demo = 1 }
heartbeat_seconds = 1
lease_seconds = 3
"""
    s = load_settings(write(tmp_path, text), environ={})
    assert s.repos["app"].setup == ["make", "deps"]
    assert s.repos["app"].push is False
    assert s.agents["demo"].timeout == 30.0
    assert s.run_timeout("demo") == 30.0
    assert s.agents["fmt"].prompt is PromptDelivery.FILE
    assert s.agents["fmt"].resume == ("--again",)
    assert set(s.hosts) == {"big", "off"}  # an explicit [hosts] replaces the implicit local
    assert s.hosts["big"].agents == ["fmt"]
    assert s.hosts["off"].enabled is False
    assert s.limits.per_agent == {"demo": 1}
    assert s.limits.lease_seconds == 3.0


def test_settings_from_data_needs_no_file(tmp_path: Path) -> None:
    s = settings_from_data({"limits": {"max_attempts": 1}}, tmp_path / "virtual.toml")
    assert s.limits.max_attempts == 1
    assert s.state_dir == tmp_path / ".bosun"


# -- errors --------------------------------------------------------------------------------
def test_wrong_type_names_file_table_and_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[repos.demo]\nurl = "x"\ndefault_branch = 1\n')
    path = (tmp_path / "bosun.toml").resolve()
    assert err.message == f"{path}: [repos.demo] default_branch: Input should be a valid string"
    assert err.hint == 'write a quoted string: default_branch = "..."'


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[repos.demo]\nurl = "x"\ndefualt_branch = "m"\n')
    assert err.message.endswith("[repos.demo]: unknown key 'defualt_branch'")
    assert err.hint == (
        "remove it or use one of: url, default_branch, copy_files, setup, push, transport,"
        " forge (did you mean default_branch?)"
    )
    err = error_of(tmp_path, "[limit]\nmax_concurrent = 2\n")
    assert "top level: unknown key 'limit'" in err.message
    assert err.hint is not None
    assert "did you mean limits?" in err.hint


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    err = error_of(tmp_path, 'state_dir = ".bosun"\n[limits]\nmax_concurrent = = 3\n')
    assert "invalid TOML" in err.message
    assert "line 3, column" in err.message
    assert str((tmp_path / "bosun.toml").resolve()) in err.message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bosun.toml"
    path.write_bytes(b'state_dir = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_settings(path, environ={})


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[limits]\nmax_concurrent = 0\nmax_attempts = 'x'\n")
    lines = err.message.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("[limits] max_concurrent: Input should be greater than 0")
    assert lines[1].endswith("[limits] max_attempts: Input should be a valid integer")


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ('[hosts.a]\nkind = "vm"\n', "[hosts.a] kind: Input should be 'local' or 'ssh'", "ssh"),
        ('[hosts.a]\nkind = "ssh"\n', 'kind = "ssh" needs an address', "rule"),
        ('[hosts.a]\naddress = "x"\n', 'address is only for kind = "ssh"', "rule"),
        (
            '[hosts.a]\nkind = "ssh"\naddress = "h"\nremote_forwards = ["80"]\n',
            "is not REMOTE_PORT:LOCAL_HOST:LOCAL_PORT",
            "rule",
        ),
        ("[server]\nport = 70000\n", "[server] port: Input should be less than", ""),
        ("[limits]\nheartbeat_seconds = 30\n", "must be smaller than lease_seconds", "rule"),
        ("[limits]\nretry_backoff_max = 1\n", "retry_backoff_max (1) is below", "rule"),
        ("[limits]\nper_agent = { ghost = 1 }\n", "per_agent: unknown agent 'ghost'", "demo"),
        ("[limits]\nper_agent = { demo = 0 }\n", "per_agent.demo: Input should be greater", ""),
        ('[hosts.a]\nagents = ["ghost"]\n', "[hosts.a] agents: unknown agent 'ghost'", "demo"),
        ("[hosts.a]\nmax_concurrent = -1\n", "[hosts.a] max_concurrent", "above zero"),
        (
            '[hosts.a]\nkind = "ssh"\naddress = "u@h"\nmax_channels = 2\n',
            "[hosts.a] max_channels",
            "use 3 or more",
        ),
        ('[repos."has space"]\nurl = "x"\n', "the name 'has space' is not allowed", "letters"),
        ('[agents."a.b"]\ncommand = ["x"]\n', "the name 'a.b' is not allowed", "letters"),
        ("[repos.demo]\nbranch = 'x'\n", "[repos.demo]: unknown key 'branch'", "url"),
        ("[repos.demo]\npush = true\n", "[repos.demo] url: required key is missing", "add url"),
        ('[repos.demo]\nurl = ""\n', "[repos.demo] url: String should have at least", ""),
        ("[repos.demo]\nurl = 'x'\nsetup = 'make'\n", "setup: Input should be a valid list", "["),
        ("[repos]\ndemo = 3\n", "[repos.demo]: Input should be a valid dictionary", "table"),
        ("[agents.x]\ntimeout = 3\n", "[agents.x] has no command", "command ="),
        ('[agents.x]\ncommand = ["a", "{foo}"]\n', "command[1]: unknown placeholder {foo}", ""),
        ('[agents.x]\ncommand = ["a"]\nprompt = "pipe"\n', "[agents.x] prompt: Input should", ""),
        ('[agents.x]\ncommand = ["a"]\nparser = "nope"\n', "unknown parser 'nope'", "raw"),
        ("[agents.demo]\ntimeout = -1\n", "[agents.demo] timeout: Input should be greater", ""),
        ("[agents.demo]\nisolated_home = 'yes'\n", "isolated_home: Input should be a valid b", ""),
        ('state_dir = ""\n', "state_dir: String should have at least 1 character", ""),
        ("database = 3\n", "[database]: Input should be a valid dictionary", ""),
    ],
)
def test_invalid_configurations(tmp_path: Path, text: str, message: str, hint: str) -> None:
    err = error_of(tmp_path, text)
    assert message in err.message
    assert str((tmp_path / "bosun.toml").resolve()) in err.message
    assert err.hint is not None
    assert hint in err.hint
