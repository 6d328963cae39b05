"""Hosts: list, register (after a connectivity check), drain, enable, check, remove; the
runs a host waits for before it gets new work, and forgetting them.

Admin tokens only (a ``run.forgotten`` event names the token that forgot a run). A host
registered here is stored in the host registry like one added with ``bosun hosts add``;
the fields that name programs or files on the server (``wake_command``,
``identity_file``, ``known_hosts``, ``ssh_config``) can only be set in ``bosun.toml``,
and ``remote_forwards`` neither.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bosun.hosts.records import has_control_characters
from bosun.hosts.waiting import forgotten_json
from bosun.server.deps import AdminToken, ServiceDep
from bosun.server.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"])

__all__ = ["ForgetIn", "HostIn", "router"]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
HostName = Annotated[str, PathParam(max_length=128, description="A host name")]


def _printable(value: str | None) -> str | None:
    if value is not None and has_control_characters(value):
        raise ValueError("contains control characters")
    return value


class HostIn(BaseModel):
    """A host to register: its name, whether to check it first, and ``[hosts.NAME]``
    fields (those not given take the defaults of bosun.toml)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN, description="Letters, digits, '_' and '-'")
    check: bool = Field(
        default=True, description="Connect and detect capabilities first; refuse if it fails"
    )
    kind: Literal["local", "ssh"] | None = Field(
        default=None, description="ssh (the default when an address is given) or local"
    )
    address: str | None = Field(
        default=None, min_length=1, max_length=300, description="[user@]host[:port] (ssh)"
    )
    max_concurrent: int | None = Field(default=None, ge=1, le=10_000)
    agents: list[Annotated[str, Field(max_length=128)]] | None = Field(
        default=None, max_length=100, description="Agents it may run (none: every agent)"
    )
    labels: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=100)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    enabled: bool | None = None
    strict_host_keys: bool | None = Field(
        default=None, description="false: do not verify the SSH host key (explicit opt-out)"
    )
    work_dir: str | None = Field(default=None, min_length=1, max_length=500)
    max_channels: int | None = Field(default=None, ge=3, le=1000)
    keepalive_interval: float | None = Field(default=None, gt=0, le=3600)
    keepalive_count_max: int | None = Field(default=None, ge=1, le=1000)
    connect_timeout: float | None = Field(default=None, gt=0, le=600)

    @field_validator("address", "work_dir")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return _printable(value)

    @field_validator("agents", "labels")
    @classmethod
    def _texts(cls, values: list[str] | None) -> list[str] | None:
        for v in values or ():
            _printable(v)
        return values

    def fields(self) -> dict[str, Any]:
        """The ``HostConfig`` fields that were given."""
        return {
            k: v for k, v in self.model_dump(exclude={"name", "check"}, exclude_none=True).items()
        }


class AgentCapabilityOut(BaseModel):
    program: str
    installed: bool
    path: str | None
    version: str | None
    error: str | None


class CapabilitiesOut(BaseModel):
    os: str | None
    os_release: str | None
    machine: str | None
    cpus: int | None
    memory_bytes: int | None
    agents: dict[str, AgentCapabilityOut]
    detected_at: str | None


class HostOut(BaseModel):
    """A host as ``bosun hosts --json`` shows it."""

    name: str
    kind: str
    address: str | None
    source: str = Field(description="config (bosun.toml), cli or api")
    enabled: bool = Field(description="May get new work (enabled and not drained)")
    drained: bool
    health: str = Field(description="unknown, healthy or unhealthy")
    healthy: bool
    health_error: str | None
    checked_at: str | None
    max_concurrent: int
    running: int
    waiting_runs: int = Field(
        description="Runs bosun must stop there before the host gets new work "
        "(GET /api/v1/hosts/{name}/waiting)"
    )
    priority: int
    agents: list[str]
    missing_agents: list[str] = Field(description="Agents the last check did not find")
    labels: list[str]
    strict_host_keys: bool
    capabilities: CapabilitiesOut | None


class HostList(BaseModel):
    hosts: list[HostOut]


class WaitingRunOut(BaseModel):
    """A run its host waits for: bosun stops it before the host gets new work."""

    run_id: int
    task_id: int
    attempt: int
    host: str
    agent: str
    status: str = Field(description="The run's status: lost, starting or running")
    why: Literal["abandoned", "cancel_pending"] = Field(
        description="abandoned: given up (host unreachable, or an internal error); "
        "cancel_pending: its task was cancelled while bosun could not stop it"
    )
    reason: str
    since: str | None = Field(description="When it was given up, or its cancel failed")
    task_status: str = Field(description="What its task is now (it keeps that state)")
    error: str | None
    run_dir: str | None = Field(description="The run's directory on the host")
    pgid: int | None = Field(description="The run's process group on the host")


class WaitingOut(BaseModel):
    host: str
    runs: list[WaitingRunOut]


