"""Metrics history: bucketed series from the time-series tables, with rates from counters and a summary.

Buckets are aligned to the Unix epoch and whole: `since` is rounded down and `until` up to a bucket
boundary. TimescaleDB uses `time_bucket` (and the hourly rollup for system metrics in whole hours, but
not for the last two days: rows that arrive late there count at once, before the rollup's next refresh),
plain PostgreSQL `date_bin`, SQLite integer arithmetic on epoch microseconds read from the stored text;
the three give the same points for the same rows, to the microsecond at bucket edges. Rates come from
consecutive counter samples: after a counter reset (a reboot, a wrap) the new value is the increase, as
Prometheus counts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy import BindParameter, DateTime, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from mcp_server.db.series import ROLLUP, Mode, as_utc
from mcp_server.series import METRICS
from mcp_server.series.spec import MetricSpec

Trend = Literal["rising", "falling", "steady", "unknown"]

# Rate samples look back this far before `since` for the counter value preceding the first sample.
RATE_LOOKBACK = timedelta(hours=6)
EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
DIGITS = 4


class HistoryPoint(BaseModel):
    bucket_start: datetime = Field(description="Start of the bucket (UTC); the bucket spans bucket_seconds.")
    avg: float
    min: float
    max: float
    samples: int = Field(description="Samples (or, for rates, sample pairs) in the bucket.")


class HistorySummary(BaseModel):
    trend: Trend = Field(
        description="rising/falling when the least-squares line through the bucket averages changes by at "
        "least 5 points (percent metrics) or 10% of the mean (others) over the range; steady otherwise; "
        "unknown with fewer than 3 buckets."
    )
    change: float | None = Field(description="Change of that line from the first to the last bucket.")
    mean: float | None = Field(description="Mean of all samples in the range.")
    peak: float | None = Field(description="Highest sample in the range.")
    peak_at: datetime | None = Field(description="Start of the bucket holding the peak.")
    latest: float | None = Field(description="The most recent value before `until`.")
    latest_at: datetime | None = Field(description="When the most recent value was collected.")


class MetricsHistory(BaseModel):
    device: str
    metric: str
    unit: str
    key: str | None = Field(description="The mount, interface or container the series is for.")
    since: datetime = Field(description="Start of the first bucket (since rounded down).")
    until: datetime = Field(description="End of the last bucket (until rounded up).")
    bucket_seconds: int
    source: Literal["raw", "hourly_rollup"] = Field(
        description="raw samples, or TimescaleDB's hourly rollup (same numbers, less reading)."
    )
    raw_from: datetime | None = Field(
        default=None,
        description="With source hourly_rollup: buckets from this time on come from the raw samples, so rows "
        "that arrived late there (a replayed spool, a writer backlog) count before the rollup's next refresh.",
    )
    points: list[HistoryPoint] = Field(description="One per bucket that holds samples, oldest first.")
    summary: HistorySummary
    note: str | None = Field(default=None, description="Why there are no points, when there are none.")


@dataclass(frozen=True)
class Query:
    device: str
    metric: str
    key: str | None
    since: datetime  # aligned to bucket_seconds, UTC
    until: datetime  # aligned to bucket_seconds, UTC
    bucket_seconds: int
    # TimescaleDB: buckets starting at or after this come from raw rows even where the rollup could answer
    raw_from: datetime | None = None


def align(since: datetime, until: datetime, width: int) -> tuple[datetime, datetime]:
    """`since` rounded down and `until` rounded up to multiples of `width` seconds since the epoch."""
    lo = math.floor(since.timestamp() / width) * width
    hi = math.ceil(until.timestamp() / width) * width
    return datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(max(hi, lo + width), UTC)


def _float_type(dialect: str) -> str:
    return "double precision" if dialect == "postgresql" else "REAL"


def _bucket(mode: Mode, dialect: str, ts: str, width: int) -> str:
    """SQL giving the epoch second at which the bucket of `ts` starts."""
    if dialect != "postgresql":
        # a width is whole seconds, so the bucket depends on the whole seconds only; integer division
        # floors (all our times are after 1970)
        return f"({_seconds(ts)} / {width}) * {width}"
    fn = (
        f"time_bucket(INTERVAL '{width} seconds', {ts}, origin => {EPOCH})"
        if mode == "timescale"
        else f"date_bin(INTERVAL '{width} seconds', {ts}, {EPOCH})"
    )
    return f"CAST(extract(epoch FROM {fn}) AS bigint)"


def _micros(dialect: str, ts: str) -> str:
    """Exact microseconds since the epoch of the timestamp column `ts`."""
    if dialect == "postgresql":
        return f"CAST(extract(epoch FROM {ts}) * 1000000 AS bigint)"
    # the microseconds come from the text (padded: a value written without them reads 0)
    return f"({_seconds(ts)} * 1000000 + CAST(substr({ts} || '000000', 21, 6) AS INTEGER))"


def _seconds(ts: str) -> str:
    """SQLite: the exact whole seconds since the epoch of the stored text `ts`.

    SQLAlchemy stores UTC as 'YYYY-MM-DD HH:MM:SS.ffffff'. SQLite's date functions go through a
    millisecond Julian day (strftime('%s') of '...:59.9995' is the next second), so they are given only
    the whole seconds.
    """
    return f"CAST(strftime('%s', substr({ts}, 1, 19)) AS INTEGER)"


def _times(*names: str) -> list[BindParameter[datetime]]:
    return [bindparam(n, type_=DateTime(timezone=True)) for n in names]


def _where(spec: MetricSpec, ts: str, *, many: bool, start: str = "since") -> str:
    device = "device IN :devices" if many else "device = :device"
    key = f" AND {spec.key_column} = :key" if spec.key_column else ""
    return f"{device}{key} AND {ts} >= :{start} AND {ts} < :until"


def gauge_sql(spec: MetricSpec, mode: Mode, dialect: str, width: int, *, many: bool = False) -> str:
    ts = "collected_at"
    value = spec.expression.format(f=_float_type(dialect))
    grouping = "device, " if many else ""
    return (
        f"SELECT {grouping}{_bucket(mode, dialect, 'ts', width)} AS b, avg(v), min(v), max(v), count(v) "
        f"FROM (SELECT {grouping}{ts} AS ts, {value} AS v FROM {spec.table} "
        f"WHERE {_where(spec, ts, many=many)}) s WHERE v IS NOT NULL GROUP BY {grouping}b ORDER BY {grouping}b"
    )


def rollup_sql(metric: str, width: int, *, many: bool = False) -> str:
    grouping = "device, " if many else ""
    bucket = f"time_bucket(INTERVAL '{width} seconds', bucket, origin => {EPOCH})"
    return (
        f"SELECT {grouping}CAST(extract(epoch FROM {bucket}) AS bigint) AS b, "
        f"sum({metric}_sum) / sum({metric}_count), min({metric}_min), max({metric}_max), "
        f"sum({metric}_count) FROM {ROLLUP} WHERE {_where(METRICS[metric], 'bucket', many=many)} "
        f"AND {metric}_count > 0 GROUP BY {grouping}b ORDER BY {grouping}b"
    )


def rate_sql(spec: MetricSpec, mode: Mode, dialect: str, width: int) -> str:
    """Per-interval rates of a counter (consecutive samples), bucketed. The window runs in the index's
    time order; times travel as integer microseconds so the interval is exact on every backend."""
    f = _float_type(dialect)
    increase = "CASE WHEN c >= pc THEN c - pc ELSE c END"  # a reset: the counter restarted from zero
    rate = f"CAST({increase} AS {f}) * 1000000.0 / CAST(NULLIF(us - pus, 0) AS {f})"
    if dialect == "postgresql":
        bucket, time_column = _bucket(mode, dialect, "collected_at", width), "collected_at"
    else:
        bucket, time_column = f"(us / 1000000 / {width}) * {width}", "us"  # SQLite: integer epoch arithmetic
    return (
        f"SELECT {bucket} AS b, avg(r), min(r), max(r), count(r) FROM ("
        f"SELECT {time_column}, {rate} AS r FROM ("
        f"SELECT {'collected_at, ' if dialect == 'postgresql' else ''}us, c, LAG(c) OVER w AS pc, "
        "LAG(us) OVER w AS pus FROM ("
        f"SELECT collected_at, {_micros(dialect, 'collected_at')} AS us, {spec.expression} AS c FROM {spec.table} "
        f"WHERE {_where(spec, 'collected_at', many=False, start='lookback')} AND {spec.expression} IS NOT NULL"
        ") s WINDOW w AS (ORDER BY collected_at)"
        ") x WHERE pus IS NOT NULL AND us >= :since_us) y WHERE r IS NOT NULL GROUP BY b ORDER BY b"
    )


def uses_rollup(mode: Mode, metric: str, width: int) -> bool:
    return mode == "timescale" and METRICS[metric].rollup and width % 3600 == 0


def _point(row: Sequence[object]) -> HistoryPoint:
    b, avg, lo, hi, n = row
    return HistoryPoint(
        bucket_start=datetime.fromtimestamp(int(b), UTC),  # type: ignore[call-overload]
        avg=round(float(avg), DIGITS),  # type: ignore[arg-type]
        min=round(float(lo), DIGITS),  # type: ignore[arg-type]
        max=round(float(hi), DIGITS),  # type: ignore[arg-type]
        samples=int(n),  # type: ignore[call-overload]
    )


@dataclass(frozen=True)
class Points:
    points: list[HistoryPoint]
    source: Literal["raw", "hourly_rollup"]
    raw_from: datetime | None = None  # where a rollup answer continues from raw rows


async def points(session: AsyncSession, mode: Mode, q: Query) -> Points:
    """The bucketed points of one series: from the hourly rollup where it can answer them (buckets before
    `q.raw_from`), from raw rows elsewhere."""
    spec = METRICS[q.metric]
    if spec.counter:
        return Points(await _rates(session, mode, q), "raw")
    if not uses_rollup(mode, q.metric, q.bucket_seconds):
        return Points(await _gauge(session, mode, q), "raw")
    cut = q.until if q.raw_from is None else align(q.raw_from, q.raw_from, q.bucket_seconds)[0]
    if cut <= q.since:
        return Points(await _gauge(session, mode, q), "raw")
    old = await _rollup(session, replace(q, until=min(cut, q.until)))
    if cut >= q.until:
        return Points(old, "hourly_rollup")
    return Points(old + await _gauge(session, mode, replace(q, since=cut)), "hourly_rollup", cut)


def _params(q: Query) -> dict[str, object]:
    params: dict[str, object] = {"device": q.device, "since": q.since, "until": q.until}
    if METRICS[q.metric].key_column:
        params["key"] = q.key
    return params


async def _gauge(session: AsyncSession, mode: Mode, q: Query) -> list[HistoryPoint]:
    sql = gauge_sql(METRICS[q.metric], mode, session.get_bind().dialect.name, q.bucket_seconds)
    rows = await session.execute(text(sql).bindparams(*_times("since", "until")), _params(q))
    return [_point(r) for r in rows]


async def _rollup(session: AsyncSession, q: Query) -> list[HistoryPoint]:
    statement = text(rollup_sql(q.metric, q.bucket_seconds)).bindparams(*_times("since", "until"))
    return [_point(r) for r in await session.execute(statement, _params(q))]


async def _rates(session: AsyncSession, mode: Mode, q: Query) -> list[HistoryPoint]:
    sql = rate_sql(METRICS[q.metric], mode, session.get_bind().dialect.name, q.bucket_seconds)
    params = _params(q)
    params["lookback"] = q.since - RATE_LOOKBACK
    params["since_us"] = int(q.since.timestamp()) * 1_000_000  # since is whole seconds (aligned)
    del params["since"]
    rows = await session.execute(text(sql).bindparams(*_times("until", "lookback")), params)
    return [_point(r) for r in rows]


async def latest(session: AsyncSession, q: Query) -> tuple[float | None, datetime | None]:
    """The most recent value before `until`: a sample, or the rate between the last two samples."""
    spec = METRICS[q.metric]
    dialect = session.get_bind().dialect.name
    key = f" AND {spec.key_column} = :key" if spec.key_column else ""
    value = spec.expression.format(f=_float_type(dialect))
    limit = 2 if spec.counter else 1
    sql = (
        f"SELECT collected_at, {value} FROM {spec.table} WHERE device = :device{key} "
        f"AND collected_at < :until AND {value} IS NOT NULL ORDER BY collected_at DESC LIMIT {limit}"
    )
    params: dict[str, object] = {"device": q.device, "until": q.until, "key": q.key}
    rows = (await session.execute(text(sql).bindparams(*_times("until")), params)).all()
    if len(rows) < limit:
        return None, None
    at = _utc(rows[0][0])
    if not spec.counter:
        return round(float(rows[0][1]), DIGITS), at
    c, pc = int(rows[0][1]), int(rows[1][1])
    micros = (at - _utc(rows[1][0])) // timedelta(microseconds=1)
    if micros <= 0:
        return None, None
    # the same arithmetic as rate_sql, so the latest rate equals the last rate sample there
    return round(float(c if c < pc else c - pc) * 1000000.0 / float(micros), DIGITS), at


async def known_keys(session: AsyncSession, metric: str, device: str, since: datetime) -> list[str]:
    """The mounts, interfaces or containers with samples for `device` since `since` (for error messages)."""
    spec = METRICS[metric]
    if spec.key_column is None:
        return []
    sql = (
        f"SELECT DISTINCT {spec.key_column} FROM {spec.table} WHERE device = :device "
        f"AND collected_at >= :since ORDER BY {spec.key_column} LIMIT 50"
    )
    rows = await session.execute(text(sql).bindparams(*_times("since")), {"device": device, "since": since})
    return [str(r[0]) for r in rows]


def _utc(value: object) -> datetime:
    if isinstance(value, str):  # SQLite through text(): the stored text
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return as_utc(value)


def summarize(
    points: list[HistoryPoint], unit: str, latest: tuple[float | None, datetime | None]
) -> HistorySummary:
    """Trend, peak, mean and latest value of a series of bucket points."""
    total = sum(p.samples for p in points)
    mean = round(sum(p.avg * p.samples for p in points) / total, DIGITS) if total else None
    peak = max(points, key=lambda p: p.max) if points else None
    trend: Trend = "unknown"
    change = None
    if len(points) >= 3 and mean is not None:
        xs = [p.bucket_start.timestamp() for p in points]
        ys = [p.avg for p in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        change = round(slope * (xs[-1] - xs[0]), DIGITS)
        threshold = 5.0 if unit.startswith("%") else 0.1 * abs(mean)
        trend = (
            "steady" if abs(change) < threshold or change == 0 else ("rising" if change > 0 else "falling")
        )
    return HistorySummary(
        trend=trend,
        change=change,
        mean=mean,
        peak=peak.max if peak else None,
        peak_at=peak.bucket_start if peak else None,
        latest=latest[0],
        latest_at=latest[1],
    )


async def history(session: AsyncSession, mode: Mode, q: Query) -> MetricsHistory:
    """The points and summary of one series."""
    found = await points(session, mode, q)
    last = await latest(session, q)
    return MetricsHistory(
        device=q.device,
        metric=q.metric,
        unit=METRICS[q.metric].unit,
        key=q.key,
        since=q.since,
        until=q.until,
        bucket_seconds=q.bucket_seconds,
        source=found.source,
        raw_from=found.raw_from,
        points=found.points,
        summary=summarize(found.points, METRICS[q.metric].unit, last),
    )


class DeviceTrend(BaseModel):
    """How a device's CPU and memory moved over the recent past (hourly buckets)."""

    window_hours: int = Field(exclude=True)  # reports say it once for every device (trend_window_hours)
    cpu_percent: Trend
    cpu_change: float | None = Field(description="Change of the fitted line over the window, in points.")
    memory_percent: Trend
    memory_change: float | None = Field(description="Change of the fitted line over the window, in points.")


