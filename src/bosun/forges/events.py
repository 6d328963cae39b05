"""Forge webhook payloads -> ``ForgeEvent``: one small value whatever the forge (pure).

Forgejo and Gitea send the same payloads (Forgejo adds ``X-Forgejo-*`` headers next to
the ``X-Gitea-*`` ones); GitHub's differ in names and details. What each forge sends, and
what bosun makes of it:

=========================  =======================================  =====================
event                      Forgejo / Gitea                          GitHub
=========================  =======================================  =====================
PR opened / reopened       ``pull_request`` opened / reopened       same
PR merged                  ``pull_request`` closed, merged true     same
PR closed unmerged         ``pull_request`` closed, merged false    same
PR head moved              ``pull_request`` synchronized            ``synchronize``
changes requested          ``pull_request_rejected`` (reviewed,     ``pull_request_review``
                           review.type pull_request_review_rejected) submitted,
                                                                    state changes_requested
approved                   ``pull_request_approved``                state approved
comment on a PR            ``issue_comment`` (is_pull), or          ``issue_comment`` with
                           ``pull_request_comment`` (a review        issue.pull_request;
                           comment)                                 ``pull_request_review``
                                                                    commented;
                                                                    ``pull_request_review_
                                                                    comment``
push                       ``push``                                 same
issue labelled / opened    ``issues`` label_updated / opened        ``issues`` labeled /
                                                                    opened
=========================  =======================================  =====================

Anything else normalises to ``EventKind.IGNORED`` with the reason. A body that is not a
JSON object, or whose fields have the wrong types, raises ``MalformedPayload`` (the
webhook answers 400 with its message).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EventKind",
    "ForgeEvent",
    "InlineComment",
    "MalformedPayload",
    "normalise",
    "parse_body",
]

ZERO_SHA = "0" * 40


class MalformedPayload(ValueError):
    """The body is not the JSON a forge sends for this event."""


class EventKind(enum.StrEnum):
    PR_OPENED = "pr_opened"
    PR_REOPENED = "pr_reopened"
    PR_MERGED = "pr_merged"
    PR_CLOSED = "pr_closed"  # closed without merging
    PR_SYNCHRONIZED = "pr_synchronized"  # new commits on the head branch
    CHANGES_REQUESTED = "changes_requested"
    APPROVED = "approved"
    COMMENT = "comment"  # a comment on a pull request (bosun decides if it is addressed)
    PUSH = "push"
    ISSUE_LABELED = "issue_labeled"
    ISSUE_OPENED = "issue_opened"
    PING = "ping"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class InlineComment:
    """A review comment on a line of a file (``line`` None: on the file or outdated)."""

    path: str
    line: int | None
    body: str
    author: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "body": self.body, "author": self.author}


@dataclass(frozen=True, slots=True)
class ForgeEvent:
    """What one webhook delivery means to bosun."""

    kind: EventKind
    forge: str  # "forgejo" | "gitea" | "github"
    name: str  # the event header, e.g. "pull_request"
    action: str | None = None
    repo: str | None = None  # "owner/name" on the forge
    sender: str | None = None
    pr_number: int | None = None
    pr_url: str | None = None
    head_ref: str | None = None  # the pull request's branch (or the pushed branch)
    head_sha: str | None = None
    before_sha: str | None = None  # push: the branch's previous head
    merged: bool = False
    review_id: int | None = None
    body: str = ""  # the review's or comment's text
    comments: tuple[InlineComment, ...] = ()
    issue_number: int | None = None
    issue_title: str | None = None
    issue_url: str | None = None
    labels: tuple[str, ...] = ()
    reason: str = ""  # why it is ignored
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A compact record for the event log (no long texts)."""
        out: dict[str, Any] = {"kind": self.kind.value, "forge": self.forge, "event": self.name}
        for key in (
            "action",
            "repo",
            "sender",
            "pr_number",
            "pr_url",
            "head_ref",
            "head_sha",
            "before_sha",
            "review_id",
            "issue_number",
            "issue_url",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value[:500] if isinstance(value, str) else value
        if self.kind in (EventKind.PR_MERGED, EventKind.PR_CLOSED):
            out["merged"] = self.merged
        if self.labels:
            out["labels"] = [label[:100] for label in self.labels[:50]]
        if self.comments:
            out["inline_comments"] = len(self.comments)
        if self.reason:
            out["reason"] = self.reason
        return out


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a webhook body, or ``MalformedPayload`` saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"the body is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise MalformedPayload("the body is empty; a webhook delivers a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedPayload(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise MalformedPayload("the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise MalformedPayload(f"the body is JSON {type(data).__name__}, not an object")
    return data


# -- typed access ------------------------------------------------------------------------
class _Obj:
    """Typed, path-aware access to a JSON object: a field of the wrong type is a
    ``MalformedPayload`` naming it; a missing one is None."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _bad(self, key: str, want: str) -> MalformedPayload:
        got = type(self.data.get(key)).__name__
        return MalformedPayload(f"{self._where(key)} should be {want}, not {got}")

    def obj(self, key: str) -> _Obj | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return _Obj(value, self._where(key))

    def need(self, key: str) -> _Obj:
        value = self.obj(key)
        if value is None:
            raise MalformedPayload(f"{self._where(key)} is missing")
        return value

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        if not 0 <= value < 2**63:
            raise MalformedPayload(f"{self._where(key)} is out of range")
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def objs(self, key: str) -> list[_Obj]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise MalformedPayload(f"{self._where(key)}[{i}] should be an object")
            out.append(_Obj(item, f"{self._where(key)}[{i}]"))
        return out


def _login(user: _Obj | None) -> str | None:
    if user is None:
        return None
    return user.text("login") or user.text("username")


def _label_names(labels: list[_Obj]) -> tuple[str, ...]:
    return tuple(name for label in labels if (name := label.text("name")))


# -- normalisation -------------------------------------------------------------------------
def normalise(
    forge: str, event: str, payload: Mapping[str, Any], event_type: str | None = None
) -> ForgeEvent:
    """The meaning of one delivery: ``event`` is the event header (``X-GitHub-Event``,
    ``X-Gitea-Event``, ``X-Forgejo-Event``), ``event_type`` Gitea's finer
    ``X-Gitea-Event-Type`` (optional)."""
    root = _Obj(payload)
    name = (event or "").strip().lower()
    action = root.text("action")
    repository = root.obj("repository")
    base: dict[str, Any] = {
        "forge": forge,
        "name": name,
        "action": action,
        "repo": repository.text("full_name") if repository else None,
        "sender": _login(root.obj("sender")),
    }
    if name == "ping":
        return ForgeEvent(EventKind.PING, **base)
    if name == "push":
        return _push(root, base)
    if name == "issues":
        return _issue(root, base, action)
    if name == "issue_comment":
        return _issue_comment(root, base, action)
    if forge == "github":
        return _github(root, base, name, action)
    return _gitea(root, base, name, action, (event_type or "").strip().lower())


def _ignored(base: dict[str, Any], reason: str) -> ForgeEvent:
    return ForgeEvent(EventKind.IGNORED, **base, reason=reason)


def _pull(root: _Obj) -> dict[str, Any]:
    pr = root.need("pull_request")
    head = pr.obj("head")
    number = root.integer("number")
    if number is None:
        number = pr.integer("number")
    if number is None:
        raise MalformedPayload("the pull request's number is missing (number)")
    return {
        "pr_number": number,
        "pr_url": pr.text("html_url"),
        "head_ref": head.text("ref") if head else None,
        "head_sha": head.text("sha") if head else None,
    }


def _pull_request(root: _Obj, base: dict[str, Any], action: str | None) -> ForgeEvent:
    info = _pull(root)
    if action == "opened":
        return ForgeEvent(EventKind.PR_OPENED, **base, **info)
    if action == "reopened":
        return ForgeEvent(EventKind.PR_REOPENED, **base, **info)
    if action == "closed":
        merged = root.need("pull_request").flag("merged")
        kind = EventKind.PR_MERGED if merged else EventKind.PR_CLOSED
        return ForgeEvent(kind, **base, **info, merged=merged)
    if action in ("synchronized", "synchronize"):
        before = root.text("before")
        return ForgeEvent(EventKind.PR_SYNCHRONIZED, **base, **info, before_sha=before)
    return _ignored(base | info, f"pull request action {action!r} changes nothing in bosun")


def _push(root: _Obj, base: dict[str, Any]) -> ForgeEvent:
    ref = root.text("ref")
    if ref is None:
        raise MalformedPayload("ref is missing from the push")
    if not ref.startswith("refs/heads/"):
        return _ignored(base, f"a push to {ref}, not to a branch")
    return ForgeEvent(
        EventKind.PUSH,
        **base,
        head_ref=ref.removeprefix("refs/heads/"),
        head_sha=root.text("after"),
        before_sha=root.text("before"),
    )


def _issue(root: _Obj, base: dict[str, Any], action: str | None) -> ForgeEvent:
    issue = root.need("issue")
    number = issue.integer("number")
    if number is None:
        raise MalformedPayload("issue.number is missing")
    info: dict[str, Any] = {
        "issue_number": number,
        "issue_title": issue.text("title") or "",
        "issue_url": issue.text("html_url"),
        "body": issue.text("body") or "",
    }
    if issue.obj("pull_request") is not None:
        return _ignored(base | info, "an issue event of a pull request")
    if action == "labeled":  # GitHub: the label that was added
        label = root.obj("label")
        added = (label.text("name"),) if label else ()
        labels = tuple(n for n in added if n)
        return ForgeEvent(EventKind.ISSUE_LABELED, **base, **info, labels=labels)
    if action == "label_updated":  # Gitea / Forgejo: the issue's labels now
        labels = _label_names(issue.objs("labels"))
        return ForgeEvent(EventKind.ISSUE_LABELED, **base, **info, labels=labels)
    if action == "opened":
        labels = _label_names(issue.objs("labels"))
        return ForgeEvent(EventKind.ISSUE_OPENED, **base, **info, labels=labels)
    return _ignored(base | info, f"issue action {action!r} changes nothing in bosun")


def _issue_comment(root: _Obj, base: dict[str, Any], action: str | None) -> ForgeEvent:
    issue = root.need("issue")
    comment = root.need("comment")
    number = issue.integer("number")
    if number is None:
        raise MalformedPayload("issue.number is missing")
    on_pull = root.flag("is_pull") or issue.obj("pull_request") is not None
    info: dict[str, Any] = {"pr_number": number, "body": comment.text("body") or ""}
    if not on_pull:
        return _ignored(base | {"issue_number": number}, "a comment on an issue, not a PR")
    if action != "created":
        return _ignored(base | info, f"comment action {action!r} changes nothing in bosun")
    pr = issue.obj("pull_request")
    url = (pr.text("html_url") if pr else None) or comment.text("html_url")
    author = _login(comment.obj("user")) or base["sender"]
    return ForgeEvent(EventKind.COMMENT, **(base | {"sender": author}), **info, pr_url=url)


def _github(root: _Obj, base: dict[str, Any], name: str, action: str | None) -> ForgeEvent:
    if name == "pull_request":
        return _pull_request(root, base, action)
    if name == "pull_request_review":
        info = _pull(root)
        review = root.need("review")
        if action != "submitted":
            return _ignored(base | info, f"review action {action!r} changes nothing in bosun")
        state = (review.text("state") or "").lower()
        details: dict[str, Any] = {
            "review_id": review.integer("id"),
            "body": review.text("body") or "",
            "sender": _login(review.obj("user")) or base["sender"],
        }
        if state == "changes_requested":
            return ForgeEvent(EventKind.CHANGES_REQUESTED, **(base | details), **info)
        if state == "approved":
            return ForgeEvent(EventKind.APPROVED, **(base | details), **info)
        if state == "commented":
            return ForgeEvent(EventKind.COMMENT, **(base | details), **info)
        return _ignored(base | info, f"review state {state!r} changes nothing in bosun")
    if name == "pull_request_review_comment":
        info = _pull(root)
        comment = root.need("comment")
        if action != "created":
            return _ignored(base | info, f"comment action {action!r} changes nothing in bosun")
        inline = _inline(comment)
        author = _login(comment.obj("user")) or base["sender"]
        return ForgeEvent(
            EventKind.COMMENT,
            **(base | {"sender": author}),
            **info,
            body=comment.text("body") or "",
            comments=(inline,) if inline else (),
        )
    return _ignored(base, f"GitHub event {name!r} is not one bosun follows")


def _gitea(
    root: _Obj, base: dict[str, Any], name: str, action: str | None, event_type: str
) -> ForgeEvent:
    review = root.obj("review")
    review_type = (review.text("type") or "") if review else ""
    if name == "pull_request" and action != "reviewed":
        return _pull_request(root, base, action)
    rejected = "pull_request_review_rejected"
    approved = "pull_request_review_approved"
    kind: EventKind | None = None
    if (
        name in ("pull_request_rejected", "pull_request_review_rejected")
        or event_type == rejected
        or review_type == rejected
    ):
        kind = EventKind.CHANGES_REQUESTED
    elif (
        name in ("pull_request_approved", "pull_request_review_approved")
        or event_type == approved
        or review_type == approved
    ):
        kind = EventKind.APPROVED
    elif name in ("pull_request_comment", "pull_request_review_comment") or (
        review_type == "pull_request_comment"
    ):
        kind = EventKind.COMMENT
    if kind is not None:
        info = _pull(root)
        body = review.text("content") or "" if review else ""
        return ForgeEvent(kind, **base, **info, body=body)
    if name.startswith("pull_request"):
        info = _pull(root) if root.obj("pull_request") is not None else {}
        return _ignored(base | info, f"event {name!r} changes nothing in bosun")
    return _ignored(base, f"event {name!r} is not one bosun follows")


def _inline(comment: _Obj) -> InlineComment | None:
    path = comment.text("path")
    if not path:
        return None
    line = comment.integer("line")
    if line is None:
        line = comment.integer("original_line")
    return InlineComment(
        path=path, line=line, body=comment.text("body") or "", author=_login(comment.obj("user"))
    )
