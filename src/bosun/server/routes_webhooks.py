"""``POST /api/v1/webhooks/{forge}``: forge webhooks (Forgejo, Gitea, GitHub) for the
review loop (``bosun.review``).

The one route besides the health checks without a bearer token: a delivery authenticates
by its HMAC-SHA256 signature over the raw body, under the ``webhook_secret`` of the
repository's ``[repos.NAME.forge]`` table. ``{forge}`` is a forge kind (``forgejo``,
``gitea``, ``github``: every repository of that kind is a candidate, and the payload's
``repository.full_name`` must be the ``repo`` of one whose secret signed it) or the name
of a bosun repository.

In order, each step ending the request when it fails, so that nothing is written for a
request that is not signed:

1. an unknown ``{forge}`` -> 404; a body over ``MAX_BODY`` -> 413;
2. no signature, or none of the candidates' secrets signed this body -> 401;
3. not a JSON object, or fields of the wrong type -> 400 saying what is wrong;
4. a delivery id seen before (``X-Forgejo-Delivery`` / ``X-Gitea-Delivery`` /
   ``X-GitHub-Delivery``; without one, the body's SHA-256) -> 200 ``duplicate``;
5. the event is normalised and handled -> 200 ``processed`` or ``ignored`` (unknown
   events, repositories bosun does not know, pull requests of no task).

If handling fails (the database is down...), the delivery is forgotten again and the
error returned, so the forge's redelivery is handled.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam

from bosun.config import ForgeConfig, Settings
from bosun.errors import BosunError
from bosun.forges import signatures
from bosun.forges.events import MalformedPayload, normalise, parse_body
from bosun.models import NewEvent
from bosun.review import Handled, ReviewLoop
from bosun.server.deps import SettingsDep, StoreDep
from bosun.server.errors import ApiError, error_body

__all__ = ["MAX_BODY", "router"]

log = logging.getLogger("bosun.server")

router = APIRouter(tags=["webhooks"])

#: The largest webhook body accepted (GitHub caps payloads at 25 MB; bosun's events are
#: far smaller).
MAX_BODY = 5 * 1024 * 1024

ForgeName = Annotated[
    str,
    PathParam(
        min_length=1,
        max_length=128,
        description="forgejo, gitea or github; or the name of a repo of bosun.toml",
    ),
]


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"example": error_body("code", "message", "hint")}},
    }


def _candidates(settings: Settings, forge: str) -> tuple[str, list[tuple[str, ForgeConfig]]]:
    """The forge kind and the (repo name, forge table) pairs this URL may be for."""
    repo = settings.repos.get(forge)
    if repo is not None and repo.forge is not None:
        return repo.forge.kind, [(forge, repo.forge)]
    if forge in signatures.FORGES:
        found = [
            (name, cfg.forge)
            for name, cfg in sorted(settings.repos.items())
            if cfg.forge is not None and cfg.forge.kind == forge
        ]
        return forge, found
    raise ApiError(
        404,
        "not_found",
        f"no webhook {forge!r}",
        "use /api/v1/webhooks/forgejo, /gitea or /github, or the name of a repo of "
        "bosun.toml that has a [repos.NAME.forge] table",
    )


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the webhook body is larger than {MAX_BODY} bytes",
        "send only the events bosun follows (pull requests, reviews, comments, pushes, issues)",
    )


def _signed_by(
    kind: str, headers: dict[str, str], body: bytes, candidates: list[tuple[str, ForgeConfig]]
) -> list[tuple[str, ForgeConfig]]:
    """The candidates whose webhook secret signed ``body``."""
    claimed = signatures.signature(kind, headers)
    matched = []
    for name, forge in candidates:
        try:
            secret = forge.webhook_secret()
        except BosunError as exc:  # configured, but the variable or file is missing
            log.warning("webhook of repo %s: %s", name, exc.message)
            continue
        if secret is not None and signatures.verify(body, claimed, secret):
            matched.append((name, forge))
    return matched


@router.post(
    "/api/v1/webhooks/{forge}",
    summary="A forge's webhook (signed, no bearer token)",
    responses={
        400: _err("The body is not a forge's JSON payload"),
        401: _err("The signature is missing or wrong"),
        404: _err("No such forge or repo"),
        413: _err("The body is too large"),
    },
)
async def webhook(
    forge: ForgeName, request: Request, settings: SettingsDep, store: StoreDep
) -> dict[str, Any]:
    """Receive one webhook delivery of a forge (see the module docstring)."""
    kind, candidates = _candidates(settings, forge)
    body = await _read_body(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    signed = _signed_by(kind, headers, body, candidates)
    if not signed:
        configured = any(
            f.webhook_secret_env is not None or f.webhook_secret_file is not None
            for _, f in candidates
        )
        raise ApiError(
            401,
            "unauthorized",
            "the webhook's signature is missing or does not match"
            if configured
            else f"no repo with a {kind} forge has a webhook secret configured",
            "give the forge's webhook the same secret as webhook_secret_env / "
            "webhook_secret_file of [repos.NAME.forge] (HMAC-SHA256 signatures)",
        )
    try:
        payload = parse_body(body)
        name = signatures.event_name(kind, headers)
        if name is None:
            header = "X-GitHub-Event" if kind == "github" else "X-Gitea-Event"
            raise MalformedPayload(f"the {header} header is missing")
        event = normalise(kind, name, payload, signatures.event_type(kind, headers))
    except MalformedPayload as exc:
        raise ApiError(
            400,
            "bad_request",
            f"malformed {kind} webhook: {exc}",
            "send the forge's own JSON payload (Content-Type: application/json)",
        ) from None
    wanted = (event.repo or "").lower()
    repo = next((n for n, f in signed if f.repo.lower() == wanted), None)
    if repo is None and event.repo is None and len(signed) == 1:
        repo = signed[0][0]
    if repo is None:
        return _answer(
            "ignored", None, event.kind.value, f"repository {event.repo} is not configured"
        )
    delivery = signatures.delivery_id(kind, headers)
    if delivery is None:
        delivery = "sha256:" + hashlib.sha256(body).hexdigest()
    key = f"{kind}:{delivery}"[:200]
    if not await store.record_delivery(key, forge=kind, event=event.name[:64] or "?", repo=repo):
        return _answer("duplicate", delivery, event.kind.value, "delivered before; ignored")
    loop = ReviewLoop(settings, store)
    try:
        handled = await loop.handle(repo, event, delivery=delivery)
        await store.finish_delivery(key, outcome=handled.outcome, task_id=handled.task_id)
        if handled.task_id is not None:
            await store.append_event(
                NewEvent(
                    "forge.webhook",
                    {**event.to_json(), "delivery": delivery, **handled.to_json()},
                    task_id=handled.task_id,
                )
            )
    except BaseException:
        await store.forget_delivery(key)
        raise
    finally:
        await loop.aclose()
    return _answer(_status(handled), delivery, event.kind.value, handled.outcome, handled)


def _status(handled: Handled) -> str:
    return "ignored" if handled.outcome.startswith(("ignored", "duplicate")) else "processed"


def _answer(
    status: str, delivery: str | None, event: str, outcome: str, handled: Handled | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "delivery": delivery,
        "event": event,
        "outcome": outcome,
        "task_id": handled.task_id if handled else None,
        "task_status": handled.status if handled else None,
    }
