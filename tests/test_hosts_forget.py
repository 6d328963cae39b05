"""``bosun hosts waiting`` / ``forget`` and their routes: the runs a host waits for, and an
operator taking them over.

The store is a real SQLite database seeded with runs of every kind
(``tests.contract_hosts.seed_waiting``: waiting on ``local`` are one given up and one
whose cancel could not reach the host; one given up on ``box``; on ``local`` also runs it
does not wait for). The CLI runs in this process against that store (``CliRunner``), the
routes in-process against the API app, and the CLI's remote mode against a real uvicorn.
The dispatcher's side (the host takes work again) is in ``tests/test_reconcile_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bosun.cli_hosts import _waiting_note
from bosun.config import load_settings
from bosun.models import Event, Task
from bosun.store import open_store
from bosun.store.base import HostStore, Store
from tests.contract_hosts import GIVEN_UP_AT, Waiting, seed_waiting
from tests.serverkit import Api, api, live_url
from tests.store_fixtures import migrated_db
from tests.test_hosts_api import _cli, assert_error
from tests.test_hosts_cli import cfg, js, run

__all__ = ["api", "cfg", "live_url", "migrated_db"]


def _hs(store: Store) -> HostStore:
    assert isinstance(store, HostStore)
    return store


async def _seed(store: Store) -> Waiting:
    await _hs(store).add_host("box", source="cli", config={"kind": "local"})
    return await seed_waiting(store, "local", "box")


def _in_store(cfg: Path, action: Any) -> Any:
    """``action(store)`` on the store of ``cfg``'s bosun.toml."""

    async def go() -> Any:
        store = await open_store(load_settings(cfg / "bosun.toml").database_url)
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


async def _forgotten(store: Store) -> list[Event]:
    return [e for e in await store.events_since(0, limit=10_000) if e.kind == "run.forgotten"]


async def _tasks(store: Store) -> dict[int, Task]:
    return {t.id: t for t in await store.list_tasks()}


# -- the CLI, on this machine's store ----------------------------------------------------------
def test_waiting_lists_the_runs_a_host_waits_for_and_hosts_counts_them(cfg: Path) -> None:
    w: Waiting = _in_store(cfg, _seed)
    listed = js(run(cfg, "hosts", "waiting", "local", "--json"))
    assert listed["host"] == "local"
    gave_up, pending = listed["runs"]
    assert gave_up == {
        "run_id": w.abandoned.id,
        "task_id": w.abandoned.task_id,
        "attempt": 1,
        "host": "local",
        "agent": "echo",
        "status": "lost",
        "why": "abandoned",
        "reason": "given up while the host was unreachable; it may still run on the host",
        "since": GIVEN_UP_AT.isoformat(),
        "task_status": "queued",
        "error": None,
        "run_dir": "/runs/a",
        "pgid": 7,
    }
    assert pending["run_id"] == w.pending.id and pending["why"] == "cancel_pending"
    assert pending["status"] == "starting" and pending["task_status"] == "cancelled"
    assert pending["since"] == w.pending_at.isoformat()
    assert [r["run_id"] for r in js(run(cfg, "hosts", "waiting", "box", "--json"))["runs"]] == [
        w.elsewhere.id
    ]

    table = run(cfg, "hosts", "waiting", "local")
    assert table.exit_code == 0, table.stderr
    for words in (
        "given up while the host was unreachable",
        "its task was cancelled while bosun could not stop it",
        "run_dir /runs/p pgid 7",
        "gets no new work until bosun has stopped these 2 run(s)",
        "bosun hosts forget local RUN_ID",
    ):
        assert words in table.stdout, table.stdout

    rows = {h["name"]: h for h in js(run(cfg, "hosts", "--json"))}
    assert rows["local"]["waiting_runs"] == 2 and rows["box"]["waiting_runs"] == 1
    assert "waits for 2 run(s)" in run(cfg, "hosts").stdout


