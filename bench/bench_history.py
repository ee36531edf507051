"""Benchmark the history side: writer ingest on PostgreSQL and get_metrics_history over 30 days.

1. Rows/s the audit and metrics writers ingest on PostgreSQL (native partitions) and TimescaleDB
   (hypertables): BatchWriter (multi-row executemany, one transaction per 1000 rows) against one INSERT
   per row (in one transaction, and with a commit per row).
2. get_metrics_history (the function the tool calls) over 30 days of 60-second samples for 20 devices
   (864,000 system_metrics rows and as many network counter rows) on SQLite, PostgreSQL and TimescaleDB.

Run from the repository root: python bench/bench_history.py [--repeat 5] [--out docs/benchmarks.md]
TimescaleDB: when INFRA_TEST_TIMESCALE_URL names a cluster with the extension available (skipped otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from bench.harness import Results, command_line, machine, publish  # noqa: E402
from mcp_server.audit import AuditRecord, BatchWriter  # noqa: E402
from mcp_server.db.storage import layout  # noqa: E402
from mcp_server.db.tables import DataCollectionAudit  # noqa: E402
from mcp_server.devices import DeviceSpec  # noqa: E402
from mcp_server.metrics_history import metrics_history  # noqa: E402
from mcp_server.series.system import SystemMetricRow  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from mcp_server.state import AppState, open_state  # noqa: E402
from tests.app_fixtures import PG_ADMIN_DSN, drop_database, new_database  # noqa: E402

BEGIN = "<!-- bench_history:begin -->"
END = "<!-- bench_history:end -->"
DEVICES = 20
DAYS = 30
STEP = 60  # seconds between samples
QUERIES: list[tuple[str, dict[str, str]]] = [
    (
        "cpu_percent, 30 d, 1 h buckets (720 points)",
        {"metric": "cpu_percent", "since": "30d", "bucket": "1h"},
    ),
    ("cpu_percent, 30 d, 1 d buckets (30 points)", {"metric": "cpu_percent", "since": "30d", "bucket": "1d"}),
    (
        "memory_percent, 7 d, 15 min buckets (672 points)",
        {"metric": "memory_percent", "since": "7d", "bucket": "15m"},
    ),
    (
        "cpu_percent, 24 h, 5 min buckets (288 points)",
        {"metric": "cpu_percent", "since": "24h", "bucket": "5m"},
    ),
    (
        "net_rx_bytes_per_s (rate from counters), 30 d, 1 h buckets",
        {"metric": "net_rx_bytes_per_s", "since": "30d", "bucket": "1h", "interface": "eth0"},
    ),
]


def audit_row(i: int, now: datetime) -> dict[str, Any]:
    record = AuditRecord(
        occurred_at=now - timedelta(milliseconds=i),
        request_id=uuid.uuid4().hex,
        kind="collection",
        subject="poller:bench",
        transport="poller",
        tool="poll:system",
        device=f"dev{i % DEVICES:02d}",
        command="system_metrics",
        params='{"interval":0.5}',
        cache_hit=False,
        ssh_commands=("sh -c '...' sh 0.5",),
        duration_ms=612.5,
        outcome="ok",
    )
    return record.row()


def metric_row(i: int, now: datetime) -> dict[str, Any]:
    return {
        "device": f"dev{i % DEVICES:02d}",
        "collected_at": now - timedelta(milliseconds=i),
        "cpu_percent": float(i % 100),
        "load_1": 0.5,
        "load_5": 0.4,
        "load_15": 0.3,
        "memory_total_bytes": 8_000_000_000,
        "memory_used_bytes": 2_000_000_000 + i,
        "memory_available_bytes": 6_000_000_000 - i,
        "swap_total_bytes": 0,
        "swap_used_bytes": 0,
        "uptime_seconds": 1000.0 + i,
    }


# ---- databases ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def timescale_cluster() -> Iterator[str | None]:
    """The admin DSN of the TimescaleDB cluster INFRA_TEST_TIMESCALE_URL names, or None (not measured)."""
    given = os.environ.get("INFRA_TEST_TIMESCALE_URL")
    yield given.replace("postgresql+asyncpg://", "postgresql://") if given else None


@contextlib.asynccontextmanager
async def backend(kind: str, admin: str | None, tmp: Path) -> AsyncIterator[AppState]:
    """A migrated database of `kind` behind a full AppState (the poller off)."""
    url, dsn = f"sqlite+aiosqlite:///{tmp / f'{kind}.db'}", None
    if kind != "sqlite":
        assert admin is not None
        url = dsn = await new_database(
            admin, prefix="infra_bench", extension="timescaledb" if kind == "timescale" else None
        )
    settings = load_settings(
        data_dir=tmp / kind, database_url=url, poll_enabled=False, ssh_known_hosts=tmp / "known_hosts"
    )
    try:
        async with open_state(settings) as state:
            yield state
    finally:
        if dsn is not None and admin is not None:
            await drop_database(admin, dsn)


# ---- 1. ingest -----------------------------------------------------------------------------------------


async def ingest(
    state: AppState, label: str, results: Results, repeat: int, batched: int, single: int
) -> None:
    """rows/s for the BatchWriter and for one INSERT per row, audit and metrics rows, interleaved."""
    now = datetime.now(UTC)
    writer = BatchWriter(state.db, state.settings.data_dir / "bench-spool")
    for _ in range(repeat):
        for table, make in ((DataCollectionAudit, audit_row), (SystemMetricRow, metric_row)):
            name = "audit" if table is DataCollectionAudit else "metrics"
            rows = [make(i, now) for i in range(batched)]
            started = time.perf_counter()
            for row in rows:
                writer.add(table, row)
            await writer.flush()
            results.add(f"{label}|{name}|batched", batched / (time.perf_counter() - started))
            rows = [make(i, now) for i in range(single)]
            started = time.perf_counter()
            async with state.db.session() as session, session.begin():
                for row in rows:
                    await session.execute(insert(table).values(**row))
            results.add(f"{label}|{name}|row", single / (time.perf_counter() - started))
            started = time.perf_counter()
            for row in rows:
                async with state.db.session() as session, session.begin():
                    await session.execute(insert(table).values(**row))
            results.add(f"{label}|{name}|commit", single / (time.perf_counter() - started))


# ---- 2. history ----------------------------------------------------------------------------------------


def series(device: int, now: datetime) -> Iterator[tuple[datetime, int, float, int]]:
    """(time, index, cpu, rx counter) for 30 days of 60 s samples of one device."""
    start = now - timedelta(days=DAYS)
    counter = 0
    for i in range(DAYS * 86_400 // STEP):
        counter = 0 if i % 10_000 == 9_999 else counter + 60_000 + (i % 7) * 1000  # reboots now and then
        yield start + timedelta(seconds=STEP * i), i, float((i * 13 + device) % 100), counter


SYSTEM_COLUMNS = [
    "device", "collected_at", "cpu_percent", "load_1", "load_5", "load_15", "memory_total_bytes",
    "memory_used_bytes", "memory_available_bytes", "swap_total_bytes", "swap_used_bytes", "uptime_seconds",
]  # fmt: skip
NETWORK_COLUMNS = ["device", "collected_at", "interface", "rx_bytes", "tx_bytes"]


def device_rows(d: int, now: datetime) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    name = f"dev{d:02d}"
    system, network = [], []
    for at, i, cpu, rx in series(d, now):
        system.append(
            (
                name,
                at,
                cpu,
                0.5,
                0.4,
                0.3,
                8_000_000_000,
                2_000_000_000 + i * 1000,
                6_000_000_000,
                0,
                0,
                float(i),
            )
        )
        network.append((name, at, "eth0", rx, rx // 2))
    return system, network


def _sqlite_load(path: str, now: datetime) -> int:
    def stored(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        # SQLAlchemy's SQLite storage format for DateTime
        return [(r[0], r[1].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[2:]) for r in rows]

    total = 0
    sys_sql = f"INSERT INTO system_metrics ({', '.join(SYSTEM_COLUMNS)}) VALUES ({', '.join('?' * len(SYSTEM_COLUMNS))})"
    net_sql = f"INSERT INTO network_metrics ({', '.join(NETWORK_COLUMNS)}) VALUES ({', '.join('?' * len(NETWORK_COLUMNS))})"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for d in range(DEVICES):
            system, network = device_rows(d, now)
            with conn:
                conn.executemany(sys_sql, stored(system))
                conn.executemany(net_sql, stored(network))
            total += len(system) + len(network)
        conn.execute("ANALYZE")
    return total


async def fill(state: AppState, kind: str) -> tuple[int, float]:
    """Load the 30-day history with the database's bulk path (COPY, or executemany on SQLite)."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    if kind == "sqlite":
        path = state.db.engine.url.database
        assert path is not None
        total = await asyncio.to_thread(_sqlite_load, path, now)
        return total, time.perf_counter() - started
    total = 0
    conn = await asyncpg.connect(state.db.url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for d in range(DEVICES):
            system, network = device_rows(d, now)
            await conn.copy_records_to_table("system_metrics", records=system, columns=SYSTEM_COLUMNS)
            await conn.copy_records_to_table("network_metrics", records=network, columns=NETWORK_COLUMNS)
            total += len(system) + len(network)
        await conn.execute("ANALYZE system_metrics; ANALYZE network_metrics")
        if kind == "timescale":
            # the steady state the policies keep: rollup materialized, chunks older than 7 days compressed
            await conn.execute("CALL refresh_continuous_aggregate('system_metrics_hourly', NULL, NULL)")
            for table in ("system_metrics", "network_metrics"):
                await conn.execute(
                    f"SELECT compress_chunk(c) FROM show_chunks('{table}', older_than => INTERVAL '7 days') c"
                )
    finally:
        await conn.close()
    return total, time.perf_counter() - started


async def history(state: AppState, label: str, results: Results, repeat: int) -> None:
    for name, args in QUERIES:
        for r in range(repeat):
            device = f"dev{r % DEVICES:02d}"
            started = time.perf_counter()
            result = await metrics_history(
                state.db,
                state.devices,
                state.settings,
                device=device,
                metric=args["metric"],
                since=args["since"],
                bucket=args["bucket"],
                interface=args.get("interface"),
            )
            elapsed = time.perf_counter() - started
            assert result.points, (label, name)
            results.add(f"{label}|{name}|{result.source}", elapsed)


# ---- report --------------------------------------------------------------------------------------------


def render(results: Results, command: str, loads: dict[str, tuple[int, float]], notes: list[str]) -> str:
    lines = [BEGIN, "", "### Results", "", *machine(", ".join(TITLES[k] for k in loads)), ""]
    lines += [
        "**Ingest (rows/s, median of the runs; higher is better).** BatchWriter: 20,000 rows added, then "
        "`flush()` (executemany, 1,000 rows per transaction). One INSERT per row: 2,000 rows, each its own "
        "statement, in one transaction / with a commit after every row.",
        "",
        "| database | rows | BatchWriter | one INSERT per row (one transaction) | one INSERT + commit per row |",
        "|---|---|---:|---:|---:|",
    ]
    for label in ("postgresql", "timescale"):
        for name in ("audit", "metrics"):
            key = f"{label}|{name}"
            if f"{key}|batched" not in results.series:
                continue
            cells = [
                statistics.median(results.series[f"{key}|{k}"].samples) for k in ("batched", "row", "commit")
            ]
            ratio = cells[0] / cells[2]
            lines.append(
                f"| {TITLES[label]} | {name} | {cells[0]:,.0f} | {cells[1]:,.0f} | {cells[2]:,.0f} "
                f"({ratio:.0f}x slower than batched) |"
            )
    lines += [
        "",
        f"**get_metrics_history over {DAYS} days of {STEP}-second samples for {DEVICES} devices** "
        "(milliseconds per call; median and p95 over the runs, each run a different device). "
        + "; ".join(f"{TITLES[k]}: {rows:,} rows loaded in {secs:.0f} s" for k, (rows, secs) in loads.items())
        + ".",
        "",
        "| query | " + " | ".join(TITLES[k] for k in loads) + " |",
        "|---|" + "---:|" * len(loads),
    ]
    for name, _ in QUERIES:
        row: list[str] = []
        for label in loads:
            found = [(key, s) for key, s in results.series.items() if key.startswith(f"{label}|{name}|")]
            if not found:
                row.append("n/a")
                continue
            key, timing = found[0]
            source = key.rsplit("|", 1)[1]
            tag = " (rollup)" if source == "hourly_rollup" else ""
            row.append(f"{timing.median_ms:.1f} / {timing.p95_ms:.1f}{tag}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", *notes, "", f"Reproduce: `{command}`", "", END]
    return "\n".join(lines) + "\n"


TITLES = {
    "sqlite": "SQLite",
    "postgresql": "PostgreSQL 15 (native partitions)",
    "timescale": "TimescaleDB 2.28 (hypertables)",
}


async def run(
    args: argparse.Namespace, tmp: Path, results: Results
) -> tuple[dict[str, tuple[int, float]], list[str]]:
    notes: list[str] = []
    loads: dict[str, tuple[int, float]] = {}
    with timescale_cluster() as tsdb:
        kinds = ["sqlite", "postgresql"] + (["timescale"] if tsdb else [])
        if not tsdb:
            notes.append("TimescaleDB was not available for this run (no INFRA_TEST_TIMESCALE_URL).")
        for kind in kinds:
            admin = tsdb if kind == "timescale" else PG_ADMIN_DSN
            async with backend(kind, admin, tmp) as state:
                mode, detail, _ = await layout(state.db)
                print(f"{kind}: {mode} ({detail})", file=sys.stderr)
                for d in range(DEVICES):
                    await state.devices.add(f"dev{d:02d}", DeviceSpec(hostname=f"192.0.2.{d + 1}"))
                if kind != "sqlite":
                    await ingest(state, kind, results, args.repeat, args.batched, args.single)
                loads[kind] = await fill(state, kind)
                print(f"{kind}: loaded {loads[kind][0]:,} rows in {loads[kind][1]:.1f} s", file=sys.stderr)
                await history(state, kind, results, args.history_repeat)
    return loads, notes


def main(argv: Sequence[str] | None = None) -> int:
    global DAYS, DEVICES  # the scale every step uses; a smaller one makes a quick trial run
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="ingest runs per case")
    parser.add_argument("--batched", type=int, default=20_000, help="rows per BatchWriter run")
    parser.add_argument("--single", type=int, default=2_000, help="rows per one-row-per-insert run")
    parser.add_argument("--history-repeat", type=int, default=20, help="calls per history query")
    parser.add_argument(
        "--days", type=int, default=DAYS, help="days of history per device (>= 30 for every query)"
    )
    parser.add_argument("--devices", type=int, default=DEVICES, help="devices with history")
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    DAYS, DEVICES = args.days, args.devices
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infra-bench-history-") as tmp:
        loads, notes = asyncio.run(run(args, Path(tmp), results))
    notes.append(f"Total run time {time.monotonic() - started:.0f} s.")
    command = command_line("bench_history.py", argv)
    block = render(results, command, loads, notes)
    publish(block, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
