"""How soon a running server sees a device another process added or removed (the change feed), on SQLite and
on PostgreSQL, and what the feed costs an idle server.

A real `infrastructor serve` (auth off) runs on the database; this process writes to the same database
through its own registry (as `infrastructor devices add` does) and polls the server's get_device tool over
HTTP until the change shows. The latency includes the write's commit and one tool call; the floor it is
compared with is one get_device call alone.

Run from the repository root: python bench/bench_coherence.py [--rounds 10] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmcp import Client

from bench.harness import Results, _wait_healthy, command_line, cpu_seconds, machine, publish
from mcp_server.coherence import POLL
from mcp_server.devices import DeviceSpec
from mcp_server.settings import load_settings
from mcp_server.state import open_state
from tests.app_fixtures import create_pg_database, drop_pg_database
from tests.helpers import free_port

BEGIN = "<!-- bench_coherence:begin -->"
END = "<!-- bench_coherence:end -->"
IDLE = 10.0  # seconds of idle server CPU measured
STEP = 0.01  # how often the bench asks the server


async def known(client: Client[Any], name: str) -> bool:
    result = await client.call_tool("get_device", {"device": name}, raise_on_error=False)
    return not result.is_error


async def until(client: Client[Any], name: str, present: bool) -> float:
    """Seconds until the server's answer about `name` is `present` (bounded)."""
    started = time.perf_counter()
    while await known(client, name) != present:
        if time.perf_counter() - started > 30:
            raise RuntimeError(f"the server did not see {name} {'added' if present else 'removed'} in 30 s")
        await asyncio.sleep(STEP)
    return time.perf_counter() - started


async def measure(label: str, url: str, work: Path, rounds: int, results: Results) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")} | {
        "INFRA_DATA_DIR": str(work / "server"),
        "INFRA_DATABASE_URL": url,
        "INFRA_AUTH": "false",
        "INFRA_LOCAL_DEVICE": "false",
        "INFRA_POLL_ENABLED": "false",
        "INFRA_LOG_LEVEL": "WARNING",
        "INFRA_HTTP_RATE_LIMIT": "1000000",
        "INFRA_HTTP_RATE_BURST": "1000000",
    }
    port = free_port()
    exe = str(Path(sys.executable).parent / "infrastructor")
    writer_settings = load_settings(
        data_dir=work / "writer", database_url=url, local_device=False, poll_enabled=False
    )
    work.mkdir(parents=True, exist_ok=True)
    with (work / f"{label}.log").open("wb") as log:
        command = [exe, "serve", "--port", str(port)]
        proc = await asyncio.to_thread(subprocess.Popen, command, env=env, stdout=log, stderr=log)
    try:
        await asyncio.to_thread(_wait_healthy, f"http://127.0.0.1:{port}/health", proc, work / f"{label}.log")
        await _rounds(label, f"http://127.0.0.1:{port}/mcp", proc.pid, writer_settings, rounds, results)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


async def _rounds(
    label: str, mcp_url: str, pid: int, writer_settings: Any, rounds: int, results: Results
) -> None:
    async with Client(mcp_url) as client, open_state(writer_settings) as writer:
        for i in range(rounds):
            started = time.perf_counter()
            await known(client, "absent")
            results.add(f"{label}: one get_device call", time.perf_counter() - started)
            await asyncio.sleep(random.uniform(0, POLL))  # writes at any moment of the feed's cycle
            started = time.perf_counter()
            await writer.devices.add(f"bench{i}", DeviceSpec(hostname="192.0.2.1"))
            await until(client, f"bench{i}", True)
            results.add(f"{label}: added by another process, seen", time.perf_counter() - started)
            await asyncio.sleep(random.uniform(0, POLL))
            started = time.perf_counter()
            await writer.devices.remove(f"bench{i}")
            await until(client, f"bench{i}", False)
            results.add(f"{label}: removed by another process, gone", time.perf_counter() - started)
        await asyncio.sleep(2)  # the tool calls' audit batches are written
        before = cpu_seconds(pid)
        await asyncio.sleep(IDLE)
        results.notes.append(
            f"{label}: an idle server used {100 * (cpu_seconds(pid) - before) / IDLE:.2f}% of a core "
            f"over {IDLE:g} s (change feed included)"
        )


async def run(rounds: int) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        await measure("SQLite", f"sqlite+aiosqlite:///{work / 'shared.db'}", work / "sqlite", rounds, results)
        url = await create_pg_database()
        try:
            await measure("PostgreSQL", url, work / "pg", rounds, results)
        finally:
            await drop_pg_database(url)
    return results


def report(results: Results, rounds: int, argv: Sequence[str] | None, took: float) -> str:
    lines = [
        BEGIN,
        "### Changes made by another process reach a running server (issue 17)",
        "",
        f"`{command_line('bench_coherence.py', argv)}`",
        "",
        "| Scenario | median | p95 | x one call |",
        "|---|---|---|---|",
    ]
    for label in ("SQLite", "PostgreSQL"):
        floor = results.median(f"{label}: one get_device call")
        for name, series in results.series.items():
            if name.startswith(label):
                ratio = series.median_ms / floor
                lines.append(f"| {name} | {series.median_ms:.1f} ms | {series.p95_ms:.1f} ms | {ratio:.1f} |")
    lines += [
        "",
        f"- {rounds} rounds; the bench asks every {STEP * 1000:g} ms; SQLite's `PRAGMA data_version` is checked "
        f"every {POLL * 1000:g} ms, PostgreSQL wakes on NOTIFY.",
        *[f"- {note}" for note in results.notes],
        f"- total run time {took:.0f} s",
        *machine("SQLite file and PostgreSQL 15 (both measured)"),
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(run(args.rounds))
    publish(report(results, args.rounds, argv, time.perf_counter() - started), args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
