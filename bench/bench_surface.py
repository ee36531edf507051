"""Measure what the tool surface costs an agent's context: tools/list per toolset, compact and full schemas.

Each row is what a real in-memory MCP client receives from tools/list (compact JSON, as sent), with tokens
estimated at 4 characters each; `--read-only` and every toolset alone, with `list_devices` that is always offered.

Run from the repository root: python bench/bench_surface.py [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from bench.harness import command_line, publish  # noqa: E402
from mcp_server.server import build_server  # noqa: E402
from mcp_server.settings import TOOLSETS, load_settings  # noqa: E402
from mcp_server.tools.schemas import CHARS_PER_TOKEN, listed_chars  # noqa: E402

BEGIN = "<!-- bench_surface:begin -->"
END = "<!-- bench_surface:end -->"


async def measure(data_dir: Path, **overrides: Any) -> tuple[int, int, int]:
    """(tools, characters, of which output schemas) of tools/list under these settings."""
    settings = load_settings(data_dir=data_dir, poll_enabled=False, **overrides)
    async with Client(build_server(settings)) as client:
        tools = await client.list_tools()
    outputs = sum(len(t.model_dump_json(include={"output_schema"}, by_alias=True)) for t in tools)
    return len(tools), listed_chars(tools), outputs


async def run() -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("every toolset, full schemas (INFRA_TOOL_SCHEMAS=full)", {"tool_schemas": "full"}),
            ("every toolset (default)", {}),
            ("--read-only", {"read_only": True}),
            *((f"--toolsets {name}", {"toolsets": name}) for name in TOOLSETS),
        ]
        for label, overrides in cases:
            count, chars, outputs = await measure(Path(tmp), **overrides)
            rows.append(
                f"| {label} | {count} | {chars:,} | {chars // CHARS_PER_TOKEN:,} | {100 * outputs // chars}% |"
            )
    return rows


def report(rows: list[str], command: str) -> str:
    return "\n".join(
        [
            BEGIN,
            "",
            f"Command: `{command}`",
            "",
            "| Offered | Tools | tools/list chars | ≈ tokens | output schemas |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            END,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    command = command_line("bench_surface.py")
    block = report(asyncio.run(run()), command)
    publish(block, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
