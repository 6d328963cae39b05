"""The token contract: every rule of ``bosun.store.base.TokenStore``, for any backend.

A backend's test module subclasses ``TokenContract`` (named ``Test...``) and provides the
fixtures ``store`` (a fresh, empty, open store) and ``peer_store`` (a second store on the
same database, as another process would open it).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from time import monotonic
from typing import Any

import pytest
import sqlalchemy as sa

from bosun.errors import InputError, NotFound
from bosun.store.base import ApiToken, TokenStore
from bosun.store.schema import tokens as tokens_table
from bosun.store.sql import SqlStore


def _tokens(store: Any) -> TokenStore:
    assert isinstance(store, TokenStore)
    return store


class TokenContract:
    async def test_create_returns_the_secret_once_and_stores_only_its_hash(
        self, store: SqlStore
    ) -> None:
        token, secret = await _tokens(store).create_token("ops", "admin")
        assert re.fullmatch(r"bsn_[A-Za-z0-9_-]{43}", secret)
        assert token.kind == "admin" and token.name == "ops" and token.agent is None
        assert token.prefix == secret[: len(token.prefix)] and 8 <= len(token.prefix) < 20
        assert token.last_used_at is None and token.revoked_at is None
        async with store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(tokens_table))).mappings().all()
        assert len(rows) == 1
        stored = " ".join(str(v) for v in rows[0].values())
        assert secret not in stored  # the secret is nowhere in the row...
        assert rows[0]["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        assert all(secret not in str(t.to_json()) for t in await store.list_tokens())

    async def test_authenticate_finds_the_token_of_a_secret_and_nothing_else(
        self, store: SqlStore
    ) -> None:
        admin, admin_secret = await store.create_token("ops", "admin")
        agent, agent_secret = await store.create_token(
            "gpu-box", "agent", agent="gpu-box", capabilities=["claude", "codex"]
        )
        found = await store.authenticate_token(admin_secret)
        assert found is not None and found.id == admin.id and found.kind == "admin"
        found = await store.authenticate_token(agent_secret)
        assert found is not None and found.id == agent.id
        assert found.agent == "gpu-box" and found.capabilities == ("claude", "codex")
        for wrong in (
            "",
            "bsn_",
            admin_secret[:-1] + ("A" if admin_secret[-1] != "A" else "B"),
            admin_secret + "x",
            "Bearer " + admin_secret,
            "\x00" * 47,
            "bsn_\ud800",
        ):
            assert await store.authenticate_token(wrong) is None

    async def test_authenticate_records_last_use_without_a_write_per_request(
        self, store: SqlStore, peer_store: SqlStore
    ) -> None:
        token, secret = await store.create_token("ops", "admin")
        assert await store.authenticate_token(secret) is not None
        first_use = (await peer_store.get_token(token.id)).last_used_at
        assert first_use is not None
        for _ in range(5):
            assert await store.authenticate_token(secret) is not None
        # Within the minute no new write: the stored time is still the first one.
        assert (await peer_store.get_token(token.id)).last_used_at == first_use

    async def test_revoke_by_id_or_name_is_seen_by_another_process(
        self, store: SqlStore, peer_store: SqlStore
    ) -> None:
        a, a_secret = await store.create_token("a", "admin")
        b, b_secret = await store.create_token("b", "agent", agent="b", capabilities=["claude"])
        assert await peer_store.authenticate_token(a_secret) is not None
        revoked = await store.revoke_token(a.id)
        assert revoked.revoked_at is not None and revoked.id == a.id
        assert await peer_store.authenticate_token(a_secret) is None
        assert (await store.revoke_token("b")).id == b.id
        assert await peer_store.authenticate_token(b_secret) is None
        again = await store.revoke_token(str(a.id))  # idempotent, id as text too
        assert again.revoked_at == revoked.revoked_at
        assert [t.id for t in await store.list_tokens()] == []
        assert [t.id for t in await store.list_tokens(include_revoked=True)] == [a.id, b.id]

    async def test_the_token_cache_forgets_a_revoked_token(
        self, store: SqlStore, peer_store: SqlStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``cache_tokens`` (the API turns it on): a revoke through the same store is
        immediate; one by another process once the remembered token expires."""
        peer_store.cache_tokens(60)
        a, a_secret = await store.create_token("a", "admin")
        _, b_secret = await peer_store.create_token("b", "admin")
        assert await peer_store.authenticate_token("bsn_" + "C" * 43) is None
        assert await peer_store.authenticate_token(a_secret) is not None
        assert await peer_store.authenticate_token(b_secret) is not None
        await peer_store.revoke_token("b")
        assert await peer_store.authenticate_token(b_secret) is None
        await store.revoke_token(a.id)
        remembered = await peer_store.authenticate_token(a_secret)
        assert remembered is not None and remembered.id == a.id
        later = monotonic() + 61
        monkeypatch.setattr("bosun.store.sql_tokens.monotonic", lambda: later)
        assert await peer_store.authenticate_token(a_secret) is None
        assert await store.authenticate_token(a_secret) is None  # no cache: at once
        with pytest.raises(InputError, match="seconds"):
            peer_store.cache_tokens(-1)

    async def test_names_are_unique_among_live_tokens(self, store: SqlStore) -> None:
        first, _ = await store.create_token("ops", "admin")
        with pytest.raises(InputError, match="already exists"):
            await store.create_token("ops", "admin")
        await store.revoke_token("ops")
        second, secret = await store.create_token("ops", "admin")
        assert second.id != first.id
        assert (await store.get_token("ops")).id == second.id  # the live one wins
        assert (await store.get_token(first.id)).revoked_at is not None
        assert await store.authenticate_token(secret) is not None

    async def test_unknown_tokens_are_not_found(self, store: SqlStore) -> None:
        for ident in (999, "999", "nobody", 2**70):
            with pytest.raises(NotFound, match="token"):
                await store.get_token(ident)
            with pytest.raises(NotFound, match="bosun token list"):
                await store.revoke_token(ident)

    @pytest.mark.parametrize(
        ("name", "kind", "kwargs", "match"),
        [
            ("ops", "root", {}, "unknown token kind"),
            ("", "admin", {}, "not allowed"),
            ("has space", "admin", {}, "not allowed"),
            ("x" * 200, "admin", {}, "not allowed"),
            ("a", "agent", {}, "needs an agent name"),
            ("a", "agent", {"agent": "bad name"}, "not allowed"),
            ("a", "agent", {"agent": "a", "capabilities": ["bad cap"]}, "not allowed"),
            ("a", "admin", {"agent": "a"}, "admin token has no agent"),
            ("a", "admin", {"capabilities": ["claude"]}, "admin token has no agent"),
        ],
    )
    async def test_bad_input_is_refused_and_nothing_is_stored(
        self, store: SqlStore, name: str, kind: str, kwargs: dict[str, Any], match: str
    ) -> None:
        with pytest.raises(InputError, match=match):
            await store.create_token(name, kind, **kwargs)
        assert await store.list_tokens(include_revoked=True) == []

    async def test_capabilities_are_kept_in_order_without_duplicates(self, store: SqlStore) -> None:
        token, _ = await store.create_token(
            "w", "agent", agent="w", capabilities=["codex", "claude", "codex"]
        )
        assert token.capabilities == ("codex", "claude")
        assert (await store.get_token("w")).capabilities == ("codex", "claude")

    async def test_concurrent_creates_of_one_name_store_one_token(
        self, store: SqlStore, peer_store: SqlStore
    ) -> None:
        results = await asyncio.gather(
            *(s.create_token("race", "admin") for s in (store, peer_store, store, peer_store)),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, tuple)]
        assert len(made) == 1
        assert all(isinstance(r, InputError) for r in results if not isinstance(r, tuple))
        live = await store.list_tokens()
        assert [t.name for t in live] == ["race"]

    async def test_to_json_has_no_secret_material(self, store: SqlStore) -> None:
        token, secret = await store.create_token("ops", "admin")
        data = token.to_json()
        assert set(data) == {
            "id", "name", "kind", "agent", "capabilities", "prefix",
            "created_at", "last_used_at", "revoked_at",
        }  # fmt: skip
        assert secret not in str(data)
        assert isinstance(token, ApiToken)
