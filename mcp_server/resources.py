"""MCP resources: devices, per-device command results, the command catalogue and cache statistics."""

from __future__ import annotations

from typing import Any

from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from fastmcp.exceptions import ResourceError

from mcp_server.budget import fit
from mcp_server.server import AppState
from mcp_server.tools import app_state, expected_errors
from mcp_server.tools.admin import audit_page
from mcp_server.tools.devices import describe
from mcp_server.tools.system import command_catalogue, require_read_only


def register(mcp: FastMCP) -> None:
    @mcp.resource("infra://devices", mime_type="application/json")
    async def devices(state: AppState = Depends(app_state)) -> list[dict[str, Any]]:
        """Every registered device (no secrets)."""
        return [describe(d, state).model_dump(mode="json") for d in state.devices.list()]

    @mcp.resource("infra://devices/{device}", mime_type="application/json")
    @expected_errors(ResourceError)
    async def device(device: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
        """One device's registry entry."""
        return describe(state.devices.get(device), state).model_dump(mode="json")

    @mcp.resource("infra://devices/{device}/{command}", mime_type="application/json")
    @expected_errors(ResourceError)
    async def device_command(
        device: str, command: str, state: AppState = Depends(app_state)
    ) -> dict[str, Any]:
        """A command's result for a device with default parameters (cached like the tools)."""
        require_read_only(state, command)
        result = await state.service.collect(device, command)
        return fit(result.model_dump(mode="json"), state.settings.max_result_chars)

    @mcp.resource("infra://commands", mime_type="application/json")
    async def commands(state: AppState = Depends(app_state)) -> dict[str, Any]:
        """Every registered command: name, category, summary, cache TTL, parameters."""
        return command_catalogue(state, None).model_dump(mode="json")

    @mcp.resource("infra://audit/recent", mime_type="application/json")
    async def audit_recent(state: AppState = Depends(app_state)) -> dict[str, Any]:
        """The 50 most recent audit entries (scope infra:admin)."""
        return (await audit_page(state, limit=50, offset=0)).model_dump(mode="json")

    @mcp.resource("infra://cache/stats", mime_type="application/json")
    async def cache_stats(state: AppState = Depends(app_state)) -> dict[str, Any]:
        """Cache hit/miss/eviction counters."""
        return state.cache.stats().model_dump(mode="json")
