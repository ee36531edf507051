"""Cost per host: server CPU per pooled collection against a bare-asyncssh floor, and get_fleet_overview.

Runs the collection service in this process (its own AppState on a SQLite file, the batch writer flushing
to it) against real sshd hosts on loopback, all connections opened once and kept warm. Per round, side by
side and interleaved so machine noise hits both alike:
- pipeline: `service.collect(host, "system_metrics", force_refresh=True)` on every host at once, then a
  writer flush (the audit, snapshot and series rows are part of the cost);
- floor: the same command string on the same pooled asyncssh connection, no parsing, nothing stored.
Each is reported as process CPU seconds (time.process_time: every thread of this process) per collection.
Then `get_fleet_overview` through an in-memory MCP client: warm (pooled connections, force_refresh),
cold (every connection closed first) and cached.

Run from the repository root:
  python bench/bench_fleet.py [--hosts 20,100] [--repeat 15] [--profile] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from bench.harness import command_line, machine, publish  # noqa: E402
from mcp_server.devices import DeviceSpec  # noqa: E402
from mcp_server.server import build_server  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from mcp_server.state import AppState, open_state  # noqa: E402
from tests.sshd import SshdFleet, SshdHost  # noqa: E402

BEGIN = "<!-- bench_fleet:begin -->"
END = "<!-- bench_fleet:end -->"
COMMAND = "system_metrics"
PARAMS = {"interval": 0.1}
# where the profile's cumulative time is attributed, by the path of the function's file
AREAS = (
    ("asyncssh", "/asyncssh/"),
    ("pydantic", "/pydantic"),
    ("sqlalchemy/aiosqlite", "/sqlalchemy/"),
    ("sqlalchemy/aiosqlite", "/aiosqlite/"),
    ("sqlite3", "sqlite3"),
    ("asyncio", "/asyncio/"),
    ("json", "/json/"),
    ("logging", "/logging/"),
    ("cryptography", "/cryptography/"),
    ("mcp_server", "/mcp_server/"),
)


async def _quiet(_message: Any) -> None:
    pass


async def open_fleet(state: AppState, fleet: SshdFleet, hosts: list[SshdHost]) -> list[str]:
    for host in hosts:
        spec = DeviceSpec(
            hostname=host.hostname,
            port=host.port,
            username=fleet.username,
            key_path=str(fleet.client_key_path),
            tags=(f"n{len(hosts)}",),
        )
        await state.devices.add(host.name, spec)
    return [h.name for h in hosts]


async def pipeline_round(state: AppState, names: list[str]) -> None:
    await asyncio.gather(*(state.service.collect(n, COMMAND, PARAMS, force_refresh=True) for n in names))
    await state.writer.flush()


async def floor_round(state: AppState, names: list[str], command: str) -> None:
    pool = state.ssh

    async def one(name: str) -> None:
        conn = pool._entries[name].conn  # the same pooled connection the pipeline uses
        assert conn is not None
        await conn.run(command, stdin=None, encoding=None)

    await asyncio.gather(*(one(n) for n in names))


async def cpu_of(round_: Callable[[], Awaitable[None]]) -> tuple[float, float, float]:
    """(process CPU seconds, of which on the event loop's thread, wall seconds) of one round."""
    cpu, loop, wall = time.process_time(), time.thread_time(), time.perf_counter()
    await round_()
    return time.process_time() - cpu, time.thread_time() - loop, time.perf_counter() - wall


def profile_breakdown(profiler: cProfile.Profile, collections: int) -> list[str]:
    """Own (tottime) CPU per area and the top functions, per collection."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    total = 0.0
    funcs: list[tuple[float, str]] = []
    for (path, line, name), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        total += tottime
        area = next((a for a, marker in AREAS if marker in path), "other")
        if path == "~":
            area = "builtins (C)"
            if any(word in name for word in ("socket", "send", "recv", "epoll")):
                area = "socket/select system calls"
            elif any(word in name for word in ("ciphers", "_tag", "openssl", "_rust")):
                area = "cryptography"
        areas[area] = areas.get(area, 0.0) + tottime
        funcs.append((tottime, f"{Path(path).name}:{line}({name})"))
    lines = ["| area | own CPU ms per collection | share |", "|---|---:|---:|"]
    for area, spent in sorted(areas.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {area} | {spent / collections * 1000:.3f} | {spent / total:.0%} |")
    lines += ["", "Top functions by own time (ms per collection):", ""]
    for spent, where in sorted(funcs, reverse=True)[:15]:
        lines.append(f"- {spent / collections * 1000:.3f} {where}")
    return lines


async def bench_size(
    fleet: SshdFleet, hosts: list[SshdHost], repeat: int, profile: bool, data: Path
) -> tuple[list[str], list[str]]:
    settings = load_settings(
        data_dir=data,
        ssh_known_hosts=data / "known_hosts",
        ssh_file_dirs=tempfile.gettempdir(),
        poll_enabled=False,
        log_level="WARNING",
    )
    async with open_state(settings) as state:
        names = await open_fleet(state, fleet, hosts)
        definition = state.registry.get(COMMAND)
        command = definition.shell_command(definition.validate(PARAMS))
        n = len(names)
        await pipeline_round(state, names)  # connect every host and warm every code path
        await floor_round(state, names, command)
        pipe_cpu: list[float] = []
        pipe_loop: list[float] = []
        floor_cpu: list[float] = []
        pipe_wall: list[float] = []
        floor_wall: list[float] = []
        for _ in range(repeat):
            cpu, loop, wall = await cpu_of(lambda: pipeline_round(state, names))
            pipe_cpu.append(cpu / n)
            pipe_loop.append(loop / n)
            pipe_wall.append(wall)
            cpu, _, wall = await cpu_of(lambda: floor_round(state, names, command))
            floor_cpu.append(cpu / n)
            floor_wall.append(wall)
        p, f = statistics.median(pipe_cpu) * 1000, statistics.median(floor_cpu) * 1000
        loop = statistics.median(pipe_loop) * 1000
        rows = [
            f"| {n} | {p:.2f} | {loop:.2f} | {f:.2f} | {p - f:.2f} | {p / f:.2f}x | "
            f"{statistics.median(pipe_wall) * 1000:.0f} | {statistics.median(floor_wall) * 1000:.0f} |"
        ]
        profiled: list[str] = []
        if profile:
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            for _ in range(max(repeat // 3, 3)):
                await pipeline_round(state, names)
            profiler.disable()
            profiled = [f"#### cProfile of the pipeline rounds, {n} hosts", ""]
            profiled += profile_breakdown(profiler, n * max(repeat // 3, 3))
            profiled.append("")

        # the 100-host overview is cut to the result budget; its warning is expected, not printed
        async with Client(build_server(settings, state=state), log_handler=_quiet) as client:
            overview: dict[str, list[float]] = {"warm": [], "cold": [], "cached": []}
            args = {"tags": [f"n{n}"]}
            for _ in range(max(repeat // 3, 3)):
                await state.ssh.close()  # every connection closed: the next call opens them all
                for label, force in (("cold", True), ("warm", True), ("cached", False)):
                    started = time.perf_counter()
                    result = await client.call_tool("get_fleet_overview", args | {"force_refresh": force})
                    overview[label].append(time.perf_counter() - started)
                    if result.structured_content["failed"]:
                        raise RuntimeError(f"{label}: {result.structured_content}")
            rows[0] += "".join(
                f" {statistics.median(overview[k]) * 1000:.0f} |" for k in ("warm", "cold", "cached")
            )
    return rows, profiled


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hosts", default="20,100")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="add a cProfile breakdown per size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.hosts.split(","))
    table = [
        "| hosts | pipeline CPU ms / collection | of which event loop | bare asyncssh CPU ms / collection "
        "| difference | ratio "
        "| pipeline round wall ms | floor round wall ms | fleet overview warm ms | cold ms | cached ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    profiles: list[str] = []
    with SshdFleet() as fleet, tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        hosts = fleet.start_hosts(f"h{i:03d}" for i in range(max(sizes)))
        for size in sizes:
            rows, profiled = await bench_size(
                fleet, hosts[:size], args.repeat, args.profile, Path(tmp) / str(size)
            )
            table += rows
            profiles += profiled
            print(rows[0], flush=True)
    block = [
        BEGIN,
        f"Command: `{command_line('bench_fleet.py', argv)}`; `{COMMAND}` with interval {PARAMS['interval']} s,",
        f"medians of {args.repeat} rounds (fleet overview: of {max(args.repeat // 3, 3)}); CPU is process CPU",
        "time (all threads) of the process running the collection service, per collection.",
        "",
        *table,
        "",
        *profiles,
        *machine(),
        END,
        "",
    ]
    publish("\n".join(block), args.out, BEGIN, END)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
