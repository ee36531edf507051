"""Times and durations that callers pass (since, until, bucket widths): one parser and one valid range.

Every `since`/`until` goes through here, whether the server compares it (metrics history, configuration
changes) or a device does (journalctl, docker logs), so a huge duration or a date at the edge of what
Python can represent is refused as an invalid parameter naming the range instead of overflowing.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from mcp_server.errors import InvalidParameter

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MAX_SPAN = timedelta(days=36_500)
FIRST_YEAR, LAST_YEAR = 1970, 9998
SPAN_RANGE = "a duration may be at most 100 years (36500 days)"
TIME_RANGE = f"a date must lie in the years {FIRST_YEAR} to {LAST_YEAR}"
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")


def span(seconds: float) -> timedelta:
    """`seconds` as a timedelta; ValueError naming the valid range when it is longer than MAX_SPAN."""
    if not 0 <= seconds <= MAX_SPAN.total_seconds():
        raise ValueError(f"out of range: {SPAN_RANGE}")
    return timedelta(seconds=seconds)


def in_range(day: date) -> None:
    """ValueError naming the valid range for a date outside it (checked before any time-zone arithmetic,
    which overflows near the ends of what datetime can hold)."""
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise ValueError(f"out of range: {TIME_RANGE}")


def utc(moment: datetime) -> datetime:
    """`moment` in UTC (UTC assumed when it has no offset); ValueError when it is outside the valid range."""
    in_range(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def before(moment: datetime, duration: timedelta) -> datetime:
    """`moment` minus `duration`, refused (ValueError) when that falls outside the valid range."""
    try:
        start = moment - duration
    except OverflowError:
        start = None
    if start is None or start.year < FIRST_YEAR:
        raise ValueError(f"out of range: it reaches back before {FIRST_YEAR} ({TIME_RANGE})")
    return start


def parse_duration(value: str) -> timedelta | None:
    """'30m', '24h', '7d', '2w' (s, m, h, d, w) as a timedelta; None when `value` is not one; ValueError
    when it is longer than MAX_SPAN."""
    match = _DURATION.match(value.strip())
    if match is None:
        return None
    return span(int(match.group(1)) * UNIT_SECONDS[match.group(2)])


def parse_time(value: str | None, name: str, *, now: datetime, until: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when it has no offset), "now", or a duration ("24h") back from `until`/now.

    InvalidParameter names the argument, what it got and what is valid."""
    if value is None or value.strip().lower() == "now":
        return now
    try:
        duration = parse_duration(value)
        if duration is not None:
            return before(until or now, duration)
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameter(
                f"{name} {value!r} is neither a duration (30m, 24h, 7d, 2w) nor an ISO 8601 time "
                "(2026-12-01T08:00:00Z)."
            ) from None
        return utc(parsed)
    except InvalidParameter:
        raise
    except ValueError as exc:
        raise InvalidParameter(f"{name} {value!r} is {exc}.") from None


# ---- time specs a device parses (their patterns are checked first, in commands/) -------------------------

_WORD_SECONDS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("w", "week", "weeks"), 604_800),
}
_RELATIVE = re.compile(r"^-?(\d+) ?([a-z]+)(?: ago)?$")
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_GO_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNIX_TIME = re.compile(r"^[0-9]{9,10}(?:\.[0-9]{1,9})?$")


def _calendar(value: str) -> None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a real date and time ({exc})") from None
    in_range(parsed)


def journal_time(value: str) -> str:
    """A journalctl --since/--until value within the valid range: a relative one at most MAX_SPAN back, a
    date that exists in the years allowed."""
    if value in ("today", "yesterday", "now"):
        return value
    relative = _RELATIVE.match(value)
    if relative is not None:
        span(int(relative.group(1)) * _WORD_SECONDS[relative.group(2)])
    else:
        _calendar(value)
    return value


def docker_since(value: str) -> str:
    """A docker logs --since value within the valid range: a Go duration at most MAX_SPAN, a Unix time, or
    an RFC 3339 date/time that exists in the years allowed."""
    if _UNIX_TIME.match(value):
        return value
    parts = _GO_PART.findall(value)
    if parts and "".join(number + unit for number, unit in parts) == value:
        span(sum(float(number) * _GO_SECONDS[unit] for number, unit in parts))
    else:
        _calendar(value)
    return value
