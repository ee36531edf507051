"""Benchmark the collection core through a real MCP client over HTTP against real sshd hosts on loopback.

Run from the repository root: python bench/bench_mcp.py [--repeat 30] [--hosts 1,5,20] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from mcp_server.commands import default_registry  # noqa: E402
from mcp_server.commands.base import NoParams  # noqa: E402
from tests.sshd import SshdFleet, SshdHost, free_port  # noqa: E402

HEALTH_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
PEER_TIMEOUT = 60.0
INTERVAL = 0.1
BEGIN = "<!-- bench_mcp:begin -->"
END = "<!-- bench_mcp:end -->"


@dataclass
class Series:
    """Wall times in seconds of one measured scenario."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.samples)
        # nearest rank: the smallest sample with at least 95% of samples at or below it
        rank = max(1, -(-95 * len(ordered) // 100))
        return ordered[rank - 1] * 1000


@dataclass
class Results:
    series: dict[str, Series] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.series.setdefault(name, Series(name)).samples.append(seconds)

    def median(self, name: str) -> float:
        return self.series[name].median_ms


@contextlib.contextmanager
def mcp_server(data_dir: Path) -> Iterator[str]:
    """Run `infrastructor serve` on a free loopback port until the block exits; yields the MCP URL."""
    exe = shutil.which("infrastructor", path=str(Path(sys.executable).parent)) or shutil.which(
        "infrastructor"
    )
    if exe is None:
        raise RuntimeError("the infrastructor console script is not installed (pip install -e .)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    env |= {
        "INFRA_DATA_DIR": str(data_dir),
        "INFRA_SSH_KNOWN_HOSTS": str(data_dir / "known_hosts"),
        "INFRA_LOG_LEVEL": "WARNING",
    }
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [exe, "serve", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log_path)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SERVER_STOP_TIMEOUT)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {HEALTH_TIMEOUT}s")
        time.sleep(0.05)


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call
    return time.perf_counter() - started, result


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


def machine() -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    from importlib.metadata import version

    return [
        f"- nproc: {len(os.sched_getaffinity(0))}; CPU: {cpu}",
        f"- Python {platform.python_version()}, Linux {platform.release()}, {ssh}",
        f"- fastmcp {version('fastmcp')}, asyncssh {version('asyncssh')}; database: SQLite (default)",
        f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]


def ratios(results: Results, sizes: list[int], n_hosts: int) -> list[tuple[str, float, str]]:
    """(label, value, target) rows; an empty target means the row is context only."""
    small, large = min(sizes), max(sizes)
    concurrent = f"os_info on {n_hosts} hosts, concurrent MCP calls, pooled"
    pairs = [
        ("system_metrics uncached, pooled", "system_metrics cached", ">= 20"),
        ("system_metrics fresh connection", "system_metrics uncached, pooled", ""),
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
    lines = [BEGIN, "", f"Command: `{command}`", "", *machine(), ""]
    lines += ["| Scenario | n | median ms | p95 ms |", "|---|---:|---:|---:|"]
    for s in results.series.values():
        lines.append(f"| {s.name} | {len(s.samples)} | {s.median_ms:.1f} | {s.p95_ms:.1f} |")
    lines += ["", "| Ratio (of medians) | value | target | verdict |", "|---|---:|---|---|"]
    for label, value, target in ratios(results, sizes, n_hosts):
        lines.append(f"| {label} | {value:.2f}x | {target or '-'} | {verdict(value, target)} |")
    lines += ["", *results.notes, "", END]
    return "\n".join(lines) + "\n"


def write_block(path: Path, block: str) -> None:
    """Replace the generated block in path, keeping the hand-written text around it."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    path.write_text(text)


async def measure(
    url: str,
    fleet: SshdFleet,
    hosts: list[SshdHost],
    sizes: list[int],
    args: argparse.Namespace,
    results: Results,
) -> None:
    async with Client(url) as client:
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
        with mcp_server(Path(tmp)) as url:
            asyncio.run(measure(url, fleet, hosts, sizes, args, results))
        peers(fleet, hosts, results, args.peer_repeat)
    results.notes.append(f"Total run time {time.monotonic() - started:.0f} s.")
    command = "python bench/bench_mcp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    block = render(results, sizes, sizes[-1], command.strip())
    print(block)
    if args.out:
        write_block(args.out, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
