"""Network tools: interfaces with their addresses and counters."""

from __future__ import annotations

from fastmcp.dependencies import Depends
from fastmcp.tools import tool

from mcp_server.collection import Collected
from mcp_server.parsers.network import NetworkInterfaces
from mcp_server.state import AppState, current_state
from mcp_server.tools import READ_ONLY, DeviceArg, ForceRefresh, expected_errors

TOOLSET = "system"


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_network_interfaces(
    device: DeviceArg, force_refresh: ForceRefresh = False, state: AppState = Depends(current_state)
) -> Collected[NetworkInterfaces]:
    """Network interfaces of one device: state, MTU, addresses, and rx/tx byte, error and drop counters."""
    return await state.service.collect(device, "network_interfaces", force_refresh=force_refresh)


TOOLS = (get_network_interfaces,)
