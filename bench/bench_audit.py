"""Benchmark the durable audit path: writer throughput on the rows real traffic writes, and what the journal
costs a cached call.

1. Rows/s for the mix a collecting call writes (its metric row, snapshot upsert, collection audit row and
   tool audit row, in turn), on SQLite and PostgreSQL, side by side in each run: the SQLAlchemy ORM bulk
   insert the writer used before (it starts a new statement whenever the set of non-null columns changes),
   the batch it writes now (every column rendered; executemany on SQLite, COPY on PostgreSQL), and on
   PostgreSQL asyncpg `executemany` and COPY; the journal thread's own work per row (made storable, journal
   line); then the whole BatchWriter (add -> redaction, journal + fsync -> ship) with this process's CPU per
   row, and the same while the event loop is kept busy (the shipper has its own thread and engine).
2. What the journal costs a cached call: the fsync of a 1 KB append on this disk (fsync, fdatasync, O_DSYNC,
   a preallocated file, interleaved); `durable()` for one row inside a process: written by the caller (the
   default, INFRA_AUDIT_SYNC=write), written and fsynced by the caller (one call in flight), and by the
   journal thread (the hand-off there and back), alternating; and p50/p99 of a cached `collect` call over
   HTTP to three real servers, answered once its rows are written to the journal (write, the default), once
   they are fsynced (fsync) and without waiting (off), side by side (blocks taking turns), one caller and 10
   concurrent callers.

Run from the repository root:
python bench/bench_audit.py [--rows 30000] [--calls 600] [--runs 3] [--part all|throughput|call]
    [--out docs/benchmarks.md]
    [--baseline CHECKOUT --baseline-label REV]  (e.g. `git worktree add /tmp/base REV`: its server as a third)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from fastmcp import Client  # noqa: E402
from sqlalchemy import JSON, insert  # noqa: E402

from bench.harness import command_line, cpu_seconds, machine, publish, serve  # noqa: E402
from mcp_server.audit import AuditRecord, storable  # noqa: E402
from mcp_server.db.tables import (  # noqa: E402
    Base,
    CollectionSnapshot,
    DataCollectionAudit,
    ServicePerformanceMetric,
)
from mcp_server.journal import SYNC_WINDOW, BatchWriter, Row, _line, full_row, write_rows  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from mcp_server.state import AppState, open_state  # noqa: E402

BEGIN = "<!-- bench_audit:begin -->"
END = "<!-- bench_audit:end -->"
CALL_BEGIN = "<!-- bench_audit_call:begin -->"
CALL_END = "<!-- bench_audit_call:end -->"
LINE = b"x" * 1023 + b"\n"  # about one audit row
PG_ADMIN = os.environ.get("INFRA_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 1000
DEVICES = 20


def mix(n: int, now: datetime) -> list[Row]:
    """`n` rows as a collecting tool call queues them, in turn: the collection's metric row, its snapshot
    upsert, its collection audit row, the call's tool audit row. As `add` gets them: not yet made storable."""
    rows: list[Row] = []
    for i in range(n):
        device = f"dev{i % DEVICES:02d}"
        request = uuid.uuid4().hex
        at = now - timedelta(milliseconds=i)
        if i % 4 == 0:
            metric = {
                "recorded_at": at, "device": device, "command": "system_metrics", "execute_ms": 38.2 + i % 7,
                "parse_ms": 0.4, "total_ms": 39.1 + i % 7, "outcome": "ok",
            }  # fmt: skip
            rows.append((ServicePerformanceMetric, metric))
        elif i % 4 == 1:
            data = {
                "hostname": device,
                "cpu": {"percent": i % 100, "load": [0.5, 0.4, 0.3], "cores": 4},
                "memory": {"total_bytes": 8 << 30, "available_bytes": (i % 8) << 30, "percent": 42.5},
                "uptime_seconds": 86_400 + i,
            }
            snapshot = {"device": device, "command": "system_metrics", "params": '{"interval":0.5}'}
            rows.append((CollectionSnapshot, snapshot | {"collected_at": at, "data": data}))
        elif i % 4 == 2:
            record = AuditRecord(
                occurred_at=at, kind="collection", outcome="ok", request_id=request, transport="http",
                tool="get_system_metrics", subject="agent", client_ip="127.0.0.1", device=device,
                command="system_metrics", params='{"interval":0.5}', ssh_commands=("sh -c '...' sh 0.5",),
                duration_ms=41.5,
            )  # fmt: skip
            rows.append((DataCollectionAudit, record.row()))
        else:
            record = AuditRecord(
                occurred_at=at, kind="tool", outcome="ok", request_id=request, transport="http",
                tool="get_system_metrics", subject="agent", client_ip="127.0.0.1", user_agent="bench/1.0",
                request_path="/mcp", arguments={"device": device, "interval": 0.5}, device=device,
                command="system_metrics", ssh_commands=("sh -c '...' sh 0.5",), duration_ms=43.0,
            )  # fmt: skip
            rows.append((DataCollectionAudit, record.row()))
    return rows


