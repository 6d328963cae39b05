"""The pull routes over HTTP (in-process, and 50 agents over a real uvicorn): dequeue,
status, receipts, their errors and the race of many agents over one queue."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bosun.models import TaskStatus
from tests.conftest import SettingsFactory
from tests.serverkit import Api, api, serving
from tests.store_fixtures import migrated_db
from tests.test_server_api import assert_error, submit

__all__ = ["api", "migrated_db"]

DEQUEUE = "/api/v1/tasks/dequeue"


async def agent_token(api: Api, name: str, caps: list[str]) -> dict[str, str]:
    _, secret = await api.store.create_token(name, "agent", agent=name, capabilities=caps)
    return api.headers(secret)


async def dequeue(api: Api, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    resp = await api.client.post(DEQUEUE, json=body or None, headers=headers)
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()
    return data


async def test_dequeue_hands_out_the_task_its_prompt_and_a_lease(api: Api) -> None:
    me = api.headers(api.agent)
    empty = await api.client.post(DEQUEUE, headers=me)
    assert empty.status_code == 204 and empty.content == b""
    await submit(api, title="local one", agent="echo")  # dispatch mode: never handed out
    task = await submit(
        api,
        title="Add a greeting",
        body="Create hello.txt with: hi",
        repo="app",
        agent="echo",
        execution_mode="http_pull",
        constraints=["no new files but hello.txt"],
    )
    got = await dequeue(api, me)
    assert got["task"]["id"] == task["id"] and got["task"]["status"] == "running"
    assert got["task"]["assigned_host"] == "pull:worker-1" and got["task"]["attempt"] == 1
    assert got["repo_url"] == api.settings.repos["app"].url
    assert got["branch"] == f"task/{task['id']}-add-a-greeting"
    assert got["base_branch"] == "main"
    assert got["prompt"].startswith("# Task: Add a greeting")
    assert "Create hello.txt with: hi" in got["prompt"]
    assert "no new files but hello.txt" in got["prompt"]
    assert got["branch"] in got["prompt"]
    lease = got["lease"]
    assert lease["id"].startswith("pull:worker-1:")
    assert lease["seconds"] == api.settings.server.pull_lease_seconds
    assert datetime.fromisoformat(lease["expires_at"]) > datetime.now(UTC)
    assert (await api.client.post(DEQUEUE, headers=me)).status_code == 204
    runs = (await api.client.get(f"/api/v1/tasks/{task['id']}/runs")).json()["runs"]
    assert [(r["host"], r["status"]) for r in runs] == [("pull:worker-1", "running")]


async def test_a_task_without_a_repository(api: Api) -> None:
    await submit(api, title="Just think", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, api.headers(api.agent))
    assert (got["repo_url"], got["branch"], got["base_branch"]) == (None, None, None)
    assert got["prompt"].startswith("# Task: Just think")


async def test_status_and_receipt_settle_the_task(api: Api) -> None:
    me = api.headers(api.agent)
    task = await submit(api, title="t", repo="app", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, me)
    lease = got["lease"]["id"]
    status = await api.client.post(
        f"/api/v1/tasks/{task['id']}/status",
        headers=me,
        json={
            "lease": lease,
            "message": "working",
            "seq": 0,
            "events": [{"kind": "run.output", "data": {"stream": "stdout", "line": "hi"}}],
        },
    )
    assert status.status_code == 200, status.text
    assert status.json()["lease"]["id"] == lease
    assert status.json()["lease"]["expires_at"] >= got["lease"]["expires_at"]
    body = {
        "task_id": task["id"],
        "lease": lease,
        "success": True,
        "summary": "greeted",
        "exit_code": 0,
        "session_id": "s-1",
        "tokens_in": 7,
        "tokens_out": 3,
        "cost_usd": 0.25,
        "commits": ["0123abcd"],
        "branch": got["branch"],
    }
    done = await api.client.post("/api/v1/receipts", headers=me, json=body)
    assert done.status_code == 200, done.text
    settled = done.json()
    assert settled["status"] == "completed"
    assert (settled["tokens"], settled["cost_usd"], settled["commits"]) == (10, 0.25, ["0123abcd"])
    assert (settled["branch"], settled["session_id"]) == (got["branch"], "s-1")
    again = await api.client.post("/api/v1/receipts", headers=me, json=body)
    assert again.status_code == 200 and again.json() == settled  # delivered twice: no harm
    events = await api.client.get(f"/api/v1/tasks/{task['id']}/events?follow=false")
    text = events.text
    assert "event: run.output" in text and "event: pull.message" in text
    late = await api.client.post(
        f"/api/v1/tasks/{task['id']}/status", headers=me, json={"lease": lease}
    )
    assert_error(late, 409, "lease_lost")


async def test_a_failed_receipt_queues_a_retry(api: Api) -> None:
    me = api.headers(api.agent)
    task = await submit(api, title="t", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, me)
    resp = await api.client.post(
        "/api/v1/receipts",
        headers=me,
        json={
            "task_id": task["id"],
            "lease": got["lease"]["id"],
            "success": False,
            "error": "tests failed",
            "exit_code": 1,
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "queued"
    assert (resp.json()["error"], resp.json()["error_kind"]) == ("tests failed", "agent")


async def test_expired_lease_late_reports_are_409(api: Api) -> None:
    me = api.headers(api.agent)
    task = await submit(api, title="t", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, me)
    later = datetime.now(UTC) + timedelta(seconds=api.settings.server.pull_lease_seconds + 1)
    (back,) = await api.store.expire_pull_leases(later)
    assert back.status is TaskStatus.QUEUED
    status = await api.client.post(
        f"/api/v1/tasks/{task['id']}/status", headers=me, json={"lease": got["lease"]["id"]}
    )
    err = assert_error(status, 409, "lease_lost")
    assert "expired" in err["message"]
    receipt = await api.client.post(
        "/api/v1/receipts",
        headers=me,
        json={"task_id": task["id"], "lease": got["lease"]["id"], "success": True},
    )
    assert_error(receipt, 409, "lease_lost")
    assert (await api.store.get_task(task["id"])).status is TaskStatus.QUEUED


async def test_another_agents_or_a_dispatch_task_is_403(api: Api) -> None:
    me = api.headers(api.agent)
    other = await agent_token(api, "worker-2", ["echo"])
    task = await submit(api, title="t", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, me)
    lease = got["lease"]["id"]
    for body in ({"lease": lease}, {"lease": "pull:worker-2:guess"}):
        resp = await api.client.post(f"/api/v1/tasks/{task['id']}/status", headers=other, json=body)
        assert_error(resp, 403, "forbidden")
    resp = await api.client.post(
        "/api/v1/receipts",
        headers=other,
        json={"task_id": task["id"], "lease": lease, "success": True},
    )
    assert_error(resp, 403, "forbidden")
    local = await submit(api, title="local", agent="echo")
    resp = await api.client.post(f"/api/v1/tasks/{local['id']}/status", headers=me, json=body)
    err = assert_error(resp, 403, "forbidden")
    assert "dispatcher" in err["message"]
    missing = await api.client.post("/api/v1/tasks/999/status", headers=me, json={"lease": lease})
    assert_error(missing, 404, "not_found")
    assert (await api.store.get_task(task["id"])).status is TaskStatus.RUNNING


async def test_capabilities_and_token_kinds(api: Api) -> None:
    await submit(api, title="for demo", agent="demo", execution_mode="http_pull")
    echo = await submit(api, title="for echo", agent="echo", execution_mode="http_pull")
    me = api.headers(api.agent)  # capabilities: echo
    refused = await api.client.post(DEQUEUE, headers=me, json={"agents": ["demo"]})
    err = assert_error(refused, 403, "forbidden")
    assert "capabilities" in err["message"]
    got = await dequeue(api, me, agents=["demo", "echo"])
    assert got["task"]["id"] == echo["id"]
    assert (await api.client.post(DEQUEUE, headers=me)).status_code == 204
    demo = await agent_token(api, "demo-box", ["demo"])
    assert (await dequeue(api, demo))["task"]["agent"] == "demo"
    admin = await api.client.post(DEQUEUE)  # the client's default: the admin token
    assert_error(admin, 403, "forbidden")
    async with api.anon() as anon:
        assert_error(await anon.post(DEQUEUE), 401, "unauthorized")
    bad_kind = await api.client.post(
        f"/api/v1/tasks/{echo['id']}/status",
        headers=me,
        json={"lease": got["lease"]["id"], "events": [{"kind": "task.status", "data": {}}]},
    )
    assert_error(bad_kind, 400, "invalid_input")
    bad_body = await api.client.post(DEQUEUE, headers=me, json={"agents": "echo"})
    assert_error(bad_body, 422, "validation_error")


async def test_fifty_agents_over_http_take_each_task_once(api: Api) -> None:
    """50 agents, each with its own token and connection, race over a real uvicorn."""
    count = 200
    await asyncio.gather(
        *(
            submit(api, title=f"t{i}", agent="echo", execution_mode="http_pull")
            for i in range(count)
        )
    )
    tokens = [await agent_token(api, f"racer-{n}", ["echo"]) for n in range(50)]
    taken: list[tuple[int, int]] = []
    async with serving(api.app) as url:

        async def agent(n: int) -> None:
            async with httpx.AsyncClient(base_url=url, headers=tokens[n], timeout=60) as client:
                while True:
                    resp = await client.post(DEQUEUE)
                    if resp.status_code == 204:
                        return
                    assert resp.status_code == 200, resp.text
                    task = resp.json()["task"]
                    assert task["assigned_host"] == f"pull:racer-{n}"
                    taken.append((n, task["id"]))

        await asyncio.gather(*(agent(n) for n in range(50)))
    ids = Counter(task_id for _, task_id in taken)
    assert len(ids) == count and set(ids.values()) == {1}
    assert len({n for n, _ in taken}) > 1


async def test_text_no_database_can_store_is_422(api: Api) -> None:
    me = api.headers(api.agent)
    task = await submit(api, title="t", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, me)
    for body in (
        {"lease": got["lease"]["id"], "events": [{"kind": "run.output", "data": {"l": "a\x00"}}]},
        {"lease": got["lease"]["id"], "message": "nul \x00"},
        {"lease": got["lease"]["id"], "events": [{"kind": "agent.text", "data": {"\x00": 1}}]},
    ):
        resp = await api.client.post(f"/api/v1/tasks/{task['id']}/status", headers=me, json=body)
        assert_error(resp, 422, "validation_error")
    resp = await api.client.post(
        "/api/v1/receipts",
        headers=me,
        json={
            "task_id": task["id"],
            "lease": got["lease"]["id"],
            "success": True,
            "summary": "\x00",
        },
    )
    assert_error(resp, 422, "validation_error")
    assert (await api.store.get_task(task["id"])).status is TaskStatus.RUNNING


async def test_a_repository_with_a_forge_sends_a_success_to_review(
    make_settings: SettingsFactory, api: Api
) -> None:
    """As for a local run: with a forge, a success with commits waits in review_pending
    (the review loop opens its pull request)."""
    forge = {
        "kind": "gitea",
        "api_url": "http://127.0.0.1:9/api/v1",
        "repo": "o/app",
        "token_env": "BOSUN_TEST_FORGE_TOKEN",
    }
    settings = make_settings(repos={"app": {"url": api.settings.repos["app"].url, "forge": forge}})
    api.app.state.settings = settings
    me = api.headers(api.agent)
    task = await submit(api, title="t", repo="app", agent="echo", execution_mode="http_pull")
    got = await dequeue(api, me)
    resp = await api.client.post(
        "/api/v1/receipts",
        headers=me,
        json={
            "task_id": task["id"],
            "lease": got["lease"]["id"],
            "success": True,
            "commits": ["0123abcd"],
            "branch": got["branch"],
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "review_pending"
