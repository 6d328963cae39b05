"""The forge REST clients against the fake forge (a real HTTP server on 127.0.0.1): pull
requests opened once, found again, reopened; comments; reviews and their inline comments;
conditional requests; errors that name the problem and never the token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bosun.config import ForgeConfig
from bosun.forges import ForgeClient, ForgeError, InlineComment
from tests.conftest import git
from tests.fakes.forge import FakeForge
from tests.forgekit import TOKEN, forge_table


@pytest.fixture(params=["forgejo", "gitea", "github"])
def forge(request: pytest.FixtureRequest, origin: Path) -> Iterator[FakeForge]:
    git(origin, "branch", "task/1-x")
    with FakeForge(request.param, token=TOKEN, git_dir=origin) as fake:
        yield fake


def client_for(forge: FakeForge, token: str = TOKEN, **extra: object) -> ForgeClient:
    return ForgeClient(ForgeConfig.model_validate(forge_table(forge, **extra)), token)


async def test_open_once_then_find_it(forge: FakeForge, origin: Path) -> None:
    async with client_for(forge) as client:
        assert await client.find_pull("task/1-x") is None
        pr = await client.create_pull(title="Add x", body="why", head="task/1-x", base="main")
        assert pr.number == 1 and pr.state == "open" and not pr.merged
        assert pr.head_sha == git(origin, "rev-parse", "task/1-x")
        assert pr.url.startswith(forge.web)
        # a second create for the same branch returns the open one: never a second PR
        again = await client.create_pull(title="Add x", body="why", head="task/1-x", base="main")
        assert again.number == 1
        found = await client.find_pull("task/1-x")
        assert found is not None and found.number == 1
    assert len(forge.pulls) == 1
    created = forge.calls_to("POST", "/pulls")
    assert created[0].body == {"title": "Add x", "body": "why", "head": "task/1-x", "base": "main"}
    assert all(c.authorized for c in forge.calls)


async def test_a_branch_that_was_never_pushed_is_refused(forge: FakeForge) -> None:
    async with client_for(forge) as client:
        with pytest.raises(ForgeError, match="HTTP 422: head branch task/9-y does not exist"):
            await client.create_pull(title="t", body="", head="task/9-y", base="main")


async def test_reopen_comment_and_conditional_get(forge: FakeForge) -> None:
    async with client_for(forge) as client:
        pr = await client.create_pull(title="t", body="", head="task/1-x", base="main")
        first, changed = await client.get_pull(pr.number)
        assert changed and first.state == "open"
        same, changed = await client.get_pull(pr.number)
        assert not changed and same == first
        assert forge.calls_to("GET", f"/pulls/{pr.number}")[-1].headers["if-none-match"]
        forge.close(pr.number)
        closed, changed = await client.get_pull(pr.number)
        assert changed and closed.state == "closed" and not closed.merged
        reopened = await client.reopen(pr.number)
        assert reopened.state == "open"
        assert await client.comment(pr.number, "hello") is not None
        forge.merge(pr.number)
        merged, changed = await client.get_pull(pr.number)
        assert changed and merged.merged
    assert forge.comments[0]["body"] == "hello"


async def test_reviews_and_their_inline_comments(forge: FakeForge) -> None:
    async with client_for(forge) as client:
        pr = await client.create_pull(title="t", body="", head="task/1-x", base="main")
        reviews, changed = await client.reviews(pr.number)
        assert reviews == [] and changed
        state = "CHANGES_REQUESTED" if forge.kind == "github" else "REQUEST_CHANGES"
        made = forge.add_review(
            pr.number, state, "Rename it", [("a.py", 3, "here"), ("b.md", None, "x")]
        )
        reviews, changed = await client.reviews(pr.number)
        assert changed and [(r.id, r.state, r.body, r.author) for r in reviews] == [
            (made["id"], "changes_requested", "Rename it", "reviewer")
        ]
        _, changed = await client.reviews(pr.number)
        assert not changed  # 304
        comments = await client.review_comments(pr.number, made["id"])
        assert comments == [
            InlineComment("a.py", 3, "here", "reviewer"),
            InlineComment("b.md", None, "x", "reviewer"),
        ]


async def test_errors_name_the_problem_not_the_token(forge: FakeForge) -> None:
    async with client_for(forge, token="wrong-token-value") as client:
        with pytest.raises(ForgeError) as info:
            await client.find_pull("task/1-x")
    assert info.value.status == 401
    assert "HTTP 401" in info.value.message and "token_env" in (info.value.hint or "")
    assert "wrong-token-value" not in str(info.value)
    async with client_for(forge) as client:
        with pytest.raises(ForgeError, match="HTTP 404") as missing:
            await client.get_pull(99)
        assert missing.value.status == 404
        forge.failures.append(500)
        with pytest.raises(ForgeError, match="HTTP 500: injected failure"):
            await client.find_pull("task/1-x")
    cfg = ForgeConfig.model_validate(forge_table(forge))
    forge.stop()
    async with ForgeClient(cfg, TOKEN) as client:
        with pytest.raises(ForgeError, match="cannot connect") as down:
            await client.find_pull("task/1-x")
    assert "reachable" in (down.value.hint or "")


async def test_draft_pull_requests(origin: Path) -> None:
    git(origin, "branch", "task/1-x")
    for kind in ("gitea", "github"):
        with FakeForge(kind, token=TOKEN, git_dir=origin) as forge:
            async with client_for(forge, draft=True) as client:
                await client.create_pull(title="t", body="", head="task/1-x", base="main")
            sent = forge.calls_to("POST", "/pulls")[0].body
            assert sent["draft"] is True if kind == "github" else sent["title"] == "WIP: t"