def stored(rows: list[Row]) -> list[Row]:
    """The rows as the journal thread hands them on: storable, every column present."""
    return [(table, full_row(table, storable(table, row))) for table, row in rows]


def prepare_rate(rows: list[Row]) -> float:
    """Rows/s of what the journal thread does to each row before its write and fsync: storable (redaction,
    bounds), every column, the journal line."""
    started = time.perf_counter()
    for table, row in stored(rows):
        _line(table, row)
    return len(rows) / (time.perf_counter() - started)


async def orm_insert(session: Any, dialect: str, batch: list[Row]) -> None:
    """What the writer did before: an ORM bulk insert per table (nulls left out), snapshots upserted."""
    grouped: dict[type[Base], list[dict[str, Any]]] = {}
    snapshots: dict[tuple[str, str, str], dict[str, Any]] = {}
    for table, row in batch:
        if table is CollectionSnapshot:
            snapshots[(row["device"], row["command"], row["params"])] = row
        else:
            grouped.setdefault(table, []).append(row)
    for table, rows in grouped.items():
        await session.execute(insert(table), rows)
    if snapshots:
        await write_rows(session, dialect, [(CollectionSnapshot, r) for r in snapshots.values()])


async def timed_batches(state: AppState, rows: list[Row], write: Any) -> float:
    started = time.perf_counter()
    for at in range(0, len(rows), BATCH):
        async with state.db.session() as session, session.begin():
            await write(session, state.db.dialect, rows[at : at + BATCH])
    return len(rows) / (time.perf_counter() - started)


def _records(table: type[Base], rows: list[dict[str, Any]]) -> tuple[list[str], list[tuple[Any, ...]]]:
    columns = list(full_row(table, {}))
    encode = {c.name for c in table.__table__.columns if isinstance(c.type, JSON)}
    return columns, [
        tuple(json.dumps(row[c]) if c in encode and row[c] is not None else row[c] for c in columns)
        for row in rows
    ]


