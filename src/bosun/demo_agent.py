"""The demo agent: a small deterministic stand-in for an AI coding agent. It is NOT an AI.

It lets you try bosun end to end without an API key: ``python -m bosun.demo_agent`` reads a
prompt on stdin (or from the file named by its first argument), applies the instructions it
recognises in the current directory, prints one line per action as it goes and a final
``Done: N changes (demo agent, not an AI)``.

Grammar (one instruction per line; keywords in any case; a leading ``-``, ``*``, ``+`` or
``1.`` list marker is ignored)::

    Create FILE with: TEXT                 TEXT is the rest of the line, or one "quoted" string
    Create FILE containing: TEXT           same (the colon is optional)
    Create file FILE containing "TEXT"
    Create an empty file FILE
    Append "TEXT" to FILE                  adds TEXT as a new line (creates FILE if missing)
    Replace "OLD" with "NEW" in FILE       every occurrence; fails if OLD is not there
    Delete FILE                            also "Remove FILE"; fails if FILE does not exist

FILE is written `like/this.md` (backquotes), "like this.md" (double quotes), or bare when it
contains a ``.`` or ``/`` (``README.md``, ``src/app.py``; a trailing full stop is not part of
it); after the word ``file`` any bare word is a FILE. "Quoted" text understands ``\\n``,
``\\t``, ``\\"`` and ``\\\\``. Headings, fenced code blocks and the ``Previous attempt`` and
``When you are done`` sections of a bosun prompt are not searched.

Paths that are absolute, contain ``..`` or ``.git``, or lead outside the current directory
through a symlink are refused. Exit status: 0 when every instruction applied (or none was
found: "no instructions found"), 1 when one failed or was refused (the error is on stderr;
the other instructions are still applied). ``BOSUN_DEMO_DELAY`` sets the pause in seconds
before each action (default 0.2) so that live progress is visible.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["Instruction", "apply", "main", "parse_instructions"]

DEFAULT_DELAY = 0.2
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_FILE = (
    r"(?:(?P<kw>file)\s+)?"
    r'(?P<path>`[^`]+`|"(?:[^"\\]|\\.)+"|[^\s"`]+?)\.?'
)
_PATTERNS = {
    "create": re.compile(
        rf"create\s+(?:a\s+|the\s+)?(?:new\s+)?{_FILE}\s+(?:with|containing)(?::\s*|\s+)(?P<text>.*)",
        re.IGNORECASE,
    ),
    "empty": re.compile(rf"create\s+(?:an\s+)?empty\s+{_FILE}", re.IGNORECASE),
    "append": re.compile(
        rf"append\s+(?:the\s+line\s+)?{_QUOTED}\s+to\s+(?:the\s+end\s+of\s+)?(?:the\s+)?{_FILE}",
        re.IGNORECASE,
    ),
    "replace": re.compile(
        rf"replace\s+{_QUOTED}\s+with\s+{_QUOTED}\s+in\s+(?:the\s+)?{_FILE}", re.IGNORECASE
    ),
    "delete": re.compile(rf"(?:delete|remove)\s+(?:the\s+)?{_FILE}", re.IGNORECASE),
}
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,9}[.)])\s+(?:\[[ xX]\]\s+)?")
_SKIPPED_SECTIONS = {"previous attempt", "when you are done"}
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


class DemoError(Exception):
    """An instruction that could not be applied."""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One recognised instruction."""

    action: str  # "create" | "append" | "replace" | "delete"
    path: str
    text: str = ""  # create / append: the text; replace: the old text
    new: str = ""  # replace: the new text


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)


def _path(match: re.Match[str]) -> str | None:
    raw = match.group("path")
    if raw.startswith("`"):
        return raw[1:-1]
    if raw.startswith('"'):
        return _unescape(raw[1:-1])
    # A bare word is a file only if it looks like one, so "Remove duplication." is prose.
    if match.group("kw") or "." in raw or "/" in raw:
        return raw
    return None


def _instruction(line: str) -> Instruction | None:
    line = _LIST_MARKER.sub("", line).strip()
    for action, pattern in _PATTERNS.items():
        match = pattern.fullmatch(line)
        if match is None:
            continue
        path = _path(match)
        if path is None:
            return None
        if action == "create":
            text = match.group("text")
            quoted = re.fullmatch(_QUOTED, text.strip())
            return Instruction("create", path, _unescape(quoted.group(1)) if quoted else text)
        if action == "empty":
            return Instruction("create", path, "")
        if action == "append":
            return Instruction("append", path, _unescape(match.group(1)))
        if action == "replace":
            return Instruction(
                "replace", path, _unescape(match.group(1)), _unescape(match.group(2))
            )
        return Instruction("delete", path)
    return None


