from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from bosun import lifecycle
from bosun.errors import InvalidTransition
from bosun.models import ErrorKind, Outcome, TaskStatus
from tests.factories import T0

S = TaskStatus


def test_every_state_has_a_row() -> None:
    assert set(lifecycle.TRANSITIONS) == set(TaskStatus)


def test_happy_path_is_allowed() -> None:
    path = [S.QUEUED, S.RUNNING, S.REVIEW_PENDING, S.COMPLETED]
    for a, b in itertools.pairwise(path):
        lifecycle.check(1, a, b)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.COMPLETED, S.QUEUED),
        (S.QUEUED, S.COMPLETED),
        (S.BLOCKED, S.RUNNING),
        (S.FAILED, S.RUNNING),
    ],
)
def test_invalid_transition_is_a_clear_error(current: TaskStatus, target: TaskStatus) -> None:
    with pytest.raises(InvalidTransition) as info:
        lifecycle.check(7, current, target)
    assert f"task 7 cannot go from {current.value} to {target.value}" in str(info.value)
    assert info.value.hint


def test_completed_is_final_and_says_so() -> None:
    with pytest.raises(InvalidTransition, match="final"):
        lifecycle.check(1, S.COMPLETED, S.RUNNING)


def test_runnable_states_can_be_claimed() -> None:
    for state in lifecycle.RUNNABLE:
        assert lifecycle.allowed(state, S.RUNNING)


def decide(outcome: Outcome, attempt: int = 1, max_attempts: int = 3) -> lifecycle.Decision:
    return lifecycle.after_run(
        outcome, attempt=attempt, max_attempts=max_attempts, now=T0, backoff_base=2, backoff_cap=60
    )


def test_success_completes_or_waits_for_review() -> None:
    assert decide(Outcome(success=True)).status is S.COMPLETED
    review = lifecycle.after_run(
        Outcome(success=True),
        attempt=1,
        max_attempts=3,
        now=T0,
        backoff_base=1,
        backoff_cap=1,
        review=True,
    )
    assert review.status is S.REVIEW_PENDING


def test_failure_retries_with_exponential_backoff_until_the_limit() -> None:
    fail = Outcome(success=False, error_kind=ErrorKind.AGENT, error="boom")
    first = decide(fail, attempt=1)
    second = decide(fail, attempt=2)
    assert first.status is S.QUEUED and first.not_before == T0 + timedelta(seconds=2)
    assert second.status is S.QUEUED and second.not_before == T0 + timedelta(seconds=4)
    assert decide(fail, attempt=3).status is S.FAILED


def test_backoff_is_capped() -> None:
    assert lifecycle.backoff(20, 2, 60) == 60


def test_usage_limit_pauses_until_reset() -> None:
    reset = T0 + timedelta(hours=3)
    d = decide(Outcome(success=False, error_kind=ErrorKind.USAGE_LIMIT, resume_at=reset), attempt=3)
    assert d.status is S.PAUSED and d.not_before == reset
    fallback = decide(Outcome(success=False, error_kind=ErrorKind.USAGE_LIMIT))
    assert fallback.status is S.PAUSED and fallback.not_before == T0 + timedelta(seconds=2)


@pytest.mark.parametrize("kind", [ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.CONFIG])
def test_auth_and_permission_are_not_retried(kind: ErrorKind) -> None:
    assert decide(Outcome(success=False, error_kind=kind), attempt=1).status is S.FAILED


def test_cancelled_outcome_cancels() -> None:
    assert decide(Outcome(success=False, error_kind=ErrorKind.CANCELLED)).status is S.CANCELLED
