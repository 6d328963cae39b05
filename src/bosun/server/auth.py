"""Bearer-token authentication and scope checks.

Secrets are 256-bit random strings (``bsn_`` + 43 url-safe characters); the store keeps
only their SHA-256, so looking a hash up is all authentication needs (an attacker who can
time the lookup learns about hashes of guesses, not about the secret). The secret is never
logged, put in an event or echoed in an error.
"""

from __future__ import annotations

from fastapi.security import HTTPAuthorizationCredentials

from bosun.server.errors import ApiError
from bosun.store.base import ApiToken, TokenStore

__all__ = ["authenticate", "check_kind", "unauthorized"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bosun"'}


def unauthorized(message: str, hint: str) -> ApiError:
    return ApiError(401, "unauthorized", message, hint, headers=_CHALLENGE)


async def authenticate(
    store: TokenStore, credentials: HTTPAuthorizationCredentials | None
) -> ApiToken:
    """The live token of an ``Authorization: Bearer`` header, else a 401."""
    if credentials is None:
        raise unauthorized(
            "this route needs an API token",
            "send `Authorization: Bearer <token>`; create one with `bosun token create --admin`",
        )
    if credentials.scheme.lower() != "bearer":
        raise unauthorized(
            f"unsupported authorization scheme {credentials.scheme[:20]!r}",
            "send `Authorization: Bearer <token>`",
        )
    secret = credentials.credentials.strip()
    token = await store.authenticate_token(secret) if secret else None
    if token is None:
        raise unauthorized(
            "the API token is unknown or was revoked",
            "check the token (`bosun token list` shows the prefixes of the live ones) "
            "or create a new one with `bosun token create`",
        )
    return token


def check_kind(token: ApiToken, kind: str) -> None:
    """403 unless ``token`` is of ``kind``."""
    if token.kind == kind:
        return
    if kind == "admin":
        raise ApiError(
            403,
            "forbidden",
            f"token {token.name!r} is an agent token; this route needs an admin token",
            "agent tokens may only use the pull routes and GET /api/v1/agents; "
            "use an admin token (`bosun token create --admin`)",
        )
    raise ApiError(
        403,
        "forbidden",
        f"token {token.name!r} is an {token.kind} token; this route is for pull agents",
        "use an agent token (`bosun token create --agent NAME --capabilities claude`)",
    )
