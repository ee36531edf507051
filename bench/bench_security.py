"""Cost of the hardening: refusing a 1 MB argument, /health meanwhile, redaction, token screening.

Run from the repository root: python bench/bench_security.py [--calls 20] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402

from bench.harness import Results, Series, command_line, machine, publish, serve  # noqa: E402
from mcp_server.audit import AuditRecord, storable  # noqa: E402
from mcp_server.auth import claims_problem, unverified_claims  # noqa: E402
from mcp_server.commands import default_registry  # noqa: E402
from mcp_server.db.tables import DataCollectionAudit  # noqa: E402
from mcp_server.parsing import redact_result  # noqa: E402
from mcp_server.redact import redact_text  # noqa: E402

BEGIN = "<!-- bench_security:begin -->"
END = "<!-- bench_security:end -->"
MB = 1_000_000
GOLDEN = ROOT / "tests" / "golden"

TEXTS: dict[str, Callable[[int], str]] = {
    "plain log lines (no secret stem)": lambda n: (
        "Dec  2 13:40:01 nas01 sshd[1234]: Accepted publickey for root from 10.0.0.1 port 5555 ssh2\n"
        * (n // 92)
    ),
    "x:// + 1 MB of a (the old URL-password worst case)": lambda n: "x://" + "a" * n,
    "Bearer repeated": lambda n: "Bearer " * (n // 7),
    "password= repeated": lambda n: "password=" * (n // 9),
    "--password=x, repeated": lambda n: "--password=x " * (n // 13),
    "a:a:a:... with a secret stem at the end": lambda n: "a:" * (n // 2) + " key",
}


def _cell(series: Series, unit: str = "ms") -> str:
    scale = 1000.0 if unit == "µs" else 1.0
    return (
        f"{len(series.samples)} | {series.median_ms * scale:.1f} {unit} | {series.p95_ms * scale:.1f} {unit}"
    )


def in_process(results: Results, rounds: int) -> None:
    for label, make in TEXTS.items():
        text = make(MB)
        for _ in range(rounds):
            started = time.perf_counter()
            redact_text(text)
            results.add(f"redact_text, 1 MB: {label}", time.perf_counter() - started)
    registry = default_registry()
    for command, case in (
        ("top_processes", "debian12_cpu_weird_comms"),
        ("package_updates", "debian12_apt_real"),
    ):
        definition = registry.get(command)
        params_file = GOLDEN / command / f"{case}.params.json"
        params = definition.validate(json.loads(params_file.read_text()) if params_file.exists() else {})
        parsed = definition.parse((GOLDEN / command / f"{case}.txt").read_text(), params)
        size = len(parsed.model_dump_json())
        for _ in range(rounds * 20):
            started = time.perf_counter()
            redact_result(parsed, command)
            results.add(
                f"redact_result: {command} golden {case} ({size:,} chars of JSON)",
                time.perf_counter() - started,
            )
    row = AuditRecord(
        occurred_at=datetime.now(UTC),
        kind="tool",
        tool="get_journal_logs",
        arguments={"device": "nas01", "grep": "token=abc", "lines": 100},
        ssh_commands=("journalctl -o json -n 100 --grep 'token=abc'",),
        user_agent="claude-code/1.0",
        duration_ms=1.0,
        outcome="ok",
    ).row()
    for _ in range(rounds * 200):
        started = time.perf_counter()
        storable(DataCollectionAudit, row)
        results.add("storable: one audit row", time.perf_counter() - started)
    now = time.time()
    token_claims = {"sub": "ci", "scope": "infra:read", "iat": int(now), "exp": int(now) + 3600}
    token = jwt.encode(token_claims, "s" * 48, algorithm="HS256")
    for _ in range(rounds * 200):
        started = time.perf_counter()
        claims_problem(unverified_claims(token), now=time.time(), max_ttl=30 * 86_400, leeway=30)
        results.add("token screening (decode payload + claim checks)", time.perf_counter() - started)


class HealthProbe(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=120) as response:
                response.read()
            self.samples.append(time.perf_counter() - started)
            self.stop.wait(0.02)


async def over_http(results: Results, data_dir: Path, calls: int) -> None:
    with serve(data_dir) as server:
        base = server.url.rsplit("/", 1)[0]
        idle = HealthProbe(f"{base}/health")
        idle.start()
        await asyncio.sleep(2.0)
        idle.stop.set()
        # joined off the event loop: a probe may be waiting for an answer
        await asyncio.to_thread(idle.join)
        results.series["/health, idle"] = Series("/health, idle", idle.samples)
        busy = HealthProbe(f"{base}/health")
        async with server.client() as client:
            await client.call_tool("get_cache_stats", {})
            busy.start()
            for label, make in list(TEXTS.items())[1:3]:
                payload = make(MB)
                for _ in range(calls):
                    started = time.perf_counter()
                    result = await client.call_tool(
                        "get_system_metrics", {"device": payload}, raise_on_error=False
                    )
                    results.add(
                        f"tools/call with a 1 MB argument ({label}), refused", time.perf_counter() - started
                    )
                    assert result.is_error
            busy.stop.set()
            await asyncio.to_thread(busy.join)
        results.series["/health, during 1 MB calls"] = Series("/health, during 1 MB calls", busy.samples)


def render(results: Results, command: str) -> str:
    lines = [BEGIN, "", f"Command: `{command}`", "", *machine(), ""]
    lines += ["| Scenario | n | median | p95 |", "|---|---:|---:|---:|"]
    for series in results.series.values():
        small = series.median_ms < 1.0
        lines.append(f"| {series.name} | {_cell(series, 'µs' if small else 'ms')} |")
    lines += ["", *results.notes, "", END]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20, help="1 MB calls per payload shape")
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of each in-process measurement")
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 500 or not 1 <= args.rounds <= 100:
        parser.error("--calls in 1..500, --rounds in 1..100")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Results()
    started = time.monotonic()
    in_process(results, args.rounds)
    with tempfile.TemporaryDirectory(prefix="infra-bench-security-") as tmp:
        asyncio.run(over_http(results, Path(tmp), args.calls))
    results.notes.append(f"Total run time {time.monotonic() - started:.0f} s.")
    command = command_line("bench_security.py", argv)
    block = render(results, command)
    publish(block, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
