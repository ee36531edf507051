"""MCP prompts: ready-made investigations an agent (or its user) can start from."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from pydantic import Field


def register(mcp: FastMCP) -> None:
    @mcp.prompt
    def diagnose_device(
        device: Annotated[str, Field(description="Device name, as listed by list_devices.")],
        symptom: Annotated[
            str, Field(description="What the user noticed, e.g. 'slow', 'disk full'.")
        ] = "slow",
    ) -> str:
        """Investigate why a device misbehaves, using live data rather than guesses."""
        return (
            f"The device {device!r} is reported as: {symptom}. Find the cause with evidence.\n"
            "1. get_system_metrics (force_refresh=true): CPU busy/iowait/steal, load vs cpu_count, memory "
            "available and swap use.\n"
            "2. list_processes sorted by cpu, then by memory: which processes account for it.\n"
            "3. get_disk_usage: any filesystem above 90% space or inodes.\n"
            "4. get_network_interfaces: interfaces down or with growing rx/tx errors or drops.\n"
            "5. get_metrics_history (cpu_percent, memory_percent, disk_used_percent, ...; since=7d): is this new "
            "or a slow creep, and since when.\n"
            "6. Compare with get_fleet_overview if other devices may be affected.\n"
            "Report the most likely cause first, quote the numbers that show it (with their collected_at), "
            "and say what you could not check. Do not suggest commands you have not verified are needed."
        )