async def asyncpg_writes(url: str, rows: list[Row], copy: bool) -> float:
    """asyncpg on its own: audit and metric rows by executemany (or COPY), snapshots upserted by
    executemany."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    snap_sql = (
        "INSERT INTO collection_snapshots (device, command, params, collected_at, data) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device, command, params) "
        "DO UPDATE SET collected_at = excluded.collected_at, data = excluded.data"
    )
    try:
        started = time.perf_counter()
        for at in range(0, len(rows), BATCH):
            batch = rows[at : at + BATCH]
            grouped: dict[type[Base], list[dict[str, Any]]] = {}
            snaps = {}
            for table, row in batch:
                if table is CollectionSnapshot:
                    snaps[(row["device"], row["command"], row["params"])] = row
                else:
                    grouped.setdefault(table, []).append(row)
            async with conn.transaction():
                for table, plain in grouped.items():
                    columns, records = _records(table, plain)
                    name = table.__tablename__
                    if copy:
                        await conn.copy_records_to_table(name, records=records, columns=columns)
                    else:
                        marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
                        sql = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({marks})"
                        await conn.executemany(sql, records)
                await conn.executemany(
                    snap_sql,
                    [
                        (r["device"], r["command"], r["params"], r["collected_at"], json.dumps(r["data"]))
                        for r in snaps.values()
                    ],
                )
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def whole_writer(state: AppState, rows: list[Row], busy: bool) -> tuple[float, float, float]:
    """(rows/s from the first add to the last row in the database, µs per add on the request path, µs of
    this process's CPU per row: every thread, the database server's own work not included); with `busy`,
    the event loop is kept busy (no await) until the shipper is done."""
    writer = BatchWriter(state.db, state.settings.data_dir / f"bench-journal-{busy}", interval=0.05)
    writer.start()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for table, row in rows:
            writer.add(table, row)
        added = time.perf_counter()
        if busy:
            while writer.pending:
                sum(range(10_000))  # the loop never yields: only the writer's own threads can ship
        await writer.flush()
        done = time.perf_counter()
        cpu_us = (time.process_time() - cpu) / len(rows) * 1e6
        return len(rows) / (done - started), (added - started) / len(rows) * 1e6, cpu_us
    finally:
        await writer.close()


@contextlib.asynccontextmanager
async def database(kind: str, tmp: Path, sync: bool = True) -> AsyncIterator[AppState]:
    url = f"sqlite+aiosqlite:///{tmp / 'infra.db'}"
    name = None
    if kind == "postgresql":
        admin = await asyncpg.connect(PG_ADMIN)
        name = f"infra_bench_{uuid.uuid4().hex[:10]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    settings = load_settings(
        data_dir=tmp / "data",
        database_url=url,
        poll_enabled=False,
        audit_sync=sync,
        audit_flush_interval=0.05,
    )
    try:
        async with open_state(settings) as state:
            yield state
    finally:
        if name is not None:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


async def throughput(kind: str, n: int, repeat: int) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with database(kind, Path(tmp)) as state:
            for _ in range(repeat):
                now = datetime.now(UTC)
                out.setdefault("prepare", []).append(prepare_rate(mix(n, now)))
                out.setdefault("orm", []).append(await timed_batches(state, stored(mix(n, now)), orm_insert))
                out.setdefault("full", []).append(await timed_batches(state, stored(mix(n, now)), write_rows))
                if kind == "postgresql":
                    out.setdefault("executemany", []).append(
                        await asyncpg_writes(state.db.url, stored(mix(n, now)), False)
                    )
                    out.setdefault("copy", []).append(
                        await asyncpg_writes(state.db.url, stored(mix(n, now)), True)
                    )
                rate, per_add, cpu_us = await whole_writer(state, mix(n, now), busy=False)
                out.setdefault("writer", []).append(rate)
                out.setdefault("add_us", []).append(per_add)
                out.setdefault("cpu_us", []).append(cpu_us)
                out.setdefault("busy", []).append((await whole_writer(state, mix(n, now), busy=True))[0])
    return {k: statistics.median(v) for k, v in out.items()}


def _pct(samples: list[float], p: int) -> float:
    ordered = sorted(samples)
    return ordered[max(1, -(-p * len(ordered) // 100)) - 1] * 1000


def fsync_costs(directory: Path, samples: int) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of making one 1 KB append durable in `directory` (the journal's file system), each way
    interleaved sample by sample: write + fsync (what the journal does), write + fdatasync, a file opened
    O_DSYNC, and write + fdatasync into a preallocated, zero-written file (no size or extent to record)."""
    ways = {
        "fsync": (os.fsync, 0, False),
        "fdatasync": (os.fdatasync, 0, False),
        "O_DSYNC": (None, os.O_DSYNC, False),
        "preallocated + fdatasync": (os.fdatasync, 0, True),
    }
    fds: dict[str, int] = {}
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for name, (_, flags, preallocated) in ways.items():
            path = directory / f"fsync-{len(fds)}"
            fds[name] = os.open(path, os.O_WRONLY | os.O_CREAT | flags | (0 if preallocated else os.O_APPEND))
            if preallocated:
                os.pwrite(fds[name], b"\0" * (4 << 20), 0)
                os.fsync(fds[name])
        for i in range(samples):
            for name, (sync, _, preallocated) in ways.items():
                started = time.perf_counter()
                if preallocated:
                    os.pwrite(fds[name], LINE, i * len(LINE))
                else:
                    os.write(fds[name], LINE)
                if sync is not None:
                    sync(fds[name])
                times[name].append(time.perf_counter() - started)
            time.sleep(0.002)  # calls arrive apart, not back to back
    finally:
        for fd in fds.values():
            os.close(fd)
    return {name: (_pct(v, 50), _pct(v, 99)) for name, v in times.items()}


