"""Auth and audit overhead: cached-call latency against two servers side by side, auth on and auth off.

Run from the repository root: python bench/bench_auth.py [--calls 300] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from bench.harness import BENCH_JWT_SECRET, Results, Series, command_line, machine, publish, serve, timed  # noqa: E402
from mcp_server.audit import AuditRecord, CallContext  # noqa: E402
from mcp_server.auth import SigningKey  # noqa: E402
from mcp_server.db.engine import Database  # noqa: E402
from mcp_server.journal import BatchWriter  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from tests.sshd import SshdFleet, SshdHost  # noqa: E402

BEGIN = "<!-- bench_auth:begin -->"
END = "<!-- bench_auth:end -->"
ON, OFF = "auth+audit on", "auth off (audit on)"
TARGET_PERCENT = 10.0


@dataclass(frozen=True)
class Scenario:
    label: str
    tool: str
    args: dict[str, Any]
    cached: bool  # a device call whose answer must come from the cache


def scenarios(device: str) -> list[Scenario]:
    return [
        Scenario(
            "get_system_metrics, cached", "get_system_metrics", {"device": device, "interval": 0.1}, True
        ),
        Scenario("collect os_info, cached", "collect", {"device": device, "command": "os_info"}, True),
        Scenario("get_cache_stats (no arguments, no device)", "get_cache_stats", {}, False),
    ]


async def add_host(client: Client[Any], fleet: SshdFleet, host: SshdHost) -> None:
    await client.call_tool(
        "add_device",
        {
            "name": host.name,
            "hostname": host.hostname,
            "port": host.port,
            "username": fleet.username,
            "key_path": str(fleet.client_key_path),
        },
    )


async def call(client: Client[Any], tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert result.structured_content is not None, f"{tool}: no structured result"
    return result.structured_content


async def prime(clients: dict[str, Client[Any]], cases: list[Scenario]) -> None:
    """Fresh cache entries on both servers, so no timed call of the next batch outlives a TTL."""
    for client in clients.values():
        for case in cases:
            if case.cached:
                result = await call(client, case.tool, {**case.args, "force_refresh": True})
                assert result["from_cache"] is False


async def side_by_side(
    clients: dict[str, Client[Any]], cases: list[Scenario], results: Results, calls: int, batch: int
) -> None:
    """Alternate the two servers call by call, swapping which goes first, so drift hits both alike."""
    done = 0
    while done < calls:
        await prime(clients, cases)
        size = min(batch, calls - done)
        for i in range(size):
            for k, case in enumerate(cases):
                order = list(clients.items())
                if (done + i + k) % 2:
                    order.reverse()
                for label, client in order:
                    seconds, result = await timed(client.call_tool(case.tool, case.args))
                    if case.cached:
                        assert result.structured_content["from_cache"] is True, f"{case.label}: cache miss"
                    results.add(f"{case.label} | {label}", seconds)
        done += size


async def audit_rows(client: Client[Any], tool: str, kind: str) -> tuple[int, str | None]:
    """(rows of this kind for this tool, subject of the newest) from query_audit_log."""
    args = {"tool": tool, "kind": kind, "limit": 1}
    page = await call(client, "query_audit_log", args)
    return page["total"], page["entries"][0]["subject"]


async def measure(
    servers: dict[str, Client[Any]],
    fleet: SshdFleet,
    host: SshdHost,
    args: argparse.Namespace,
    results: Results,
) -> None:
    cases = scenarios(host.name)
    async with servers[ON] as on, servers[OFF] as off:
        clients = {ON: on, OFF: off}
        for client in clients.values():
            await add_host(client, fleet, host)
        await prime(clients, cases)
        for _ in range(args.warmup):
            for case in cases:
                for client in clients.values():
                    await client.call_tool(case.tool, case.args)
        started = time.monotonic()
        await side_by_side(clients, cases, results, args.calls, args.batch)
        results.notes.append(f"Timed phase {time.monotonic() - started:.0f} s.")
        for label, client in clients.items():
            tools, subject = await audit_rows(client, "get_system_metrics", "tool")
            collections, _ = await audit_rows(client, "get_system_metrics", "collection")
            results.notes.append(
                f"Audit rows for `get_system_metrics` calls on the {label} server: {tools} tool rows and "
                f"{collections} collection rows (newest subject: `{subject}`)."
            )


async def jwt_verify_cost(token: str, n: int) -> Series:
    """In process: what the HS256 verifier the server uses spends on one token."""
    settings = load_settings(jwt_secret=BENCH_JWT_SECRET)
    verifier = SigningKey("HS256", BENCH_JWT_SECRET, None, None).verifier(settings)
    series = Series("in-process: JWT verification (JWTVerifier.verify_token)")
    for _ in range(n):
        seconds, access = await timed(verifier.verify_token(token))
        assert access is not None and "infra:admin" in access.scopes
        series.samples.append(seconds)
    return series


def audit_record(i: int) -> AuditRecord:
    """The record the audit middleware queues for a cached get_system_metrics call."""
    call = CallContext(
        request_id=f"{i:032x}",
        transport="http",
        tool="get_system_metrics",
        subject="bench",
        client_id="bench",
        client_ip="127.0.0.1",
        user_agent="python-httpx/0.28",
        request_path="/mcp",
    )
    return call.to_audit(
        "tool",
        started=time.perf_counter() - 0.001,
        arguments={"device": "h01", "interval": 0.1},
        device="h01",
        command="system_metrics",
        cache_hit=True,
    )


async def audit_flush_cost(data_dir: Path, rows: int, rounds: int) -> Series:
    """In process: the batched writer's time per row when it flushes a batch into a fresh SQLite file."""
    db = Database(f"sqlite+aiosqlite:///{data_dir / 'audit.db'}")
    await db.migrate()
    writer = BatchWriter(db, data_dir / "spool")
    series = Series(f"in-process: audit writer flush, per row (batches of {rows})")
    try:
        for r in range(rounds):
            for i in range(rows):
                writer.audit(audit_record(r * rows + i))
            seconds, _ = await timed(writer.flush())
            series.samples.append(seconds / rows)
    finally:
        await db.close()
    return series