def parse_instructions(prompt: str) -> list[Instruction]:
    """Every instruction in ``prompt``, in order (see the module docstring for the grammar)."""
    found = []
    fence: str | None = None
    skipping = False
    for line in prompt.replace("\r\n", "\n").split("\n"):
        marker = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if fence is not None:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            continue
        heading = re.match(r"^ {0,3}(#{1,6})(?:\s+(.*))?$", line)
        if heading:
            if len(heading.group(1)) <= 2:
                skipping = (heading.group(2) or "").strip().lower() in _SKIPPED_SECTIONS
            continue
        if not skipping and (instruction := _instruction(line)) is not None:
            found.append(instruction)
    return found


def _target(root: Path, path: str) -> Path:
    """``path`` inside ``root``, or DemoError when it would leave it."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\x00" in path:
        raise DemoError(f"refusing {path}: the path leaves the working directory")
    if ".git" in pure.parts:
        raise DemoError(f"refusing {path}: bosun's demo agent does not touch .git")
    target = root.joinpath(*pure.parts)
    real_root = root.resolve()
    for candidate in (target.parent, target):
        if not candidate.resolve().is_relative_to(real_root):
            raise DemoError(f"refusing {path}: it leads outside the working directory")
    return target


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def apply(instruction: Instruction, root: Path) -> str:
    """Apply one instruction under ``root``; returns the progress line, raises DemoError."""
    path = instruction.path
    target = _target(root, path)
    if instruction.action == "delete":
        if not target.is_file() and not target.is_symlink():
            raise DemoError(f"cannot delete {path}: no such file")
        target.unlink()
        return f"deleted {path}"
    if target.is_dir():
        raise DemoError(f"cannot edit {path}: it is a directory")
    if instruction.action == "create":
        text = instruction.text
        content = text if not text or text.endswith("\n") else text + "\n"
        verb = "overwrote" if target.exists() else "created"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"{verb} {path}: {_count(len(content.splitlines()), 'line')}"
    if instruction.action == "append":
        old = target.read_text(encoding="utf-8") if target.exists() else ""
        prefix = "\n" if old and not old.endswith("\n") else ""
        added = instruction.text if instruction.text.endswith("\n") else instruction.text + "\n"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(old + prefix + added, encoding="utf-8")
        return f"edited {path}: appended {_count(len(added.splitlines()), 'line')}"
    # replace
    if not target.is_file():
        raise DemoError(f"cannot replace in {path}: no such file")
    old = target.read_text(encoding="utf-8")
    count = old.count(instruction.text) if instruction.text else 0
    if count == 0:
        raise DemoError(f"cannot replace in {path}: {instruction.text!r} was not found")
    target.write_text(old.replace(instruction.text, instruction.new), encoding="utf-8")
    return f"edited {path}: replaced {_count(count, 'occurrence')}"


def _delay(environ: Mapping[str, str]) -> float:
    try:
        value = float(environ.get("BOSUN_DEMO_DELAY", DEFAULT_DELAY))
    except ValueError:
        return DEFAULT_DELAY
    return value if 0 <= value <= 60 else DEFAULT_DELAY


def main(argv: Sequence[str] | None = None) -> int:
    """Read the prompt, apply its instructions in the current directory, report."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        print("bosun demo agent 1 (deterministic, not an AI)")
        return 0
    if args:
        prompt = Path(args[0]).read_text(encoding="utf-8", errors="replace")
    else:
        prompt = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    instructions = parse_instructions(prompt)
    delay = _delay(os.environ)
    if not instructions:
        print("no instructions found", flush=True)
    else:
        print(f"demo agent: {_count(len(instructions), 'instruction')} found", flush=True)
    root = Path.cwd()
    changes = failures = 0
    for instruction in instructions:
        if delay:
            time.sleep(delay)
        try:
            print(apply(instruction, root), flush=True)
            changes += 1
        except (DemoError, OSError, UnicodeDecodeError) as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr, flush=True)
    print(f"Done: {_count(changes, 'change')} (demo agent, not an AI)", flush=True)
    if failures:
        print(f"{_count(failures, 'instruction')} failed", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
