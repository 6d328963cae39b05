"""Issue bodies split into sections, and the exact prompts built from them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bosun.prompt import Sections, build_prompt, split_body

CLOSING = """## When you are done

- Make your changes in the current directory. You do not need to commit: bosun
  commits whatever you leave in the working tree.
- End with a short summary of what you did and anything you could not do.
"""

BODY = """Some preamble.

## Goal
Add a `--json` flag to `bosun list`.

### Constraints:
- Keep the table output unchanged
* No new dependencies
1. Follow the existing
   style

## Acceptance criteria
- [ ] `bosun list --json` prints a JSON array
- [x] tests pass

# Background
The API already returns JSON.

## Screenshots
![x](y.png)
"""


# -- split_body ----------------------------------------------------------------------------
def test_body_without_headings_is_all_goal() -> None:
    assert split_body("\n \n  Fix the typo in README.\n\nThanks!  \n\t\n") == Sections(
        goal="  Fix the typo in README.\n\nThanks!  "
    )
    assert split_body("") == Sections()


def test_headings_synonyms_and_lists() -> None:
    assert split_body(BODY) == Sections(
        goal="Some preamble.\n\nAdd a `--json` flag to `bosun list`.",
        constraints=(
            "Keep the table output unchanged",
            "No new dependencies",
            "Follow the existing style",
        ),
        validation=("`bosun list --json` prints a JSON array", "tests pass"),
        context="The API already returns JSON.",
        other="### Screenshots\n\n![x](y.png)",
    )


@pytest.mark.parametrize(
    ("heading", "field"),
    [
        ("# TASK", "goal"),
        ("## description", "goal"),
        ("### Summary ###", "goal"),
        ("## **Requirements**", "constraints"),
        ("## Rules", "constraints"),
        ("## Tests", "validation"),
        ("## Done when:", "validation"),
        ("## Definition of  Done", "validation"),
        ("## Notes", "context"),
        ("## Background", "context"),
    ],
)
def test_heading_synonyms(heading: str, field: str) -> None:
    sections = split_body(f"{heading}\n- item one\n")
    value = getattr(sections, field)
    assert value in ("- item one", ("item one",))


def test_paragraphs_and_continuations_in_list_sections() -> None:
    body = "## Constraints\nKeep it small\nand fast.\n\n+ second\n  wrapped\n2) third\n-\n"
    assert split_body(body).constraints == ("Keep it small and fast.", "second wrapped", "third")


def test_repeated_sections_are_joined() -> None:
    body = "## Context\none\n## Goal\ngoal\n## Context\ntwo\n## Tests\n- a\n## Tests\n- b\n"
    sections = split_body(body)
    assert sections.context == "one\n\ntwo"
    assert sections.goal == "goal"
    assert sections.validation == ("a", "b")


def test_headings_inside_code_fences_and_deep_headings_are_text() -> None:
    body = "Run:\n```sh\n# Constraints\nmake\n```\n#### Goal\n#hashtag\n~~~\n## Tests\n~~~\n"
    sections = split_body(body)
    assert sections.goal == body.strip()
    assert sections.constraints == ()
    assert sections.validation == ()


def test_unknown_and_empty_headings_go_to_other() -> None:
    body = "do it\r\n## Links\r\nhttp://x\r\n#\r\nbare\n"
    sections = split_body(body)
    assert sections.goal == "do it"
    assert sections.other == "### Links\n\nhttp://x\n\n###\n\nbare"


# -- build_prompt --------------------------------------------------------------------------
def test_minimal_prompt() -> None:
    assert build_prompt("Fix typo", "") == "# Task: Fix typo\n\n## Goal\n\nFix typo\n\n" + CLOSING


def test_full_prompt() -> None:
    prompt = build_prompt(
        "Add JSON output",
        BODY,
        constraints=["No new dependencies", "Be brief"],
        validation=["pytest -q"],
        repo="bosun",
        branch="task/7-add-json",
        base_branch="main",
        scope=["src/bosun/cli.py", "tests"],
        review="## Changes requested\nPlease rename the flag.",
        attempt=2,
        previous_error="exited with code 1: ```boom```",
    )
    assert prompt == (
        """# Task: Add JSON output

## Goal

Some preamble.

Add a `--json` flag to `bosun list`.

## Constraints

- No new dependencies
- Be brief
- Keep the table output unchanged
- Follow the existing style

## Validation

- pytest -q
- `bosun list --json` prints a JSON array
- tests pass

## Context

