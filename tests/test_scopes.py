from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bosun import scopes
from bosun.errors import InputError


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("src/api/", "src/api"),
        ("src/api/**", "src/api"),
        ("./docs", "docs"),
        ("*", "."),
        ("a//b", "a/b"),
    ],
)
def test_normalize(raw: str, norm: str) -> None:
    assert scopes.normalize(raw) == norm


@pytest.mark.parametrize("bad", ["/etc", "../x", "a/../../b", "a\x00b"])
def test_paths_outside_the_repo_are_refused(bad: str) -> None:
    with pytest.raises(InputError, match="inside"):
        scopes.normalize(bad)


def test_overlap_is_by_path_component() -> None:
    assert scopes.overlap(["src"], ["src/api/x.py"])
    assert scopes.overlap(["src/api/x.py"], ["src"])
    assert not scopes.overlap(["src/api"], ["src/apiary"])
    assert scopes.overlap(["."], ["anything"])
    assert not scopes.overlap([], ["src"])


def test_collisions_need_the_same_repo() -> None:
    assert scopes.collides("a", ["src"], "a", ["src/x"])
    assert not scopes.collides("a", ["src"], "b", ["src"])
    assert not scopes.collides(None, ["src"], None, ["src"])


segment = st.text(alphabet="abcxyz_-", min_size=1, max_size=4)
path = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(path, path)
def test_overlap_is_symmetric(a: str, b: str) -> None:
    assert scopes.overlap([a], [b]) == scopes.overlap([b], [a])


@given(path, segment)
def test_a_path_overlaps_its_children(a: str, child: str) -> None:
    assert scopes.overlap([a], [f"{a}/{child}"])
