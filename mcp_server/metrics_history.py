"""get_metrics_history's request: checked and normalised (times, bucket width, series key), then answered
from the time-series tables (db/history.py)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from mcp_server.db.engine import Database
from mcp_server.db.history import MetricsHistory, Query, align, history, known_keys
from mcp_server.db.storage import layout, policies
from mcp_server.devices import DeviceRegistry
from mcp_server.errors import InvalidParameter
from mcp_server.series import KEYS, METRICS
from mcp_server.settings import Settings
from mcp_server.times import parse_duration, parse_time

# Bucket widths divide a day evenly, so buckets never straddle midnight UTC and whole hours can come
# from the hourly rollup.
DAY = 86_400
MIN_BUCKET = 60
AUTO_POINTS = 500
MAX_POINTS = 2000
MAX_RANGE = timedelta(days=400)
DEFAULT_RANGE = timedelta(hours=24)
AUTO_BUCKETS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 28800, 43200, 86400)


def _or(names: Iterable[str]) -> str:
    *most, last = names
    return f"{', '.join(most)} or {last}" if most else last


def bucket_width(value: str | None, span: timedelta) -> int:
    """The bucket width in seconds: the given one checked, or the finest giving at most AUTO_POINTS."""
    if value is None:
        seconds = span.total_seconds()
        return next((w for w in AUTO_BUCKETS if seconds / w <= AUTO_POINTS), DAY)
    try:
        duration = parse_duration(value)
    except ValueError:
        duration = None
    width = int(duration.total_seconds()) if duration else 0
    if width < MIN_BUCKET or width > DAY or DAY % width:
        raise InvalidParameter(
            f"bucket {value!r}: use a width from 1m to 1d that divides a day evenly, e.g. 1m, 5m, 15m, 30m, "
            "1h, 2h, 6h, 12h or 1d."
        )
    return width


async def metrics_history(
    db: Database,
    devices: DeviceRegistry,
    settings: Settings,
    *,
    device: str,
    metric: str,
    since: str | None = None,
    until: str | None = None,
    bucket: str | None = None,
    now: datetime | None = None,
    **keys: str | None,
) -> MetricsHistory:
    """One metric of one device over time, bucketed, with a summary; checks every argument first.

    `keys` are the arguments selecting one series of several (mount, interface, ...: mcp_server.series.KEYS)."""
    devices.get(device)
    spec = METRICS.get(metric)
    if spec is None:
        raise InvalidParameter(f"Unknown metric {metric!r}. Metrics: {', '.join(METRICS)}.")
    now = now or datetime.now(UTC)
    end = parse_time(until, "until", now=now)
    start = parse_time(since, "since", now=now, until=end) if since else end - DEFAULT_RANGE
    if start >= end:
        raise InvalidParameter(f"since ({start.isoformat()}) must be before until ({end.isoformat()}).")
    if end - start > MAX_RANGE:
        raise InvalidParameter(f"The range is {(end - start).days} days; at most {MAX_RANGE.days} at once.")
    width = bucket_width(bucket, end - start)
    lo, hi = align(start, end, width)
    count = int((hi - lo).total_seconds()) // width
    if count > MAX_POINTS:
        raise InvalidParameter(
            f"{count} buckets of {bucket} between {lo.isoformat()} and {hi.isoformat()}; at most {MAX_POINTS}: "
            "use a wider bucket or a shorter range."
        )
    given = {k: v for k, v in keys.items() if v}
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise InvalidParameter(f"Unknown series key {_or(unknown)}; the keys are {_or(KEYS)}.")
    extra = sorted(set(given) - ({spec.key} if spec.key else set()))
    if extra:
        takes = f"takes `{spec.key}` only" if spec.key else f"takes none of {_or(KEYS)}"
        raise InvalidParameter(f"{metric} {takes}; remove {', '.join(extra)}.")
    mode, _, _ = await layout(db)
    async with db.read_session() as session:
        key = given.get(spec.key) if spec.key else None
        if spec.key and key is None:
            known = await known_keys(session, metric, device, now - timedelta(days=7))
            listed = ", ".join(known) if known else "none recorded in the last 7 days"
            raise InvalidParameter(f"{metric} needs `{spec.key}`. Known for {device}: {listed}.")
        # the rollup answers only buckets older than the recent window (late rows there count at once)
        raw_from = now - policies(settings).recent_raw if mode == "timescale" else None
        result = await history(session, mode, Query(device, metric, key, lo, hi, width, raw_from))
        if not result.points:
            result.note = await _why_empty(session, settings, metric, device, key, now)
    return result


async def _why_empty(
    session: AsyncSession, settings: Settings, metric: str, device: str, key: str | None, now: datetime
) -> str:
    spec = METRICS[metric]
    setting, tool = spec.series.poll.setting, spec.series.tool
    interval = float(getattr(settings, setting))
    if settings.poll_enabled and interval > 0:
        polled = f"the poller records it every {interval:g} s (INFRA_{setting.upper()})"
    else:
        polled = f"background polling of it is off (INFRA_POLL_ENABLED / INFRA_{setting.upper()})"
    text = f"No samples of {metric} for {device} in this range: {polled}, and every {tool} call adds one."
    if key is not None:
        known = await known_keys(session, metric, device, now - timedelta(days=7))
        if key not in known:
            listed = ", ".join(known) if known else "none"
            text += f" Known {spec.key}s of {device} in the last 7 days: {listed}."
    return text
