"""When a usage or rate limit lifts, read from the text of the error that reported it.

Agent CLIs name the reset time in many shapes: an epoch after a pipe (``usage limit
reached|1762952400``), a JSON field (``"resets_at": 1777599629``, ``"resetsAt": …``), an ISO
timestamp, a delay (``Retry-After: 30``, ``try again in 1h2m``, ``"retryDelay": "37s"``), or a
wall-clock time (``resets 3pm (Europe/Berlin)``, ``try again at Sep 12th, 2025 3:04 PM``).

Parsers have no clock, so they call :func:`parse_reset_time` with ``now=None`` (only absolute
times resolve) or with a timestamp the output itself carried. The dispatcher, which has a
clock, calls it again on ``Outcome.error`` with the real ``now``: parsers keep the hint
(:func:`find_reset_hint`) in that message for this reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["find_reset_hint", "parse_reset_time"]

_EPOCH = re.compile(
    r"(?i)(?:resets?[_ -]?at|reset_time|retry[_-]?at|limit reached\|)"
    r"[\"':=\s]*(\d{10}(?:\d{3})?)(?!\d)"
)
_ISO = re.compile(
    r"(?i)(?:reset|retry|until|after|again|available)\D{0,20}?"
    r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)"
)
_UNIT = r"(?:ms|milliseconds?|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)"
# A unit ends where letters end, so "1h2m3s" reads as three parts.
_SPAN = rf"(?:\d+(?:\.\d+)?\s*{_UNIT}(?![a-z])[\s,]*(?:and\s+)?)+"
_DURATION = re.compile(rf"(?i)(?:try again|retry|resets?|available again|wait)\s+in\s+({_SPAN})")
_RETRY_AFTER = re.compile(r"(?i)retry[-_ ]?after[\"':=\s]+(\d+(?:\.\d+)?)(?!\d)\s*(ms|s)?")
_RETRY_DELAY = re.compile(r"(?i)retry_?delay(ms)?[\"':=\s]+(\d+(?:\.\d+)?)\s*(ms|s)?")
_RESETS_IN = re.compile(r"(?i)resets?_in_seconds[\"':=\s]+(\d+)")
_CLOCK = re.compile(
    r"(?i)(?:resets?|reset at|try again at|available at|until)\s+(?:at\s+)?"
    r"(?:(?P<mon>[A-Za-z]{3,9})\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+"
    r"(?:(?P<year>\d{4}),?\s+)?(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<zone>[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+)*)\))?"
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(rf"(\d+(?:\.\d+)?)\s*({_UNIT})(?![a-z])", re.IGNORECASE)

Resolver = Callable[[re.Match[str], datetime | None], datetime | None]


def parse_reset_time(text: str, now: datetime | None) -> datetime | None:
    """The first reset time named in ``text``, in UTC, or None.

    With ``now=None`` only absolute times resolve (epochs, ISO timestamps with an offset,
    dated wall-clock times with a named zone). With ``now`` (naive means UTC), delays count
    from ``now`` and undated wall-clock times resolve to their next occurrence after ``now``,
    in the zone named in parentheses or else ``now``'s zone.
    """
    for pattern, resolve in _RULES:
        for match in pattern.finditer(text):
            when = resolve(match, _aware(now) if now is not None else None)
            if when is not None:
                return when.astimezone(UTC)
    return None


def find_reset_hint(text: str) -> str | None:
    """The words in ``text`` that name a reset time (kept in error messages), or None."""
    for pattern, _ in _RULES:
        match = pattern.search(text)
        if match is not None and (pattern is not _CLOCK or _clock_ok(match)):
            # Quotes from a JSON body ('"resets_at":1773…') would only clutter a message.
            return match.group(0).replace('"', "").replace("'", "").strip()
    return None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _epoch(match: re.Match[str], _now: datetime | None) -> datetime | None:
    raw = match.group(1)
    seconds = int(raw) / 1000 if len(raw) == 13 else int(raw)
    return datetime.fromtimestamp(seconds, UTC)


def _iso(match: re.Match[str], now: datetime | None) -> datetime | None:
    try:
        value = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None
    # A timestamp without an offset is read as UTC: APIs that omit the zone use UTC.
    return _aware(value)


def _after(now: datetime | None, seconds: float) -> datetime | None:
    return None if now is None else now + timedelta(seconds=seconds)


def _duration(match: re.Match[str], now: datetime | None) -> datetime | None:
    total = 0.0
    for amount, unit in _PART.findall(match.group(1)):
        unit = unit.lower()
        scale = 0.001 if unit == "ms" or unit.startswith("mil") else _SECONDS[unit[0]]
        total += float(amount) * scale
    return _after(now, total)


def _retry_after(match: re.Match[str], now: datetime | None) -> datetime | None:
    scale = 0.001 if (match.group(2) or "").lower() == "ms" else 1.0
    return _after(now, float(match.group(1)) * scale)


def _retry_delay(match: re.Match[str], now: datetime | None) -> datetime | None:
    in_ms = bool(match.group(1)) or (match.group(3) or "").lower() == "ms"
    return _after(now, float(match.group(2)) * (0.001 if in_ms else 1.0))


def _resets_in(match: re.Match[str], now: datetime | None) -> datetime | None:
    return _after(now, float(match.group(1)))


def _clock_ok(match: re.Match[str]) -> bool:
    # "resets 5" is not a time; "resets 5pm", "resets 17:00" and dated times are.
    ampm, minute = match.group("ampm"), match.group("minute")
    if not (ampm or minute):
        return False
    hour = int(match.group("hour"))
    if not (1 <= hour <= 12 if ampm else hour <= 23) or int(minute or 0) > 59:
        return False
    mon = match.group("mon")
    return mon is None or mon[:3].lower() in _MONTHS


def _zone(name: str | None, now: datetime | None) -> tzinfo | None:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return now.tzinfo if now is not None else None


def _clock(match: re.Match[str], now: datetime | None) -> datetime | None:
    if not _clock_ok(match):
        return None
    hour, minute = int(match.group("hour")), int(match.group("minute") or 0)
    ampm = (match.group("ampm") or "").lower()[:1]
    if ampm:
        hour = hour % 12 + (12 if ampm == "p" else 0)
    zone = _zone(match.group("zone"), now)
    if zone is None:
        return None
    mon = match.group("mon")
    if mon is not None:
        month, day = _MONTHS.index(mon[:3].lower()) + 1, int(match.group("day"))
        year_text = match.group("year")
        if year_text is not None:
            return _date(int(year_text), month, day, hour, minute, zone)
        if now is None:
            return None
        # No year: the next such date from now on.
        year = now.astimezone(zone).year
        when = _date(year, month, day, hour, minute, zone)
        if when is not None and when < now:
            when = _date(year + 1, month, day, hour, minute, zone)
        return when
    if now is None:
        return None
    local = now.astimezone(zone)
    when = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return when if when > local else when + timedelta(days=1)


def _date(year: int, month: int, day: int, hour: int, minute: int, zone: tzinfo) -> datetime | None:
    try:
        return datetime(year, month, day, hour, minute, tzinfo=zone)
    except ValueError:
        return None


# Absolute forms first: they are exact, and a message often carries both ("in 3h", epoch).
_RULES: tuple[tuple[re.Pattern[str], Resolver], ...] = (
    (_EPOCH, _epoch),
    (_ISO, _iso),
    (_RESETS_IN, _resets_in),
    (_RETRY_DELAY, _retry_delay),
    (_RETRY_AFTER, _retry_after),
    (_DURATION, _duration),
    (_CLOCK, _clock),
)
