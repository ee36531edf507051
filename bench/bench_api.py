"""Benchmark the REST API: cached against uncached calls, and the API against MCP on the same operation.

A real `infrastructor serve` process (auth on) and a real sshd host on loopback. The calls are interleaved, so
machine noise hits every series alike: `get_system_metrics` at its default interval (0.5 s of CPU measurement)
uncached (force_refresh=true) and cached, over the API and over an MCP client (streamable HTTP, one session);
and `list_devices` (no collection at all) over both, which is the per-call overhead of each door.

Run from the repository root: python bench/bench_api.py [--repeat 30] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402

from bench.harness import Results, command_line, machine, publish, serve, timed  # noqa: E402
from tests.sshd import SshdFleet  # noqa: E402

BEGIN = "<!-- bench_api:begin -->"
END = "<!-- bench_api:end -->"


async def measure(repeat: int) -> tuple[Results, float]:
    results = Results()
    started = time.monotonic()
    with SshdFleet() as fleet, tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        host = fleet.start_host("bench-api")
        with serve(Path(tmp) / "data") as server:
            api_base = server.url.removesuffix("/mcp") + "/api/v1"
            async with (
                httpx2.AsyncClient(base_url=api_base, headers=server.headers, timeout=60) as api,
                server.client() as mcp,
            ):
                spec = {
                    "name": "nas",
                    "hostname": host.hostname,
                    "port": host.port,
                    "username": fleet.username,
                    "key_path": str(fleet.client_key_path),
                }
                (await api.post("/devices", json=spec)).raise_for_status()
                path = "/devices/nas/system"
                (await api.get(path, params={"force_refresh": "true"})).raise_for_status()  # connect, pin
                for _ in range(3):  # warm both doors
                    await api.get("/devices")
                    await mcp.call_tool("list_devices", {})

                async def api_get(url: str, **params: Any) -> dict[str, Any]:
                    response = await api.get(url, params=params)
                    response.raise_for_status()
                    body: dict[str, Any] = response.json()
                    return body

                for _ in range(repeat):
                    seconds, body = await timed(api_get(path, force_refresh="true"))
                    assert body["from_cache"] is False
                    results.add("api uncached", seconds)
                    seconds, body = await timed(api_get(path))
                    assert body["from_cache"] is True
                    results.add("api cached", seconds)
                    seconds, result = await timed(mcp.call_tool("get_system_metrics", {"device": "nas"}))
                    assert result.structured_content["from_cache"] is True
                    results.add("mcp cached", seconds)
                    seconds, _ = await timed(api_get("/devices"))
                    results.add("api list_devices", seconds)
                    seconds, _ = await timed(mcp.call_tool("list_devices", {}))
                    results.add("mcp list_devices", seconds)
    return results, time.monotonic() - started


def report(results: Results, repeat: int, total: float, argv: list[str]) -> str:
    s = results.series

    def row(label: str, name: str) -> str:
        return f"| {label} | {s[name].median_ms:,.1f} ms | {s[name].p95_ms:,.1f} ms |"

    speedup = results.median("api uncached") / results.median("api cached")
    lines = [
        "### REST API (issue 18)",
        "",
        f"`{command_line('bench_api.py', argv)}`",
        "",
        "| Call | p50 | p95 |",
        "|---|---|---|",
        row(
            "API `GET /devices/nas/system?force_refresh=true` (uncached, 0.5 s CPU interval)", "api uncached"
        ),
        row("API `GET /devices/nas/system` (cached)", "api cached"),
        row("MCP `get_system_metrics` (cached, same result)", "mcp cached"),
        row("API `GET /devices` (no collection)", "api list_devices"),
        row("MCP `list_devices` (no collection)", "mcp list_devices"),
        "",
        f"- Cached API calls are {speedup:,.0f}x faster than uncached ones (p50); the cached p50 is "
        f"{results.median('api cached'):,.1f} ms (target: under 100 ms, at least 20x).",
        f"- Per call, the API costs {results.median('api list_devices'):,.1f} ms and MCP "
        f"{results.median('mcp list_devices'):,.1f} ms for the same operation "
        f"(MCP/API: {results.median('mcp list_devices') / results.median('api list_devices'):,.1f}x; "
        f"cached system metrics: "
        f"{results.median('mcp cached') / results.median('api cached'):,.1f}x).",
        f"- {repeat} rounds of the five calls, interleaved; total run time {total:,.0f} s. Both doors go through "
        "the same auth, rate limit and audit; each API call and each MCP call writes one audit row.",
        *machine(),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results, total = asyncio.run(measure(args.repeat))
    block = f"{BEGIN}\n{report(results, args.repeat, total, sys.argv[1:])}{END}\n"
    publish(block, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