async def durable_wait(samples: int) -> dict[str, tuple[float, float]]:
    """p50/p99 ms from `add` of one audit row to `durable()` returning, in one process, alternating: the row
    written by the caller (INFRA_AUDIT_SYNC=write), written and fsynced by the caller (fsync, a call alone in
    flight) and by the journal thread (fsync, the hand-off there and back that concurrent calls share)."""
    ways = {  # label: (synced, inline)
        "caller, written (write)": (False, True),
        "caller, fsynced (fsync, one call in flight)": (True, True),
        "journal thread, fsynced (fsync, calls overlapping)": (True, False),
    }
    times: dict[str, list[float]] = {label: [] for label in ways}
    with tempfile.TemporaryDirectory() as tmp:
        async with database("sqlite", Path(tmp)) as state:
            writer = BatchWriter(state.db, Path(tmp) / "journal", interval=0.25)
            writer.start()
            try:
                rows = [r for r in mix(4 * samples, datetime.now(UTC)) if r[0] is DataCollectionAudit]
                for i, (table, row) in enumerate(rows[: len(ways) * samples]):
                    label = list(ways)[i % len(ways)]
                    synced, inline = ways[label]
                    started = time.perf_counter()
                    writer.add(table, row)
                    await writer.durable(synced=synced, inline=inline)
                    times[label].append(time.perf_counter() - started)
                    await asyncio.sleep(0.002)
            finally:
                await writer.close()
    return {name: (_pct(v, 50), _pct(v, 99)) for name, v in times.items()}


MODES = ("write", "fsync", "off")  # INFRA_AUDIT_SYNC of each server; write is the default
# calls of one server in a row: about a second, several of the writer's flush intervals (0.25 s), so what
# `off` defers to its journal thread runs among its own calls, as it does in steady use
BLOCK = 200
SETTLE = 0.3  # seconds after each block: its server's deferred work is done before the next server's block


