"""API tokens in the ``tokens`` table (the ``TokenStore`` protocol).

A secret is ``bsn_`` followed by 43 url-safe base64 characters (256 random bits). Only its
SHA-256 (hex) and its first characters (``prefix``, to tell tokens apart in lists) are
stored; the secret itself is returned once, by ``create_token``, and never again.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from time import monotonic

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from bosun.errors import InputError, NotFound
from bosun.store.base import TOKEN_KINDS, ApiToken
from bosun.store.schema import tokens
from bosun.store.sql_base import SqlBase, first, shielded, utcnow

__all__ = ["PREFIX_LEN", "SECRET_PREFIX", "TokenMethods", "hash_secret", "new_secret"]

SECRET_PREFIX = "bsn_"  # noqa: S105 - a public marker, not a secret
PREFIX_LEN = 12  # "bsn_" + 8 random characters shown in lists
#: ``last_used_at`` is written at most this often per token (a write costs a lock).
TOUCH_EVERY = timedelta(seconds=60)
#: Tokens ``cache_tokens`` remembers at most.
_TOKEN_CACHE_MAX = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_SECRET = re.compile(r"^bsn_[A-Za-z0-9_-]{43}$")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _token(row: RowMapping) -> ApiToken:
    return ApiToken(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        agent=row["agent"],
        capabilities=tuple(row["capabilities"] or ()),
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise InputError(
            f"{what} {name[:60]!r} is not allowed",
            "use up to 128 letters, digits, '_', '.', '@' or '-', starting with a letter or digit",
        )
    return name


class TokenMethods(SqlBase):
    """``create_token`` / ``list_tokens`` / ``get_token`` / ``revoke_token`` /
    ``authenticate_token`` over the ``tokens`` table."""

    # The last time this process wrote ``last_used_at`` of each token id.
    _token_touched: dict[int, datetime]
    # ``cache_tokens``: seconds a successful authentication is remembered (0: never), and
    # the remembered ones, by secret hash: (monotonic expiry, token).
    _token_cache_seconds: float = 0.0
    _token_cache: dict[str, tuple[float, ApiToken]]

    def cache_tokens(self, seconds: float) -> None:
        """Remember each successful ``authenticate_token`` for ``seconds`` (0, the default:
        every call reads the table). A token revoked through this store stops working at
        once; revoked by another process, it keeps working here for up to ``seconds``.
        The API turns it on (bosun.server.app): a lookup cost about 0.7 ms of CPU
        per request, a hit costs microseconds."""
        if seconds < 0:
            raise InputError(f"a token cache of {seconds} seconds", "give 0 or more seconds")
        self._token_cache_seconds = seconds
        self._token_cache = {}

    @shielded
    async def create_token(
        self,
        name: str,
        kind: str,
        *,
        agent: str | None = None,
        capabilities: Sequence[str] = (),
    ) -> tuple[ApiToken, str]:
        if kind not in TOKEN_KINDS:
            raise InputError(f"unknown token kind {kind!r}", "use admin or agent")
        _check_name(name, "token name")
        caps = tuple(dict.fromkeys(capabilities))
        if kind == "agent":
            if agent is None:
                raise InputError("an agent token needs an agent name", "pass --agent NAME")
            _check_name(agent, "agent name")
            for cap in caps:
                _check_name(cap, "capability")
        elif agent is not None or caps:
            raise InputError(
                "an admin token has no agent name or capabilities",
                "drop --agent/--capabilities, or create an agent token instead",
            )
        secret = new_secret()
        now = utcnow()
        async with self._write() as tx:
            # Serialise with every other writer of the check below (free on SQLite; an
            # advisory lock on PostgreSQL, where the name has no unique index to lean on).
            await self._ops.lock_for_claim(tx.conn)
            clash = await first(
                tx.conn,
                sa.select(tokens.c.id).where(tokens.c.name == name, tokens.c.revoked_at.is_(None)),
            )
            if clash is not None:
                raise InputError(
                    f"a token named {name!r} already exists (id {clash['id']})",
                    "pick another --name, or revoke the old one with `bosun token revoke`",
                )
            result = await tx.write(
                sa.insert(tokens).values(
                    name=name,
                    kind=kind,
                    agent=agent if kind == "agent" else None,
                    capabilities=list(caps),
                    secret_hash=hash_secret(secret),
                    prefix=secret[:PREFIX_LEN],
                    created_at=now,
                    last_used_at=None,
                    revoked_at=None,
                )
            )
            token_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            row = await first(tx.conn, sa.select(tokens).where(tokens.c.id == token_id))
        assert row is not None
        return _token(row), secret

    async def list_tokens(self, *, include_revoked: bool = False) -> list[ApiToken]:
        stmt = sa.select(tokens).order_by(tokens.c.id)
        if not include_revoked:
            stmt = stmt.where(tokens.c.revoked_at.is_(None))
        async with self._read() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_token(r) for r in rows]

    async def get_token(self, ident: int | str) -> ApiToken:
        async with self._read() as conn:
            row = await first(conn, self._token_query(ident))
        if row is None:
            raise _token_not_found(ident)
        return _token(row)

    @shielded
    async def revoke_token(self, ident: int | str) -> ApiToken:
        async with self._write() as tx:
            row = await first(tx.conn, self._token_query(ident))
            if row is None:
                raise _token_not_found(ident)
            if row["revoked_at"] is None:
                await tx.write(
                    sa.update(tokens).where(tokens.c.id == row["id"]).values(revoked_at=utcnow())
                )
            row = await first(tx.conn, sa.select(tokens).where(tokens.c.id == row["id"]))
        assert row is not None
        if self._token_cache_seconds:
            self._token_cache.pop(row["secret_hash"], None)
        return _token(row)

    async def authenticate_token(self, secret: str) -> ApiToken | None:
        if not _SECRET.match(secret):
            return None  # not one of ours: no database round trip
        digest = hash_secret(secret)
        token = self._cached_token(digest)
        if token is None:
            async with self._read() as conn:
                row = await first(
                    conn,
                    sa.select(tokens).where(
                        tokens.c.secret_hash == digest, tokens.c.revoked_at.is_(None)
                    ),
                )
            if row is None:
                return None  # never cached: a token created elsewhere works at once
            # Defence in depth: the index lookup matched on the hash; compare in constant time.
            if not secrets.compare_digest(row["secret_hash"], digest):
                return None
            token = _token(row)
            if self._token_cache_seconds:
                self._remember_token(digest, token)
        now = utcnow()
        touched = self.__dict__.setdefault("_token_touched", {})
        last = touched.get(token.id) or token.last_used_at
        if last is None or now - last >= TOUCH_EVERY:
            touched[token.id] = now
            await self._touch_token(token.id, now)
        return token

    def _cached_token(self, digest: str) -> ApiToken | None:
        if not self._token_cache_seconds:
            return None
        hit = self._token_cache.get(digest)
        if hit is None:
            return None
        if hit[0] <= monotonic():
            del self._token_cache[digest]
            return None
        return hit[1]

    def _remember_token(self, digest: str, token: ApiToken) -> None:
        now = monotonic()
        if len(self._token_cache) >= _TOKEN_CACHE_MAX:  # only live tokens get in: rare
            self._token_cache = {k: v for k, v in self._token_cache.items() if v[0] > now}
            if len(self._token_cache) >= _TOKEN_CACHE_MAX:
                self._token_cache.clear()
        self._token_cache[digest] = (now + self._token_cache_seconds, token)

    @shielded
    async def _touch_token(self, token_id: int, now: datetime) -> None:
        async with self._write() as tx:
            await tx.write(
                sa.update(tokens).where(tokens.c.id == token_id).values(last_used_at=now)
            )

    @staticmethod
    def _token_query(ident: int | str) -> sa.Select[tuple[object, ...]]:
        if isinstance(ident, int) or (isinstance(ident, str) and ident.isdigit()):
            try:
                token_id = int(ident)
            except ValueError:  # pragma: no cover - isdigit() accepts other digits
                token_id = -1
            if token_id > 2**31 - 1:  # no backend stores such an id (PostgreSQL: INTEGER)
                token_id = -1
            return sa.select(tokens).where(tokens.c.id == token_id)
        # By name: the live token of that name, else the newest revoked one.
        return (
            sa.select(tokens)
            .where(tokens.c.name == ident)
            .order_by(tokens.c.revoked_at.is_not(None), tokens.c.id.desc())
            .limit(1)
        )


def _token_not_found(ident: int | str) -> NotFound:
    return NotFound(f"no token {ident!r}", "list the tokens with `bosun token list`")