async def device_trends(
    session: AsyncSession, mode: Mode, devices: list[str], until: datetime, hours: int = 24
) -> dict[str, DeviceTrend]:
    """CPU and memory trends per device over the last `hours`, for devices with history only."""
    if not devices:
        return {}
    since, end = align(until - timedelta(hours=hours), until, 3600)
    dialect = session.get_bind().dialect.name
    series: dict[str, dict[str, list[HistoryPoint]]] = {}
    for metric in ("cpu_percent", "memory_percent"):
        if uses_rollup(mode, metric, 3600):
            sql = rollup_sql(metric, 3600, many=True)
        else:
            sql = gauge_sql(METRICS[metric], mode, dialect, 3600, many=True)
        statement = text(sql).bindparams(*_times("since", "until"), bindparam("devices", expanding=True))
        rows = await session.execute(statement, {"devices": devices, "since": since, "until": end})
        for row in rows:
            series.setdefault(str(row[0]), {}).setdefault(metric, []).append(_point(row[1:]))
    trends = {}
    for device, by_metric in series.items():
        cpu = summarize(by_metric.get("cpu_percent", []), "%", (None, None))
        memory = summarize(by_metric.get("memory_percent", []), "%", (None, None))
        if cpu.trend == "unknown" and memory.trend == "unknown":
            continue
        trends[device] = DeviceTrend(
            window_hours=hours,
            cpu_percent=cpu.trend,
            cpu_change=cpu.change,
            memory_percent=memory.trend,
            memory_change=memory.change,
        )
    return trends