async def latency(
    calls: int, concurrency: int, baseline: Path | None
) -> dict[str, tuple[float, float, float]]:
    """p50/p99 ms of a cached collect call over HTTP to real servers, one per INFRA_AUDIT_SYNC mode (MODES)
    and, given a baseline checkout, one with its code at its default, in blocks taking turns; and each
    server's CPU (every thread, user + system) per call in ms, over its own blocks."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        clients: dict[str, list[Client[Any]]] = {}
        pids: dict[str, int] = {}
        for mode in MODES:
            server = servers.enter_context(
                serve(Path(tmp) / mode, auth=False, extra={"INFRA_AUDIT_SYNC": mode})
            )
            clients[mode] = [server.client() for _ in range(concurrency)]
            pids[mode] = server.pid
        if baseline is not None:
            before = servers.enter_context(serve(Path(tmp) / "baseline", auth=False, checkout=baseline))
            clients["baseline"] = [before.client() for _ in range(concurrency)]
            pids["baseline"] = before.pid
        samples: dict[str, list[float]] = {label: [] for label in clients}
        cpu = dict.fromkeys(clients, 0.0)
        async with contextlib.AsyncExitStack() as stack:
            for group in clients.values():
                for client in group:
                    await stack.enter_async_context(client)
            args = {"command": "os_info", "device": "local"}
            for group in clients.values():
                for client in group:
                    for _ in range(5):  # warm: cache filled, code paths hot
                        await client.call_tool("collect", args)
            block = BLOCK
            labels = list(clients)
            for round_ in range(calls // block):
                # each round starts with the next server: none always follows the same one
                for label in labels[round_ % len(labels) :] + labels[: round_ % len(labels)]:
                    group = clients[label]

                    async def one(client: Client[Any], label: str = label) -> None:
                        for _ in range(block // concurrency):
                            started = time.perf_counter()
                            await client.call_tool("collect", args)
                            samples[label].append(time.perf_counter() - started)

                    spent = cpu_seconds(pids[label])
                    await asyncio.gather(*(one(c) for c in group))
                    # what a server defers (off: its journal thread's batch, every flush interval) is done
                    # before the next server's block, and counted as this one's CPU
                    await asyncio.sleep(SETTLE)
                    cpu[label] += cpu_seconds(pids[label]) - spent
            for group in clients.values():  # no connection is idle near the server's 5 s keep-alive as the
                await asyncio.gather(*(c.call_tool("collect", args) for c in group))  # sessions end
    return {k: (_pct(v, 50), _pct(v, 99), 1000 * cpu[k] / len(v)) for k, v in samples.items()}


async def main(args: argparse.Namespace) -> None:
    if args.part in ("all", "throughput"):
        await throughput_part(args)
    if args.part in ("all", "call"):
        await call_part(args)


async def throughput_part(args: argparse.Namespace) -> None:
    started = time.monotonic()
    load_at_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rates = {kind: await throughput(kind, args.rows, args.repeat) for kind in ("sqlite", "postgresql")}
    lines = [
        BEGIN,
        "### Durable audit path (issue 15)",
        "",
        f"`{command_line('bench_audit.py')}`",
        "",
        f"**Writer throughput, rows/s** ({args.rows:,} rows of the mix a collecting call writes — metric "
        f"row, snapshot upsert, collection audit row, tool audit row in turn — in transactions of {BATCH:,}; "
        f"median of {args.repeat} runs, all columns measured side by side in each run)",
        "",
        "| database | ORM bulk insert (before) | writer batch (now) | asyncpg executemany | asyncpg COPY "
        "| rows made storable + journal lines | BatchWriter end to end | … with the event loop busy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in rates.items():
        pg = kind == "postgresql"
        lines.append(
            f"| {kind} | {r['orm']:,.0f} | {r['full']:,.0f} | {r['executemany']:,.0f} | {r['copy']:,.0f} "
            if pg
            else f"| {kind} | {r['orm']:,.0f} | {r['full']:,.0f} | — | — "
        )
        lines[-1] += f"| {r['prepare']:,.0f} | {r['writer']:,.0f} | {r['busy']:,.0f} |"
    lines += [
        "",
        "Writer batch: what the shipper runs per transaction — every column rendered, one executemany of a "
        "prepared INSERT per table on SQLite, COPY on PostgreSQL, snapshots upserted in one statement. "
        "COPY and executemany write the audit and metric rows that way and upsert the snapshots with "
        "executemany. *Made storable + journal lines*: the journal thread's CPU work per row (redaction, "
        "bounds, every column, the JSON line), without the write and fsync. *End to end*: from the first "
        "`add` (rows as calls queue them, not yet redacted) to the last row committed, through the journal "
        "(redaction, one fsync per batch) and the shipper thread. Per row: `add` "
        + ", ".join(f"{k} {r['add_us']:.1f} µs" for k, r in rates.items())
        + " on the request path; this process's CPU end to end (all threads; not the database server's) "
        + ", ".join(f"{k} {r['cpu_us']:.0f} µs" for k, r in rates.items())
        + ". *Event loop busy*: the loop never yields until the rows are in.",
        "",
        f"Load average when the run started: {load_at_start}.",
    ]
    lines += ["", f"- total run time {time.monotonic() - started:.0f} s"]
    lines += machine("SQLite and PostgreSQL 15 on 127.0.0.1")
    lines.append(END)
    publish("\n".join(lines), args.out, BEGIN, END)


async def call_part(args: argparse.Namespace) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:  # where the servers below keep their journals
        disk_before = fsync_costs(Path(tmp), args.fsyncs)
    waits = await durable_wait(args.fsyncs)
    runs: dict[int, list[dict[str, tuple[float, float, float]]]] = {1: [], 10: []}
    for _ in range(args.runs):  # fresh servers each run; the runs' medians are what is reported
        for c, done in runs.items():
            done.append(await latency(args.calls, c, args.baseline))
    with tempfile.TemporaryDirectory() as tmp:
        disk_after = fsync_costs(Path(tmp), args.fsyncs)
    lines = [
        CALL_BEGIN,
        f"`{command_line('bench_audit.py')}`",
        "",
        f"**Making a 1 KB append durable on this disk** (ms, {args.fsyncs} samples each, the ways interleaved; "
        "before and after the calls below)",
        "",
        "| way | p50 before | p99 before | p50 after | p99 after |",
        "|---|---|---|---|---|",
    ]
    for way, (b50, b99) in disk_before.items():
        a50, a99 = disk_after[way]
        lines.append(f"| {way} | {b50:.2f} | {b99:.2f} | {a50:.2f} | {a99:.2f} |")
    lines += [
        "",
        f"**`durable()` for one audit row** (ms from `add` to `durable()` returning, {args.fsyncs} rows each, "
        "alternating, one process, SQLite)",
        "",
        "| journaled by | p50 | p99 |",
        "|---|---|---|",
    ]
    lines += [f"| {who} | {p50:.2f} | {p99:.2f} |" for who, (p50, p99) in waits.items()]
    lines += [
        "",
        f"**A cached call** (`collect os_info` on `local` over HTTP to {len(MODES)} `infrastructor serve` "
        "processes on SQLite, one per INFRA_AUDIT_SYNC: write (the default: answered once its rows are written "
        f"to the journal, their fsync issued within {SYNC_WINDOW * 1000:g} ms), fsync (answered once they are "
        f"fsynced), off (answered at once); {args.calls} calls each in blocks of {BLOCK} taking turns, each round "
        f"of blocks starting with the next server (then {SETTLE:g} s for the server's deferred work, counted in "
        f"its CPU), {args.runs} runs with fresh servers; "
        "p50, p99 and server CPU (every thread, user + system) are the medians of the runs, cost is against "
        "off in the same run, each run's and their median)",
        "",
        "| callers | INFRA_AUDIT_SYNC | p50 | p99 | p50 cost, each run | p99 cost, each run | p50 cost | "
        "p99 cost | server CPU a call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(values: list[float]) -> str:
        return ", ".join(f"{v:+.0f}%" for v in values)

    for c, done in runs.items():
        for label in (*MODES, "baseline"):
            if label not in done[0]:
                continue
            med = [statistics.median(run[label][k] for run in done) for k in range(3)]
            name = f"baseline ({args.baseline_label or args.baseline})" if label == "baseline" else label
            if label == "off":
                cost = "— | — | — | —"
            else:
                c50 = [100 * (run[label][0] / run["off"][0] - 1) for run in done]
                c99 = [100 * (run[label][1] / run["off"][1] - 1) for run in done]
                cost = f"{pct(c50)} | {pct(c99)} | {statistics.median(c50):+.0f}% | {statistics.median(c99):+.0f}%"
            lines.append(f"| {c} | {name} | {med[0]:.2f} ms | {med[1]:.2f} ms | {cost} | {med[2]:.2f} ms |")
    if args.baseline is not None:
        lines += [
            "",
            f"Baseline: a server with the code of `{args.baseline_label or args.baseline}` at its defaults, in "
            "the same rounds of blocks, compared with this code's server set to off.",
        ]
    lines += ["", f"- total run time {time.monotonic() - started:.0f} s"]
    lines += machine("SQLite")
    lines.append(CALL_END)
    publish("\n".join(lines), args.out, CALL_BEGIN, CALL_END)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3, help="runs of the cached-call part (medians reported)")
    parser.add_argument(
        "--fsyncs", type=int, default=300, help="samples of each fsync way and durable() wait"
    )
    parser.add_argument("--part", choices=["all", "throughput", "call"], default="all")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of other code to compare the cached call with"
    )
    parser.add_argument("--baseline-label", help="how the report names the baseline (e.g. its commit)")
    parser.add_argument("--out", type=Path)
    asyncio.run(main(parser.parse_args()))
