"""The review loop: branch -> pull request -> review feedback -> rework -> merge.

A task whose repository has a forge (``[repos.NAME.forge]``) is not done when its agent
exits: after a successful run bosun pushes the task branch (``Workspace.finish``), opens
a pull request for it — or finds the one it opened before, so a retry never opens a second
— stores its number, URL and head, and moves the task to ``review_pending``
(``publish_for_run``, called from ``execution.Attempt._settle``).

What reviewers do on the forge arrives as signed webhooks (``bosun.server.routes_webhooks``),
normalised into ``ForgeEvent`` values (``bosun.forges.events``), and ``ReviewLoop.handle``
acts on them:

- pull request merged -> ``completed``; closed without merging -> ``cancelled``
  (``on_close = "ignore"`` keeps the task as it is); opened / reopened -> ``review_pending``;
- changes requested, or a comment addressed to bosun (``command_prefix`` or ``mention``)
  -> ``rework``: the review text and its inline comments (file and line) are stored as
  ``review_feedback``, which the next run's prompt carries under "Review feedback"; that run
  resumes the agent's session (``execution.Attempt._resuming_session``); ``review_count``
  + 1; past ``max_reviews`` -> ``needs_input`` instead;
- a push to a ``task/*`` branch -> ``last_activity_at``; a push that moves the head of a
  task's pull request -> ``pr_head_sha`` and a ``review.head_moved`` event;
- an issue labelled ``issue_label`` -> a new task (title; body split into goal,
  constraints and validation when it has those headings).

``ReviewLoop.reconcile`` is the polling fallback for forges that cannot reach bosun: it
checks the open pull requests of review tasks with conditional requests (ETags) and feeds
what changed through the same ``handle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from bosun.config import ForgeConfig, Settings
from bosun.errors import BosunError, InvalidTransition, NotFound
from bosun.forges.client import ForgeClient, ForgeError, PullRequest
from bosun.forges.events import ZERO_SHA, EventKind, ForgeEvent, InlineComment
from bosun.lifecycle import Decision
from bosun.models import NewEvent, Task, TaskSpec, TaskStatus
from bosun.prompt import split_body
from bosun.store.base import ForgeStore, Store, TaskFilter

__all__ = [
    "MARKER",
    "Handled",
    "ReviewLoop",
    "addressed",
    "background",
    "feedback_text",
    "publish_for_run",
    "pull_request_body",
    "reviewed",
]

log = logging.getLogger("bosun.review")

S = TaskStatus
#: In every comment and pull request bosun writes: comments carrying it are bosun's own
#: and never count as addressed to bosun.
MARKER = "<!-- bosun -->"
_BRANCH_TASK = re.compile(r"^task/(\d{1,18})-")
#: Longest text taken from a review or comment into a prompt.
MAX_FEEDBACK = 20_000
MAX_BODY = 20_000


class ReviewStore(Store, ForgeStore, Protocol):
    """What the review loop needs of a store."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Handled:
    """What bosun did with one forge event."""

    outcome: str  # "review_pending", "completed", "rework", "ignored: ...", ...
    task_id: int | None = None
    status: str | None = None  # the task's status afterwards

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "task_id": self.task_id, "status": self.status}


def reviewed(settings: Settings, task: Task) -> bool:
    """Whether a successful run of ``task`` waits for a review (its repository has a forge
    and its branch is pushed) instead of completing."""
    if task.repo is None or task.repo not in settings.repos:
        return False
    cfg = settings.repos[task.repo]
    return cfg.forge is not None and cfg.push


# -- texts ---------------------------------------------------------------------------------
def _task_link(settings: Settings, task_id: int) -> str | None:
    base = settings.server.public_url
    return None if not base else f"{base.rstrip('/')}/api/v1/tasks/{task_id}"


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit].rstrip() + "\n\n[... cut]"


