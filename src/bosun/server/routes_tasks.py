"""Tasks: submit, list (filters, cursor pagination), show, runs, cancel, retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bosun.models import ExecutionMode, TaskSpec, TaskStatus
from bosun.server.deps import AdminToken, ServiceDep
from bosun.server.errors import ERROR_RESPONSES
from bosun.store.base import TaskFilter

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

__all__ = ["MAX_ID", "TaskId", "TaskIn", "router", "text_ok"]

#: The largest id any backend stores (ids are 32-bit ``INTEGER`` columns on PostgreSQL):
#: larger ones in a path or query are a 422, not a database error.
MAX_ID = 2**31 - 1
TaskId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="A task id")]

_Text = Annotated[str, Field(max_length=10_000)]


def text_ok(value: str) -> str:
    """Refuse what no database can store: NUL bytes and unpaired surrogates."""
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains an unpaired surrogate (not valid Unicode text)") from None
    return value


class TaskIn(BaseModel):
    """A task to submit (the fields of ``Task.to_json()`` a user chooses)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=1000, description="A short title")
    body: str = Field(default="", max_length=1_000_000, description="The task text (Markdown)")
    repo: str | None = Field(default=None, max_length=200, description="A repo of bosun.toml")
    agent: str = Field(default="echo", min_length=1, max_length=200)
    base_branch: str | None = Field(default=None, max_length=250)
    constraints: list[_Text] = Field(default_factory=list, max_length=100)
    validation: list[_Text] = Field(default_factory=list, max_length=100)
    labels: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=50)
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first")
    scope: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=200, description="Paths the task may change"
    )
    depends_on: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        default_factory=list, max_length=100, description="Task ids this one waits for"
    )
    execution_mode: ExecutionMode = ExecutionMode.DISPATCH
    host: str | None = Field(default=None, max_length=200, description="Pin to one host")
    max_attempts: int | None = Field(default=None, ge=1, le=100)

    @field_validator("title", "body", "repo", "agent", "base_branch", "host")
    @classmethod
    def _one_text(cls, value: str | None) -> str | None:
        return None if value is None else text_ok(value)

    @field_validator("constraints", "validation", "labels", "scope")
    @classmethod
    def _texts(cls, values: list[str]) -> list[str]:
        return [text_ok(v) for v in values]

    def spec(self) -> TaskSpec:
        return TaskSpec(
            title=self.title,
            body=self.body,
            repo=self.repo,
            agent=self.agent,
            base_branch=self.base_branch,
            constraints=tuple(self.constraints),
            validation=tuple(self.validation),
            labels=tuple(self.labels),
            priority=self.priority,
            scope=tuple(self.scope),
            depends_on=tuple(self.depends_on),
            execution_mode=self.execution_mode,
            host=self.host,
            max_attempts=self.max_attempts,
        )


class TaskOut(BaseModel):
    """A task as ``Task.to_json()`` returns it (documentation of the responses)."""

    id: int
    title: str
    body: str
    status: TaskStatus
    repo: str | None
    agent: str
    base_branch: str | None
    branch: str | None
    constraints: list[str]
    validation: list[str]
    labels: list[str]
    priority: int
    scope: list[str]
    depends_on: list[int]
    execution_mode: ExecutionMode
    host: str | None
    assigned_host: str | None
    attempt: int
    max_attempts: int
    review_count: int
    session_id: str | None
    result_summary: str | None
    error: str | None
    error_kind: str | None
    tokens_in: int
    tokens_out: int
    tokens: int
    cost_usd: float
    commits: list[str]
    not_before: str | None
    created_at: str
    updated_at: str
    last_activity_at: str | None


class PendingOut(BaseModel):
    """A run whose agent the cancel could not stop yet (``bosun.backend.Unstopped``)."""

    run_id: int
    host: str
    error: str = Field(description="Why it could not be stopped")
    unreachable: bool = Field(description="The host did not answer (else: it answered an error)")
    will_retry: bool = Field(
        description="bosun stops it on its own once the host answers again (false: the "
        "host is no longer configured, nothing will)"
    )