def test_forget_takes_runs_over_records_who_and_keeps_their_tasks(cfg: Path) -> None:
    w: Waiting = _in_store(cfg, _seed)
    before = _in_store(cfg, _tasks)
    done = run(cfg, "hosts", "forget", "local", str(w.abandoned.id), "--note", "killed by hand")
    assert done.exit_code == 0, done.stderr
    assert f"run {w.abandoned.id} (task {w.abandoned.task_id}, queued) on host local" in done.stdout
    assert "forgotten: bosun no longer tries to stop it" in done.stdout
    assert "takes new work again at its next health check" in done.stdout
    (second,) = js(run(cfg, "hosts", "forget", "local", str(w.pending.id), "--json"))["forgotten"]
    assert second["run_id"] == w.pending.id and second["task_id"] == w.pending.task_id
    assert second["why"] == "cancel_pending" and second["task_status"] == "cancelled"
    assert second["by"].startswith("cli ") and "@" in second["by"] and second["note"] is None

    assert js(run(cfg, "hosts", "waiting", "local", "--json"))["runs"] == []
    assert "host local waits for no run" in run(cfg, "hosts", "waiting", "local").stdout
    events = _in_store(cfg, _forgotten)
    assert [(e.run_id, e.task_id, e.data["note"]) for e in events] == [
        (w.abandoned.id, w.abandoned.task_id, "killed by hand"),
        (w.pending.id, w.pending.task_id, None),
    ]
    assert events[0].data["by"] == second["by"]
    assert _in_store(cfg, _tasks) == before  # the tasks keep their state

    # --all: every run box waits for; then there is nothing left to forget
    (every,) = js(run(cfg, "hosts", "forget", "box", "--all", "--json"))["forgotten"]
    assert every["run_id"] == w.elsewhere.id and every["host"] == "box"
    again = run(cfg, "hosts", "forget", "box", "--all")
    assert again.exit_code == 0 and "box waits for no run: nothing to forget" in again.stdout
    assert all(h["waiting_runs"] == 0 for h in js(run(cfg, "hosts", "--json")))


