"""MCP resources: devices, per-device command results, the command catalogue and cache statistics."""

from __future__ import annotations

from typing import Any

from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from fastmcp.exceptions import ResourceError

from mcp_server.budget import fit
from mcp_server.state import AppState, current_state
from mcp_server.tools import expected_errors


def register(mcp: FastMCP) -> None:
    @mcp.resource("infra://devices", mime_type="application/json")
    async def devices(state: AppState = Depends(current_state)) -> list[dict[str, Any]]:
        """Every registered device (no secrets)."""
        return [state.describe(d).model_dump(mode="json") for d in state.devices.list()]

    @mcp.resource("infra://devices/{device}", mime_type="application/json")
    @expected_errors(ResourceError)
    async def device(device: str, state: AppState = Depends(current_state)) -> dict[str, Any]:
        """One device's registry entry."""
        return state.describe(state.devices.get(device)).model_dump(mode="json")

    @mcp.resource("infra://devices/{device}/{command}", mime_type="application/json")
    @expected_errors(ResourceError)
    async def device_command(
        device: str, command: str, state: AppState = Depends(current_state)
    ) -> dict[str, Any]:
        """A command's result for a device with default parameters (cached like the tools)."""
        state.registry.get_read(command)
        result = await state.service.collect(device, command)
        return fit(result.model_dump(mode="json"), state.settings.max_result_chars)

    @mcp.resource("infra://commands", mime_type="application/json")
    async def commands(state: AppState = Depends(current_state)) -> dict[str, Any]:
        """Every registered command: name, category, summary, cache TTL, parameters."""
        return state.registry.catalogue().model_dump(mode="json")

    @mcp.resource("infra://audit/recent", mime_type="application/json")
    async def audit_recent(state: AppState = Depends(current_state)) -> dict[str, Any]:
        """The 50 most recent audit entries (scope infra:admin)."""
        return (await state.audit_page(limit=50, offset=0)).model_dump(mode="json")

    @mcp.resource("infra://cache/stats", mime_type="application/json")
    async def cache_stats(state: AppState = Depends(current_state)) -> dict[str, Any]:
        """Cache hit/miss/eviction counters."""
        return state.cache.stats().model_dump(mode="json")
