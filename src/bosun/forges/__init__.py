"""Forges (Forgejo, Gitea, GitHub): REST clients, webhook signatures and the normalisation
of webhook payloads into ``ForgeEvent`` values. The review loop that acts on them is
``bosun.review``; the webhook endpoint is ``bosun.server.routes_webhooks``."""

from bosun.forges.client import ForgeClient, ForgeError, PullRequest, Review
from bosun.forges.events import (
    EventKind,
    ForgeEvent,
    InlineComment,
    MalformedPayload,
    normalise,
    parse_body,
)
from bosun.forges.signatures import FORGES

__all__ = [
    "FORGES",
    "EventKind",
    "ForgeClient",
    "ForgeError",
    "ForgeEvent",
    "InlineComment",
    "MalformedPayload",
    "PullRequest",
    "Review",
    "normalise",
    "parse_body",
]
