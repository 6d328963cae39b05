"""Fuzz ``POST /api/v1/webhooks/{forge}`` with hypothesis-generated bodies and headers:
never a 5xx; without a valid signature never a change (no task, event or delivery
written); with one, still only 2xx or 4xx answers in bosun's error shape."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bosun.forges.signatures import sign
from tests.conftest import SettingsFactory
from tests.forgekit import SECRET, Rig, rig_for
from tests.store_fixtures import migrated_db
from tests.test_forge_events import FIXTURES

__all__ = ["migrated_db"]

EXAMPLES = 150
REAL = [p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))]
EVENTS = [
    "pull_request",
    "pull_request_review",
    "pull_request_rejected",
    "pull_request_approved",
    "pull_request_comment",
    "issue_comment",
    "issues",
    "push",
    "ping",
]
HEADER_NAMES = [
    "X-Gitea-Event",
    "X-Forgejo-Event",
    "X-GitHub-Event",
    "X-Gitea-Event-Type",
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "X-GitHub-Delivery",
    "X-Gitea-Signature",
    "X-Forgejo-Signature",
    "X-Hub-Signature-256",
    "Content-Type",
    "Authorization",
]
printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["real", "mutated", "json", "bytes"]))
    if kind == "real":
        return draw(st.sampled_from(REAL))
    if kind == "mutated":
        data = json.loads(draw(st.sampled_from(REAL)))
        key = draw(st.sampled_from(sorted(data)))
        data[key] = draw(json_values)
        if isinstance(data.get("pull_request"), dict) and draw(st.booleans()):
            data["pull_request"][draw(st.sampled_from(["number", "merged", "head", "state"]))] = (
                draw(json_values)
            )
        if draw(st.booleans()):
            data["repository"] = {"full_name": "team/app"}  # the rig's repo
        return json.dumps(data).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return draw(st.binary(max_size=300))


def headers(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=6, unique=True))
    out = {name: draw(printable) for name in names}
    if draw(st.booleans()):
        out["X-Gitea-Event"] = out["X-GitHub-Event"] = draw(st.sampled_from(EVENTS))
    return out


@st.composite
def unsigned(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A request without a valid signature: none, garbage, another secret's, or the right
    secret's signature of another body."""
    body = draw(bodies())
    sent = headers(draw)
    how = draw(st.sampled_from(["none", "garbage", "wrong secret", "other body"]))
    if how == "wrong secret":
        digest = sign(body, draw(printable.filter(lambda s: s != SECRET)))
    elif how == "other body":
        digest = sign(body + draw(st.binary(min_size=1, max_size=5)), SECRET)
    elif how == "garbage":
        digest = draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    else:
        digest = None
    if digest is not None:
        header = draw(
            st.sampled_from(["X-Gitea-Signature", "X-Forgejo-Signature", "X-Hub-Signature-256"])
        )
        sent[header] = f"sha256={digest}" if header == "X-Hub-Signature-256" else digest
    forge = draw(st.sampled_from(["forgejo", "gitea", "github", "app", "other", "%2e%2e"]))
    return forge, body, sent


@st.composite
def signed(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    body = draw(bodies())
    sent = headers(draw)
    digest = sign(body, SECRET)
    sent["X-Forgejo-Signature"] = digest
    sent["X-Hub-Signature-256"] = f"sha256={digest}"
    sent["X-Gitea-Signature"] = digest
    sent.setdefault("X-Forgejo-Event", draw(st.sampled_from(EVENTS)))
    return draw(st.sampled_from(["forgejo", "app"])), body, sent


def check_answer(resp: Any) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert err["code"] and err["message"], resp.text
    else:
        assert resp.json()["status"] in ("processed", "ignored", "duplicate"), resp.text


def test_fuzzing_the_webhook_endpoint(
    make_settings: SettingsFactory,
    migrated_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    origin: Path,
) -> None:
    with asyncio.Runner() as runner:
        manager = rig_for("forgejo", make_settings, migrated_db, tmp_path, monkeypatch, origin)
        rig: Rig = runner.run(manager.__aenter__())
        try:
            task = runner.run(rig.task_with_pull())
            before = runner.run(rig.snapshot())
            seen: dict[int, int] = {}

            def send(forge: str, body: bytes, sent: dict[str, str]) -> Any:
                url = f"/api/v1/webhooks/{forge}"
                resp = runner.run(rig.client.post(url, content=body, headers=sent))
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                return resp

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=unsigned())
            def without_signature(case: tuple[str, bytes, dict[str, str]]) -> None:
                resp = send(*case)
                check_answer(resp)
                assert resp.status_code in (401, 404, 413), resp.text
                assert runner.run(rig.snapshot()) == before

            without_signature()
            assert seen.get(401, 0) > EXAMPLES // 2, seen

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=signed())
            def with_signature(case: tuple[str, bytes, dict[str, str]]) -> None:
                check_answer(send(*case))

            with_signature()
            # the signed ones got past authentication: both answers happened
            assert seen.get(400, 0) > 0 and seen.get(200, 0) > 0, seen
            assert runner.run(rig.store.get_task(task.id)).id == task.id
        finally:
            runner.run(manager.__aexit__(None, None, None))
