"""Benchmark the collection core through a real MCP client over HTTP against real sshd hosts on loopback.

Run from the repository root: python bench/bench_mcp.py [--repeat 30] [--hosts 1,5,20] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from bench.harness import Results, command_line, machine, publish, serve, timed  # noqa: E402
from mcp_server.commands import default_registry  # noqa: E402
from mcp_server.commands.base import NoParams  # noqa: E402
from tests.sshd import SshdFleet, SshdHost  # noqa: E402

PEER_TIMEOUT = 60.0
INTERVAL = 0.1
BEGIN = "<!-- bench_mcp:begin -->"
END = "<!-- bench_mcp:end -->"


async def register(client: Client[Any], fleet: SshdFleet, hosts: list[SshdHost], sizes: list[int]) -> None:
    for index, host in enumerate(hosts):
        await client.call_tool(
            "add_device",
            {
                "name": host.name,
                "hostname": host.hostname,
                "port": host.port,
                "username": fleet.username,
                "key_path": str(fleet.client_key_path),
                "tags": ["bench", *(f"fleet{n}" for n in sizes if index < n)],
            },
        )


async def single_device(
    client: Client[Any], host: SshdHost, results: Results, label: str, tool: str, args: dict[str, Any], n: int
) -> None:
    """Interleave fresh-connection, pooled-uncached and cached calls so machine noise hits all three alike."""

    def call(force: bool) -> Awaitable[Any]:
        return client.call_tool(tool, {"device": host.name, **args, "force_refresh": force})

    await call(True)  # connect and pin the host key outside the timings
    for i in range(n):
        await client.call_tool("update_device", {"device": host.name, "description": f"bench {label} {i}"})
        logins = host.accepted_logins()
        seconds, result = await timed(call(True))
        assert result.structured_content["from_cache"] is False
        assert host.accepted_logins() == logins + 1, "the fresh-connection call did not open a new connection"
        results.add(f"{label} fresh connection", seconds)

        seconds, result = await timed(call(True))
        assert result.structured_content["from_cache"] is False
        results.add(f"{label} uncached, pooled", seconds)

        seconds, result = await timed(call(False))
        assert result.structured_content["from_cache"] is True, "the cached call missed the cache"
        results.add(f"{label} cached", seconds)
    assert host.accepted_logins() == logins + 1, "the pooled calls opened new connections"


async def round_trip(client: Client[Any], results: Results, n: int) -> None:
    """The protocol floor: tools that touch no device and no cache entry, without and with arguments."""
    for _ in range(n):
        seconds, _result = await timed(client.call_tool("get_cache_stats", {}))
        results.add("MCP round trip, no arguments (get_cache_stats)", seconds)
        seconds, _result = await timed(client.call_tool("list_devices", {"tags": ["fleet1"]}))
        results.add("MCP round trip, with arguments (list_devices)", seconds)


async def fleet_call(client: Client[Any], size: int, results: Results, label: str) -> None:
    seconds, result = await timed(
        client.call_tool("get_fleet_overview", {"tags": [f"fleet{size}"], "force_refresh": True})
    )
    data = result.structured_content
    assert data["total"] == size and data["ok"] == size, f"fleet of {size}: {data}"
    assert not any(d["from_cache"] for d in data["devices"])
    results.add(fleet_label(label, size), seconds)


def fleet_label(kind: str, size: int) -> str:
    return f"fleet overview {kind}, {size} host{'s' if size > 1 else ''}"


async def fan_out(
    client: Client[Any], hosts: list[SshdHost], sizes: list[int], results: Results, warm: int, cold: int
) -> None:
    # opens and pins every connection outside the timings
    await client.call_tool("get_fleet_overview", {"tags": ["bench"], "force_refresh": True})
    logins = sum(h.accepted_logins() for h in hosts)
    for _ in range(warm):
        for size in sizes:
            await fleet_call(client, size, results, "warm")
    assert sum(h.accepted_logins() for h in hosts) == logins, "warm fan-out opened new connections"
    for i in range(cold):
        for size in sizes:
            for host in hosts[:size]:
                await client.call_tool("update_device", {"device": host.name, "description": f"cold {i}"})
            await fleet_call(client, size, results, "cold")
    # the same command text the ssh peers run, as 20 concurrent MCP calls over one client session
    names = [h.name for h in hosts]
    await asyncio.gather(*(client.call_tool("collect", {"device": n, "command": "os_info"}) for n in names))
    for _ in range(warm):
        seconds, _results = await timed(
            asyncio.gather(
                *(
                    client.call_tool("collect", {"device": n, "command": "os_info", "force_refresh": True})
                    for n in names
                )
            )
        )
        results.add(f"os_info on {len(names)} hosts, concurrent MCP calls, pooled", seconds)


def ssh_argv(fleet: SshdFleet, host: SshdHost, command: str) -> list[str]:
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(fleet.client_key_path),
        "-p",
        str(host.port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        f"{fleet.username}@{host.hostname}",
        command,
    ]


def peers(fleet: SshdFleet, hosts: list[SshdHost], results: Results, repeat: int) -> None:
    command = default_registry().get("os_info").shell_command(NoParams())
    argvs = [ssh_argv(fleet, h, command) for h in hosts]
    for _ in range(repeat):
        started = time.perf_counter()
        for argv in argvs:
            subprocess.run(argv, check=True, capture_output=True, timeout=PEER_TIMEOUT)
        results.add(f"peer: sequential ssh loop, {len(hosts)} hosts", time.perf_counter() - started)

        started = time.perf_counter()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv in argvs:
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            for proc in procs:
                if proc.wait(timeout=PEER_TIMEOUT) != 0:
                    raise RuntimeError(f"ssh failed: {proc.stderr.read() if proc.stderr else b''!r}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if proc.stderr:
                    proc.stderr.close()
        results.add(f"peer: parallel ssh &, {len(hosts)} hosts", time.perf_counter() - started)


def ratios(results: Results, sizes: list[int], n_hosts: int) -> list[tuple[str, float, str]]:
    """(label, value, target) rows; an empty target means the row is context only."""
    small, large = min(sizes), max(sizes)
    concurrent = f"os_info on {n_hosts} hosts, concurrent MCP calls, pooled"
    pairs = [
        ("system_metrics uncached, pooled", "system_metrics cached", ">= 20"),
        ("system_metrics fresh connection", "system_metrics uncached, pooled", ""),
        (
            "system_metrics (default interval) uncached, pooled",
            "system_metrics (default interval) cached",
            ">= 20",
        ),
        ("os_info uncached, pooled", "os_info cached", ">= 20"),
        ("os_info fresh connection", "os_info uncached, pooled", ""),
        (fleet_label("warm", large), fleet_label("warm", small), "<= 2"),
        (fleet_label("cold", large), fleet_label("cold", small), "<= 2"),
        (f"peer: sequential ssh loop, {n_hosts} hosts", concurrent, ""),
        (f"peer: parallel ssh &, {n_hosts} hosts", concurrent, ""),
    ]
    return [(f"{a} / {b}", results.median(a) / results.median(b), target) for a, b, target in pairs]


def verdict(value: float, target: str) -> str:
    if not target:
        return "context"
    bound = float(target.split()[1])
    met = value >= bound if target.startswith(">=") else value <= bound
    return "met" if met else "**missed**"


def render(results: Results, sizes: list[int], n_hosts: int, command: str) -> str:
    lines = [
        BEGIN,
        "",
        f"Command: `{command}`",
        "",
        *machine(),
        "- auth: on (bearer JWT, HS256, from `infrastructor token create`)",
        "",
    ]
    lines += ["| Scenario | n | median ms | p95 ms |", "|---|---:|---:|---:|"]
    for s in results.series.values():
        lines.append(f"| {s.name} | {len(s.samples)} | {s.median_ms:.1f} | {s.p95_ms:.1f} |")
    lines += ["", "| Ratio (of medians) | value | target | verdict |", "|---|---:|---|---|"]
    for label, value, target in ratios(results, sizes, n_hosts):
        lines.append(f"| {label} | {value:.2f}x | {target or '-'} | {verdict(value, target)} |")
    lines += ["", *results.notes, "", END]
    return "\n".join(lines) + "\n"


async def measure(
    client: Client[Any],
    fleet: SshdFleet,
    hosts: list[SshdHost],
    sizes: list[int],
    args: argparse.Namespace,
    results: Results,
) -> None:
    async with client:
        await register(client, fleet, hosts, sizes)
        await round_trip(client, results, args.repeat)
        first = hosts[0]
        await single_device(
            client,
            first,
            results,
            "system_metrics",
            "get_system_metrics",
            {"interval": INTERVAL},
            args.repeat,
        )
        # what an agent gets with no arguments: CPU measured over the default 0.5 s
        await single_device(
            client, first, results, "system_metrics (default interval)", "get_system_metrics", {}, args.repeat
        )
        await single_device(client, first, results, "os_info", "collect", {"command": "os_info"}, args.repeat)
        await fan_out(client, hosts, sizes, results, args.fanout_repeat, args.cold_repeat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30, help="single-device calls per scenario")
    parser.add_argument("--hosts", default="1,5,20", help="fleet sizes for the fan-out")
    parser.add_argument("--fanout-repeat", type=int, default=10, help="warm fan-out calls per size")
    parser.add_argument("--cold-repeat", type=int, default=3, help="cold fan-out calls per size")
    parser.add_argument("--peer-repeat", type=int, default=5, help="runs of each ssh loop")
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.hosts.split(",")})
    if not sizes or sizes[0] < 1 or sizes[-1] > 200 or not 1 <= args.repeat <= 1000:
        parser.error("--hosts must be sizes in 1..200 and --repeat in 1..1000")
    # SIGTERM unwinds through the finally blocks below, so every sshd and the server are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infra-bench-") as tmp, SshdFleet() as fleet:
        hosts = fleet.start_hosts([f"h{i:02d}" for i in range(1, sizes[-1] + 1)])
        with serve(Path(tmp) / "server", auth=True) as server:
            asyncio.run(measure(server.client(), fleet, hosts, sizes, args, results))
        peers(fleet, hosts, results, args.peer_repeat)
    results.notes.append(f"Total run time {time.monotonic() - started:.0f} s.")
    command = command_line("bench_mcp.py", argv)
    block = render(results, sizes, sizes[-1], command)
    publish(block, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
