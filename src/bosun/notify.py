"""Outgoing notifications: a JSON POST to ``[notifications] url`` when a task needs input,
fails or completes.

The ``Notifier`` follows the event log (so it sees every status change, whoever made it:
a run, a webhook, a pull agent, a user) and sends one notification per ``task.status``
event whose target is in ``[notifications] on``. Each is claimed in the store first
(``ForgeStore.claim_notification`` on the key ``task-status-<event id>``), so however many
bosun processes follow the same database, each goes out once. A failed POST is retried
(``retries``) with a growing pause; its state is kept in the ``notifications`` table.

The body::

    {"id": "task-status-42", "event": "task.needs_input", "status": "needs_input",
     "previous": "review_pending", "reason": "...", "task": {...Task.to_json()...},
     "url": "https://bosun.example/api/v1/tasks/7" | null, "at": "2026-..."}

With ``secret_env`` / ``secret_file`` the body is signed like a forge signs its webhooks:
``X-Bosun-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from bosun.config import Settings
from bosun.errors import BosunError, NotFound
from bosun.forges.signatures import sign
from bosun.models import Event
from bosun.store.base import ForgeStore, Store

__all__ = ["Notifier", "notification_body"]

log = logging.getLogger("bosun.notify")


class NotifyStore(Store, ForgeStore, Protocol):
    """What the notifier needs of a store."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def notification_key(event: Event) -> str:
    return f"task-status-{event.id}"


def notification_body(
    settings: Settings, event: Event, task: dict[str, Any], now: datetime
) -> dict[str, Any]:
    base = settings.server.public_url
    url = f"{base.rstrip('/')}/api/v1/tasks/{event.task_id}" if base else None
    status = str(event.data.get("to"))
    return {
        "id": notification_key(event),
        "event": f"task.{status}",
        "status": status,
        "previous": event.data.get("from"),
        "reason": event.data.get("reason"),
        "task": task,
        "url": url,
        "at": now.isoformat(),
    }


class Notifier:
    """Sends the notifications of ``[notifications]`` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: NotifyStore,
        *,
        environ: Mapping[str, str] = os.environ,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utcnow,
        retry_delay: float = 1.0,
    ) -> None:
        self.settings = settings
        self.cfg = settings.notifications
        self.store = store
        self.environ = environ
        self.clock = clock
        self.retry_delay = retry_delay
        self._http = httpx.AsyncClient(
            timeout=self.cfg.timeout, transport=transport, follow_redirects=False
        )
        self.cursor: int | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def start(self) -> None:
        """Where to begin: after the newest event a notification was made for (so nothing
        that happened while bosun was down is lost), or, the very first time, now."""
        cursor = await self.store.notification_cursor()
        self.cursor = cursor or await self.store.last_event_id()

    async def pass_once(self) -> int:
        """Send what the events since the cursor call for; the number sent."""
        if self.cursor is None:
            await self.start()
        assert self.cursor is not None
        sent = 0
        while True:
            batch = await self.store.events_since(self.cursor, limit=500)
            for event in batch:
                if self._wanted(event) and await self._claim(event):
                    sent += await self._send(event)
            if not batch:
                return sent
            self.cursor = batch[-1].id

    def _wanted(self, event: Event) -> bool:
        return (
            event.kind == "task.status"
            and event.task_id is not None
            and event.data.get("to") in self.cfg.on
        )

    async def _claim(self, event: Event) -> bool:
        return await self.store.claim_notification(
            notification_key(event), event_id=event.id, task_id=event.task_id
        )

    async def _send(self, event: Event) -> int:
        """POST one claimed notification, retrying; 1 when it went out."""
        key = notification_key(event)
        assert event.task_id is not None
        try:
            task = (await self.store.get_task(event.task_id)).to_json()
        except NotFound:
            task = {"id": event.task_id}
        body = json.dumps(
            notification_body(self.settings, event, task, self.clock()), sort_keys=True
        ).encode()
        error = "not sent"
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                error = await self._post(key, str(event.data.get("to")), body)
            except BosunError as exc:  # the URL or secret is missing: retrying cannot help
                await self.store.finish_notification(key, sent=False, error=exc.message)
                log.warning("notification %s not sent: %s", key, exc.message)
                return 0
            if not error:
                await self.store.finish_notification(key, sent=True)
                return 1
            await self.store.finish_notification(key, sent=False, error=error)
        log.warning("notification %s not sent: %s", key, error)
        return 0

    async def _post(self, key: str, status: str, body: bytes) -> str:
        """One POST; the problem, or "" when the receiver took it (2xx)."""
        url = self.cfg.target(self.environ)
        if url is None:
            return "no [notifications] url"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "bosun",
            "X-Bosun-Event": f"task.{status}",
            "X-Bosun-Delivery": key,
        }
        secret = self.cfg.secret(self.environ)
        if secret is not None:
            headers["X-Bosun-Signature-256"] = "sha256=" + sign(body, secret)
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"cannot reach the notification URL: {type(exc).__name__}"
        if 200 <= response.status_code < 300:
            return ""
        return f"the notification URL answered HTTP {response.status_code}"

    async def run(self, stop: asyncio.Event, *, idle: float = 1.0) -> None:
        """Send notifications as status changes happen, until ``stop`` is set."""
        if not self.cfg.enabled:
            return
        try:
            while not stop.is_set():
                try:
                    await self.pass_once()
                except BosunError as exc:
                    log.warning("notifications: %s", exc.message)
                waiter = asyncio.ensure_future(self.store.wait_for_change(idle))
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for pending in (waiter, stopper):
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, BosunError):
                        await pending
        finally:
            await self.aclose()
