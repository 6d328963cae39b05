"""``/api/v1/hosts``: in-process over a real SQLite store, plus the CLI's remote mode
against a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx
import pytest

from bosun.store.base import HostStore
from tests.serverkit import Api, api, live_url
from tests.store_fixtures import migrated_db

__all__ = ["api", "live_url", "migrated_db"]

ROUTES = [
    ("GET", "/api/v1/hosts"),
    ("POST", "/api/v1/hosts"),
    ("GET", "/api/v1/hosts/local"),
    ("POST", "/api/v1/hosts/local/drain"),
    ("POST", "/api/v1/hosts/local/enable"),
    ("POST", "/api/v1/hosts/local/check"),
    ("DELETE", "/api/v1/hosts/local"),
]


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The JSON error shape of the API contract; returns ``error``."""
    assert resp.status_code == status, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["code"] == code and err["message"] and err["hint"], err
    return err


def _hs(api: Api) -> HostStore:
    assert isinstance(api.store, HostStore)
    return api.store


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_host_route_needs_an_admin_token(api: Api, method: str, path: str) -> None:
    body = {"name": "x", "kind": "local", "check": False} if method == "POST" else None
    async with api.anon() as anon:
        resp = await anon.request(method, path, json=body)
        assert_error(resp, 401, "unauthorized")
        resp = await anon.request(method, path, json=body, headers=api.headers(api.agent))
        assert_error(resp, 403, "forbidden")
        resp = await anon.request(method, path, json=body, headers=api.headers("bsn_" + "x" * 43))
        assert_error(resp, 401, "unauthorized")
    assert await _hs(api).list_hosts() == []  # none of them changed anything


async def test_list_register_drain_enable_check_remove(api: Api) -> None:
    client = api.client
    listed = (await client.get("/api/v1/hosts")).json()
    assert [h["name"] for h in listed["hosts"]] == ["local"]
    assert listed["hosts"][0]["source"] == "config" and listed["hosts"][0]["running"] == 0

    resp = await client.post(
        "/api/v1/hosts",
        json={"name": "box", "kind": "local", "max_concurrent": 2, "labels": ["fast"]},
    )
    assert resp.status_code == 201, resp.text
    box = resp.json()
    assert box["name"] == "box" and box["source"] == "api" and box["health"] == "healthy"
    assert box["capabilities"]["agents"]["echo"]["installed"] is True
    assert "fast" in box["labels"] and box["max_concurrent"] == 2

    assert [h["name"] for h in (await client.get("/api/v1/hosts")).json()["hosts"]] == [
        "local",
        "box",
    ]
    assert (await client.get("/api/v1/hosts/box")).json() == box

    drained = (await client.post("/api/v1/hosts/local/drain")).json()
    assert drained["drained"] is True and drained["enabled"] is False
    enabled = (await client.post("/api/v1/hosts/local/enable")).json()
    assert enabled["drained"] is False and enabled["enabled"] is True

    check = await client.post("/api/v1/hosts/box/check")
    assert check.status_code == 200
    result = check.json()
    assert result["ok"] is True and result["host_key"] == "local"
    assert result["capabilities"]["cpus"] == os.cpu_count()

    removed = await client.delete("/api/v1/hosts/box")
    assert removed.status_code == 200 and removed.json()["name"] == "box"
    assert_error(await client.get("/api/v1/hosts/box"), 404, "not_found")


async def test_a_host_that_fails_its_check_is_refused_with_the_reason(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/hosts",
        json={"name": "far", "address": "nobody@127.0.0.1:1", "connect_timeout": 1},
    )
    err = assert_error(resp, 400, "invalid_input")
    assert "host far was not added" in err["message"] and "127.0.0.1" in err["message"]
    assert await _hs(api).list_hosts() == []
    # registered without the check, it can be checked later: 200 with ok false
    resp = await api.client.post(
        "/api/v1/hosts",
        json={"name": "far", "address": "nobody@127.0.0.1:1", "connect_timeout": 1, "check": False},
    )
    assert resp.status_code == 201 and resp.json()["health"] == "unknown"
    result = (await api.client.post("/api/v1/hosts/far/check")).json()
    assert result["ok"] is False and result["reachable"] is False and result["error"]
    assert (await api.client.get("/api/v1/hosts/far")).json()["health"] == "unhealthy"


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"name": "local", "kind": "local"}, 400, "invalid_input", "already defined"),
        ({"name": "bad name", "kind": "local"}, 422, "validation_error", "name"),
        ({"name": "h", "kind": "ssh", "check": False}, 400, "invalid_input", "needs an address"),
        ({"name": "h", "agents": ["nope"], "check": False}, 400, "invalid_input", "nope"),
        ({"name": "h", "wake_command": ["rm", "-rf", "/"]}, 422, "validation_error", "wake"),
        ({"name": "h", "identity_file": "/etc/shadow"}, 422, "validation_error", "identity"),
        ({"name": "h", "address": "a\nb", "check": False}, 422, "validation_error", "control"),
        ({"name": "h", "max_concurrent": 0}, 422, "validation_error", "max_concurrent"),
    ],
)
async def test_bad_registrations_are_refused_and_store_nothing(
    api: Api, body: dict[str, Any], status: int, code: str, words: str
) -> None:
    err = assert_error(await api.client.post("/api/v1/hosts", json=body), status, code)
    assert words in err["message"]
    assert await _hs(api).list_hosts() == []


async def test_wrong_targets(api: Api) -> None:
    client = api.client
    assert_error(await client.post("/api/v1/hosts/nope/drain"), 404, "not_found")
    assert_error(await client.post("/api/v1/hosts/nope/enable"), 404, "not_found")
    assert_error(await client.post("/api/v1/hosts/nope/check"), 404, "not_found")
    assert_error(await client.delete("/api/v1/hosts/nope"), 404, "not_found")
    err = assert_error(await client.delete("/api/v1/hosts/local"), 400, "invalid_input")
    assert "bosun.toml" in err["message"]


async def test_openapi_documents_the_host_routes(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/hosts"])
    assert "post" in paths["/api/v1/hosts/{name}/drain"]
    assert "delete" in paths["/api/v1/hosts/{name}"]


async def _cli(url: str, token: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bosun",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "BOSUN_SERVER": url,
            "BOSUN_TOKEN": token,
            "BOSUN_CONFIG": "/nonexistent",
        },
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_manages_hosts_of_a_server(api: Api, live_url: str) -> None:
    code, out, err = await _cli(live_url, api.admin, "hosts", "add", "box", "--kind", "local",
                                "--label", "fast", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["source"] == "api"
    async with httpx.AsyncClient(base_url=live_url, headers=api.headers(api.admin)) as c:
        assert (await c.post("/api/v1/hosts/box/drain")).status_code == 200
    code, out, err = await _cli(live_url, api.admin, "hosts", "--json")
    assert code == 0, err
    rows = {h["name"]: h for h in json.loads(out)}
    assert set(rows) == {"local", "box"} and rows["box"]["drained"] is True
    assert "fast" in rows["box"]["labels"]
    # an error from the server is printed as locally, with its fix, and its exit code
    code, out, err = await _cli(live_url, api.admin, "hosts", "rm", "nope")
    assert code == 3 and "does not exist" in err and "fix:" in err