def pull_request_body(task: Task, settings: Settings) -> str:
    """The pull request's description: the task, the agent's summary, tokens and cost, and
    a link back to the task (``[server] public_url``)."""
    link = _task_link(settings, task.id)
    head = f"bosun task [#{task.id}]({link})" if link else f"bosun task #{task.id}"
    parts = [f"{head}: **{task.title}** (agent `{task.agent}`)"]
    if task.body.strip():
        parts.append("### Task\n\n" + _clip(task.body, MAX_BODY))
    for title, items in (("Constraints", task.constraints), ("Validation", task.validation)):
        if items:
            parts.append(f"### {title}\n\n" + "\n".join(f"- {i}" for i in items))
    parts.append("### Summary\n\n" + (_clip(task.result_summary or "", MAX_BODY) or "(none)"))
    tokens = task.tokens_in + task.tokens_out
    parts.append(
        "### Usage\n\n"
        f"- tokens: {tokens:,} ({task.tokens_in:,} in, {task.tokens_out:,} out)\n"
        f"- cost: ${task.cost_usd:.4f}\n"
        f"- attempts: {task.attempt}, review rounds: {task.review_count}"
    )
    parts.append(
        "---\nRequest changes, or comment `/bosun <what to change>`, to send this back to the "
        f"agent; merge it to complete the task.\n{MARKER}"
    )
    return "\n\n".join(parts)


def feedback_text(
    *,
    what: str,
    author: str | None,
    pr_number: int | None,
    body: str,
    comments: tuple[InlineComment, ...] = (),
) -> str:
    """The review text the next run's prompt carries (stored as ``review_feedback``)."""
    by = f" by {author}" if author else ""
    on = f" on pull request #{pr_number}" if pr_number else ""
    parts = [f"A reviewer{by} {what}{on}. Address this feedback:"]
    if body.strip():
        parts.append(_clip(body, MAX_FEEDBACK))
    if comments:
        lines = ["Inline comments:"]
        for c in comments:
            where = f"`{c.path}` line {c.line}" if c.line else f"`{c.path}`"
            who = f" ({c.author})" if c.author else ""
            text = "\n  ".join(_clip(c.body, 4000).splitlines()) or "(no text)"
            lines.append(f"- {where}{who}: {text}")
        parts.append("\n".join(lines))
    return _clip("\n\n".join(parts), MAX_FEEDBACK * 2)


def addressed(forge: ForgeConfig, body: str) -> str | None:
    """The instruction in a comment addressed to bosun (starting with the command prefix,
    or mentioning ``mention``), else None. bosun's own comments never are."""
    if MARKER in body:
        return None
    text = body.strip()
    prefix = forge.command_prefix
    if text.lower().startswith(prefix.lower()):
        rest = text[len(prefix) :]
        if not rest or not (rest[0].isalnum() or rest[0] in "_-"):
            return rest.strip() or text
    if forge.mention:
        pattern = rf"(?<![\w@]){re.escape(forge.mention)}(?![\w-])"
        if re.search(pattern, text, re.IGNORECASE):
            return text
    return None


# -- after a run ---------------------------------------------------------------------------
async def publish_for_run(
    settings: Settings,
    store: Store,
    task: Task,
    decision: Decision,
    fields: Mapping[str, Any],
    *,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Decision, dict[str, Any]]:
    """For a successful run about to go to ``review_pending``: open (or find) its pull
    request and return the decision and the task fields to write with it (``pr_number``,
    ``pr_url``, ``pr_head_sha``). A pull request that is merged already completes the task.
    When the forge cannot be reached the task still goes to ``review_pending``, with a
    ``review.pr_failed`` event; the reconciler opens the pull request later."""
    known = {k: v for k, v in fields.items() if k in Task.__dataclass_fields__}
    if "commits" in known:
        known["commits"] = tuple(known["commits"])
    after = replace(task, **known)
    commits = after.commits
    loop = ReviewLoop(settings, store, environ=environ)  # type: ignore[arg-type]
    try:
        pr = await loop.publish(after, head_sha=commits[-1] if commits else None)
    except BosunError as exc:
        await store.append_event(
            NewEvent(
                "review.pr_failed",
                {"error": exc.message, "hint": exc.hint},
                task_id=task.id,
            )
        )
        return decision, {}
    finally:
        await loop.aclose()
    # what bosun just pushed is the head (a forge may not have caught up with the push)
    head = commits[-1] if commits else pr.head_sha
    extra = {"pr_number": pr.number, "pr_url": pr.url, "pr_head_sha": head}
    if pr.merged:
        return Decision(S.COMPLETED, f"pull request #{pr.number} is merged already"), extra
    return decision, extra