def test_forgetting_what_the_host_does_not_wait_for_is_a_clear_error(cfg: Path) -> None:
    w: Waiting = _in_store(cfg, _seed)
    cases = [
        ([str(9999)], 3, "run 9999 does not exist", "bosun hosts waiting local"),
        ([str(w.elsewhere.id)], 2, "ran on host box, not on local", "forget box"),
        ([str(w.followed.id)], 2, "is the current run of task", "bosun cancel"),
        ([str(w.reconciled.id)], 2, "stopped by a reconcile already", "hosts waiting local"),
        ([str(w.ended.id)], 2, "not waiting to be stopped (status succeeded)", "waiting local"),
        ([str(w.abandoned.id), str(9999)], 3, "run 9999 does not exist", "waiting local"),
        ([], 2, "no run to forget was named", "--all"),
        ([str(w.abandoned.id), "--all"], 2, "not both", "--all"),
    ]
    for args, code, words, fix in cases:
        result = run(cfg, "hosts", "forget", "local", *args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "fix:" in result.stderr and fix in result.stderr, (args, result.stderr)
    for args in (["forget", "nope", "1"], ["waiting", "nope"]):
        result = run(cfg, "hosts", *args)
        assert result.exit_code == 3 and "host 'nope' does not exist" in result.stderr
    # nothing was forgotten: not even the waiting run named next to an unknown one
    assert [r["run_id"] for r in js(run(cfg, "hosts", "waiting", "local", "--json"))["runs"]] == [
        w.abandoned.id,
        w.pending.id,
    ]
    assert _in_store(cfg, _forgotten) == []


def test_check_names_the_runs_the_host_waits_for_and_keeps_its_exit_code(cfg: Path) -> None:
    w: Waiting = _in_store(cfg, _seed)
    checked = run(cfg, "hosts", "check", "local")
    assert checked.exit_code == 0, checked.stderr  # the host answers: the check passes
    for words in (
        f"waits for 2 run(s): run {w.abandoned.id} (task {w.abandoned.task_id}, given up), "
        f"run {w.pending.id} (task {w.pending.task_id}, its cancel could not reach the host)",
        "no new work there until bosun has stopped them (it tries at every health check)",
        "see `bosun hosts waiting local`; `bosun hosts forget local RUN_ID` once you have "
        "stopped them by hand",
    ):
        assert words in checked.stdout, checked.stdout
    as_json = js(run(cfg, "hosts", "check", "local", "--json"))
    assert as_json["ok"] is True
    assert as_json["waiting"] == js(run(cfg, "hosts", "waiting", "local", "--json"))["runs"]
    assert [r["run_id"] for r in as_json["waiting"]] == [w.abandoned.id, w.pending.id]

    assert run(cfg, "hosts", "forget", "local", "--all").exit_code == 0
    quiet = run(cfg, "hosts", "check", "local")
    assert quiet.exit_code == 0 and "waits for" not in quiet.stdout, quiet.stdout
    assert js(run(cfg, "hosts", "check", "local", "--json"))["waiting"] == []

    # a host that does not answer still fails its check (exit 1), and says what it waits for
    args = ["--address", "nobody@127.0.0.1:1", "--connect-timeout", "1", "--no-check"]
    assert run(cfg, "hosts", "add", "far", *args).exit_code == 0
    far: Waiting = _in_store(cfg, lambda store: seed_waiting(store, "far", "box"))
    down = run(cfg, "hosts", "check", "far", "--json")
    assert down.exit_code == 1
    result = json.loads(down.stdout)
    assert result["ok"] is False and result["reachable"] is False
    assert [r["run_id"] for r in result["waiting"]] == [far.abandoned.id, far.pending.id]
    plain = run(cfg, "hosts", "check", "far")
    assert plain.exit_code == 1 and "error:" in plain.stderr
    assert "waits for 2 run(s)" in plain.stdout and "bosun hosts forget far RUN_ID" in plain.stdout


def test_checks_note_names_ten_runs_at_most() -> None:
    runs = [{"run_id": i, "task_id": 100 + i, "why": "abandoned"} for i in range(1, 13)]
    note = _waiting_note("box", runs)
    assert note.startswith("[bold yellow]waits for 12 run(s)[/]: run 1 (task 101, given up)")
    assert "run 10 (task 110, given up) and 2 more\n" in note and "run 11" not in note


# -- the HTTP API ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/hosts/local/waiting"), ("POST", "/api/v1/hosts/local/forget")],
)
async def test_the_routes_need_an_admin_token(api: Api, method: str, path: str) -> None:
    w = await _seed(api.store)
    body = {"runs": [w.abandoned.id]} if method == "POST" else None
    async with api.anon() as anon:
        assert_error(await anon.request(method, path, json=body), 401, "unauthorized")
        agent = api.headers(api.agent)
        assert_error(await anon.request(method, path, json=body, headers=agent), 403, "forbidden")
    assert len(await _hs(api.store).waiting_runs("local")) == 2
    assert await _forgotten(api.store) == []


