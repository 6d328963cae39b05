"""REST clients of the forges: pull requests, comments and reviews.

One class speaks both dialects: Gitea and Forgejo (``/api/v1``, ``Authorization: token``)
and GitHub (``Accept: application/vnd.github+json``, ``Authorization: Bearer``). The API
base URL comes from ``[repos.NAME.forge] api_url``; every path is relative to it.

``get_pull`` and ``reviews`` are conditional requests: the ETag of the last answer goes
back in ``If-None-Match`` and a ``304 Not Modified`` (which GitHub does not count against
the rate limit) returns the cached value, marked unchanged. Errors are ``ForgeError``
naming the forge, the request and the forge's own message, never the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from bosun.config import ForgeConfig
from bosun.errors import ProviderError
from bosun.forges.events import InlineComment

__all__ = ["ForgeClient", "ForgeError", "PullRequest", "Review"]

#: Pages of open and closed pull requests searched for a branch on Gitea/Forgejo.
FIND_PAGES = 10
PAGE_SIZE = 50


class ForgeError(ProviderError):
    """A forge's REST API refused or failed a request."""

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None):
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True, slots=True)
class PullRequest:
    number: int
    url: str
    head_ref: str
    head_sha: str | None
    base_ref: str | None
    state: str  # "open" | "closed"
    merged: bool
    title: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PullRequest:
        head = data.get("head") or {}
        base = data.get("base") or {}
        return cls(
            number=int(data["number"]),
            url=str(data.get("html_url") or data.get("url") or ""),
            head_ref=str(head.get("ref") or ""),
            head_sha=head.get("sha"),
            base_ref=base.get("ref"),
            state=str(data.get("state") or "open").lower(),
            merged=bool(data.get("merged")) or data.get("merged_at") is not None,
            title=str(data.get("title") or ""),
        )


@dataclass(frozen=True, slots=True)
class Review:
    id: int
    state: str  # normalised: "changes_requested" | "approved" | "commented" | other
    body: str
    author: str | None
    submitted_at: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Review:
        state = str(data.get("state") or "").lower()
        state = {"request_changes": "changes_requested", "comment": "commented"}.get(state, state)
        user = data.get("user") or {}
        return cls(
            id=int(data["id"]),
            state=state,
            body=str(data.get("body") or ""),
            author=user.get("login") or user.get("username"),
            submitted_at=data.get("submitted_at"),
        )


