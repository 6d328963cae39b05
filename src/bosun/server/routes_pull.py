"""The pull protocol over HTTP: agents outside bosun take ``http_pull`` tasks.

Agent tokens only (``require_agent``): ``POST /api/v1/tasks/dequeue`` hands out the next
task with its prompt and a lease; ``POST /api/v1/tasks/{id}/status`` reports progress and
extends the lease; ``POST /api/v1/receipts`` hands in the result, which settles the task
as a local run would be settled. See docs/pull-agents.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bosun.config import Settings
from bosun.errors import Forbidden
from bosun.execution import base_for_prepare, task_prompt
from bosun.models import ErrorKind, NewEvent, Outcome, Task
from bosun.review import reviewed
from bosun.server.deps import AgentToken, SettingsDep, StoreDep
from bosun.server.errors import ERROR_RESPONSES, ApiError
from bosun.server.routes_tasks import MAX_ID, TaskId, TaskOut, text_ok
from bosun.store.sql import SqlStore
from bosun.store.sql_pull import MAX_STATUS_EVENTS
from bosun.workspace import branch_name

router = APIRouter(prefix="/api/v1", tags=["pull"])

__all__ = ["router"]

_Name = Annotated[str, Field(min_length=1, max_length=128)]
_Sha = Annotated[str, Field(pattern=r"^[0-9a-f]{4,64}$")]


def _clean(value: Any) -> Any:
    """Refuse what no database can store (NUL bytes, unpaired surrogates) anywhere in a
    JSON value, keys included."""
    if isinstance(value, str):
        return text_ok(value)
    if isinstance(value, dict):
        return {text_ok(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class DequeueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[_Name] | None = Field(
        default=None,
        max_length=100,
        description="Agents this worker can run now (default: every agent of the token)",
    )


class LeaseOut(BaseModel):
    id: str = Field(description="Send it with every status report and the receipt")
    expires_at: str
    seconds: float = Field(description="Report status well within this (a third of it)")


class DequeueOut(BaseModel):
    task: TaskOut
    prompt: str = Field(description="The prompt to give the agent, as bosun builds it")
    repo_url: str | None = Field(description="Clone/fetch from here; null: no repository")
    branch: str | None = Field(description="Work on (and push) this branch")
    base_branch: str | None = Field(description="Start the branch from this one")
    lease: LeaseOut


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=64, examples=["run.output", "agent.text"])
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind", "data")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _clean(value)


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease: str = Field(min_length=1, max_length=200)
    message: str | None = Field(default=None, max_length=10_000)
    events: list[EventIn] = Field(default_factory=list, max_length=MAX_STATUS_EVENTS)
    seq: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ID,
        description="Number of the first event (0, 1, ... over the whole run): a report "
        "sent again adds only the events the server has not seen",
    )

    @field_validator("lease", "message")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _clean(value)


class StatusOut(BaseModel):
    lease: LeaseOut


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: int = Field(ge=1, le=MAX_ID)
    lease: str = Field(min_length=1, max_length=200)
    success: bool
    summary: str = Field(default="", max_length=200_000)
    error: str | None = Field(default=None, max_length=100_000)
    error_kind: ErrorKind | None = None
    exit_code: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    session_id: str | None = Field(default=None, max_length=500)
    tokens_in: int = Field(default=0, ge=0, le=2**62)
    tokens_out: int = Field(default=0, ge=0, le=2**62)
    cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    commits: list[_Sha] = Field(default_factory=list, max_length=10_000)
    branch: str | None = Field(default=None, max_length=250)
    resume_at: datetime | None = Field(
        default=None, description="Usage limit: when the agent may run again"
    )

    @field_validator("lease", "summary", "error", "session_id", "branch")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _clean(value)

    def outcome(self) -> Outcome:
        kind = self.error_kind
        if not self.success and kind is None:
            kind = ErrorKind.AGENT
        resume = self.resume_at
        if resume is not None and resume.tzinfo is None:
            resume = resume.replace(tzinfo=UTC)
        return Outcome(
            success=self.success,
            summary=self.summary,
            session_id=self.session_id or None,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cost_usd=self.cost_usd,
            error_kind=None if self.success else kind,
            error=None if self.success else (self.error or "the pull agent reported a failure"),
            resume_at=resume,
        )


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: ERROR_RESPONSES[c] for c in (401, 403, 422, *codes)}


def _forbidden(exc: Forbidden) -> ApiError:
    return ApiError(403, "forbidden", exc.message, exc.hint)


def _lease(task: Task, seconds: float) -> dict[str, Any]:
    assert task.lease_owner is not None and task.lease_expires_at is not None
    return {
        "id": task.lease_owner,
        "expires_at": task.lease_expires_at.isoformat(),
        "seconds": seconds,
    }


def _now() -> datetime:
    return datetime.now(UTC)


@router.post(
    "/tasks/dequeue",
    summary="Take the next http_pull task this agent can run",
    responses={
        200: {"model": DequeueOut, "description": "A task, now running under your lease"},
        204: {"description": "Nothing to do now: ask again later"},
        **_responses(400),
    },
)
async def dequeue(
    token: AgentToken,
    store: StoreDep,
    settings: SettingsDep,
    body: Annotated[DequeueIn | None, Body()] = None,
) -> Any:
    caps = list(token.capabilities)
    if not caps:
        raise ApiError(
            403,
            "forbidden",
            f"agent token {token.name!r} has no capabilities: it may run no agent",
            "create a token with --capabilities (e.g. `bosun token create --agent NAME "
            "--capabilities claude`)",
        )
    if body is not None and body.agents is not None:
        offered = [a for a in dict.fromkeys(body.agents) if a in caps]
        if not offered:
            raise ApiError(
                403,
                "forbidden",
                f"none of the agents offered ({', '.join(body.agents[:10])}) is among the "
                f"capabilities of token {token.name!r} ({', '.join(caps)})",
                "offer agents the token may run, or use a token with those capabilities",
            )
        caps = offered
    seconds = settings.server.pull_lease_seconds
    agent = token.agent or token.name
    task = await store.dequeue(agent, caps, lease_seconds=seconds, now=_now())
    if task is None:
        return Response(status_code=204)
    return await _assignment(store, settings, task, seconds)


async def _assignment(
    store: SqlStore, settings: Settings, task: Task, seconds: float
) -> dict[str, Any]:
    """The dequeue answer: the task, how to work on it and the lease."""
    repo = settings.repos.get(task.repo) if task.repo is not None else None
    branch = branch_name(task.id, task.title) if task.repo is not None else None
    base = None
    if task.repo is not None:
        default = repo.default_branch if repo is not None else None
        base = await base_for_prepare(store, task) or default
    # A repository dropped from bosun.toml since the submit: no URL, and no prompt either.
    known = task.repo is None or repo is not None
    prompt = await task_prompt(store, task, settings, branch=branch) if known else ""
    return {
        "task": task.to_json(),
        "prompt": prompt,
        "repo_url": repo.url if repo is not None else None,
        "branch": branch,
        "base_branch": base,
        "lease": _lease(task, seconds),
    }


@router.post(
    "/tasks/{task_id}/status",
    summary="Report progress on a task you hold; extends the lease",
    responses={
        200: {"model": StatusOut, "description": "The extended lease"},
        **_responses(400, 404, 409),
    },
)
async def status(
    task_id: TaskId,
    body: StatusIn,
    token: AgentToken,
    store: StoreDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    events = [NewEvent(e.kind, e.data) for e in body.events]
    if body.message:
        events.append(NewEvent("pull.message", {"message": body.message}))
    seconds = settings.server.pull_lease_seconds
    try:
        task = await store.pull_status(
            task_id,
            body.lease,
            now=_now(),
            lease_seconds=seconds,
            events=events,
            first_seq=body.seq,
            agent=token.agent or token.name,
        )
    except Forbidden as exc:
        raise _forbidden(exc) from None
    return {"lease": _lease(task, seconds)}


@router.post(
    "/receipts",
    summary="Hand in the result of a task you hold",
    responses={
        200: {"model": TaskOut, "description": "The task, settled"},
        **_responses(400, 404, 409),
    },
)
async def receipt(
    body: ReceiptIn, token: AgentToken, store: StoreDep, settings: SettingsDep
) -> dict[str, Any]:
    lim = settings.limits
    outcome = body.outcome()
    # As for a local run: a forge reviews the pushed branch (its reconciler opens the pull
    # request of a task in review_pending).
    review = (
        outcome.success
        and bool(body.commits)
        and reviewed(settings, await store.get_task(body.task_id))
    )
    try:
        task = await store.pull_receipt(
            body.task_id,
            body.lease,
            outcome,
            now=_now(),
            backoff_base=lim.retry_backoff,
            backoff_cap=lim.retry_backoff_max,
            commits=body.commits,
            branch=body.branch,
            exit_code=body.exit_code,
            agent=token.agent or token.name,
            review=review,
        )
    except Forbidden as exc:
        raise _forbidden(exc) from None
    return task.to_json()
