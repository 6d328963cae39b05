"""Normalisation of the real webhook payloads of Forgejo, Gitea and GitHub (every file of
shared/fixtures/forge-webhooks), signatures, and the pure texts of the review loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bosun.config import ForgeConfig, settings_from_data
from bosun.errors import ConfigError
from bosun.forges import signatures
from bosun.forges.events import EventKind, InlineComment, MalformedPayload, normalise, parse_body
from bosun.review import MARKER, addressed, feedback_text

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "forge-webhooks"
if not FIXTURES.is_dir():  # the checkout may live elsewhere than /work/main
    FIXTURES = Path("/work/shared/fixtures/forge-webhooks")

K = EventKind

# file -> (event header, event-type header, kind, expected fields); headers as SOURCES.md says
CASES: dict[str, tuple[str, str | None, EventKind, dict[str, Any]]] = {
    "forgejo_pull_request_opened": (
        "pull_request",
        None,
        K.PR_OPENED,
        {"pr_number": 1, "head_ref": "feature/changes", "repo": "gordon/hello-world"},
    ),
    "forgejo_pull_request_closed_merged": (
        "pull_request",
        None,
        K.PR_MERGED,
        {"pr_number": 1, "merged": True, "head_ref": "anbraten-patch-1"},
    ),
    "forgejo_pull_request_synchronized": (
        "pull_request",
        "pull_request_sync",
        K.PR_SYNCHRONIZED,
        {"pr_number": 2, "head_sha": "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25"},
    ),
    "forgejo_push": (
        "push",
        None,
        K.PUSH,
        {"head_ref": "main", "head_sha": "ef98532add3b2feb7a137426bba1248724367df5"},
    ),
    "gitea_pull_request_opened": (
        "pull_request",
        None,
        K.PR_OPENED,
        {"pr_number": 1, "pr_url": "http://gitea.golang.org/gordon/hello-world/pull/1"},
    ),
    "gitea_pull_request_closed_merged": (
        "pull_request",
        None,
        K.PR_MERGED,
        {"pr_number": 1, "merged": True, "repo": "anbraten/test-repo"},
    ),
    "gitea_pull_request_closed_unmerged": (
        "pull_request",
        None,
        K.PR_CLOSED,
        {"pr_number": 1, "merged": False},
    ),
    "gitea_pull_request_synchronized": (
        "pull_request",
        "pull_request_sync",
        K.PR_SYNCHRONIZED,
        {"pr_number": 2, "head_ref": "test-patch-1"},
    ),
    "gitea_pull_request_review_approved": (
        "pull_request_approved",
        "pull_request_review_approved",
        K.APPROVED,
        {"pr_number": 7, "body": "juhu thats a great idea", "sender": "a_nice_user"},
    ),
    "gitea_pull_request_review_rejected": (
        "pull_request_rejected",
        "pull_request_review_rejected",
        K.CHANGES_REQUESTED,
        {"pr_number": 7, "body": "I decided otherwhies :O", "head_ref": "jony-patch-1"},
    ),
    "gitea_pull_request_review_comment": (
        "pull_request_comment",
        "pull_request_review_comment",
        K.COMMENT,
        {"pr_number": 2, "body": "123"},
    ),
    "gitea_push": (
        "push",
        None,
        K.PUSH,
        {"before_sha": "4b2626259b5a97b6b4eab5e6cca66adb986b672b"},
    ),
    "gitea_issue_comment_on_pr": (
        "issue_comment",
        "pull_request_comment",
        K.COMMENT,
        {"pr_number": 2, "body": "example", "sender": "example"},
    ),
    "gitea_issue_comment_on_issue": (
        "issue_comment",
        "issue_comment",
        K.IGNORED,
        {"issue_number": 1, "reason": "a comment on an issue, not a PR"},
    ),
    "github_pull_request_opened": (
        "pull_request",
        None,
        K.PR_OPENED,
        {"pr_number": 2, "head_ref": "changes", "repo": "Codertocat/Hello-World"},
    ),
    "github_pull_request_closed": (
        "pull_request",
        None,
        K.PR_CLOSED,
        {"pr_number": 2, "merged": False},
    ),
    "github_pull_request_synchronize": (
        "pull_request",
        None,
        K.PR_SYNCHRONIZED,
        {"pr_number": 2, "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"},
    ),
    "github_pull_request_review_submitted": (
        "pull_request_review",
        None,
        K.COMMENT,  # review.state "commented"
        {"pr_number": 2, "review_id": 237895671, "body": ""},
    ),
    "github_pull_request_review_approved": (
        "pull_request_review",
        None,
        K.APPROVED,
        {"pr_number": 8, "review_id": 2626884, "body": "Looks great!"},
    ),
    "github_issue_comment_created": (
        "issue_comment",
        None,
        K.IGNORED,
        {"issue_number": 1},
    ),
    "github_issue_comment_on_pr": (
        "issue_comment",
        None,
        K.COMMENT,
        {
            "pr_number": 3,
            "body": "/build",
            "pr_url": "https://github.com/chhsia0/knative-route-demo/pull/3",
        },
    ),
    "github_push": (
        "push",
        None,
        K.PUSH,
        {"head_ref": "master", "before_sha": "0" * 40},
    ),
}


def load(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def test_every_fixture_file_has_a_case() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_real_payload_normalises(name: str) -> None:
    header, event_type, kind, expected = CASES[name]
    forge = name.split("_", 1)[0]
    event = normalise(forge, header, load(name), event_type)
    assert event.kind is kind, event
    assert event.forge == forge
    for key, value in expected.items():
        assert getattr(event, key) == value, (key, getattr(event, key))
    assert json.dumps(event.to_json())  # loggable as is
    # the raw bytes of the file go through parse_body the same way
    assert parse_body((FIXTURES / f"{name}.json").read_bytes()) == load(name)


def test_github_changes_requested_is_a_review_state() -> None:
    payload = load("github_pull_request_review_submitted")
    payload["review"]["state"] = "changes_requested"
    payload["review"]["body"] = "Please rename foo"
    event = normalise("github", "pull_request_review", payload)
    assert event.kind is K.CHANGES_REQUESTED
    assert (event.review_id, event.body, event.sender) == (
        237895671,
        "Please rename foo",
        "Codertocat",
    )


def test_gitea_review_kind_is_found_from_any_of_its_headers() -> None:
    payload = load("gitea_pull_request_review_rejected")
    # older Gitea names the event only in X-Gitea-Event-Type, or only in review.type
    assert normalise("gitea", "pull_request_review", payload).kind is K.CHANGES_REQUESTED
    event = normalise("forgejo", "pull_request", payload, "pull_request_review_rejected")
    assert event.kind is K.CHANGES_REQUESTED


def test_issue_labels_and_unknown_events() -> None:
    issue = load("github_issue_comment_created")["issue"]
    base = {"repository": {"full_name": "o/r"}, "issue": issue}
    labeled = normalise(
        "github", "issues", {**base, "action": "labeled", "label": {"name": "bosun"}}
    )
    assert (labeled.kind, labeled.labels, labeled.issue_number) == (K.ISSUE_LABELED, ("bosun",), 1)
    gitea_issue = {**issue, "labels": [{"name": "bosun"}, {"name": "bug"}]}
    updated = normalise(
        "gitea", "issues", {**base, "issue": gitea_issue, "action": "label_updated"}
    )
    assert updated.kind is K.ISSUE_LABELED and updated.labels == ("bosun", "bug")
    for forge, header in (("github", "star"), ("gitea", "release"), ("forgejo", "wiki")):
        event = normalise(forge, header, {"action": "created"})
        assert event.kind is K.IGNORED and "not one bosun follows" in event.reason
    assert normalise("github", "ping", {"zen": "hi"}).kind is K.PING


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse_body(body)


@pytest.mark.parametrize(
    ("forge", "event", "payload", "message"),
    [
        (
            "gitea",
            "pull_request",
            {"action": "opened", "pull_request": "x"},
            "pull_request should be an object",
        ),
        ("gitea", "pull_request", {"action": "opened"}, "pull_request is missing"),
        (
            "github",
            "pull_request",
            {"action": "closed", "number": "7", "pull_request": {}},
            "number should be an integer",
        ),
        (
            "github",
            "pull_request",
            {"action": "closed", "pull_request": {"merged": "yes"}, "number": 1},
            "merged should be true or false",
        ),
        ("gitea", "push", {"ref": 5}, "ref should be a string"),
        ("gitea", "push", {}, "ref is missing"),
        (
            "github",
            "issues",
            {"action": "labeled", "issue": {"number": 1, "labels": "bug"}, "label": 3},
            "label should be an object",
        ),
        (
            "forgejo",
            "issue_comment",
            {"issue": {"number": 1}, "comment": []},
            "comment should be an object",
        ),
    ],
)
def test_malformed_payloads_name_the_field(
    forge: str, event: str, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(MalformedPayload, match=message):
        normalise(forge, event, payload)


# -- signatures ---------------------------------------------------------------------------------
BODY = b'{"action": "opened"}'


@pytest.mark.parametrize(
    ("forge", "headers"),
    [
        ("forgejo", {"x-forgejo-signature": signatures.sign(BODY, "s")}),
        ("forgejo", {"x-gitea-signature": signatures.sign(BODY, "s")}),
        ("forgejo", {"x-hub-signature-256": "sha256=" + signatures.sign(BODY, "s")}),
        ("gitea", {"x-gitea-signature": signatures.sign(BODY, "s").upper()}),
        ("gitea", {"x-hub-signature-256": "sha256=" + signatures.sign(BODY, "s")}),
        ("github", {"x-hub-signature-256": "SHA256=" + signatures.sign(BODY, "s")}),
    ],
)
def test_a_right_signature_verifies(forge: str, headers: dict[str, str]) -> None:
    claimed = signatures.signature(forge, headers)
    assert signatures.verify(BODY, claimed, "s")
    assert not signatures.verify(BODY, claimed, "other secret")
    assert not signatures.verify(BODY + b" ", claimed, "s")


@pytest.mark.parametrize(
    ("forge", "headers"),
    [
        ("github", {}),
        ("github", {"x-gitea-signature": signatures.sign(BODY, "s")}),  # not GitHub's header
        ("github", {"x-hub-signature-256": signatures.sign(BODY, "s")}),  # no sha256= prefix
        ("gitea", {"x-gitea-signature": "zz" * 32}),
        ("gitea", {"x-gitea-signature": signatures.sign(BODY, "s")[:-2]}),
        ("forgejo", {"x-forgejo-signature": ""}),
    ],
)
def test_missing_or_malformed_signatures_do_not_verify(forge: str, headers: dict[str, str]) -> None:
    assert not signatures.verify(BODY, signatures.signature(forge, headers), "s")


def test_delivery_and_event_headers_per_forge() -> None:
    h = {
        "x-forgejo-delivery": "f1",
        "x-gitea-delivery": "g1",
        "x-github-delivery": "h1",
        "x-gitea-event": "push",
        "x-forgejo-event-type": "pull_request_sync",
    }
    assert [signatures.delivery_id(f, h) for f in signatures.FORGES] == ["f1", "g1", "h1"]
    assert signatures.event_name("forgejo", h) == "push"  # falls back to X-Gitea-Event
    assert signatures.event_type("forgejo", h) == "pull_request_sync"
    assert signatures.event_name("github", h) is None


# -- texts ------------------------------------------------------------------------------------
def forge_cfg(**extra: Any) -> ForgeConfig:
    data = {"kind": "gitea", "api_url": "http://x/api/v1", "repo": "o/r", "token_env": "T"}
    return ForgeConfig.model_validate({**data, **extra})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/bosun please rename foo", "please rename foo"),
        ("  /BOSUN: use tabs", ": use tabs"),
        ("/bosunx do it", None),
        ("@bosun can you add tests?", "@bosun can you add tests?"),
        ("ping @Bosun.", "ping @Bosun."),
        ("mail me at x@bosun.org", None),
        ("@bosunbot do it", None),
        ("LGTM", None),
        (f"/bosun pushed changes\n{MARKER}", None),
    ],
)
def test_which_comments_are_addressed_to_bosun(body: str, expected: str | None) -> None:
    assert addressed(forge_cfg(), body) == expected


def test_no_mention_and_another_prefix() -> None:
    cfg = forge_cfg(mention=None, command_prefix="!agent")
    assert addressed(cfg, "@bosun do it") is None
    assert addressed(cfg, "!agent do it") == "do it"


def test_feedback_text_has_the_review_and_each_inline_comment_with_file_and_line() -> None:
    text = feedback_text(
        what="requested changes",
        author="alice",
        pr_number=3,
        body="Use a constant.",
        comments=(
            InlineComment("src/app.py", 12, "Magic number here", "alice"),
            InlineComment("README.md", None, "Mention it\nin the docs"),
        ),
    )
    assert "A reviewer by alice requested changes on pull request #3" in text
    assert "Use a constant." in text
    assert "- `src/app.py` line 12 (alice): Magic number here" in text
    assert "- `README.md`: Mention it\n  in the docs" in text


# -- configuration ------------------------------------------------------------------------------
def repo_with(forge: dict[str, Any], **repo: Any) -> dict[str, Any]:
    return {"repos": {"app": {"url": "/tmp/x", "forge": forge, **repo}}}


FORGE = {
    "kind": "forgejo",
    "api_url": "https://f.example/api/v1",
    "repo": "team/app",
    "token_env": "T",
}


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        ({**FORGE, "token": "s3cr3t-value"}, "secrets are never read from bosun.toml"),
        ({**FORGE, "webhook_secret": "s3cr3t-value"}, "webhook_secret_env"),
        ({k: v for k, v in FORGE.items() if k != "token_env"}, "token is needed"),
        ({**FORGE, "token_file": "t.txt"}, "either token_env or token_file"),
        ({**FORGE, "token_env": "ghp_s3cr3t-value"}, "not an environment variable name"),
        ({**FORGE, "kind": "gitlab"}, "forgejo"),
        ({**FORGE, "repo": "app"}, "owner/name"),
        ({**FORGE, "api_url": "forge.example"}, "http"),
        ({**FORGE, "issue_label": "bosun"}, "issue_agent"),
        ({**FORGE, "issue_label": "bosun", "issue_agent": "nope"}, "unknown agent 'nope'"),
        ({**FORGE, "tokn_env": "T"}, "did you mean token_env"),
    ],
)
def test_bad_forge_tables_are_config_errors(forge: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        settings_from_data(repo_with(forge), "/tmp/cfg/bosun.toml")
    assert "[repos.app.forge]" in info.value.message
    assert "s3cr3t-value" not in str(info.value)  # a secret never reaches a message


def test_a_forge_needs_pushed_branches() -> None:
    with pytest.raises(ConfigError, match="push = false"):
        settings_from_data(repo_with(FORGE, push=False), "/tmp/cfg/bosun.toml")


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token\n")
    forge = {**FORGE, "token_env": None, "token_file": "token", "webhook_secret_env": "W"}
    forge = {k: v for k, v in forge.items() if v is not None}
    settings = settings_from_data(repo_with(forge), tmp_path / "bosun.toml")
    cfg = settings.repos["app"].forge
    assert cfg is not None
    assert cfg.token({}) == "file-token"  # relative to the config file's directory
    assert cfg.webhook_secret({"W": " hook "}) == "hook"
    with pytest.raises(ConfigError, match="environment variable W, which is not set"):
        cfg.webhook_secret({})
    (tmp_path / "token").unlink()
    with pytest.raises(ConfigError, match="cannot be read"):
        cfg.token({})


def test_notifications_table() -> None:
    data = {
        "notifications": {"url": "https://hooks.example/x", "secret_env": "N", "on": ["failed"]}
    }
    settings = settings_from_data(data, "/tmp/cfg/bosun.toml")
    assert settings.notifications.enabled and settings.notifications.on == ["failed"]
    assert settings_from_data({}, "/tmp/cfg/bosun.toml").notifications.enabled is False
    for bad, message in (
        ({"url": "x", "secret": "inline"}, "secrets are never read"),
        ({"url": "ftp://x"}, "http"),
        ({"on": ["merged"]}, "needs_input"),
    ):
        with pytest.raises(ConfigError, match=message):
            settings_from_data({"notifications": bad}, "/tmp/cfg/bosun.toml")
