"""The HTTP API in-process (httpx.ASGITransport over a real SQLite store): every route of
tasks, agents and health; authentication and scopes; the JSON error shape."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter

from bosun.models import RunStatus, TaskSpec, TaskStatus
from bosun.server.app import create_app
from bosun.server.deps import AgentToken
from bosun.service import agent_rows
from tests.serverkit import BASE, Api, api
from tests.store_fixtures import migrated_db

__all__ = ["api", "migrated_db"]

#: Every route of this module's concern (method, path), with a task id that exists.
ADMIN_ROUTES = [
    ("POST", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks"),
    ("GET", "/api/v1/tasks/1"),
    ("GET", "/api/v1/tasks/1/runs"),
    ("POST", "/api/v1/tasks/1/cancel"),
    ("POST", "/api/v1/tasks/1/retry"),
    ("GET", "/api/v1/tasks/1/events?follow=false"),
    ("GET", "/api/v1/events?follow=false"),
]


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"code", "message", "hint"}
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["hint"], str) and err["hint"]
    return err


async def submit(api: Api, **fields: Any) -> dict[str, Any]:
    resp = await api.client.post("/api/v1/tasks", json={"title": "t", **fields})
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


# -- health and schema -----------------------------------------------------------------
async def test_health_routes_need_no_token(api: Api) -> None:
    async with api.anon() as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        ready = await anon.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_readyz_is_503_when_the_store_does_not_answer(api: Api) -> None:
    async with api.store.engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE events"))
    async with api.anon() as anon:
        resp = await anon.get("/readyz")
        assert (await anon.get("/healthz")).status_code == 200  # alive, though not ready
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unavailable"
    assert body["error"]["code"] == "store_unavailable" and body["error"]["hint"]


async def test_openapi_describes_every_route_with_bearer_auth(api: Api) -> None:
    async with api.anon() as anon:
        doc = (await anon.get("/openapi.json")).json()
    assert doc["info"]["title"] == "bosun"
    assert doc["info"]["version"] == version("bosun")
    paths = doc["paths"]
    for method, path in [*ADMIN_ROUTES, ("GET", "/api/v1/agents"), ("GET", "/healthz")]:
        template = path.split("?")[0].replace("/1", "/{task_id}")
        assert method.lower() in paths[template], (method, template)
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    submit_op = paths["/api/v1/tasks"]["post"]
    assert "201" in submit_op["responses"] and "422" in submit_op["responses"]


# -- authentication and scopes -------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [*ADMIN_ROUTES, ("GET", "/api/v1/agents")])
async def test_every_route_refuses_a_missing_wrong_or_revoked_token(
    api: Api, method: str, path: str
) -> None:
    await submit(api)
    doomed, doomed_secret = await api.store.create_token("doomed", "admin")
    await api.store.revoke_token(doomed.id)
    wrong = "bsn_" + "A" * 43  # the right shape, but no such token
    async with api.anon() as anon:
        for headers in (
            {},
            {"Authorization": f"Bearer {wrong}"},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": f"Basic {api.admin}"},
            {"Authorization": f"Bearer {doomed_secret}"},
        ):
            resp = await anon.request(method, path, headers=headers)
            err = assert_error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert "bosun token" in err["hint"] or "Bearer" in err["hint"]
            for secret in (api.admin, doomed_secret):
                assert secret not in resp.text


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_an_agent_token_may_not_use_admin_routes(api: Api, method: str, path: str) -> None:
    await submit(api)
    async with api.anon() as anon:
        resp = await anon.request(method, path, headers=api.headers(api.agent))
    err = assert_error(resp, 403, "forbidden")
    assert "admin token" in err["message"]
    # Nothing happened: the task is still queued.
    assert (await api.client.get("/api/v1/tasks/1")).json()["status"] == "queued"


async def test_agents_list_is_open_to_admin_and_agent_tokens(api: Api) -> None:
    expected = {"agents": agent_rows(api.settings)}
    assert (await api.client.get("/api/v1/agents")).json() == expected
    async with api.anon() as anon:
        resp = await anon.get("/api/v1/agents", headers=api.headers(api.agent))
    assert resp.status_code == 200 and resp.json() == expected
    assert any(a["name"] == "echo" for a in expected["agents"])


async def test_require_agent_gives_the_identity_and_refuses_admin_tokens(api: Api) -> None:
    router = APIRouter()

    @router.get("/test/whoami")
    async def whoami(token: AgentToken) -> dict[str, Any]:
        return {"agent": token.agent, "capabilities": list(token.capabilities)}

    app = create_app(api.settings, api.store)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        ok = await c.get("/test/whoami", headers=api.headers(api.agent))
        assert ok.status_code == 200
        assert ok.json() == {"agent": "worker-1", "capabilities": ["echo"]}
        err = assert_error(
            await c.get("/test/whoami", headers=api.headers(api.admin)), 403, "forbidden"
        )
        assert "pull agents" in err["message"]
        assert_error(await c.get("/test/whoami"), 401, "unauthorized")


async def test_a_revoked_token_stops_working_at_once(api: Api) -> None:
    assert (await api.client.get("/api/v1/tasks")).status_code == 200
    await api.store.revoke_token("admin")
    assert_error(await api.client.get("/api/v1/tasks"), 401, "unauthorized")


async def test_secrets_never_reach_the_log(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "bsn_" + "B" * 43
    await api.client.get("/api/v1/tasks")
    async with api.anon() as anon:
        await anon.get("/api/v1/tasks", headers=api.headers(wrong))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert api.admin not in text and wrong not in text


# -- tasks -----------------------------------------------------------------------------
async def test_submit_stores_every_field_and_get_returns_it(api: Api) -> None:
    dep = await submit(api, title="first")
    fields = {
        "title": "  second  ",
        "body": "do *it*\nwell",
        "repo": "app",
        "agent": "echo",
        "base_branch": "main",
        "constraints": ["no new deps", "  "],
        "validation": ["pytest -q"],
        "labels": ["bug", "host:gpu"],
        "priority": 5,
        "scope": ["src/x.py"],
        "depends_on": [dep["id"]],
        "execution_mode": "http_pull",
        "host": "local",
        "max_attempts": 2,
    }
    resp = await api.client.post("/api/v1/tasks", json=fields)
    assert resp.status_code == 201, resp.text
    task = resp.json()
    assert task["title"] == "second"  # normalised by validate_spec
    assert task["constraints"] == ["no new deps"]
    assert task["status"] == "blocked"  # waits for the first one
    for key in ("body", "repo", "agent", "base_branch", "validation", "labels", "priority"):
        assert task[key] == fields[key]
    assert task["execution_mode"] == "http_pull" and task["depends_on"] == [dep["id"]]
    assert task["host"] == "local" and task["scope"] == ["src/x.py"]
    assert (await api.client.get(f"/api/v1/tasks/{task['id']}")).json() == task
    stored = await api.store.get_task(task["id"])
    assert stored.to_json() == task


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"title": ""}, "body title"),
        ({}, "body title"),
        ({"title": "t", "priority": "high"}, "body priority"),
        ({"title": "t", "priority": 5000}, "body priority"),
        ({"title": "t", "labels": "bug"}, "body labels"),
        ({"title": "t", "depends_on": [0]}, "body depends_on"),
        ({"title": "t", "depends_on": [2**31]}, "body depends_on"),
        ({"title": "t", "execution_mode": "teleport"}, "body execution_mode"),
        ({"title": "t", "colour": "red"}, "body colour"),
        ({"title": "a\x00b"}, "NUL"),
        ({"title": "t", "labels": ["\ud800"]}, "body labels"),
        ({"title": "t", "max_attempts": 0}, "body max_attempts"),
        ([1, 2], "body"),
    ],
)
async def test_invalid_bodies_are_422_with_the_field_named(api: Api, body: Any, where: str) -> None:
    # json.dumps escapes (ensure_ascii): a lone surrogate travels as \\ud800, as a client
    # in another language could send it.
    resp = await api.client.post(
        "/api/v1/tasks", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    err = assert_error(resp, 422, "validation_error")
    assert where in err["message"]
    assert await api.store.list_tasks() == []  # nothing stored


async def test_malformed_json_is_422(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks", content=b'{"title": ', headers={"content-type": "application/json"}
    )
    assert_error(resp, 422, "validation_error")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"agent": "nobody"}, "unknown agent 'nobody'"),
        ({"repo": "nope"}, "unknown repo 'nope'"),
        ({"host": "mars"}, "unknown host 'mars'"),
        ({"repo": "app", "base_branch": "a..b"}, "not a valid branch name"),
        ({"depends_on": [99]}, "99"),
        ({"title": "   "}, "no title"),
    ],
)
async def test_input_errors_of_the_service_are_400_with_a_hint(
    api: Api, fields: dict[str, Any], match: str
) -> None:
    resp = await api.client.post("/api/v1/tasks", json={"title": "t", **fields})
    err = assert_error(resp, 400, "invalid_input")
    assert match in err["message"]
    assert await api.store.list_tasks() == []


async def test_list_filters_by_status_repo_agent_and_label(api: Api) -> None:
    a = await submit(api, labels=["bug"], repo="app")
    b = await submit(api, agent="claude")
    c = await submit(api, labels=["bug", "ui"])
    await api.client.post(f"/api/v1/tasks/{b['id']}/cancel")

    async def ids(**params: Any) -> list[int]:
        resp = await api.client.get("/api/v1/tasks", params=params)
        assert resp.status_code == 200, resp.text
        return [t["id"] for t in resp.json()["tasks"]]

    assert await ids() == [a["id"], b["id"], c["id"]]
    assert await ids(status="cancelled") == [b["id"]]
    assert await ids(status=["cancelled", "queued"]) == [a["id"], b["id"], c["id"]]
    assert await ids(repo="app") == [a["id"]]
    assert await ids(agent="claude") == [b["id"]]
    assert await ids(label="bug") == [a["id"], c["id"]]
    assert await ids(label="bug", status="queued", repo="app") == [a["id"]]
    err = assert_error(
        await api.client.get("/api/v1/tasks", params={"status": "sleeping"}),
        422,
        "validation_error",
    )
    assert "query status" in err["message"]


@pytest.mark.parametrize("count", [7, 6, 0])
async def test_cursor_pagination_visits_every_task_once(api: Api, count: int) -> None:
    made = [(await submit(api, title=f"t{i}"))["id"] for i in range(count)]
    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await api.client.get("/api/v1/tasks", params=params)).json()
        pages += 1
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == seen[-1] and len(page["tasks"]) == 3
    assert seen == made
    assert pages == max(1, -(-count // 3))  # no trailing empty page


async def test_list_limits_are_checked(api: Api) -> None:
    for params in ({"limit": 0}, {"limit": 1001}, {"cursor": -1}, {"cursor": "x"}):
        assert_error(await api.client.get("/api/v1/tasks", params=params), 422, "validation_error")


@pytest.mark.parametrize("path", ["/api/v1/tasks/{id}", "/api/v1/tasks/{id}/runs"])
async def test_unknown_and_malformed_task_ids(api: Api, path: str) -> None:
    err = assert_error(await api.client.get(path.format(id=42)), 404, "not_found")
    assert "task 42" in err["message"]
    for bad in ("0", "-3", "abc", str(2**31), str(2**63), "1.5"):
        assert_error(await api.client.get(path.format(id=bad)), 422, "validation_error")


async def test_runs_of_a_task(api: Api) -> None:
    task = await submit(api)
    assert (await api.client.get(f"/api/v1/tasks/{task['id']}/runs")).json() == {"runs": []}
    run = await api.store.add_run(
        task["id"], attempt=1, host="local", agent="echo", ref={"run_dir": "/x"}
    )
    await api.store.update_run(run.id, status=RunStatus.RUNNING)
    runs = (await api.client.get(f"/api/v1/tasks/{task['id']}/runs")).json()["runs"]
    assert runs == [(await api.store.get_run(run.id)).to_json()]
    assert runs[0]["status"] == "running" and runs[0]["task_id"] == task["id"]


async def test_cancel_and_retry(api: Api) -> None:
    task = await submit(api)
    path = f"/api/v1/tasks/{task['id']}"
    retry_queued = await api.client.post(f"{path}/retry")
    assert retry_queued.status_code in (400, 409)
    assert_error(retry_queued, retry_queued.status_code, retry_queued.json()["error"]["code"])
    cancelled = await api.client.post(f"{path}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    err = assert_error(await api.client.post(f"{path}/cancel"), 409, "invalid_transition")
    assert "cancelled" in err["message"]
    retried = await api.client.post(f"{path}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert (await api.store.get_task(task["id"])).status is TaskStatus.QUEUED
    assert_error(await api.client.post("/api/v1/tasks/777/cancel"), 404, "not_found")
    assert_error(await api.client.post("/api/v1/tasks/777/retry"), 404, "not_found")


async def test_a_task_submitted_elsewhere_is_visible(api: Api) -> None:
    task = await api.store.add_task(TaskSpec(title="from the CLI"), max_attempts=3)
    got = (await api.client.get(f"/api/v1/tasks/{task.id}")).json()
    assert got["title"] == "from the CLI" and got["status"] == "queued"


# -- errors ----------------------------------------------------------------------------
async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    err = assert_error(await api.client.get("/api/v1/nothing"), 404, "not_found")
    assert "/api/v1/nothing" in err["message"]
    err = assert_error(await api.client.delete("/api/v1/tasks"), 405, "method_not_allowed")
    assert "DELETE" in err["message"]


async def test_an_unexpected_failure_is_a_500_that_reveals_nothing(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    router = APIRouter()

    @router.get("/test/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app = create_app(api.settings, api.store)
    app.include_router(router)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        resp = await c.get("/test/boom")
    err = assert_error(resp, 500, "internal_error")
    assert "secret internals" not in resp.text
    assert "bug" in err["hint"]
    assert any("secret internals" in (r.exc_text or "") for r in caplog.records)


async def test_http_exceptions_of_routes_keep_their_message(api: Api) -> None:
    from fastapi import HTTPException

    router = APIRouter()

    @router.get("/test/gone")
    async def gone() -> None:
        raise HTTPException(404, detail="lease 7 is gone")

    @router.get("/test/shaped")
    async def shaped() -> None:
        raise HTTPException(409, detail={"message": "not yours", "hint": "dequeue again"})

    app = create_app(api.settings, api.store)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        gone_resp = await c.get("/test/gone")
        shaped_resp = await c.get("/test/shaped")
    assert gone_resp.status_code == 404
    assert gone_resp.json()["error"]["message"] == "lease 7 is gone"
    assert shaped_resp.status_code == 409
    assert shaped_resp.json() == {
        "error": {"code": "conflict", "message": "not yours", "hint": "dequeue again"}
    }
