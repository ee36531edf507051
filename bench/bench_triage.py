"""Measure one call to triage against the per-device calls an agent makes without it.

A fleet of real sshd hosts (each with the failed-unit systemctl fixture, so services answer everywhere) is
registered; then, through an in-memory MCP client, `find_problems` is timed against the sequence an agent
would otherwise run to find the same things: per device, get_disk_usage, list_services and list_containers
(one after another, as an agent calls tools). Both are measured cold (force_refresh) and from the cache, and
the characters each answer puts into the agent's context are counted.

Run from the repository root: python bench/bench_triage.py [--hosts 10] [--rounds 5] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from bench.harness import command_line, machine, publish  # noqa: E402
from mcp_server.server import build_server  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from mcp_server.state import open_state  # noqa: E402
from tests.app_fixtures import add_fleet_host  # noqa: E402
from tests.helpers import fixture_bin  # noqa: E402
from tests.sshd import SshdFleet  # noqa: E402

BEGIN = "<!-- bench_triage:begin -->"
END = "<!-- bench_triage:end -->"
PER_DEVICE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("get_disk_usage", {}),
    ("list_services", {"state": "failed"}),
    ("list_containers", {"all": True}),
)


def _chars(result: Any) -> int:
    return len(json.dumps(result.structured_content, separators=(",", ":")))


async def _one_call(client: Client[Any], force: bool) -> tuple[float, int]:
    started = time.perf_counter()
    result = await client.call_tool("find_problems", {"force_refresh": force})
    return time.perf_counter() - started, _chars(result)


async def _per_device(client: Client[Any], devices: list[str], force: bool) -> tuple[float, int]:
    started = time.perf_counter()
    chars = 0
    for device in devices:
        for tool, arguments in PER_DEVICE:
            extra = {"force_refresh": True} if force else {}
            result = await client.call_tool(
                tool, {"device": device, **arguments, **extra}, raise_on_error=False
            )
            chars += _chars(result) if result.structured_content else len(str(result.content))
    return time.perf_counter() - started, chars


async def run(hosts: int, rounds: int) -> list[str]:
    samples: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with SshdFleet() as fleet, tempfile.TemporaryDirectory() as tmp:
        path = fixture_bin(fleet.scratch_dir() / "svc", "services", ("systemctl",))
        started = fleet.start_hosts(
            [f"t{i:02d}" for i in range(hosts)], env={"PATH": f"{path}:/usr/bin:/bin"}
        )
        settings = load_settings(
            data_dir=Path(tmp) / "data", poll_enabled=False, ssh_known_hosts=Path(tmp) / "known_hosts",
            ssh_file_dirs=tempfile.gettempdir(),
        )  # fmt: skip
        async with open_state(settings) as state:
            devices = [await add_fleet_host(state, fleet, host) for host in started]
            async with Client(build_server(settings, state=state)) as client:
                await _one_call(client, True)  # connect every host once: both ways then reuse connections
                for _ in range(rounds):
                    for label, force in (("cold", True), ("cached", False)):
                        seconds, chars = await _one_call(client, force)
                        samples.setdefault(f"find_problems {label}", []).append(seconds)
                        sizes[f"find_problems {label}"] = chars
                        seconds, chars = await _per_device(client, devices, force)
                        samples.setdefault(f"per device {label}", []).append(seconds)
                        sizes[f"per device {label}"] = chars
    ms = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    rows = [
        f"### One call to triage (issue 20)\n\n`{command_line('bench_triage.py')}`\n",
        "| Over | find_problems | the per-device calls | ratio | characters: find_problems | per-device calls |",
        "|---|---|---|---|---|---|",
    ]
    for label in ("cold", "cached"):
        one, many = ms[f"find_problems {label}"], ms[f"per device {label}"]
        rows.append(
            f"| {hosts} hosts, {label} | {one:,.0f} ms | {many:,.0f} ms | {many / one:.1f} times | "
            f"{sizes[f'find_problems {label}']:,} | {sizes[f'per device {label}']:,} |"
        )
    rows += [
        "",
        f"- The per-device calls: {', '.join(t for t, _ in PER_DEVICE)} for each host, one after another, as an "
        f"agent calls tools; find_problems also checks drives, configuration changes and updates. "
        f"Medians of {rounds} rounds.",
        *machine(),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = asyncio.run(run(args.hosts, args.rounds))
    publish("\n".join([BEGIN, *rows, END]), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
