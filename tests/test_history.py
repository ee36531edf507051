"""Metrics history against known rows on SQLite, PostgreSQL (native partitions) and TimescaleDB.

Every backend is checked against the same reference computed here in Python from the same rows, so the
three give identical points: epoch-aligned whole buckets, avg/min/max/sample counts, and rates from
counters with resets.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from sqlalchemy import text

from mcp_server.db.history import device_trends
from mcp_server.db.storage import layout
from mcp_server.devices import DeviceSpec
from mcp_server.metrics_history import metrics_history
from mcp_server.series import METRICS
from mcp_server.series.containers import ContainerStatRow
from mcp_server.series.disks import DiskMetricRow
from mcp_server.series.network import NetworkMetricRow
from mcp_server.series.system import SystemMetricRow
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from mcp_server.times import docker_since, journal_time, parse_time
from tests.app_fixtures import make_settings

DEVICE = "nas01"
GiB = 1 << 30


def _day_start(days_ago: int) -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=days_ago)


# Three days back: retention (30 d) and compression (7 d) leave the rows alone while a test runs, and on
# TimescaleDB hourly buckets this old come from the rollup (the last two days come from raw rows).
T0 = _day_start(3)


@dataclass(frozen=True)
class Sample:
    at: datetime
    value: float


def system_rows() -> list[dict[str, Any]]:
    """Four hours of 60 s samples (a quarter second past the minute, to exercise sub-second times)."""
    rows = []
    for i in range(240):
        rows.append(
            {
                "device": DEVICE,
                "collected_at": T0 + timedelta(seconds=60 * i, milliseconds=250),
                "cpu_percent": float((i * 7) % 50),
                "load_1": (i % 4) * 0.25,
                "load_5": 1.0,
                "load_15": 0.5,
                "memory_total_bytes": 8_000_000_000,
                # memory_percent = 25 + i * 0.125 (exact in binary): creeping up
                "memory_used_bytes": 2_000_000_000 + i * 10_000_000,
                "memory_available_bytes": 6_000_000_000 - i * 10_000_000,
                "swap_total_bytes": 0,
                "swap_used_bytes": 0,
                "uptime_seconds": 1000.0 + 60 * i,
            }
        )
    return rows


def counter_rows() -> list[tuple[datetime, int]]:
    """rx_bytes of eth0: 100 B/s, a reboot (counter back near zero), one late sample, then 250 B/s."""
    samples, at, value = [], T0, 10_000_000
    for i in range(150):
        if i == 60:
            value = 1_200  # reset: the increase over this interval is the new value itself
        elif i == 100:
            at += timedelta(seconds=30)  # a late poll: 90 s instead of 60
            value += 9_000
        elif i > 100:
            value += 15_000
        elif i:
            value += 6_000
        samples.append((at, value))
        at += timedelta(seconds=60)
    return samples


def reference(samples: list[Sample], since: datetime, until: datetime, width: int) -> list[dict[str, Any]]:
    """What every backend must answer: epoch-aligned buckets over [since, until)."""
    buckets: dict[int, list[float]] = {}
    for s in samples:
        if since <= s.at < until:
            buckets.setdefault(math.floor(s.at.timestamp() / width) * width, []).append(s.value)
    return [
        {
            "bucket_start": datetime.fromtimestamp(b, UTC),
            "avg": round(sum(v) / len(v), 4),
            "min": round(min(v), 4),
            "max": round(max(v), 4),
            "samples": len(v),
        }
        for b, v in sorted(buckets.items())
    ]


def rates(samples: list[tuple[datetime, int]]) -> list[Sample]:
    out = []
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        increase = c1 - c0 if c1 >= c0 else c1
        out.append(Sample(t1, increase / (t1 - t0).total_seconds()))
    return out


@pytest.fixture
async def history_state(tmp_path: Path, series_database_url: str) -> AsyncIterator[AppState]:
    """A migrated database (SQLite, partitioned PostgreSQL or TimescaleDB) holding the known rows."""
    settings = make_settings(tmp_path, database_url=series_database_url)
    async with open_state(settings) as state:
        await state.devices.add(DEVICE, DeviceSpec(hostname="192.0.2.10"))
        for row in system_rows():
            state.writer.add(SystemMetricRow, row)
        for at, value in counter_rows():
            state.writer.add(
                NetworkMetricRow,
                {"device": DEVICE, "collected_at": at, "interface": "eth0", "rx_bytes": value, "tx_bytes": 0},
            )
        for i in range(120):
            at = T0 + timedelta(minutes=i)
            for mount, used in (("/", 40.0 + i // 10), ("/srv", 90.5)):
                state.writer.add(
                    DiskMetricRow,
                    {
                        "device": DEVICE,
                        "collected_at": at,
                        "mount": mount,
                        "fstype": "ext4",
                        "size_bytes": 100 * GiB,
                        "used_bytes": int(used * GiB),
                        "used_percent": used,
                    },
                )
            state.writer.add(
                ContainerStatRow,
                {
                    "device": DEVICE,
                    "collected_at": at,
                    "container": "web",
                    "container_id": "abc123",
                    "cpu_percent": float(i % 3) * 50.0,
                    "memory_used_bytes": 100_000_000 + i,
                },
            )
        await state.writer.flush()
        yield state


async def ask(state: AppState, **kwargs: Any) -> dict[str, Any]:
    result = await metrics_history(state.db, state.devices, state.settings, device=DEVICE, **kwargs)
    return result.model_dump()


def system_samples(metric: str) -> list[Sample]:
    def value(row: dict[str, Any]) -> float:
        if metric == "memory_percent":
            return float(row["memory_used_bytes"] * 100.0 / row["memory_total_bytes"])
        return float(row[metric])

    return [Sample(r["collected_at"], value(r)) for r in system_rows()]


@pytest.mark.parametrize(
    ("metric", "bucket", "width"),
    [("cpu_percent", "5m", 300), ("load_1", "15m", 900), ("memory_percent", "1h", 3600)],
)
async def test_system_metric_buckets_match_the_reference_on_every_backend(
    history_state: AppState, metric: str, bucket: str, width: int
) -> None:
    since, until = T0 + timedelta(minutes=10, seconds=30), T0 + timedelta(hours=3, seconds=1)
    result = await ask(
        history_state, metric=metric, since=since.isoformat(), until=until.isoformat(), bucket=bucket
    )
    lo = datetime.fromtimestamp(math.floor(since.timestamp() / width) * width, UTC)
    hi = datetime.fromtimestamp(math.ceil(until.timestamp() / width) * width, UTC)
    assert (result["since"], result["until"], result["bucket_seconds"]) == (lo, hi, width)
    assert result["points"] == reference(system_samples(metric), lo, hi, width)
    mode, _, _ = await layout(history_state.db)
    expected_source = "hourly_rollup" if mode == "timescale" and width == 3600 else "raw"
    assert result["source"] == expected_source


@pytest.mark.parametrize("series_database_url", ["timescale"], indirect=True)
async def test_the_hourly_rollup_gives_the_same_points_materialized_or_not(history_state: AppState) -> None:
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=4)).isoformat(), "bucket": "2h"}
    before = await ask(history_state, metric="memory_percent", **window)
    async with history_state.db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("CALL refresh_continuous_aggregate('system_metrics_hourly', NULL, NULL)"))
        materialized = await conn.scalar(text("SELECT count(*) FROM system_metrics_hourly"))
    after = await ask(history_state, metric="memory_percent", **window)
    assert materialized == 4
    assert before["source"] == after["source"] == "hourly_rollup"
    assert before["points"] == after["points"]
    assert after["points"] == reference(system_samples("memory_percent"), T0, T0 + timedelta(hours=4), 7200)


async def test_rates_come_from_counters_and_survive_a_counter_reset(history_state: AppState) -> None:
    since, until = T0, T0 + timedelta(hours=3)
    result = await ask(
        history_state,
        metric="net_rx_bytes_per_s",
        interface="eth0",
        since=since.isoformat(),
        until=until.isoformat(),
        bucket="15m",
    )
    expected = reference(rates(counter_rows()), since, until, 900)
    assert result["points"] == expected
    values = {round(r.value, 4) for r in rates(counter_rows())}
    assert values == {100.0, 20.0, 250.0}  # steady, the reset interval (1200 B over 60 s), after the change
    assert result["unit"] == "bytes/s"
    assert result["summary"]["latest"] == 250.0
    assert result["summary"]["peak"] == 250.0


async def test_disk_and_container_series_are_selected_by_mount_and_container(history_state: AppState) -> None:
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=2)).isoformat(), "bucket": "1h"}
    root = await ask(history_state, metric="disk_used_percent", mount="/", **window)
    assert [p["avg"] for p in root["points"]] == [42.5, 48.5]
    assert root["summary"]["latest"] == 51.0
    srv = await ask(history_state, metric="disk_used_percent", mount="/srv", **window)
    assert [p["max"] for p in srv["points"]] == [90.5, 90.5]
    web = await ask(history_state, metric="container_cpu_percent", container="web", **window)
    assert [(p["min"], p["max"], p["samples"]) for p in web["points"]] == [(0.0, 100.0, 60)] * 2


async def test_summary_reports_a_creeping_metric_as_rising_with_its_peak(history_state: AppState) -> None:
    result = await ask(
        history_state,
        metric="memory_percent",
        since=T0.isoformat(),
        until=(T0 + timedelta(hours=4)).isoformat(),
        bucket="30m",
    )
    summary = result["summary"]
    assert summary["trend"] == "rising"
    assert summary["peak"] == 25 + 239 * 0.125
    assert summary["latest"] == 25 + 239 * 0.125
    assert summary["latest_at"] == T0 + timedelta(seconds=60 * 239, milliseconds=250)
    assert 25.0 < summary["change"] < 30.0
    steady = await ask(
        history_state,
        metric="load_5",
        since=T0.isoformat(),
        until=(T0 + timedelta(hours=4)).isoformat(),
        bucket="1h",
    )
    assert steady["summary"]["trend"] == "steady" and steady["summary"]["mean"] == 1.0


def test_every_metric_the_tool_offers_has_a_series_definition() -> None:
    from typing import get_args

    from mcp_server.series import MetricName

    assert set(get_args(MetricName)) == set(METRICS)


async def test_the_tool_answers_through_mcp_with_the_same_points(history_state: AppState) -> None:
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=2)).isoformat(), "bucket": "30m"}
    async with Client(build_server(history_state.settings, state=history_state)) as client:
        result = await client.call_tool(
            "get_metrics_history", {"device": DEVICE, "metric": "cpu_percent", **window}
        )
    data = result.structured_content
    assert data is not None
    expected = reference(system_samples("cpu_percent"), T0, T0 + timedelta(hours=2), 1800)
    assert [p["avg"] for p in data["points"]] == [p["avg"] for p in expected]
    assert data["points"][0]["bucket_start"] == T0.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def empty_history(state: AppState) -> AppState:
    await state.devices.add(DEVICE, DeviceSpec(hostname="192.0.2.10"))
    return state


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"metric": "disk_used_percent"}, "disk_used_percent needs `mount`. Known for nas01: none recorded"),
        ({"metric": "net_rx_bytes_per_s"}, "needs `interface`"),
        (
            {"metric": "cpu_percent", "mount": "/"},
            "cpu_percent takes none of mount, interface, container or drive",
        ),
        (
            {"metric": "disk_used_percent", "mount": "/", "container": "x"},
            "takes `mount` only; remove container",
        ),
        ({"metric": "cpu_percent", "bucket": "7m"}, "divides a day evenly"),
        ({"metric": "cpu_percent", "bucket": "30s"}, "from 1m to 1d"),
        ({"metric": "cpu_percent", "since": "yesterday"}, "neither a duration (30m, 24h, 7d, 2w) nor an ISO"),
        ({"metric": "cpu_percent", "since": "2026-01-02", "until": "2026-01-01"}, "must be before until"),
        ({"metric": "cpu_percent", "since": "60d", "bucket": "1m"}, "use a wider bucket or a shorter range"),
        ({"metric": "cpu_percent", "since": "500d"}, "at most 400"),
    ],
)
async def test_bad_history_requests_say_what_is_wrong_and_what_is_valid(
    empty_history: AppState, args: dict[str, Any], message: str
) -> None:
    async with Client(build_server(empty_history.settings, state=empty_history)) as client:
        with pytest.raises(ToolError, match=re.escape(message)):
            await client.call_tool("get_metrics_history", {"device": DEVICE, **args})


DURATION_RANGE = "out of range: a duration may be at most 100 years (36500 days)"
DATE_RANGE = "out of range: a date must lie in the years 1970 to 9998"
HISTORY = {"device": "local", "metric": "cpu_percent"}


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("get_metrics_history", HISTORY | {"since": "999999w"}, f"since '999999w' is {DURATION_RANGE}"),
        ("get_metrics_history", HISTORY | {"until": "999999d"}, f"until '999999d' is {DURATION_RANGE}"),
        (
            "get_metrics_history",
            HISTORY | {"since": "5214w"},
            "since '5214w' is out of range: it reaches back before 1970",
        ),
        ("get_metrics_history", HISTORY | {"since": "0001-01-01T00:00:00+01:00"}, DATE_RANGE),
        ("get_metrics_history", HISTORY | {"until": "9999-12-31T23:59:59-14:00"}, DATE_RANGE),
        ("list_config_changes", {"since": "999999w"}, f"since '999999w' is {DURATION_RANGE}"),
        ("list_config_changes", {"since": "0001-01-01T00:00:00+01:00"}, DATE_RANGE),
        ("get_journal_logs", {"device": "local", "since": "-999999w"}, f"since: {DURATION_RANGE}"),
        ("get_journal_logs", {"device": "local", "until": "999999 weeks ago"}, f"until: {DURATION_RANGE}"),
        ("get_journal_logs", {"device": "local", "since": "0001-01-01"}, f"since: {DATE_RANGE}"),
        ("get_journal_logs", {"device": "local", "since": "2024-13-45"}, "since: not a real date and time"),
        (
            "get_container_logs",
            {"device": "local", "container": "web", "since": "9999999999999h"},
            DURATION_RANGE,
        ),
        (
            "get_container_logs",
            {"device": "local", "container": "web", "since": "2024-02-30"},
            "not a real date",
        ),
        ("query_audit_log", {"since": "0001-01-01T00:00:00+01:00"}, f"since: {DATE_RANGE}"),
        ("query_audit_log", {"until": "9999-12-31T23:59:59-14:00"}, f"until: {DATE_RANGE}"),
    ],
)
async def test_huge_durations_and_dates_out_of_range_are_invalid_parameters_naming_the_argument(
    sqlite_settings: Settings, tool: str, args: dict[str, Any], message: str
) -> None:
    async with (
        open_state(sqlite_settings) as state,
        Client(build_server(sqlite_settings, state=state)) as client,
    ):
        with pytest.raises(ToolError, match=re.escape(message)):
            await client.call_tool(tool, args)


def test_times_at_the_edges_of_the_range_are_accepted() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert parse_time("1970-01-01", "since", now=now) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("9998-12-31T23:00:00-14:00", "until", now=now) == datetime(9999, 1, 1, 13, tzinfo=UTC)
    assert parse_time("2900w", "since", now=now) == now - timedelta(weeks=2900)
    assert journal_time("-5000w") == "-5000w" and docker_since("876000h") == "876000h"
    with pytest.raises(ValueError, match="at most 100 years"):
        docker_since("876001h")


async def test_an_unknown_device_or_metric_is_refused_with_the_valid_names(empty_history: AppState) -> None:
    async with Client(build_server(empty_history.settings, state=empty_history)) as client:
        with pytest.raises(ToolError, match="Unknown device 'nas9'. Known devices: local, nas01"):
            await client.call_tool("get_metrics_history", {"device": "nas9", "metric": "cpu_percent"})
        with pytest.raises(ToolError, match="cpu_percent"):
            await client.call_tool("get_metrics_history", {"device": DEVICE, "metric": "cpu"})


async def test_a_range_without_samples_explains_where_history_comes_from(empty_history: AppState) -> None:
    result = await metrics_history(
        empty_history.db, empty_history.devices, empty_history.settings, device=DEVICE, metric="load_1"
    )
    assert result.points == [] and result.summary.trend == "unknown"
    assert result.note is not None and "get_system_metrics" in result.note
    assert "background polling of it is off" in result.note  # the test settings turn the poller off


async def test_device_trends_give_each_device_with_history_its_cpu_and_memory_direction(
    history_state: AppState,
) -> None:
    mode, _, _ = await layout(history_state.db)
    async with history_state.db.read_session() as session:
        trends = await device_trends(session, mode, [DEVICE, "local"], until=T0 + timedelta(hours=4), hours=4)
    assert set(trends) == {DEVICE}  # "local" has no history
    trend = trends[DEVICE]
    assert trend.memory_percent == "rising" and trend.memory_change is not None and trend.memory_change > 20
    assert trend.cpu_percent == "steady" and trend.window_hours == 4


async def test_the_fleet_overview_shows_a_trend_where_history_exists(state: AppState) -> None:
    now = datetime.now(UTC)
    for minutes in range(0, 6 * 60, 10):
        row = system_rows()[0] | {"device": "local", "collected_at": now - timedelta(minutes=minutes)}
        # memory falls over the last six hours: newer samples use less
        row["memory_used_bytes"] = 2_000_000_000 + minutes * 5_000_000
        state.writer.add(SystemMetricRow, row)
    await state.writer.flush()
    async with Client(build_server(state.settings, state=state)) as client:
        overview = (await client.call_tool("get_fleet_overview", {})).structured_content
    assert overview is not None
    local = next(d for d in overview["devices"] if d["device"] == "local")
    assert local["ok"] and local["trend"]["memory_percent"] == "falling"
    assert "window_hours" not in local["trend"]  # 24 h for every device, as the tool's schema says
    assert overview.get("trend_note") is None  # every device has its trend


@pytest.mark.parametrize("polling", [True, False])
async def test_the_fleet_overview_says_when_a_trend_will_appear_instead_of_a_bare_null(
    tmp_path: Path, polling: bool
) -> None:
    settings = make_settings(tmp_path, poll_enabled=polling, poll_system_interval=60)
    async with open_state(settings) as fresh, Client(build_server(settings, state=fresh)) as client:
        overview = (await client.call_tool("get_fleet_overview", {})).structured_content
    assert overview is not None
    local = overview["devices"][0]
    assert local.get("trend") is None
    note = overview["trend_note"]  # once for the fleet, not repeated in every device
    if polling:
        assert "3 hourly buckets" in note and "every 60 s" in note and "about 2 h" in note
    else:
        assert "background polling is off" in note


# ---- exact buckets and rates at bucket edges, on every backend ---------------------------------------------

EDGE_DEVICE = "edge01"
EDGE_T0 = _day_start(3)  # on TimescaleDB the hourly buckets come from the rollup
EDGE_T1 = EDGE_T0 + timedelta(hours=6)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
Bucket = tuple[datetime, float, float, float, int]


def _epoch_us(at: datetime) -> int:
    return (at - EPOCH) // US


def edge_times() -> list[datetime]:
    """One sample a minute for 6 h, each half a millisecond before its minute ends; besides them samples
    exactly on a minute, a microsecond after it and a microsecond before the next, sub-millisecond offsets,
    and one each a microsecond before and exactly at the ends of the 6 h range (both outside it)."""
    times = {EDGE_T0 + timedelta(minutes=i, seconds=59, microseconds=999_500) for i in range(360)}
    for i in range(0, 360, 7):
        times |= {EDGE_T0 + timedelta(minutes=i), EDGE_T0 + timedelta(minutes=i) + US}
    times |= {EDGE_T0 + timedelta(minutes=i, seconds=59, microseconds=999_999) for i in range(3, 360, 11)}
    times |= {EDGE_T0 + timedelta(minutes=i, seconds=17, microseconds=250) for i in range(5, 360, 13)}
    times |= {EDGE_T0 + timedelta(minutes=i, seconds=30, microseconds=123_457) for i in range(1, 360, 17)}
    times |= {EDGE_T0 - US, EDGE_T1}
    return sorted(times)


def edge_gauge() -> list[tuple[datetime, float]]:
    """load_1 at the edge times; quarters, so every sum is exact whatever the order of addition."""
    return [(at, (k % 9) * 0.25) for k, at in enumerate(edge_times())]


def edge_counter() -> list[tuple[datetime, int]]:
    """rx_bytes at the edge times: uneven increases, and a counter reset every 97 samples."""
    samples, value = [], 5_000_000
    for k, at in enumerate(edge_times()):
        value = k * 10 if k % 97 == 50 else value + (k % 5 + 1) * 1_000 + k
        samples.append((at, value))
    return samples


def exact_buckets(samples: list[tuple[datetime, float]], width: int) -> list[Bucket]:
    """(start, avg, min, max, count) per epoch-aligned bucket of [EDGE_T0, EDGE_T1), in integer
    microseconds: independent of every database's time arithmetic."""
    lo, hi = _epoch_us(EDGE_T0), _epoch_us(EDGE_T1)
    buckets: dict[int, list[float]] = {}
    for at, value in samples:
        us = _epoch_us(at)
        if lo <= us < hi:
            buckets.setdefault(us // (width * 1_000_000) * width, []).append(value)
    return [
        (EPOCH + timedelta(seconds=b), sum(v) / len(v), min(v), max(v), len(v))
        for b, v in sorted(buckets.items())
    ]


def exact_rates(samples: list[tuple[datetime, int]]) -> list[tuple[datetime, float]]:
    """Bytes per second between consecutive samples, at the later one; after a reset the new value is the
    increase."""
    out = []
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        increase = c1 - c0 if c1 >= c0 else c1
        out.append((t1, increase * 1_000_000.0 / (_epoch_us(t1) - _epoch_us(t0))))
    return out


@pytest.fixture
async def edge_state(tmp_path: Path, series_database_url: str) -> AsyncIterator[AppState]:
    settings = make_settings(tmp_path, database_url=series_database_url)
    async with open_state(settings) as state:
        await state.devices.add(EDGE_DEVICE, DeviceSpec(hostname="192.0.2.11"))
        gauge = dict(edge_gauge())
        for at, value in edge_counter():
            row = system_rows()[0] | {"device": EDGE_DEVICE, "collected_at": at, "load_1": gauge[at]}
            state.writer.add(SystemMetricRow, row)
            state.writer.add(
                NetworkMetricRow,
                {
                    "device": EDGE_DEVICE,
                    "collected_at": at,
                    "interface": "eth0",
                    "rx_bytes": value,
                    "tx_bytes": 0,
                },
            )
        await state.writer.flush()
        yield state


@pytest.mark.parametrize("bucket", ["1m", "5m", "1h"])
async def test_buckets_and_rates_at_bucket_edges_are_exact_on_every_backend(
    edge_state: AppState, bucket: str
) -> None:
    width = {"1m": 60, "5m": 300, "1h": 3600}[bucket]
    answers = {
        metric: await metrics_history(
            edge_state.db,
            edge_state.devices,
            edge_state.settings,
            device=EDGE_DEVICE,
            metric=metric,
            since=EDGE_T0.isoformat(),
            until=EDGE_T1.isoformat(),
            bucket=bucket,
            interface=interface,
        )
        for metric, interface in (("load_1", None), ("net_rx_bytes_per_s", "eth0"))
    }
    rates = exact_rates(edge_counter())
    expected = {
        "load_1": exact_buckets(edge_gauge(), width),
        "net_rx_bytes_per_s": exact_buckets(rates, width),
    }
    for metric, answer in answers.items():
        got = [(p.bucket_start, p.avg, p.min, p.max, p.samples) for p in answer.points]
        want = expected[metric]
        assert [g[0] for g in got] == [w[0] for w in want], metric
        assert [g[4] for g in got] == [w[4] for w in want], metric
        for g, w in zip(got, want, strict=True):
            for value, exact in zip(g[1:4], w[1:4], strict=True):
                assert abs(value - round(exact, 4)) <= 1e-9, (metric, g, w)
    assert len(answers["load_1"].points) == 6 * 3600 // width  # every bucket holds its minute's sample
    latest = answers["net_rx_bytes_per_s"].summary
    assert (
        latest.latest == round(rates[-2][1], 4) and latest.latest_at == rates[-2][0]
    )  # the last before until


# ---- TimescaleDB: rows that arrive late, after the hourly rollup was refreshed ------------------------------


async def _refresh_rollup(state: AppState) -> None:
    async with state.db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("CALL refresh_continuous_aggregate('system_metrics_hourly', NULL, NULL)"))