async def test_the_api_lists_and_forgets_naming_the_token(api: Api) -> None:
    w = await _seed(api.store)
    client = api.client
    listed = (await client.get("/api/v1/hosts/local/waiting")).json()
    assert [(r["run_id"], r["why"]) for r in listed["runs"]] == [
        (w.abandoned.id, "abandoned"),
        (w.pending.id, "cancel_pending"),
    ]
    hosts = {h["name"]: h for h in (await client.get("/api/v1/hosts")).json()["hosts"]}
    assert hosts["local"]["waiting_runs"] == 2 and hosts["box"]["waiting_runs"] == 1
    assert (await client.get("/api/v1/hosts/box")).json()["waiting_runs"] == 1
    checked = (await client.post("/api/v1/hosts/local/check")).json()
    assert checked["ok"] is True and checked["waiting"] == listed["runs"]

    resp = await client.post(
        "/api/v1/hosts/local/forget", json={"runs": [w.pending.id], "note": "host reimaged"}
    )
    assert resp.status_code == 200, resp.text
    (gone,) = resp.json()["forgotten"]
    assert gone["by"] == "api token admin" and gone["note"] == "host reimaged"
    assert gone["run_id"] == w.pending.id and gone["event_id"] > 0 and gone["at"]
    resp = await client.post("/api/v1/hosts/local/forget", json={"all": True})
    assert [f["run_id"] for f in resp.json()["forgotten"]] == [w.abandoned.id]
    assert (await client.get("/api/v1/hosts/local/waiting")).json()["runs"] == []
    assert [e.run_id for e in await _forgotten(api.store)] == [w.pending.id, w.abandoned.id]


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"runs": [9999]}, 404, "not_found", "run 9999 does not exist"),
        ({"runs": ["ELSEWHERE"]}, 400, "invalid_input", "ran on host box"),
        ({"runs": ["FOLLOWED"]}, 400, "invalid_input", "current run of task"),
        ({"runs": []}, 400, "invalid_input", "no run to forget"),
        ({"runs": [0]}, 422, "validation_error", "runs"),
        ({"runs": ["ABANDONED"], "note": "a\nb"}, 422, "validation_error", "control"),
        ({"runs": ["ABANDONED"], "by": "someone"}, 422, "validation_error", "by"),
    ],
)
async def test_bad_forgets_are_refused_and_change_nothing(
    api: Api, body: dict[str, Any], status: int, code: str, words: str
) -> None:
    w = await _seed(api.store)
    ids = {"ELSEWHERE": w.elsewhere.id, "FOLLOWED": w.followed.id, "ABANDONED": w.abandoned.id}
    body = {**body, "runs": [ids.get(r, r) for r in body["runs"]]}
    resp = await api.client.post("/api/v1/hosts/local/forget", json=body)
    err = assert_error(resp, status, code)
    assert words in err["message"], err
    assert_error(await api.client.get("/api/v1/hosts/nope/waiting"), 404, "not_found")
    assert len(await _hs(api.store).waiting_runs("local")) == 2
    assert await _forgotten(api.store) == []


async def test_openapi_documents_the_routes(api: Api) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    assert "get" in paths["/api/v1/hosts/{name}/waiting"]
    assert "post" in paths["/api/v1/hosts/{name}/forget"]


async def test_the_cli_lists_and_forgets_through_a_server(api: Api, live_url: str) -> None:
    w = await _seed(api.store)
    code, out, err = await _cli(live_url, api.admin, "hosts", "waiting", "local", "--json")
    assert code == 0, err
    assert [r["run_id"] for r in json.loads(out)["runs"]] == [w.abandoned.id, w.pending.id]
    code, out, err = await _cli(live_url, api.admin, "hosts", "check", "local")
    assert code == 0, err
    assert f"waits for 2 run(s): run {w.abandoned.id} (task {w.abandoned.task_id}" in out
    assert "`bosun hosts forget local RUN_ID` once you have stopped them by hand" in out
    code, out, err = await _cli(live_url, api.admin, "hosts", "forget", "local",
                                str(w.abandoned.id), "--note", "seen to")  # fmt: skip
    assert code == 0, err
    assert f"run {w.abandoned.id} (task {w.abandoned.task_id}, queued)" in out
    (event,) = await _forgotten(api.store)
    assert event.data["by"] == "api token admin" and event.data["note"] == "seen to"
    # an error from the server is printed as locally, with its fix and exit code
    code, out, err = await _cli(live_url, api.admin, "hosts", "forget", "local",
                                str(w.elsewhere.id))  # fmt: skip
    assert code == 2 and "ran on host box, not on local" in err and "fix:" in err
