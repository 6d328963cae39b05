"""Fuzz the whole API from its OpenAPI document (schemathesis strategies, valid and
invalid requests) in-process, with an admin or an agent token: the server never answers
with a 5xx, and every error has bosun's JSON shape."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from bosun.models import TaskSpec
from bosun.server.app import create_app
from bosun.store import open_store
from tests.conftest import SettingsFactory
from tests.serverkit import BASE
from tests.store_fixtures import migrated_db

__all__ = ["migrated_db"]

EXAMPLES = 250


def _request_kwargs(case: Any, auth: str) -> dict[str, Any]:
    kw = case.as_transport_kwargs(base_url=BASE)
    params = kw.get("params") or {}
    if case.path.endswith("/events"):
        params = {**dict(params), "follow": "false"}  # a live stream never ends
    headers = {k: v for k, v in (kw.get("headers") or {}).items() if k.lower() != "authorization"}
    headers["Authorization"] = f"Bearer {auth}"
    out: dict[str, Any] = {
        "method": kw["method"],
        "url": kw["url"],
        "headers": headers,
        "params": params,
    }
    if "json" in kw:
        out["json"] = kw["json"]
    elif kw.get("data") is not None:
        out["content"] = kw["data"]
    return out


def test_fuzzing_the_openapi_schema_finds_no_server_error(
    make_settings: SettingsFactory, migrated_db: Path, tmp_path: Path
) -> None:
    cfg = make_settings()
    db = tmp_path / "fuzz" / "bosun.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(migrated_db, db)
    with asyncio.Runner() as runner:
        store = runner.run(open_store(f"sqlite:///{db}"))
        app = create_app(cfg, store)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
        try:
            _, admin = runner.run(store.create_token("admin", "admin"))
            _, agent = runner.run(
                store.create_token("w", "agent", agent="w", capabilities=["echo"])
            )
            for i in range(3):  # something for ids 1..3 to find
                runner.run(store.add_task(TaskSpec(title=f"t{i}"), max_attempts=3))
            # Registering a host checks that it is reachable over SSH, which waits up to the
            # connect timeout for each made-up address: tests/test_hosts_*.py cover it.
            schema = schemathesis.openapi.from_dict(app.openapi()).exclude(
                method="POST", path="/api/v1/hosts"
            )
            cases = st.one_of(
                schema.as_strategy(generation_mode=GenerationMode.POSITIVE),
                schema.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            )
            seen: dict[int, int] = {}

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases, auth=st.sampled_from([admin, admin, agent]))
            def check(case: Any, auth: str) -> None:
                try:
                    request = client.build_request(**_request_kwargs(case, auth))
                except (httpx.HTTPError, ValueError, TypeError, UnicodeError):
                    return  # not sendable over HTTP at all (e.g. a header with a newline)
                resp = runner.run(client.send(request))
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                where = f"{case.method} {case.formatted_path}"
                assert resp.status_code < 500, f"{where}: {resp.status_code} {resp.text}"
                if resp.status_code >= 400:
                    err = resp.json()["error"]
                    assert err["code"] and err["message"], f"{where}: {resp.text}"

            check()
            # The fuzzing reached past validation and authentication, too.
            assert any(200 <= s < 300 for s in seen), seen
            assert 422 in seen, seen
        finally:
            app.state.stopping.set()
            runner.run(client.aclose())
            runner.run(store.aclose())