def _cpu_row(at: datetime, cpu: float) -> dict[str, Any]:
    return system_rows()[0] | {"device": DEVICE, "collected_at": at, "cpu_percent": cpu}


@pytest.mark.parametrize("series_database_url", ["timescale"], indirect=True)
async def test_a_row_that_arrives_late_counts_in_hourly_answers_before_the_next_refresh(
    tmp_path: Path, series_database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=series_database_url)
    async with open_state(settings) as state:
        await state.devices.add(DEVICE, DeviceSpec(hostname="192.0.2.10"))
        now = datetime.now(UTC)
        recent = datetime.fromtimestamp(math.floor((now - timedelta(hours=8)).timestamp() / 3600) * 3600, UTC)
        old = recent - timedelta(days=3)
        for start in (old, recent):
            for minute in range(6 * 60):
                state.writer.add(
                    SystemMetricRow, _cpu_row(start + timedelta(minutes=minute, seconds=7), 10.0)
                )
        await state.writer.flush()
        await _refresh_rollup(state)  # every hour above is materialized now

        async def hourly(since: datetime, hours: int = 6) -> dict[str, Any]:
            window = {"since": since.isoformat(), "until": (since + timedelta(hours=hours)).isoformat()}
            return await ask(state, metric="cpu_percent", bucket="1h", **window)

        # late rows (a replayed spool): one in a recent hour, one in an hour three days back
        state.writer.add(SystemMetricRow, _cpu_row(recent + timedelta(minutes=30, seconds=1), 100.0))
        state.writer.add(SystemMetricRow, _cpu_row(old + timedelta(minutes=30, seconds=1), 100.0))
        await state.writer.flush()
        answer = await hourly(recent)
        assert answer["source"] == "raw" and answer.get("raw_from") is None  # the last two days: raw rows
        first = answer["points"][0]
        assert (first["samples"], first["max"]) == (61, 100.0)
        stale = await hourly(old)
        assert stale["source"] == "hourly_rollup" and stale["points"][0]["samples"] == 60
        # a range across the cut is the rollup up to it, raw rows from it on
        across = await ask(
            state,
            metric="cpu_percent",
            bucket="1h",
            since=old.isoformat(),
            until=(recent + timedelta(hours=6)).isoformat(),
        )
        assert across["source"] == "hourly_rollup" and across["raw_from"] is not None
        assert old < across["raw_from"] <= recent
        assert [p["samples"] for p in across["points"]] == [60] * 6 + [61] + [60] * 5
        # the rollup's refresh policy reaches back as far as raw rows are kept: its next run folds the
        # three-day-old late row in
        async with state.db.engine.connect() as conn:
            job = await conn.scalar(
                text(
                    "SELECT j.job_id FROM timescaledb_information.jobs j "
                    "JOIN timescaledb_information.continuous_aggregates ca "
                    "ON ca.materialization_hypertable_name = j.hypertable_name "
                    "WHERE j.proc_name = 'policy_refresh_continuous_aggregate' AND ca.view_name = 'system_metrics_hourly'"
                )
            )
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"CALL run_job({int(job)})"))
        refreshed = await hourly(old)
        assert (refreshed["points"][0]["samples"], refreshed["points"][0]["max"]) == (61, 100.0)
