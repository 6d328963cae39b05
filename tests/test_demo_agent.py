"""The demo agent: its grammar (pure) and real runs as a subprocess in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bosun.agents import BUILTIN_AGENTS, parse_lines
from bosun.demo_agent import Instruction, parse_instructions
from bosun.prompt import build_prompt
from bosun.providers.base import Stream

FAST = {**os.environ, "BOSUN_DEMO_DELAY": "0"}


def run_demo(
    cwd: Path, prompt: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # subprocess.run kills the child if the timeout expires, so no process outlives a test.
    return subprocess.run(
        [sys.executable, "-m", "bosun.demo_agent", *args],
        cwd=cwd,
        input=prompt,
        capture_output=True,
        text=True,
        env=env or FAST,
        timeout=30,
        check=False,
    )


# -- grammar -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "Create hello.txt with: Hello, world.",
            Instruction("create", "hello.txt", "Hello, world."),
        ),
        ('- create file notes containing "a\\nb"', Instruction("create", "notes", "a\nb")),
        ("Create `my file.md` containing: x", Instruction("create", "my file.md", "x")),
        ('Create a new file docs/a.md with "q\\"d"', Instruction("create", "docs/a.md", 'q"d')),
        ("Create an empty file src/__init__.py", Instruction("create", "src/__init__.py")),
        ('1. Append "more" to README.md.', Instruction("append", "README.md", "more")),
        ('append the line "x" to the end of "a b.txt"', Instruction("append", "a b.txt", "x")),
        (
            'Replace "old" with "new" in the file app',
            Instruction("replace", "app", "old", "new"),
        ),
        ("Delete old.txt.", Instruction("delete", "old.txt")),
        ("* [ ] Remove file build", Instruction("delete", "build")),
    ],
)
def test_grammar(line: str, expected: Instruction) -> None:
    assert parse_instructions(line) == [expected]


@pytest.mark.parametrize(
    "line",
    [
        "Remove duplication.",
        "Delete nothing",
        "Create tests for the parser",
        "Replace the parser with a better one",
        "Append more tests",
        "# Create a.txt with: heading",
    ],
)
def test_prose_is_not_an_instruction(line: str) -> None:
    assert parse_instructions(line) == []


def test_bosun_prompt_sections_code_and_previous_attempt_are_skipped() -> None:
    prompt = build_prompt(
        "Create title.txt with: from the title",
        "Create a.txt with: A\n```\nCreate code.txt with: no\n```\n",
        review='Append "B" to a.txt',
        attempt=2,
        previous_error="Create old.txt with: no",
    )
    assert parse_instructions(prompt) == [
        Instruction("create", "a.txt", "A"),
        Instruction("append", "a.txt", "B"),
    ]
    # Without a body the goal repeats the title, once.
    assert parse_instructions(build_prompt("Delete x.txt", "")) == [Instruction("delete", "x.txt")]


# -- real runs -----------------------------------------------------------------------------
def test_applies_instructions_and_reports_each(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Demo\nold text", encoding="utf-8")
    (tmp_path / "gone.txt").write_text("bye\n", encoding="utf-8")
    prompt = build_prompt(
        "Demo edits",
        "## Goal\n"
        "- Create docs/hello.txt with: Hello from bosun\n"
        '- Append "Added line" to README.md\n'
        '- Replace "old" with "new" in README.md\n'
        "- Delete gone.txt\n",
    )
    result = run_demo(tmp_path, prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "demo agent: 4 instructions found",
        "created docs/hello.txt: 1 line",
        "edited README.md: appended 1 line",
        "edited README.md: replaced 1 occurrence",
        "deleted gone.txt",
        "Done: 4 changes (demo agent, not an AI)",
    ]
    assert result.stderr == ""
    assert (tmp_path / "docs/hello.txt").read_text() == "Hello from bosun\n"
    assert (tmp_path / "README.md").read_text() == "# Demo\nnew text\nAdded line\n"
    assert not (tmp_path / "gone.txt").exists()


def test_no_instructions_is_success(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "Please improve the code.")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "no instructions found",
        "Done: 0 changes (demo agent, not an AI)",
    ]
    assert list(tmp_path.iterdir()) == []


def test_failed_instruction_exits_1_and_still_applies_the_rest(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc\n")
    prompt = 'Replace "zzz" with "y" in a.txt\nDelete missing.txt\nCreate ok.txt with: fine\n'
    result = run_demo(tmp_path, prompt)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: cannot replace in a.txt: 'zzz' was not found",
        "error: cannot delete missing.txt: no such file",
        "2 instructions failed",
    ]
    assert result.stdout.splitlines()[-1] == "Done: 1 change (demo agent, not an AI)"
    assert (tmp_path / "ok.txt").read_text() == "fine\n"
    assert (tmp_path / "a.txt").read_text() == "abc\n"


def test_paths_leaving_the_directory_are_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (work / "link").symlink_to(outside)
    (work / ".git").mkdir()
    prompt = (
        f"Create {outside}/abs.txt with: no\n"
        "Create ../up.txt with: no\n"
        "Create link/through.txt with: no\n"
        "Create .git/config.txt with: no\n"
        "Delete `../work/../outside`\n"
    )
    result = run_demo(work, prompt)
    assert result.returncode == 1
    assert result.stderr.count("error: refusing") == 5
    assert list(outside.iterdir()) == []
    assert list((work / ".git").iterdir()) == []
    assert not (tmp_path / "up.txt").exists()


def test_prompt_from_a_file_argument_and_version(tmp_path: Path) -> None:
    (tmp_path / "prompt.md").write_text("Create from-file.txt with: x\n")
    result = run_demo(tmp_path, "", str(tmp_path / "prompt.md"))
    assert result.returncode == 0
    assert (tmp_path / "from-file.txt").read_text() == "x\n"
    version = run_demo(tmp_path, "", "--version")
    assert "not an AI" in version.stdout


def test_bad_delay_falls_back_to_the_default(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "nothing", env={**os.environ, "BOSUN_DEMO_DELAY": "soon"})
    assert result.returncode == 0


def test_builtin_demo_spec_runs_the_demo_agent(tmp_path: Path) -> None:
    """The whole path a dispatcher takes: spec -> Command -> process -> raw parser."""
    work = tmp_path / "work"
    run_dir = tmp_path / "run"
    work.mkdir()
    run_dir.mkdir()
    prompt = build_prompt("Say hello", "Create hello.txt with: Hello!", repo="demo")
    environ = {**os.environ, "BOSUN_DEMO_DELAY": "0", "SECRET_TOKEN": "x"}
    cmd = BUILTIN_AGENTS["demo"].build(
        prompt=prompt, workdir=str(work), run_dir=str(run_dir), environ=environ
    )
    assert "SECRET_TOKEN" not in cmd.env
    assert cmd.env["HOME"] == f"{run_dir}/home"
    assert list(cmd.files) == ["home/.bosun-home"]  # makes the isolated HOME exist
    result = subprocess.run(
        cmd.argv,
        cwd=cmd.cwd,
        env=dict(cmd.env),
        input=cmd.stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )
    lines: list[tuple[Stream, str]] = [("stdout", x) for x in result.stdout.decode().splitlines()]
    lines += [("stderr", x) for x in result.stderr.decode().splitlines()]
    _, outcome = parse_lines("raw", lines, result.returncode)
    assert outcome.success, result.stderr
    assert outcome.summary.endswith("Done: 1 change (demo agent, not an AI)")
    assert (work / "hello.txt").read_text() == "Hello!\n"