class ForgeClient:
    """The REST API of one repository on one forge."""

    def __init__(
        self,
        cfg: ForgeConfig,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        owner, name = cfg.repo.split("/", 1)
        self._repo_path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
        headers = {"User-Agent": "bosun", "Accept": "application/json"}
        if cfg.kind == "github":
            headers["Accept"] = "application/vnd.github+json"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["Authorization"] = f"token {token}"
        self._http = httpx.AsyncClient(
            base_url=cfg.api_url.rstrip("/"),
            headers=headers,
            timeout=cfg.timeout,
            transport=transport,
            follow_redirects=False,
        )
        # url -> (etag, parsed body) of conditional GETs
        self._etags: dict[str, tuple[str, Any]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ForgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- pull requests ---------------------------------------------------------------------
    async def find_pull(self, head: str) -> PullRequest | None:
        """The newest pull request (open or closed) from branch ``head``, or None."""
        if self.kind == "github":
            owner = self.cfg.repo.split("/", 1)[0]
            found = await self._get(
                f"{self._repo_path}/pulls",
                params={"head": f"{owner}:{head}", "state": "all", "per_page": "10"},
            )
            pulls = [PullRequest.from_json(p) for p in _list(found, "pull requests")]
            pulls = [p for p in pulls if p.head_ref == head]
            return max(pulls, key=lambda p: p.number) if pulls else None
        for page in range(1, FIND_PAGES + 1):
            found = await self._get(
                f"{self._repo_path}/pulls",
                params={"state": "all", "limit": str(PAGE_SIZE), "page": str(page)},
            )
            items = _list(found, "pull requests")
            pulls = [PullRequest.from_json(p) for p in items]
            mine = [p for p in pulls if p.head_ref == head]
            if mine:
                return max(mine, key=lambda p: p.number)
            if len(items) < PAGE_SIZE:
                return None
        return None

    async def create_pull(self, *, title: str, body: str, head: str, base: str) -> PullRequest:
        """Open a pull request from ``head`` into ``base``; if the forge says one exists
        already (GitHub 422, Gitea 409), that one."""
        payload: dict[str, Any] = {"title": title, "body": body, "head": head, "base": base}
        if self.cfg.draft:
            if self.kind == "github":
                payload["draft"] = True
            else:
                payload["title"] = f"WIP: {title}"
        try:
            created = await self._request("POST", f"{self._repo_path}/pulls", json=payload)
        except ForgeError as exc:
            if exc.status in (409, 422):
                existing = await self.find_pull(head)
                if existing is not None:
                    return existing
            raise
        return PullRequest.from_json(_dict(created, "the created pull request"))

    async def get_pull(self, number: int) -> tuple[PullRequest, bool]:
        """The pull request and whether it changed since the last call (a conditional
        request: unchanged answers are ``304 Not Modified``)."""
        data, changed = await self._conditional(f"{self._repo_path}/pulls/{number}")
        return PullRequest.from_json(_dict(data, "the pull request")), changed

    async def reopen(self, number: int) -> PullRequest:
        """Reopen pull request ``number`` (closed without merging)."""
        data = await self._request(
            "PATCH", f"{self._repo_path}/pulls/{number}", json={"state": "open"}
        )
        return PullRequest.from_json(_dict(data, "the reopened pull request"))

    async def comment(self, number: int, body: str) -> int | None:
        """Add a comment to pull request ``number``; its id."""
        made = await self._request(
            "POST", f"{self._repo_path}/issues/{number}/comments", json={"body": body}
        )
        value = made.get("id") if isinstance(made, dict) else None
        return value if isinstance(value, int) else None

    # -- reviews ---------------------------------------------------------------------------
    async def reviews(self, number: int) -> tuple[list[Review], bool]:
        """The reviews of pull request ``number`` (oldest first), and whether they changed
        since the last call."""
        data, changed = await self._conditional(f"{self._repo_path}/pulls/{number}/reviews")
        return [Review.from_json(r) for r in _list(data, "reviews")], changed

    async def review_comments(self, number: int, review_id: int) -> list[InlineComment]:
        """The inline comments of one review, with their file and line."""
        data = await self._get(f"{self._repo_path}/pulls/{number}/reviews/{review_id}/comments")
        out = []
        for item in _list(data, "review comments"):
            path = item.get("path")
            if not isinstance(path, str) or not path:
                continue
            line = None
            keys: tuple[str, ...] = (
                ("line", "original_line")
                if self.kind == "github"
                else ("position", "original_position")
            )
            for key in keys:
                value = item.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    line = value
                    break
            user = item.get("user") or {}
            out.append(
                InlineComment(
                    path=path,
                    line=line,
                    body=str(item.get("body") or ""),
                    author=user.get("login") or user.get("username"),
                )
            )
        return out

    # -- plumbing --------------------------------------------------------------------------
    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return await self._request("GET", path, params=params)

    async def _conditional(self, path: str) -> tuple[Any, bool]:
        cached = self._etags.get(path)
        headers = {"If-None-Match": cached[0]} if cached else {}
        response = await self._send("GET", path, headers=headers)
        if response.status_code == 304 and cached is not None:
            return cached[1], False
        data = self._json(response, "GET", path)
        etag = response.headers.get("etag")
        if etag:
            self._etags[path] = (etag, data)
        return data, True

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        response = await self._send(method, path, params=params, json=json)
        return self._json(response, method, path)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        where = f"{self.kind} {self.cfg.api_url} ({method} {path})"
        try:
            return await self._http.request(
                method, path, params=params, json=json, headers=dict(headers or {})
            )
        except httpx.TimeoutException:
            raise ForgeError(
                f"{where}: no answer within {self.cfg.timeout:g}s",
                "check that the forge is up, or raise [repos.NAME.forge] timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise ForgeError(
                f"{where}: cannot connect: {type(exc).__name__}",
                "check [repos.NAME.forge] api_url and that the forge is reachable from bosun",
            ) from None

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        status = response.status_code
        where = f"{self.kind} {self.cfg.api_url} ({method} {path})"
        if status >= 400 or status == 304:
            raise ForgeError(
                f"{where}: HTTP {status}: {_forge_message(response)}",
                _HINTS.get(status, "see the forge's message"),
                status=status,
            )
        if status == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ForgeError(
                f"{where}: the answer is not JSON", "check api_url: it must be the API's base URL"
            ) from None


_HINTS = {
    401: "the token was refused: check token_env / token_file of [repos.NAME.forge]",
    403: "the token may not do this: give it write access to the repository's pull requests",
    404: "check [repos.NAME.forge] repo and api_url (and that the token can see the repo)",
    409: "the forge reports a conflict",
    422: "the forge refused the request (a missing branch, or no commits between the branches)",
}


def _forge_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("error") or "")
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            message += " " + "; ".join(str(e.get("message", e)) for e in errors[:3] if e)
        return message.strip()[:300] or response.reason_phrase
    return response.reason_phrase


def _list(data: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise ForgeError(f"the forge's answer with {what} is not a list", "check api_url")
    return [item for item in data if isinstance(item, dict)]


def _dict(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("number"), int):
        raise ForgeError(f"the forge's answer with {what} has no number", "check api_url")
    return data