def _cell(series: Series) -> str:
    if series.name.startswith("in-process"):
        return f"{len(series.samples)} | {series.median_ms * 1000:.1f} µs | {series.p95_ms * 1000:.1f} µs"
    return f"{len(series.samples)} | {series.median_ms:.1f} | {series.p95_ms:.1f}"


def overhead_row(name: str, on: Series, off: Series) -> str:
    """Medians and p95s compared, plus the median of the paired differences (calls i of both servers ran
    next to each other, so this one is the least affected by drift)."""
    median = (on.median_ms / off.median_ms - 1) * 100
    p95 = (on.p95_ms / off.p95_ms - 1) * 100
    paired = statistics.median(a - b for a, b in zip(on.samples, off.samples, strict=True)) * 1000
    verdict = "met" if median < TARGET_PERCENT else "**missed**"
    return (
        f"| {name} | {median:+.1f}% ({on.median_ms - off.median_ms:+.2f} ms) | {p95:+.1f}% "
        f"| {paired:+.2f} ms ({paired / off.median_ms * 100:+.1f}%) | < {TARGET_PERCENT:.0f}% | {verdict} |"
    )


def render(results: Results, cases: list[str], command: str) -> str:
    lines = [BEGIN, "", f"Command: `{command}`", "", *machine(), ""]
    lines += ["| Scenario | server | n | median ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for case in cases:
        for server in (ON, OFF):
            lines.append(f"| {case} | {server} | {_cell(results.series[f'{case} | {server}'])} |")
    for series in results.series.values():
        if series.name.startswith("in-process"):
            lines.append(f"| {series.name} | - | {_cell(series)} |")
    lines += [
        "",
        "| Auth on vs off | median | p95 | median of paired differences | target (median) | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for case in cases:
        lines.append(overhead_row(case, results.series[f"{case} | {ON}"], results.series[f"{case} | {OFF}"]))
    lines += ["", *results.notes, "", END]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per scenario and server")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per scenario and server first")
    parser.add_argument("--batch", type=int, default=20, help="calls per scenario between cache refreshes")
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 5000 or not 0 <= args.warmup <= 1000 or not 1 <= args.batch <= 100:
        parser.error("--calls in 1..5000, --warmup in 0..1000, --batch in 1..100")
    # SIGTERM unwinds through the finally blocks below, so sshd and both servers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infra-bench-auth-") as tmp, SshdFleet() as fleet:
        host = fleet.start_hosts(["h01"])[0]
        with serve(Path(tmp) / "on", auth=True) as on, serve(Path(tmp) / "off", auth=False) as off:
            servers = {ON: on.client(), OFF: off.client()}
            asyncio.run(measure(servers, fleet, host, args, results))
            token = on.headers["Authorization"].removeprefix("Bearer ")
        for series in (
            asyncio.run(jwt_verify_cost(token, 2000)),
            asyncio.run(audit_flush_cost(Path(tmp) / "writer", 200, 10)),
        ):
            results.series[series.name] = series
    results.notes.append(f"Total run time {time.monotonic() - started:.0f} s.")
    command = command_line("bench_auth.py", argv)
    block = render(results, [c.label for c in scenarios("h01")], command)
    publish(block, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