# -- the loop --------------------------------------------------------------------------------
class ReviewLoop:
    """Pull requests of tasks and what the forges report about them."""

    def __init__(
        self,
        settings: Settings,
        store: ReviewStore,
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], datetime] = utcnow,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.environ = environ
        self.clock = clock
        self._transport = transport
        self._clients: dict[str, ForgeClient] = {}
        self._polled: dict[str, float] = {}

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    def forge(self, repo: str | None) -> ForgeConfig | None:
        if repo is None or repo not in self.settings.repos:
            return None
        return self.settings.repos[repo].forge

    def client(self, repo: str) -> ForgeClient:
        """The REST client of ``repo``'s forge (``ConfigError`` when its token is missing)."""
        client = self._clients.get(repo)
        if client is None:
            forge = self.forge(repo)
            if forge is None:
                raise NotFound(f"repo {repo} has no forge", f"add [repos.{repo}.forge]")
            client = ForgeClient(forge, forge.token(self.environ), transport=self._transport)
            self._clients[repo] = client
        return client

    # -- pull requests ---------------------------------------------------------------------
    async def publish(self, task: Task, *, head_sha: str | None) -> PullRequest:
        """Open the pull request of ``task``'s branch, or find the one that exists (it is
        reopened if it was closed unmerged); a rework's push gets a comment instead."""
        if task.repo is None or task.branch is None:
            raise NotFound(f"task {task.id} has no branch to review", "give the task a --repo")
        client = self.client(task.repo)
        base = task.base_branch or self.settings.repos[task.repo].default_branch
        pr: PullRequest | None = None
        if task.pr_number is not None:
            try:
                pr, _ = await client.get_pull(task.pr_number)
            except ForgeError as exc:
                if exc.status != 404:
                    raise
            if pr is not None and pr.head_ref != task.branch:
                pr = None
        if pr is None:
            pr = await client.find_pull(task.branch)
        created = False
        if pr is None:
            pr = await client.create_pull(
                title=task.title,
                body=pull_request_body(task, self.settings),
                head=task.branch,
                base=base,
            )
            created = True
        elif pr.state == "closed" and not pr.merged:
            pr = await client.reopen(pr.number)
        elif not pr.merged and task.review_count > 0:
            await client.comment(pr.number, self._rework_comment(task))
        if head_sha and not pr.head_sha:
            pr = replace(pr, head_sha=head_sha)
        await self.store.append_event(
            NewEvent(
                "review.pr_opened" if created else "review.pr_found",
                {
                    "number": pr.number,
                    "url": pr.url,
                    "head_sha": pr.head_sha,
                    "state": pr.state,
                    "merged": pr.merged,
                },
                task_id=task.id,
            )
        )
        return pr

    def _rework_comment(self, task: Task) -> str:
        summary = _clip(task.result_summary or "", 4000) or "(no summary)"
        return (
            f"bosun pushed the rework of review round {task.review_count} "
            f"(attempt {task.attempt}):\n\n{summary}\n\n{MARKER}"
        )

    # -- webhook events ----------------------------------------------------------------------
    async def handle(self, repo: str, ev: ForgeEvent, *, delivery: str | None = None) -> Handled:
        """Act on one normalised forge event of bosun repository ``repo``."""
        forge = self.forge(repo)
        if forge is None:
            return Handled(f"ignored: repo {repo} has no forge")
        kind = ev.kind
        if kind is EventKind.PING:
            return Handled("pong")
        if kind is EventKind.IGNORED:
            return Handled(f"ignored: {ev.reason}")
        if kind is EventKind.PUSH:
            return await self._push(repo, ev)
        if kind in (EventKind.ISSUE_LABELED, EventKind.ISSUE_OPENED):
            return await self._issue(repo, forge, ev)
        task = await self._task_of(repo, ev)
        if task is None:
            return Handled(f"ignored: no bosun task has pull request #{ev.pr_number}")
        data = {**ev.to_json(), "delivery": delivery}
        if kind in (EventKind.PR_OPENED, EventKind.PR_REOPENED):
            if task.status is S.REVIEW_PENDING:
                return await self._noted(
                    task, "review.pr_opened_seen", data, "already review_pending"
                )
            if task.status in (S.CANCELLED, S.NEEDS_INPUT):
                what = "reopened" if kind is EventKind.PR_REOPENED else "opened"
                return await self._move(
                    task, S.REVIEW_PENDING, f"pull request #{ev.pr_number} {what}"
                )
            return await self._noted(task, "review.ignored", data, f"task is {task.status.value}")
        if kind is EventKind.PR_MERGED:
            if task.status is S.COMPLETED:
                return Handled("already completed", task.id, task.status.value)
            if task.status in (S.REVIEW_PENDING, S.REWORK, S.NEEDS_INPUT):
                by = f" by {ev.sender}" if ev.sender else ""
                return await self._move(
                    task, S.COMPLETED, f"pull request #{ev.pr_number} merged{by}"
                )
            return await self._noted(
                task, "review.merged_while", data, f"task is {task.status.value}"
            )
        if kind is EventKind.PR_CLOSED:
            if forge.on_close == "ignore":
                return await self._noted(task, "review.pr_closed", data, "on_close = ignore")
            if task.status in (S.REVIEW_PENDING, S.REWORK, S.NEEDS_INPUT):
                return await self._move(
                    task, S.CANCELLED, f"pull request #{ev.pr_number} closed without merging"
                )
            return await self._noted(task, "review.ignored", data, f"task is {task.status.value}")
        if kind is EventKind.PR_SYNCHRONIZED:
            return await self._head_moved(task, ev.head_sha, ev.sender)
        if kind is EventKind.APPROVED:
            return await self._noted(task, "review.approved", data, "approved (merge completes it)")
        if kind is EventKind.CHANGES_REQUESTED:
            return await self._feedback(repo, forge, task, ev, command=False)
        if kind is EventKind.COMMENT:
            instruction = addressed(forge, ev.body)
            if instruction is None:
                return Handled("ignored: a comment not addressed to bosun", task.id)
            return await self._feedback(
                repo, forge, task, replace(ev, body=instruction), command=True
            )
        return Handled(f"ignored: {kind.value}", task.id)

    async def _task_of(self, repo: str, ev: ForgeEvent) -> Task | None:
        """The task of the event's pull request: by number, else by its branch."""
        if ev.pr_number is not None:
            task = await self.store.task_for_pull(repo, ev.pr_number)
            if task is not None:
                return task
        task = await self._task_of_branch(repo, ev.head_ref)
        if task is None or ev.pr_number is None:
            return task
        if task.pr_number not in (None, ev.pr_number) and ev.kind not in (
            EventKind.PR_OPENED,
            EventKind.PR_REOPENED,
        ):
            return None  # another pull request of the same branch
        return await self.store.update_task(
            task.id,
            pr_number=ev.pr_number,
            pr_url=ev.pr_url or task.pr_url,
            pr_head_sha=ev.head_sha or task.pr_head_sha,
        )

    async def _task_of_branch(self, repo: str, branch: str | None) -> Task | None:
        match = _BRANCH_TASK.match(branch or "")
        if match is None:
            return None
        try:
            task = await self.store.get_task(int(match.group(1)))
        except NotFound:
            return None
        return task if task.repo == repo and task.branch == branch else None

    async def _move(self, task: Task, target: TaskStatus, reason: str, **fields: Any) -> Handled:
        try:
            moved = await self.store.transition(task.id, target, reason=reason, **fields)
        except InvalidTransition as exc:  # it changed in between
            return Handled(f"ignored: {exc.message}", task.id)
        return Handled(target.value, task.id, moved.status.value)

    async def _noted(self, task: Task, kind: str, data: dict[str, Any], outcome: str) -> Handled:
        await self.store.append_event(NewEvent(kind, {**data, "note": outcome}, task_id=task.id))
        return Handled(
            outcome if kind != "review.ignored" else f"ignored: {outcome}",
            task.id,
            task.status.value,
        )

    async def _head_moved(self, task: Task, sha: str | None, by: str | None) -> Handled:
        now = self.clock()
        if not sha or sha == ZERO_SHA or sha == task.pr_head_sha:
            await self.store.update_task(task.id, last_activity_at=now)
            return Handled("activity recorded", task.id, task.status.value)
        await self.store.update_task(task.id, pr_head_sha=sha, last_activity_at=now)
        await self.store.append_event(
            NewEvent(
                "review.head_moved",
                {"from": task.pr_head_sha, "to": sha, "by": by, "pr_number": task.pr_number},
                task_id=task.id,
            )
        )
        return Handled("head moved", task.id, task.status.value)

    async def _push(self, repo: str, ev: ForgeEvent) -> Handled:
        task = await self._task_of_branch(repo, ev.head_ref)
        if task is None:
            return Handled(f"ignored: no bosun task has branch {ev.head_ref}")
        if task.pr_number is None:
            await self.store.update_task(task.id, last_activity_at=self.clock())
            return Handled("activity recorded", task.id, task.status.value)
        return await self._head_moved(task, ev.head_sha, ev.sender)

    async def _feedback(
        self, repo: str, forge: ForgeConfig, task: Task, ev: ForgeEvent, *, command: bool
    ) -> Handled:
        """Changes requested, or a comment addressed to bosun: rework (or needs_input)."""
        comments, review_id = await self._inline_comments(repo, task, ev)
        if review_id is not None and task.pr_number is not None:
            key = f"review:{repo}:{task.pr_number}:{review_id}"
            if not await self.store.record_delivery(
                key, forge=forge.kind, event="review", repo=repo
            ):
                return Handled("duplicate: this review was handled before", task.id)
        what = "asked bosun" if command else "requested changes"
        text = feedback_text(
            what=what,
            author=ev.sender,
            pr_number=ev.pr_number or task.pr_number,
            body=ev.body,
            comments=comments,
        )
        data = {
            **ev.to_json(),
            "inline_comments": [c.to_json() for c in comments[:50]],
            "text": _clip(ev.body, 2000),
        }
        await self.store.append_event(NewEvent("review.feedback", data, task_id=task.id))
        status = task.status
        if status is S.NEEDS_INPUT and command:
            # a human asked explicitly: the limit was theirs to lift
            return await self._rework(task, text, f"{ev.sender or 'a reviewer'} asked bosun")
        if status is not S.REVIEW_PENDING:
            if status is S.NEEDS_INPUT:
                await self.store.update_task(task.id, review_feedback=text)
            return Handled(
                f"ignored: task is {status.value}; feedback recorded", task.id, status.value
            )
        if task.review_count >= forge.max_reviews:
            return await self._move(
                task,
                S.NEEDS_INPUT,
                f"review round {task.review_count + 1} would pass max_reviews = "
                f"{forge.max_reviews}; a human needs to look",
                review_feedback=text,
            )
        return await self._rework(task, text, f"{what} on pull request #{task.pr_number}")

    async def _rework(self, task: Task, text: str, reason: str) -> Handled:
        return await self._move(
            task,
            S.REWORK,
            reason,
            review_feedback=text,
            review_count=task.review_count + 1,
            # a fresh budget of attempts for the rework, as `bosun retry` gives
            max_attempts=task.attempt + self.settings.limits.max_attempts,
            not_before=None,
            error=None,
            error_kind=None,
        )

    async def _inline_comments(
        self, repo: str, task: Task, ev: ForgeEvent
    ) -> tuple[tuple[InlineComment, ...], int | None]:
        """The review's inline comments (from the forge's API) and the review's id."""
        comments = list(ev.comments)
        review_id = ev.review_id
        number = ev.pr_number or task.pr_number
        if ev.kind is not EventKind.CHANGES_REQUESTED or number is None:
            return tuple(comments), review_id
        try:
            client = self.client(repo)
            if review_id is None:  # Gitea/Forgejo's webhook does not say which review
                found, _ = await client.reviews(number)
                wanted = [r for r in found if r.state == "changes_requested"]
                if wanted:
                    review_id = wanted[-1].id
            if review_id is not None:
                comments += await client.review_comments(number, review_id)
        except BosunError as exc:
            await self.store.append_event(
                NewEvent(
                    "review.comments_unavailable",
                    {"error": exc.message, "hint": exc.hint},
                    task_id=task.id,
                )
            )
        unique = tuple(dict.fromkeys(comments))
        return unique, review_id

    async def _issue(self, repo: str, forge: ForgeConfig, ev: ForgeEvent) -> Handled:
        label = forge.issue_label
        if label is None or forge.issue_agent is None:
            return Handled("ignored: no issue_label is configured")
        if label.lower() not in (name.lower() for name in ev.labels):
            return Handled(f"ignored: the issue is not labelled {label!r}")
        mark = f"issue:{ev.issue_number}"
        existing = await self.store.list_tasks(TaskFilter(repo=repo, label=mark, limit=1))
        if existing:
            return Handled(f"already task #{existing[0].id}", existing[0].id)
        from bosun.service import MAX_TITLE, Service

        sections = split_body(ev.body)
        body = ev.body.strip()
        if ev.issue_url:
            body += f"\n\n(From issue #{ev.issue_number}: {ev.issue_url})"
        spec = TaskSpec(
            title=(ev.issue_title or f"Issue #{ev.issue_number}")[:MAX_TITLE],
            body=body,
            repo=repo,
            agent=forge.issue_agent,
            constraints=sections.constraints,
            validation=sections.validation,
            labels=(label, mark),
        )
        task = await Service(self.settings, self.store).submit(spec)
        await self.store.append_event(
            NewEvent("review.task_from_issue", ev.to_json(), task_id=task.id)
        )
        return Handled("task created", task.id, task.status.value)

    # -- polling fallback --------------------------------------------------------------------
    async def reconcile(self, repo: str) -> list[Handled]:
        """One pass over the review tasks of ``repo``: open missing pull requests; ask the
        forge (conditionally) about each open one and handle what changed."""
        forge = self.forge(repo)
        if forge is None:
            return []
        done: list[Handled] = []
        statuses = frozenset({S.REVIEW_PENDING, S.REWORK, S.NEEDS_INPUT})
        after: int | None = None
        while True:
            batch = await self.store.list_tasks(
                TaskFilter(statuses=statuses, repo=repo, after_id=after, limit=100)
            )
            for task in batch:
                try:
                    done += await self._reconcile_task(repo, forge, task)
                except BosunError as exc:
                    await self.store.append_event(
                        NewEvent(
                            "review.poll_failed",
                            {"error": exc.message, "hint": exc.hint},
                            task_id=task.id,
                        )
                    )
            if len(batch) < 100:
                return done
            after = batch[-1].id

    async def _reconcile_task(self, repo: str, forge: ForgeConfig, task: Task) -> list[Handled]:
        client = self.client(repo)
        if task.pr_number is None:
            if task.status is not S.REVIEW_PENDING or task.branch is None:
                return []
            pr = await self.publish(task, head_sha=task.commits[-1] if task.commits else None)
            await self.store.update_task(
                task.id, pr_number=pr.number, pr_url=pr.url, pr_head_sha=pr.head_sha
            )
            return [Handled("pull request opened", task.id, task.status.value)]
        pr, changed = await client.get_pull(task.pr_number)
        base: dict[str, Any] = {"forge": forge.kind, "name": "poll", "repo": forge.repo}
        pull: dict[str, Any] = {
            "pr_number": pr.number,
            "pr_url": pr.url,
            "head_ref": pr.head_ref,
            "head_sha": pr.head_sha,
        }
        out: list[Handled] = []
        if changed:
            if pr.merged:
                return [
                    await self.handle(
                        repo, ForgeEvent(EventKind.PR_MERGED, **base, **pull, merged=True)
                    )
                ]
            if pr.state == "closed":
                return [await self.handle(repo, ForgeEvent(EventKind.PR_CLOSED, **base, **pull))]
            if pr.head_sha and pr.head_sha != task.pr_head_sha:
                out.append(await self._head_moved(task, pr.head_sha, None))
        if task.status is S.REVIEW_PENDING:
            reviews, fresh = await client.reviews(task.pr_number)
            for review in reviews if fresh else []:
                if review.state != "changes_requested":
                    continue
                key = f"review:{repo}:{task.pr_number}:{review.id}"
                if await self.store.delivery(key) is not None:
                    continue
                ev = ForgeEvent(
                    EventKind.CHANGES_REQUESTED,
                    **base,
                    **pull,
                    review_id=review.id,
                    body=review.body,
                    sender=review.author,
                )
                out.append(await self.handle(repo, ev))
                break  # one round at a time: the task is in rework now
        return out

    def due(self, repo: str, now: float) -> bool:
        forge = self.forge(repo)
        if forge is None or forge.poll_interval <= 0:
            return False
        last = self._polled.get(repo)
        return last is None or now - last >= forge.poll_interval

    async def run(self, stop: asyncio.Event, *, tick: float = 1.0) -> None:
        """Poll every forge whose ``poll_interval`` is due, until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                for repo in sorted(self.settings.repos):
                    if not self.due(repo, loop.time()):
                        continue
                    self._polled[repo] = loop.time()
                    try:
                        await self.reconcile(repo)
                    except BosunError as exc:
                        log.warning("polling the forge of %s failed: %s", repo, exc.message)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
        finally:
            await self.aclose()


async def background(settings: Settings, store: ReviewStore, stop: asyncio.Event) -> None:
    """The review loop's background work in ``bosun serve``, until ``stop`` is set: the
    polling fallback (repos whose forge has ``poll_interval`` > 0) and the outgoing
    notifications (``[notifications]``)."""
    from bosun.notify import Notifier

    jobs = []
    forges = [r.forge for r in settings.repos.values() if r.forge is not None]
    if any(f.poll_interval > 0 for f in forges):
        jobs.append(ReviewLoop(settings, store).run(stop))
    if settings.notifications.enabled:
        jobs.append(Notifier(settings, store).run(stop))
    await asyncio.gather(*jobs)