- Repository: bosun
- Branch: task/7-add-json
- Base branch: main
- Scope: only change files under: src/bosun/cli.py, tests

The API already returns JSON.

## Additional details

### Screenshots

![x](y.png)

## Review feedback

#### Changes requested
Please rename the flag.

## Previous attempt

This is attempt 2. The previous attempt failed with:

````text
exited with code 1: ```boom```
````

"""
        + CLOSING
    )


def test_retry_without_error_and_multiline_items() -> None:
    prompt = build_prompt(
        "T\nwith newline", "Body", constraints=["line one\nline two", "  "], attempt=3
    )
    assert prompt.startswith("# Task: T with newline\n\n## Goal\n\nBody\n\n")
    assert "## Constraints\n\n- line one\n  line two\n\n" in prompt
    assert "## Previous attempt\n\nThis is attempt 3.\n\n## When you are done" in prompt


def test_unclosed_fence_is_closed_inside_its_section() -> None:
    prompt = build_prompt("T", "```python\nprint(1)\n")
    assert "## Goal\n\n```python\nprint(1)\n```\n\n## When you are done" in prompt


def test_prompt_is_deterministic() -> None:
    assert build_prompt("T", BODY, scope=["a"]) == build_prompt("T", BODY, scope=["a"])


# -- properties ----------------------------------------------------------------------------
SECTION_NAMES = (
    "Goal",
    "Constraints",
    "Validation",
    "Context",
    "Additional details",
    "Review feedback",
    "Previous attempt",
    "When you are done",
)
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def top_level_headings(prompt: str) -> list[str]:
    """``#`` / ``##`` heading lines of the prompt outside fenced code."""
    found = []
    fence: str | None = None
    for line in prompt.split("\n"):
        m = FENCE.match(line)
        if fence is None and m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence = m.group(1)
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None if not m.group(2).strip() else fence
        elif re.match(r"^ {0,3}#{1,2}([ \t]|$)", line):  # CommonMark: space or tab only
            found.append(line.strip())
    return found


TOKENS = [*"ab #-*`~:\n\r\t1.[]x", "Goal", "Tests", "## ", "```", "\u2028", "é"]
markdownish = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)
options = st.fixed_dictionaries(
    {},
    optional={
        "constraints": st.lists(st.text(max_size=30), max_size=3),
        "validation": st.lists(st.text(max_size=30), max_size=3),
        "repo": st.text(max_size=10),
        "branch": st.text(max_size=10),
        "base_branch": st.text(max_size=10),
        "scope": st.lists(st.text(max_size=10), max_size=3),
        "review": markdownish,
        "attempt": st.integers(-2, 5),
        "previous_error": markdownish,
    },
)


@given(title=st.text(max_size=40), body=markdownish | st.text(max_size=200), kw=options)
def test_build_prompt_never_raises_and_never_duplicates_a_section(
    title: str, body: str, kw: dict[str, object]
) -> None:
    prompt = build_prompt(title, body, **kw)  # type: ignore[arg-type]
    headings = top_level_headings(prompt)
    assert headings[0].startswith("# Task:")
    assert [h for h in headings if not h.startswith("## ")] == [headings[0]]
    names = [h.removeprefix("## ") for h in headings[1:]]
    assert len(names) == len(set(names))
    assert set(names) <= set(SECTION_NAMES)
    assert names == [n for n in SECTION_NAMES if n in names]  # fixed order
    assert prompt.endswith(CLOSING)


@given(title=st.text(max_size=40).filter(lambda t: "\n" not in t and "\r" not in t))
def test_title_appears_verbatim(title: str) -> None:
    prompt = build_prompt(title, "")
    assert prompt.startswith(f"# Task: {title.strip() or '(untitled)'}\n")


@given(body=st.text(max_size=300))
def test_plain_body_appears_verbatim_as_the_goal(body: str) -> None:
    normalized = body.replace("\r\n", "\n").replace("\r", "\n")
    lines = normalized.split("\n")
    if any(re.match(r"^ {0,3}(#{1,3}(\s|$)|```|~~~)", line) for line in lines):
        return  # headings and fences are structure, not plain text
    text = [i for i, line in enumerate(lines) if line.strip()]
    if not text:
        assert split_body(body).goal == ""
        return
    expected = "\n".join(lines[text[0] : text[-1] + 1])  # without blank lines around it
    assert split_body(body).goal == expected
    assert f"## Goal\n\n{expected}\n\n" in build_prompt("T", body)
