"""What bounding host content costs, and what it saves: parsing in place vs in a worker process, the event
loop's longest stall while a large output is parsed either way, and diffs (ours vs difflib).

Run from the repository root: python bench/bench_hostile.py [--rounds 5] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Results, command_line, machine, publish  # noqa: E402
from mcp_server.commands import default_registry  # noqa: E402
from mcp_server.config_monitoring.changes import assess_change  # noqa: E402
from mcp_server.config_monitoring.diff import unified_diff  # noqa: E402
from mcp_server.parsing import INLINE_CHARS, parse_redacted  # noqa: E402
from mcp_server.workers import WorkerPool  # noqa: E402

BEGIN = "<!-- bench_hostile:begin -->"
END = "<!-- bench_hostile:end -->"
GOLDEN = ROOT / "tests" / "golden" / "journal_logs"
JOURNAL = default_registry().get("journal_logs")


def journal(lines: int) -> tuple[str, Any]:
    """`lines` journal entries of about 1 kB each (a real capture's entries, repeated)."""
    case = GOLDEN / "lab_priority_warning_two_lines"
    entries = [json.loads(line) for line in (case.with_suffix(".txt")).read_text().splitlines() if line]
    out = []
    for i in range(lines):
        entry = dict(entries[i % len(entries)])
        entry["MESSAGE"] = f"request {i} " + "x" * 900
        entry["__REALTIME_TIMESTAMP"] = str(1_733_300_000_000_000 + i)
        out.append(json.dumps(entry))
    params = JOURNAL.validate({"lines": 2000})
    return "\n".join(out) + "\n", params


async def stall(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(wall time of `work`, the longest the event loop went without running a 5 ms timer meanwhile)."""
    lags: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - started - 0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    await work()
    wall = time.perf_counter() - started
    done.set()
    await ticker
    return wall, max(lags)


async def inline(fn: Callable[[], Any]) -> Any:
    return fn()


def periodic(lines: int, step: int) -> str:
    return "".join(f"v{(i * step) % 300}\n" for i in range(lines))


async def measure(results: Results, rounds: int) -> None:
    pool = WorkerPool(size=2, memory_mb=1024)
    try:
        small, small_params = journal(20)
        big, big_params = journal(1000)
        await pool.call(len, "warm", deadline=30, what="warming")
        for _ in range(rounds * 20):
            started = time.perf_counter()
            parse_redacted(JOURNAL.parse, JOURNAL.name, small, small_params)
            results.add("small: in place", time.perf_counter() - started)
            started = time.perf_counter()
            await pool.call(
                parse_redacted, JOURNAL.parse, JOURNAL.name, small, small_params, deadline=30, what="p"
            )
            results.add("small: in a worker", time.perf_counter() - started)
        for _ in range(rounds):
            wall, lag = await stall(
                lambda: inline(lambda: parse_redacted(JOURNAL.parse, JOURNAL.name, big, big_params))
            )
            results.add("big: in place", wall)
            results.add("big: in place, loop stall", lag)
            wall, lag = await stall(
                lambda: pool.call(
                    parse_redacted, JOURNAL.parse, JOURNAL.name, big, big_params, deadline=30, what="p"
                )
            )
            results.add("big: in a worker", wall)
            results.add("big: in a worker, loop stall", lag)
        results.notes.append(
            f"small: {len(small):,} characters (20 entries); big: {len(big):,} characters (1,000 entries); "
            f"outputs up to {INLINE_CHARS:,} characters are parsed in place."
        )

        old = "".join(f"key{i} = value {i}\n" for i in range(10_000))
        new = old.replace("key5000 = value 5000\n", "key5000 = changed\n")
        for _ in range(rounds):
            started = time.perf_counter()
            unified_diff(old, new, "a", "b")
            results.add("diff one edit: ours", time.perf_counter() - started)
            started = time.perf_counter()
            "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a", "b"))
            results.add("diff one edit: difflib", time.perf_counter() - started)
        worst_old, worst_new = periodic(10_000, 1), periodic(10_000, 7)
        started = time.perf_counter()
        "".join(difflib.unified_diff(worst_old.splitlines(True), worst_new.splitlines(True), "a", "b"))
        results.add("diff worst case: difflib on the loop", time.perf_counter() - started)
        for run in range(rounds + 1):  # the first call imports the risk rules into the worker: not counted
            wall, lag = await stall(
                lambda: assess_change(pool, 10.0, "file", "/etc/x.conf", "modified", worst_old, worst_new)
            )
            if run:
                results.add("diff worst case: assess_change", wall)
                results.add("diff worst case: assess_change, loop stall", lag)
    finally:
        await pool.close()


def render(results: Results, command: str) -> str:
    def ms(name: str) -> str:
        return f"{statistics.median(results.series[name].samples) * 1000:,.1f} ms"

    rows = [
        ("A 20-entry journal (small)", "small: in place", "small: in a worker", None, None),
        ("A 1,000-entry journal (1 MB)", "big: in place", "big: in a worker", "big: in place, loop stall",
         "big: in a worker, loop stall"),
    ]  # fmt: skip
    lines = [
        BEGIN,
        "### Hostile content (issue 14)",
        "",
        f"`{command}`",
        "",
        "| Output | Parsed in place | Parsed in a worker | Longest loop stall in place | in a worker |",
        "|---|---|---|---|---|",
    ]
    for label, here, there, stall_here, stall_there in rows:
        stalls = f"{ms(stall_here)} | {ms(stall_there)}" if stall_here and stall_there else "— | —"
        lines.append(f"| {label} | {ms(here)} | {ms(there)} | {stalls} |")
    lines += [
        "",
        "| Diff | ours | difflib |",
        "|---|---|---|",
        f"| one edit in a 10,000-line file | {ms('diff one edit: ours')} | {ms('diff one edit: difflib')} |",
        f"| worst case (10,000 periodic lines) | {ms('diff worst case: assess_change')} in a worker, "
        f"longest loop stall {ms('diff worst case: assess_change, loop stall')} "
        f"| {ms('diff worst case: difflib on the loop')} on the event loop |",
        "",
        *(f"- {note}" for note in results.notes),
        *machine(),
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of each measurement")
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds in 1..100")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Results()
    started = time.monotonic()
    asyncio.run(measure(results, args.rounds))
    results.notes.append(f"Medians of {args.rounds} runs ({args.rounds * 20} for the small output); total "
                         f"run time {time.monotonic() - started:.0f} s.")  # fmt: skip
    publish(render(results, command_line("bench_hostile.py", argv)), args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
