"""``HostRecord``: one row of the ``hosts`` table (pure data; no I/O).

A row exists for every host added at run time (``source`` "cli" or "api", with its
``HostConfig`` fields in ``config``) and, once bosun has something to remember about it,
for a host of ``bosun.toml`` (``source`` "config", ``config`` empty: the file stays the
source of its settings, the row only holds its state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Where a host was defined.
SOURCES = ("config", "cli", "api")
#: The result of the last health check ("unknown": never checked).
HEALTH_STATES = ("unknown", "healthy", "unhealthy")


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (C0 or DEL): refused in host fields
    and in what an operator writes about a host's runs (one printable line)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


@dataclass(frozen=True, slots=True)
class HostRecord:
    name: str
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    drained: bool = False
    capabilities: dict[str, Any] = field(default_factory=dict)
    health: str = "unknown"
    health_error: str | None = None
    checked_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def registered(self) -> bool:
        """Added at run time (``bosun hosts add`` or the API), not from ``bosun.toml``."""
        return self.source != "config"
