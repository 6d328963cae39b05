"""Webhook signatures and headers of each forge (pure).

Every forge signs a delivery with HMAC-SHA256 of the raw body under the webhook's secret:
Forgejo in ``X-Forgejo-Signature`` (hex; it also sends ``X-Gitea-Signature`` and
``X-Hub-Signature-256``), Gitea in ``X-Gitea-Signature`` (hex), GitHub in
``X-Hub-Signature-256`` (``sha256=<hex>``). bosun recomputes the HMAC and compares the
digests with ``hmac.compare_digest`` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

__all__ = [
    "FORGES",
    "delivery_id",
    "event_name",
    "event_type",
    "sign",
    "signature",
    "verify",
]

FORGES = ("forgejo", "gitea", "github")

_SIGNATURE_HEADERS: Mapping[str, tuple[str, ...]] = {
    "forgejo": ("x-forgejo-signature", "x-gitea-signature", "x-hub-signature-256"),
    "gitea": ("x-gitea-signature", "x-hub-signature-256"),
    "github": ("x-hub-signature-256",),
}
_EVENT_HEADERS: Mapping[str, tuple[str, ...]] = {
    "forgejo": ("x-forgejo-event", "x-gitea-event"),
    "gitea": ("x-gitea-event",),
    "github": ("x-github-event",),
}
_TYPE_HEADERS: Mapping[str, tuple[str, ...]] = {
    "forgejo": ("x-forgejo-event-type", "x-gitea-event-type"),
    "gitea": ("x-gitea-event-type",),
    "github": (),
}
_DELIVERY_HEADERS: Mapping[str, tuple[str, ...]] = {
    "forgejo": ("x-forgejo-delivery", "x-gitea-delivery"),
    "gitea": ("x-gitea-delivery",),
    "github": ("x-github-delivery",),
}


def _first(headers: Mapping[str, str], names: Sequence[str]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def signature(forge: str, headers: Mapping[str, str]) -> bytes | None:
    """The digest the delivery claims (from the forge's first signature header present),
    or None when it carries none or it is not hex. ``headers``: lower-case names."""
    for name in _SIGNATURE_HEADERS[forge]:
        value = headers.get(name)
        if value is None:
            continue
        text = value.strip()
        if name == "x-hub-signature-256":
            if not text.lower().startswith("sha256="):
                return None
            text = text[7:]
        if len(text) != 64:
            return None
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    return None


def sign(body: bytes, secret: str) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret`` (what a forge sends)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, claimed: bytes | None, secret: str) -> bool:
    """Whether ``claimed`` is the HMAC-SHA256 of ``body`` under ``secret``."""
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    # compare even without a claim, so both paths take the same time
    return hmac.compare_digest(expected, claimed or b"") and claimed is not None


def event_name(forge: str, headers: Mapping[str, str]) -> str | None:
    return _first(headers, _EVENT_HEADERS[forge])


def event_type(forge: str, headers: Mapping[str, str]) -> str | None:
    return _first(headers, _TYPE_HEADERS[forge])


def delivery_id(forge: str, headers: Mapping[str, str]) -> str | None:
    return _first(headers, _DELIVERY_HEADERS[forge])
