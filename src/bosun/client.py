"""``Client``: bosun's HTTP API from Python (async, httpx); what ``bosun --server`` uses.

It satisfies ``bosun.backend.Backend`` like the local ``Service`` does: answers come back
as ``Task``, ``Run`` and ``Event`` values and every failure as a ``BosunError``, so a
caller cannot tell a remote bosun from a local one. Errors are translated here, once::

    {"error": {"code", "message", "hint"}}   -> the BosunError its code names (NotFound,
                                                InputError, InvalidTransition, ...), with
                                                the server's message and hint
    401 / 403                                -> AuthError (a ConfigError): no token, a
                                                wrong or revoked one, or the wrong kind
    cannot connect, broken off, timed out    -> ServerUnreachable, naming the URL
    an answer that is not bosun's API        -> RemoteError

Events come over Server-Sent Events. ``follow`` reconnects after a dropped connection
with ``Last-Event-ID`` (no event lost, none repeated) and gives up only after the server
has been unreachable for ``reconnect_for`` seconds. The token goes in the
``Authorization`` header and nowhere else: never in a message, never in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import httpx
from httpx_sse import SSEError, aconnect_sse

from bosun.backend import Cancellation, Unstopped
from bosun.errors import (
    API_ERRORS,
    BosunError,
    ConfigError,
    InputError,
    InvalidTransition,
    NotFound,
)
from bosun.models import ErrorKind, Event, ExecutionMode, Run, RunStatus, Task, TaskSpec, TaskStatus
from bosun.service import SETTLED
from bosun.store.base import TaskFilter

__all__ = [
    "AuthError",
    "Client",
    "JsonRow",
    "RemoteError",
    "ServerUnreachable",
    "event_from_json",
    "run_from_json",
    "task_from_json",
]

#: Tasks asked for per request when listing (the API allows up to 1000).
PAGE = 500
TOKEN_HINT = "create an admin token on the server with `bosun token create --admin`"  # noqa: S105


class AuthError(ConfigError):
    """The server refused the token: missing, unknown, revoked, or of the wrong kind."""


class ServerUnreachable(BosunError):
    """The bosun server could not be reached, did not answer in time, or broke off."""


class RemoteError(BosunError):
    """The server answered something that is not bosun's API (or failed internally)."""


#: The ``code`` of an API error -> the error raised here (see ``bosun.server.errors``).
_BY_CODE: dict[str, type[BosunError]] = {
    **{code: cls for cls, _status, code in API_ERRORS},
    "validation_error": InputError,
    "bad_request": InputError,
    "conflict": InvalidTransition,
}
#: When the code is unknown: by HTTP status.
_BY_STATUS: dict[int, type[BosunError]] = {
    400: InputError,
    404: NotFound,
    409: InvalidTransition,
    422: InputError,
}


@dataclass(frozen=True, slots=True)
class JsonRow:
    """A row the server returned as is (a host, for instance)."""

    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


def check_url(url: str) -> str:
    """``url`` as a base URL without a trailing slash; ``InputError`` unless http(s)."""
    text = url.strip()
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(
            f"the server URL {redact(text)!r} is not an http:// or https:// URL",
            "give the bosun server's base URL, e.g. --server http://127.0.0.1:8765",
        )
    if parsed.query or parsed.fragment:
        raise InputError(
            f"the server URL {redact(text)!r} has a query or fragment",
            "give only the base URL, e.g. https://bosun.example.com or http://host:8765/bosun",
        )
    return text.rstrip("/")


