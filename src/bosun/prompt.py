"""Issue -> prompt: split an issue body into sections and render the agent's prompt.

Pure and deterministic: the same task always gives the same prompt, and no input makes it
raise. An issue body may use Markdown headings (``#`` to ``###``, any case) to mark its
parts; synonyms are accepted:

=============  ==========================================================
goal           Goal, Goals, Task, Description, Summary, Objective, Problem
constraints    Constraints, Requirements, Rules
validation     Validation, Acceptance criteria, Tests, Testing, Test plan,
               Done when, Definition of done
context        Context, Background, Notes
=============  ==========================================================

Text before the first heading belongs to the goal, and a body without headings is all goal.
Sections under other headings are kept (``other``) with their heading. List items (``-``,
``*``, ``+``, ``1.``, ``1)``, with or without ``[ ]`` boxes) of constraints and validation
become separate entries. Headings inside fenced code blocks are text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Sections", "build_prompt", "split_body"]

_HEADING = re.compile(r"^ {0,3}(#{1,3})(?:[ \t]+(.*?))?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+\[[ xX]\])?(?:[ \t]+(.*))?$")
_SYNONYMS = {
    "goal": ("goal", "goals", "task", "description", "summary", "objective", "problem"),
    "constraints": ("constraints", "requirements", "rules"),
    "validation": (
        "validation",
        "acceptance criteria",
        "tests",
        "testing",
        "test plan",
        "done when",
        "definition of done",
    ),
    "context": ("context", "background", "notes"),
}
_KIND = {name: kind for kind, names in _SYNONYMS.items() for name in names}

_CLOSING = (
    "## When you are done\n\n"
    "- Make your changes in the current directory. You do not need to commit: bosun\n"
    "  commits whatever you leave in the working tree.\n"
    "- End with a short summary of what you did and anything you could not do."
)


@dataclass(frozen=True, slots=True)
class Sections:
    """The parts of an issue body."""

    goal: str = ""
    constraints: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    context: str = ""
    other: str = ""


class _Fences:
    """Tracks whether a line is inside a fenced code block."""

    def __init__(self) -> None:
        self.open: str | None = None  # the opening fence, e.g. "```"

    def step(self, line: str) -> bool:
        """Advance over ``line``; True when the line is code (fence lines included)."""
        match = _FENCE.match(line)
        if self.open is None:
            if match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
                self.open = match.group(1)
                return True
            return False
        fence = self.open
        if (
            match
            and match.group(1)[0] == fence[0]
            and len(match.group(1)) >= len(fence)
            and not match.group(2).strip()
        ):
            self.open = None
        return True


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _heading_kind(text: str) -> str:
    key = " ".join(text.strip(" \t:*_").lower().split())
    return _KIND.get(key, "other")


def split_body(body: str) -> Sections:
    """Split an issue body into goal, constraints, validation, context and other text."""
    # Each heading starts a new block; blocks of one kind are joined by one blank line.
    blocks: dict[str, list[list[str]]] = {kind: [[]] for kind in (*_SYNONYMS, "other")}
    current = blocks["goal"][0]
    fences = _Fences()
    for line in _lines(body):
        match = None if fences.step(line) else _HEADING.match(line)
        if match is None:
            current.append(line)
            continue
        text = re.sub(r"[ \t]+#+$", "", match.group(2) or "").strip()
        text = "" if set(text) <= {"#"} else text
        kind = _heading_kind(text)
        current = [f"### {text}".rstrip(), ""] if kind == "other" else []
        blocks[kind].append(current)
    return Sections(
        goal=_text(blocks["goal"]),
        constraints=_items(blocks["constraints"]),
        validation=_items(blocks["validation"]),
        context=_text(blocks["context"]),
        other=_text(blocks["other"]),
    )


def _trim(lines: list[str]) -> str:
    """Drop blank lines at both ends; indentation stays (a tab-indented ``#`` is no heading)."""
    kept = [i for i, line in enumerate(lines) if line.strip()]
    return "\n".join(lines[kept[0] : kept[-1] + 1]) if kept else ""


def _text(blocks: list[list[str]]) -> str:
    texts = (_trim(block) for block in blocks)
    return "\n\n".join(text for text in texts if text)


def _items(blocks: list[list[str]]) -> tuple[str, ...]:
    """List items and plain paragraphs, one entry each; wrapped lines are joined."""
    entries: list[list[str]] = []
    current: list[str] | None = None
    for line in (line for block in blocks for line in [*block, ""]):
        match = _ITEM.match(line)
        if match:
            current = [(match.group(1) or "").strip()]
            entries.append(current)
        elif not line.strip():
            current = None
        elif current is None:
            current = [line.strip()]
            entries.append(current)
        else:
            current.append(line.strip())
    joined = (" ".join(p for p in entry if p) for entry in entries)
    return tuple(entry for entry in joined if entry)


def _close_fences(text: str) -> str:
    """Close a code fence left open, so it cannot swallow the sections that follow."""
    fences = _Fences()
    for line in _lines(text):
        fences.step(line)
    return text if fences.open is None else f"{text}\n{fences.open}"


def _demote(text: str) -> str:
    """Push ``#`` / ``##`` headings of free text below the prompt's own section level."""
    fences = _Fences()
    out = []
    for line in _lines(text):
        if not fences.step(line) and re.match(r" {0,3}#{1,2}(?:[ \t]|$)", line):
            line = "##" + line.lstrip(" ")
        out.append(line)
    return "\n".join(out)


def _bullets(items: Iterable[str]) -> str:
    return "\n".join("- " + "\n  ".join(_lines(item)) for item in items)


def _unique(*groups: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for group in groups:
        for item in group:
            if item.strip():
                seen.setdefault(item.strip(), None)
    return list(seen)


def _code_block(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def build_prompt(
    title: str,
    body: str,
    *,
    constraints: Sequence[str] = (),
    validation: Sequence[str] = (),
    repo: str | None = None,
    branch: str | None = None,
    base_branch: str | None = None,
    scope: Sequence[str] = (),
    review: str | None = None,
    attempt: int = 1,
    previous_error: str | None = None,
) -> str:
    """The Markdown prompt for one run of a task.

    Sections, in order and only when they have content: Goal, Constraints (the task's,
    then the body's), Validation, Context (repository, branches, scope, body context),
    Additional details, Review feedback, Previous attempt, then a closing instruction.
    Free text cannot add a section of its own: ``#`` / ``##`` headings in review feedback
    are pushed down two levels, and a code fence left open is closed.
    """
    sections = split_body(body)
    heading = " ".join(_lines(title)).strip() or "(untitled)"
    out = [f"# Task: {heading}"]

    def add(name: str, text: str) -> None:
        out.append(f"## {name}\n\n{_close_fences(text)}")

    add("Goal", sections.goal or _demote(heading))
    if items := _unique(constraints, sections.constraints):
        add("Constraints", _bullets(items))
    if items := _unique(validation, sections.validation):
        add("Validation", _bullets(items))
    facts = []
    if repo:
        facts.append(f"Repository: {repo}")
    if branch:
        facts.append(f"Branch: {branch}")
    if base_branch:
        facts.append(f"Base branch: {base_branch}")
    if paths := _unique(scope):
        facts.append("Scope: only change files under: " + ", ".join(paths))
    context = "\n\n".join(p for p in (_bullets(facts), sections.context) if p)
    if context:
        add("Context", context)
    if sections.other:
        add("Additional details", sections.other)
    if review and review.strip():
        add("Review feedback", _demote(_trim(_lines(review))))
    if attempt > 1 or (previous_error and previous_error.strip()):
        text = f"This is attempt {attempt}."
        if previous_error and previous_error.strip():
            text += " The previous attempt failed with:\n\n" + _code_block(previous_error.strip())
        add("Previous attempt", text)
    out.append(_CLOSING)
    return "\n\n".join(out) + "\n"
