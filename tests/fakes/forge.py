"""A fake forge on 127.0.0.1: enough of the Gitea / Forgejo REST API (``/api/v1``) and of
GitHub's to open, find, reopen and read pull requests, comment on them and list reviews
and their inline comments; every REST call is recorded.

It is a real HTTP server (``http.server`` in a background thread), so bosun's httpx client
talks to it over TCP exactly as to a forge. With ``git_dir`` (a repository on disk, the
one bosun pushes task branches to) a pull request's head is resolved with ``git
rev-parse`` and opening one for a branch that was never pushed fails with 422, as on a
real forge. Conditional GETs (``If-None-Match``) of a pull request and of its reviews get
``304 Not Modified`` while nothing changed.

The fake also writes webhook payloads the way each forge would for its pull requests
(``pull_payload``, ``review_payload``, ``comment_payload``, ``push_payload``) and signs
them (``signed_headers``)::

    with FakeForge("forgejo", git_dir=origin) as forge:
        ...  # bosun opens a pull request
        number = forge.pulls_for("task/1-x")[0]["number"]
        review = forge.add_review(number, "REQUEST_CHANGES", "Rename it", [("a.py", 3, "here")])
        body = forge.review_payload(number, review)
        headers = forge.signed_headers(body, SECRET, event="pull_request_rejected")
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from tests.fakes.threaded_http import QuietHandler, ThreadedServer

__all__ = ["Call", "FakeForge", "sign"]


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Call:
    """One REST call the fake received (the token is not kept)."""

    method: str
    path: str  # relative to the API base, e.g. /repos/team/app/pulls
    query: dict[str, str]
    body: Any
    authorized: bool
    headers: dict[str, str] = field(default_factory=dict)


class FakeForge:
    """See the module docstring. ``kind``: "forgejo", "gitea" or "github"."""

    def __init__(
        self,
        kind: str = "forgejo",
        *,
        repo: str = "team/app",
        token: str = "forge-token",  # noqa: S107 - a test value
        git_dir: Path | None = None,
    ) -> None:
        self.kind = kind
        self.repo = repo
        self.token = token
        self.git_dir = git_dir
        self.calls: list[Call] = []
        self.pulls: dict[int, dict[str, Any]] = {}
        self.comments: list[dict[str, Any]] = []
        self.reviews: dict[int, list[dict[str, Any]]] = {}
        self.review_comments: dict[int, list[dict[str, Any]]] = {}
        self.failures: list[int] = []  # statuses to answer the next calls with
        self._next_number = 1
        self._next_id = 1000
        self._versions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadedServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "the fake forge is not started"
        return self._server.port

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL (``api_url`` of ``[repos.NAME.forge]``)."""
        return self.root if self.kind == "github" else f"{self.root}/api/v1"

    @property
    def web(self) -> str:
        return f"{self.root}/{self.repo}"

    def start(self) -> None:
        forge = self

        class Handler(QuietHandler):
            def _handle(self) -> None:
                forge._serve(self)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self._server = ThreadedServer(Handler, "fake-forge")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests look at and do -------------------------------------------------------------
    def calls_to(self, method: str, suffix: str = "") -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.path.endswith(suffix)]

    def pulls_for(self, head: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.pulls.values() if p["head"]["ref"] == head]

    def add_review(
        self,
        number: int,
        state: str,
        body: str,
        comments: list[tuple[str, int | None, str]] = (),  # type: ignore[assignment]
        author: str = "reviewer",
    ) -> dict[str, Any]:
        """A submitted review (``REQUEST_CHANGES`` / ``CHANGES_REQUESTED``, ``APPROVED``,
        ``COMMENT``) with inline comments ``(path, line, body)``."""
        with self._lock:
            review_id = self._new_id()
            review = {
                "id": review_id,
                "state": state,
                "body": body,
                "user": {"login": author, "username": author},
                "submitted_at": "2026-01-01T00:00:00Z",
                "commit_id": self.pulls[number]["head"]["sha"],
            }
            self.reviews.setdefault(number, []).append(review)
            self.review_comments[review_id] = [
                {
                    "id": self._new_id(),
                    "path": path,
                    ("line" if self.kind == "github" else "position"): line,
                    "body": text,
                    "user": {"login": author, "username": author},
                }
                for path, line, text in comments
            ]
            self._bump(f"reviews/{number}")
            return review

    def merge(self, number: int) -> None:
        with self._lock:
            pr = self.pulls[number]
            pr.update(state="closed", merged=True, merged_at="2026-01-01T00:00:00Z")
            self._bump(f"pull/{number}")

    def close(self, number: int) -> None:
        with self._lock:
            self.pulls[number].update(state="closed", merged=False)
            self._bump(f"pull/{number}")

    def move_head(self, number: int, sha: str) -> None:
        with self._lock:
            self.pulls[number]["head"]["sha"] = sha
            self._bump(f"pull/{number}")

    # -- webhook payloads, as the forge would send them -------------------------------------
    def _repository(self) -> dict[str, Any]:
        owner, name = self.repo.split("/")
        return {
            "id": 1,
            "name": name,
            "full_name": self.repo,
            "owner": {"login": owner, "username": owner},
            "html_url": self.web,
        }

    def pull_payload(self, number: int, action: str, sender: str = "alice") -> bytes:
        with self._lock:
            pr = json.loads(json.dumps(self.pulls[number]))
        payload = {
            "action": action,
            "number": number,
            "pull_request": pr,
            "repository": self._repository(),
            "sender": {"login": sender, "username": sender},
        }
        return json.dumps(payload).encode()

    def review_payload(self, number: int, review: dict[str, Any]) -> bytes:
        with self._lock:
            pr = json.loads(json.dumps(self.pulls[number]))
        user = review["user"]
        if self.kind == "github":
            state = {
                "REQUEST_CHANGES": "changes_requested",
                "CHANGES_REQUESTED": "changes_requested",
            }
            payload: dict[str, Any] = {
                "action": "submitted",
                "review": {
                    "id": review["id"],
                    "body": review["body"],
                    "state": state.get(review["state"], review["state"].lower()),
                    "user": user,
                },
                "pull_request": pr,
                "repository": self._repository(),
                "sender": user,
            }
        else:
            kinds = {
                "REQUEST_CHANGES": "pull_request_review_rejected",
                "APPROVED": "pull_request_review_approved",
                "COMMENT": "pull_request_comment",
            }
            payload = {
                "action": "reviewed",
                "number": number,
                "pull_request": pr,
                "repository": self._repository(),
                "sender": user,
                "review": {"type": kinds[review["state"]], "content": review["body"]},
            }
        return json.dumps(payload).encode()

    def comment_payload(self, number: int, body: str, author: str = "alice") -> bytes:
        issue: dict[str, Any] = {"number": number, "title": self.pulls[number]["title"]}
        issue["pull_request"] = (
            {"html_url": self.pulls[number]["html_url"]}
            if self.kind == "github"
            else {"merged": False, "merged_at": None}
        )
        payload: dict[str, Any] = {
            "action": "created",
            "issue": issue,
            "comment": {"id": self._new_id(), "body": body, "user": {"login": author}},
            "repository": self._repository(),
            "sender": {"login": author, "username": author},
        }
        if self.kind != "github":
            payload["is_pull"] = True
        return json.dumps(payload).encode()

    def push_payload(self, branch: str, before: str, after: str) -> bytes:
        payload = {
            "ref": f"refs/heads/{branch}",
            "before": before,
            "after": after,
            "commits": [],
            "repository": self._repository(),
            "pusher": {"login": "alice"},
            "sender": {"login": "alice", "username": "alice"},
        }
        return json.dumps(payload).encode()

    def signed_headers(
        self,
        body: bytes,
        secret: str,
        *,
        event: str,
        delivery: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, str]:
        """The headers the forge sends with ``body`` (signed with ``secret``)."""
        digest = sign(body, secret)
        delivery = delivery or str(uuid.uuid4())
        headers = {"Content-Type": "application/json"}
        if self.kind == "github":
            headers |= {
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": f"sha256={digest}",
            }
            return headers
        headers |= {
            "X-Gitea-Event": event,
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": digest,
            "X-Hub-Signature-256": f"sha256={digest}",
        }
        if event_type:
            headers["X-Gitea-Event-Type"] = event_type
        if self.kind == "forgejo":
            headers |= {
                "X-Forgejo-Event": event,
                "X-Forgejo-Delivery": delivery,
                "X-Forgejo-Signature": digest,
            }
            if event_type:
                headers["X-Forgejo-Event-Type"] = event_type
        return headers

    # -- serving ---------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _bump(self, key: str) -> None:
        self._versions[key] = self._versions.get(key, 0) + 1

    def _etag(self, key: str) -> str:
        return f'"{key}-v{self._versions.get(key, 0)}"'

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        prefix = "" if self.kind == "github" else "/api/v1"
        path = parts.path.removeprefix(prefix) if parts.path.startswith(prefix) else parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        scheme = "Bearer" if self.kind == "github" else "token"
        authorized = handler.headers.get("Authorization") == f"{scheme} {self.token}"
        kept = {k.lower(): v for k, v in handler.headers.items() if k.lower() != "authorization"}
        extra: dict[str, str]
        with self._lock:
            self.calls.append(Call(handler.command, path, query, body, authorized, kept))
            if not authorized:
                status, data, extra = 401, {"message": "bad credentials"}, {}
            elif self.failures:
                status, data, extra = self.failures.pop(0), {"message": "injected failure"}, {}
            else:
                status, data, extra = self._route(handler.command, path, query, body, kept)
        payload = b"" if status == 304 else json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.end_headers()
        if payload:
            handler.wfile.write(payload)

    def _route(
        self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        base = f"/repos/{self.repo}"
        if not path.startswith(base + "/"):
            return 404, {"message": "repository not found"}, {}
        rest = path[len(base) :].strip("/").split("/")
        if rest == ["pulls"] and method == "GET":
            return 200, self._list_pulls(query), {}
        if rest == ["pulls"] and method == "POST":
            return self._create_pull(body)
        if len(rest) >= 2 and rest[0] == "pulls" and rest[1].isdigit():
            number = int(rest[1])
            if number not in self.pulls:
                return 404, {"message": "pull request not found"}, {}
            if len(rest) == 2 and method == "GET":
                return self._conditional(f"pull/{number}", self.pulls[number], headers)
            if len(rest) == 2 and method == "PATCH":
                if isinstance(body, dict) and body.get("state") in ("open", "closed"):
                    self.pulls[number]["state"] = body["state"]
                    self._bump(f"pull/{number}")
                return 200, self.pulls[number], {}
            if rest[2:] == ["reviews"] and method == "GET":
                return self._conditional(f"reviews/{number}", self.reviews.get(number, []), headers)
            if len(rest) == 5 and rest[2] == "reviews" and rest[4] == "comments":
                return 200, self.review_comments.get(int(rest[3]), []), {}
        if len(rest) == 3 and rest[0] == "issues" and rest[2] == "comments" and method == "POST":
            number = int(rest[1])
            if number not in self.pulls:
                return 404, {"message": "issue not found"}, {}
            text = body.get("body") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text:
                return 422, {"message": "body is required"}, {}
            comment = {"id": self._new_id(), "number": number, "body": text}
            self.comments.append(comment)
            return 201, comment, {}
        return 404, {"message": f"no route {method} {path}"}, {}

    def _conditional(
        self, key: str, data: Any, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        etag = self._etag(key)
        if headers.get("if-none-match") == etag:
            return 304, None, {"ETag": etag}
        return 200, data, {"ETag": etag}

    def _list_pulls(self, query: dict[str, str]) -> list[dict[str, Any]]:
        pulls = sorted(self.pulls.values(), key=lambda p: -p["number"])
        state = query.get("state", "open")
        if state != "all":
            pulls = [p for p in pulls if p["state"] == state]
        if self.kind == "github":
            if "head" in query:
                owner_branch = query["head"].split(":", 1)
                pulls = [p for p in pulls if p["head"]["ref"] == owner_branch[-1]]
            per_page = int(query.get("per_page", "30"))
            return pulls[:per_page]
        limit = int(query.get("limit", "30"))
        page = int(query.get("page", "1"))
        return pulls[(page - 1) * limit : page * limit]

    def _head_sha(self, branch: str) -> str | None:
        if self.git_dir is None:
            return hashlib.sha1(branch.encode()).hexdigest()  # noqa: S324 - a fake sha
        done = subprocess.run(
            ["git", "-C", str(self.git_dir), "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() or None

    def _create_pull(self, body: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) and body.get(k) for k in ("title", "head", "base")
        ):
            return 422, {"message": "title, head and base are required"}, {}
        head, base = body["head"], body["base"]
        sha = self._head_sha(head)
        if sha is None:
            return 422, {"message": f"head branch {head} does not exist"}, {}
        for pr in self.pulls.values():
            if pr["head"]["ref"] == head and pr["base"]["ref"] == base and pr["state"] == "open":
                status = 422 if self.kind == "github" else 409
                return status, {"message": "a pull request already exists for these targets"}, {}
        number = self._next_number
        self._next_number += 1
        sep = "pull" if self.kind == "github" else "pulls"
        pr = {
            "id": self._new_id(),
            "number": number,
            "title": body["title"],
            "body": body.get("body") or "",
            "state": "open",
            "draft": bool(body.get("draft")),
            "merged": False,
            "merged_at": None,
            "html_url": f"{self.web}/{sep}/{number}",
            "url": f"{self.url}/repos/{self.repo}/pulls/{number}",
            "head": {"ref": head, "sha": sha, "label": head},
            "base": {"ref": base, "sha": self._head_sha(base) or "", "label": base},
            "user": {"login": "bosun-bot", "username": "bosun-bot"},
        }
        self.pulls[number] = pr
        return 201, pr, {}