def redact(url: str) -> str:
    """``url`` with any user:password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def _check_token(token: str | None) -> str | None:
    if token is None or not token.strip():
        return None
    token = token.strip()
    if not token.isascii() or not token.isprintable() or " " in token:
        # Never echo the token: it is a secret, even a mistyped one.
        raise InputError(
            "the API token contains spaces or characters a token cannot have",
            "copy the token again as `bosun token create` printed it (bsn_...)",
        )
    return token


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _required_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def _error_kind(value: Any) -> ErrorKind | None:
    return None if value is None else ErrorKind(value)


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def task_from_json(d: Mapping[str, Any]) -> Task:
    """The ``Task`` whose ``to_json()`` is ``d`` (the lease fields are not served)."""
    return Task(
        id=int(d["id"]),
        title=str(d["title"]),
        body=str(d["body"]),
        status=TaskStatus(d["status"]),
        repo=d["repo"],
        agent=str(d["agent"]),
        base_branch=d["base_branch"],
        branch=d["branch"],
        constraints=_strs(d["constraints"]),
        validation=_strs(d["validation"]),
        labels=_strs(d["labels"]),
        priority=int(d["priority"]),
        scope=_strs(d["scope"]),
        depends_on=tuple(int(x) for x in d["depends_on"]),
        execution_mode=ExecutionMode(d["execution_mode"]),
        host=d["host"],
        assigned_host=d["assigned_host"],
        attempt=int(d["attempt"]),
        max_attempts=int(d["max_attempts"]),
        review_count=int(d["review_count"]),
        session_id=d["session_id"],
        result_summary=d["result_summary"],
        error=d["error"],
        error_kind=_error_kind(d["error_kind"]),
        tokens_in=int(d["tokens_in"]),
        tokens_out=int(d["tokens_out"]),
        cost_usd=float(d["cost_usd"]),
        commits=_strs(d["commits"]),
        not_before=_time(d["not_before"]),
        lease_owner=None,
        lease_expires_at=None,
        created_at=_required_time(d["created_at"]),
        updated_at=_required_time(d["updated_at"]),
        last_activity_at=_time(d["last_activity_at"]),
        pr_number=None if d.get("pr_number") is None else int(d["pr_number"]),
        pr_url=d.get("pr_url"),
        pr_head_sha=d.get("pr_head_sha"),
        review_feedback=d.get("review_feedback"),
    )


def run_from_json(d: Mapping[str, Any]) -> Run:
    """The ``Run`` whose ``to_json()`` is ``d``."""
    return Run(
        id=int(d["id"]),
        task_id=int(d["task_id"]),
        attempt=int(d["attempt"]),
        host=str(d["host"]),
        agent=str(d["agent"]),
        status=RunStatus(d["status"]),
        ref=dict(d["ref"]),
        stdout_offset=0,
        stderr_offset=0,
        exit_code=None if d["exit_code"] is None else int(d["exit_code"]),
        error_kind=_error_kind(d["error_kind"]),
        error=d["error"],
        session_id=d["session_id"],
        tokens_in=int(d["tokens_in"]),
        tokens_out=int(d["tokens_out"]),
        cost_usd=float(d["cost_usd"]),
        started_at=_required_time(d["started_at"]),
        ended_at=_time(d["ended_at"]),
    )


def event_from_json(d: Mapping[str, Any]) -> Event:
    """The ``Event`` whose ``to_json()`` is ``d``."""
    return Event(
        id=int(d["id"]),
        task_id=None if d["task_id"] is None else int(d["task_id"]),
        run_id=None if d["run_id"] is None else int(d["run_id"]),
        kind=str(d["kind"]),
        data=dict(d["data"]),
        created_at=_required_time(d["created_at"]),
    )


class Client:
    """The bosun API at ``url`` with an API token (``Authorization: Bearer``)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        stream_timeout: float = 60.0,
        reconnect_for: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = check_url(url)
        self.shown_url = redact(self.url)
        secret = _check_token(token)
        self.has_token = secret is not None
        headers = {"Accept": "application/json", "User-Agent": "bosun-cli"}
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        self.timeout = timeout
        # Read timeout of an event stream: the server sends a keep-alive every 15 s, so a
        # silence this long means the connection is dead (and ``follow`` reconnects).
        self.stream_timeout = stream_timeout
        self.reconnect_for = reconnect_for
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ------------------------------------------------------------------------
    def _unreachable(self, exc: httpx.HTTPError) -> ServerUnreachable:
        fix = (
            "check that the server runs (`bosun serve` on that machine) and that "
            "--server / BOSUN_SERVER names it"
        )
        if isinstance(exc, httpx.TimeoutException):
            return ServerUnreachable(
                f"the bosun server at {self.shown_url} did not answer in time "
                f"({type(exc).__name__})",
                fix,
            )
        if isinstance(exc, httpx.ConnectError):
            return ServerUnreachable(
                f"cannot connect to the bosun server at {self.shown_url}: {exc or 'refused'}",
                fix,
            )
        return ServerUnreachable(
            f"the connection to the bosun server at {self.shown_url} failed: "
            f"{type(exc).__name__}: {exc}",
            fix,
        )

    def _malformed(self, what: str) -> RemoteError:
        return RemoteError(
            f"the server at {self.shown_url} answered {what}, not bosun's API",
            "check that --server / BOSUN_SERVER is the base URL of a bosun server "
            "(e.g. http://host:8765) of the same version as this bosun",
        )

    def _error(self, resp: httpx.Response) -> BosunError:
        """The BosunError for an error answer (its body read already)."""
        status = resp.status_code
        try:
            body = resp.json()["error"]
            code, message, hint = str(body["code"]), str(body["message"]), body.get("hint")
            hint = None if hint is None else str(hint)
        except (ValueError, KeyError, TypeError):
            if 300 <= status < 400:
                where = resp.headers.get("location", "elsewhere")
                path = resp.request.url.path
                base = where[: -len(path)] if path != "/" and where.endswith(path) else where
                return RemoteError(
                    f"the server at {self.shown_url} redirects to {redact(base)}",
                    "use the URL it redirects to with --server / BOSUN_SERVER",
                )
            return self._malformed(f"HTTP {status} with {resp.text[:200]!r}")
        if status == 401:
            if not self.has_token:
                return AuthError(
                    f"the bosun server at {self.shown_url} needs an API token, and none was given",
                    f"{TOKEN_HINT}, then pass it with --token or the BOSUN_TOKEN variable",
                )
            return AuthError(
                f"the bosun server at {self.shown_url} refused the token: {message}",
                "check --token / BOSUN_TOKEN; on the server `bosun token list` shows the "
                f"live tokens; {TOKEN_HINT}",
            )
        if status == 403:
            return AuthError(message, hint or f"use an admin token: {TOKEN_HINT}")
        if status == 404 and message.startswith("no such route"):
            return RemoteError(
                f"the server at {self.shown_url} does not serve {resp.request.url.path}",
                "run the same version of bosun on the server and here",
            )
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
        if cls is None:
            if status < 500:
                cls = InputError
            else:
                return RemoteError(
                    f"the bosun server at {self.shown_url} failed (HTTP {status}): {message}",
                    hint or "see the server's log",
                )
        return cls(message, hint)

    async def call(self, method: str, path: str, *, body: Any = None, params: Any = None) -> Any:
        """One request to ``path`` (e.g. ``/api/v1/hosts``) with a JSON ``body``; the JSON
        answer, or the BosunError the answer stands for."""
        try:
            resp = await self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if not 200 <= resp.status_code < 300:
            raise self._error(resp)
        try:
            return resp.json()
        except ValueError:
            raise self._malformed(f"{resp.text[:200]!r}") from None

    _call = call  # the name bosun.cli_hosts uses

    def _shape(self, exc: Exception) -> NoReturn:
        raise self._malformed(f"an unexpected document ({type(exc).__name__}: {exc})") from exc

    # -- tasks ---------------------------------------------------------------------------
    async def submit(self, spec: TaskSpec) -> Task:
        body = {
            "title": spec.title,
            "body": spec.body,
            "repo": spec.repo,
            "agent": spec.agent,
            "base_branch": spec.base_branch,
            "constraints": list(spec.constraints),
            "validation": list(spec.validation),
            "labels": list(spec.labels),
            "priority": spec.priority,
            "scope": list(spec.scope),
            "depends_on": list(spec.depends_on),
            "execution_mode": spec.execution_mode.value,
            "host": spec.host,
            "max_attempts": spec.max_attempts,
        }
        return self._task(await self.call("POST", "/api/v1/tasks", body=body))

    async def get(self, task_id: int) -> Task:
        return self._task(await self.call("GET", f"/api/v1/tasks/{int(task_id)}"))

    async def page(self, flt: TaskFilter | None = None) -> tuple[list[Task], int | None]:
        """One page (at most ``min(flt.limit, 1000)`` tasks) and the next cursor."""
        flt = flt or TaskFilter()
        params: list[tuple[str, str | int]] = [
            ("status", s.value) for s in sorted(flt.statuses or ())
        ]
        for key, value in (("repo", flt.repo), ("agent", flt.agent), ("label", flt.label)):
            if value is not None:
                params.append((key, value))
        if flt.after_id is not None:
            params.append(("cursor", flt.after_id))
        params.append(("limit", min(flt.limit, 1000)))
        data = await self.call("GET", "/api/v1/tasks", params=params)
        try:
            cursor = data["next_cursor"]
            return [task_from_json(t) for t in data["tasks"]], (
                None if cursor is None else int(cursor)
            )
        except (KeyError, TypeError, ValueError) as exc:
            self._shape(exc)

    async def list_tasks(self, flt: TaskFilter | None = None) -> list[Task]:
        """Every task matching ``flt`` up to ``flt.limit``, over as many pages as needed."""
        flt = flt or TaskFilter()
        found: list[Task] = []
        cursor = flt.after_id
        while len(found) < flt.limit:
            want = min(flt.limit - len(found), PAGE)
            page = TaskFilter(
                statuses=flt.statuses,
                repo=flt.repo,
                agent=flt.agent,
                label=flt.label,
                after_id=cursor,
                limit=want,
            )
            tasks, cursor = await self.page(page)
            found.extend(tasks[:want])
            if cursor is None or not tasks:
                break
        return found

    async def runs(self, task_id: int) -> list[Run]:
        data = await self.call("GET", f"/api/v1/tasks/{int(task_id)}/runs")
        try:
            return [run_from_json(r) for r in data["runs"]]
        except (KeyError, TypeError, ValueError) as exc:
            self._shape(exc)

    async def cancel(self, task_id: int) -> Cancellation:
        data = await self.call("POST", f"/api/v1/tasks/{int(task_id)}/cancel")
        task = self._task(data)
        try:
            # (a server older than the field does not say: nothing known to be pending)
            pending = tuple(Unstopped.from_json(u) for u in data.get("cancel_pending") or ())
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            self._shape(exc)
        return Cancellation(task, pending)

    async def retry(self, task_id: int) -> Task:
        return self._task(await self.call("POST", f"/api/v1/tasks/{int(task_id)}/retry"))

    def _task(self, data: Any) -> Task:
        try:
            return task_from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            self._shape(exc)

    # -- agents and hosts ----------------------------------------------------------------
    async def agents(self) -> list[dict[str, Any]]:
        data = await self.call("GET", "/api/v1/agents")
        try:
            return [dict(a) for a in data["agents"]]
        except (KeyError, TypeError, ValueError) as exc:
            self._shape(exc)

    async def hosts(self) -> list[JsonRow]:
        data = await self.call("GET", "/api/v1/hosts")
        try:
            return [JsonRow(dict(h)) for h in data["hosts"]]
        except (KeyError, TypeError, ValueError) as exc:
            self._shape(exc)

    # -- events --------------------------------------------------------------------------
    async def stream(
        self, task_id: int | None, *, after: int = 0, follow: bool = True
    ) -> AsyncGenerator[Event, None]:
        """One SSE connection: the events of a task (or of all tasks with ``None``) after
        ``after``, then, with ``follow``, live ones until the server ends the stream. A
        silence longer than ``stream_timeout`` ends it too (the caller reconnects)."""
        path = "/api/v1/events" if task_id is None else f"/api/v1/tasks/{int(task_id)}/events"
        headers = {"Last-Event-ID": str(after)} if after else {}
        timeout = httpx.Timeout(self.timeout, read=self.stream_timeout)
        params = {"follow": "true" if follow else "false"}
        try:
            async with aconnect_sse(
                self._http, "GET", path, params=params, headers=headers, timeout=timeout
            ) as source:
                resp = source.response
                if resp.status_code == 204:  # a final task with nothing left to send
                    return
                if not 200 <= resp.status_code < 300:
                    await resp.aread()
                    raise self._error(resp)
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue
                    try:
                        yield event_from_json(json.loads(sse.data))
                    except (KeyError, TypeError, ValueError) as exc:
                        self._shape(exc)
        except SSEError as exc:  # first: it is an httpx.TransportError too
            raise self._malformed(f"a stream that is not Server-Sent Events ({exc})") from None
        except httpx.ReadTimeout:
            return
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    async def events(self, task_id: int, cursor: int = 0, limit: int = 1000) -> list[Event]:
        found: list[Event] = []
        if limit <= 0:
            return found
        async with contextlib.aclosing(self.stream(task_id, after=cursor, follow=False)) as evs:
            async for ev in evs:
                if ev.id <= cursor:
                    continue
                found.append(ev)
                if len(found) >= limit:
                    break
        return found

    async def _settled(self, task_id: int) -> bool:
        return (await self.get(task_id)).status in SETTLED

    async def follow(self, task_id: int, cursor: int = 0) -> AsyncIterator[Event]:
        """Like ``Service.follow``: every event after ``cursor``, then live ones, until the
        task has settled. A dropped connection is resumed from the last event received."""
        settled = await self._settled(task_id)
        down_since: float | None = None
        failures = 0
        while True:
            try:
                got = False
                async with contextlib.aclosing(
                    self.stream(task_id, after=cursor, follow=not settled)
                ) as evs:
                    async for ev in evs:
                        if ev.id <= cursor:
                            continue
                        got = True
                        down_since, failures = None, 0
                        cursor = ev.id
                        yield ev
                        if (
                            not settled
                            and ev.kind == "task.status"
                            and ev.data.get("to") in SETTLED
                        ):
                            settled = await self._settled(task_id)
                            if settled:
                                break
                if settled and not got:
                    return  # the last pass was the tail after settling, and it was empty
                if not settled:
                    # The server ended the stream, or it was silent too long: look again.
                    settled = await self._settled(task_id)
                    if not got and not settled:
                        await asyncio.sleep(0.2)
                down_since, failures = None, 0
            except ServerUnreachable:
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since >= self.reconnect_for:
                    raise
                failures += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**failures))