class CancelOut(TaskOut):
    """The cancelled task, and the runs whose agent is not stopped yet."""

    cancel_pending: list[PendingOut] = Field(
        description="Empty when every running agent was stopped (or none ran)"
    )


class TaskPage(BaseModel):
    tasks: list[TaskOut]
    next_cursor: int | None = Field(description="Pass as ?cursor= for the next page; null: last")


class RunOut(BaseModel):
    id: int
    task_id: int
    attempt: int
    host: str
    agent: str
    status: str
    ref: dict[str, Any]
    exit_code: int | None
    error_kind: str | None
    error: str | None
    session_id: str | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    started_at: str
    ended_at: str | None


class RunList(BaseModel):
    runs: list[RunOut]


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: ERROR_RESPONSES[c] for c in (401, 403, 422, *codes)}


@router.post(
    "",
    status_code=201,
    summary="Submit a task",
    responses={201: {"model": TaskOut, "description": "The stored task"}, **_responses(400)},
)
async def submit_task(task: TaskIn, svc: ServiceDep, token: AdminToken) -> dict[str, Any]:
    return (await svc.submit(task.spec())).to_json()


@router.get(
    "",
    summary="List tasks by ascending id, a page at a time",
    responses={200: {"model": TaskPage, "description": "One page"}, **_responses()},
)
async def list_tasks(
    svc: ServiceDep,
    token: AdminToken,
    status: Annotated[list[TaskStatus] | None, Query(description="Repeat for several")] = None,
    repo: Annotated[str | None, Query(max_length=200)] = None,
    agent: Annotated[str | None, Query(max_length=200)] = None,
    label: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    flt = TaskFilter(
        statuses=frozenset(status) if status else None,
        repo=repo,
        agent=agent,
        label=label,
        after_id=cursor or None,
        limit=limit + 1,  # one more: is there a next page?
    )
    tasks = await svc.list_tasks(flt)
    page = tasks[:limit]
    return {
        "tasks": [t.to_json() for t in page],
        "next_cursor": page[-1].id if len(tasks) > limit else None,
    }


@router.get(
    "/{task_id}",
    summary="One task",
    responses={200: {"model": TaskOut, "description": "The task"}, **_responses(404)},
)
async def get_task(task_id: TaskId, svc: ServiceDep, token: AdminToken) -> dict[str, Any]:
    return (await svc.get(task_id)).to_json()


@router.get(
    "/{task_id}/runs",
    summary="The runs (attempts) of a task",
    responses={200: {"model": RunList, "description": "Runs by id"}, **_responses(404)},
)
async def get_runs(task_id: TaskId, svc: ServiceDep, token: AdminToken) -> dict[str, Any]:
    return {"runs": [r.to_json() for r in await svc.runs(task_id)]}


@router.post(
    "/{task_id}/cancel",
    summary="Cancel a task (kills its running agent)",
    description=(
        "The task is cancelled in any case. A running agent whose host does not answer "
        "cannot be stopped now: its run is listed in `cancel_pending` (and gets a "
        "`run.cancel_pending` event), and the dispatcher stops it once the host answers "
        "again."
    ),
    responses={
        200: {"model": CancelOut, "description": "The task, and agents not stopped yet"},
        **_responses(404, 409),
    },
)
async def cancel_task(task_id: TaskId, svc: ServiceDep, token: AdminToken) -> dict[str, Any]:
    return (await svc.cancel(task_id)).to_json()


@router.post(
    "/{task_id}/retry",
    summary="Queue a failed or cancelled task again",
    responses={200: {"model": TaskOut, "description": "The task"}, **_responses(400, 404, 409)},
)
async def retry_task(task_id: TaskId, svc: ServiceDep, token: AdminToken) -> dict[str, Any]:
    return (await svc.retry(task_id)).to_json()