class CheckOut(BaseModel):
    """The result of a check: connection, host key, capabilities; and the runs the host
    waits for (they do not make ``ok`` false)."""

    host: str
    kind: str
    address: str | None
    ok: bool
    reachable: bool
    host_key: str = Field(description="trusted, not checked, local, unknown or changed")
    fingerprint: str | None
    error: str | None
    hint: str | None
    labels: list[str]
    capabilities: CapabilitiesOut | None
    waiting: list[WaitingRunOut] = Field(
        description="The runs bosun must stop there before the host gets new work, as "
        "GET /api/v1/hosts/{name}/waiting lists them"
    )


class ForgetIn(BaseModel):
    """Runs to forget: ``runs`` (ids), or ``all`` the host waits for now; ``note`` is
    kept in each ``run.forgotten`` event (what the operator did about it)."""

    model_config = ConfigDict(extra="forbid")

    runs: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=1000)
    all: bool = Field(default=False, description="Every run the host waits for now")
    note: str | None = Field(default=None, min_length=1, max_length=1000)

    @field_validator("note")
    @classmethod
    def _note(cls, value: str | None) -> str | None:
        return _printable(value)


class ForgottenOut(BaseModel):
    """A ``run.forgotten`` event: who forgot which run, and what its task is."""

    run_id: int
    task_id: int | None
    host: str
    why: str
    reason: str
    task_status: str
    by: str
    note: str | None
    event_id: int
    at: str


class ForgetOut(BaseModel):
    host: str
    forgotten: list[ForgottenOut]


@router.get("", response_model=HostList, responses=ERROR_RESPONSES)
async def list_hosts(svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    """Every host (bosun.toml and registered) with its state, health and load."""
    return {"hosts": [h.to_json() for h in await svc.hosts()]}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=HostOut,
    responses=ERROR_RESPONSES,
)
async def add_host(body: HostIn, svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    """Register a host. With ``check`` (the default) bosun connects to it first; a host
    that cannot be reached (or whose SSH key is not trusted) is refused with 400 and the
    reason, and nothing is stored."""
    info = await svc.add_host(body.name, body.fields(), source="api", check=body.check)
    return info.to_json()


@router.get("/{name}", response_model=HostOut, responses=ERROR_RESPONSES)
async def get_host(name: HostName, svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    return (await svc.host(name)).to_json()


@router.post("/{name}/drain", response_model=HostOut, responses=ERROR_RESPONSES)
async def drain_host(name: HostName, svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    """No new work for the host; its running runs go on."""
    return (await svc.drain_host(name)).to_json()


@router.post("/{name}/enable", response_model=HostOut, responses=ERROR_RESPONSES)
async def enable_host(name: HostName, svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    """Undo a drain."""
    return (await svc.enable_host(name)).to_json()


@router.post("/{name}/check", response_model=CheckOut, responses=ERROR_RESPONSES)
async def check_host(name: HostName, svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    """Connect, verify the host key, detect capabilities; the result is stored. A host
    that fails the check is reported with ``ok`` false (status 200)."""
    return (await svc.check_host(name)).to_json()


@router.delete("/{name}", response_model=HostOut, responses=ERROR_RESPONSES)
async def remove_host(
    name: HostName,
    svc: ServiceDep,
    _: AdminToken,
    force: Annotated[
        bool, Query(description="Remove it even while tasks run there (they are retried)")
    ] = False,
) -> dict[str, Any]:
    """Forget a registered host (hosts of bosun.toml are edited there: 400)."""
    return (await svc.remove_host(name, force=force)).to_json()


@router.get("/{name}/waiting", response_model=WaitingOut, responses=ERROR_RESPONSES)
async def waiting_runs(name: HostName, svc: ServiceDep, _: AdminToken) -> dict[str, Any]:
    """The runs the host waits for: until bosun has stopped them (it tries at every health
    check) the host gets no new work. An empty list: it waits for none."""
    return {"host": name, "runs": [w.to_json() for w in await svc.waiting_runs(name)]}


@router.post("/{name}/forget", response_model=ForgetOut, responses=ERROR_RESPONSES)
async def forget_runs(
    body: ForgetIn, name: HostName, svc: ServiceDep, token: AdminToken
) -> dict[str, Any]:
    """Take over runs the host waits for (a process bosun cannot stop, a host
    reinstalled): bosun no longer tries to stop them, each gets a ``run.forgotten``
    event naming this token, and the host takes new work at its next reconcile (a
    running dispatcher's next health check). Their tasks keep their state. All or none:
    an unknown run is a 404, a run that is not waiting on this host a 400 saying why."""
    events = await svc.forget_runs(
        name, body.runs, every=body.all, by=f"api token {token.name}", note=body.note
    )
    return {"host": name, "forgotten": [forgotten_json(e) for e in events]}
