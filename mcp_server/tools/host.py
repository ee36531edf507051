"""Host tools: pending package updates and libvirt virtual machines."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server.collection import Collected, page_of
from mcp_server.commands.base import Limit, Offset
from mcp_server.parsers.host import PackageUpdates, VmList
from mcp_server.state import AppState, current_state
from mcp_server.tools import (
    READ_ONLY,
    DeviceArg,
    ForceRefresh,
    expected_errors,
)

TOOLSET = "system"


@tool(annotations=READ_ONLY)
@expected_errors()
async def check_updates(
    device: DeviceArg,
    security_only: Annotated[
        bool, Field(description="Only security updates (apt and dnf can tell).")
    ] = False,
    limit: Limit = 100,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[PackageUpdates]:
    """Pending package updates on a device (apt, dnf or pacman, detected): installed -> candidate version,
    security flag, and counts. Reads the package lists as they are (no refresh); never installs anything."""
    result = await state.service.collect(device, "package_updates", force_refresh=force_refresh)
    updates = [u for u in result.data.updates if u.security] if security_only else result.data.updates
    return page_of(result, "updates", updates, limit, offset)


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_vms(
    device: DeviceArg,
    limit: Limit = 100,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[VmList]:
    """libvirt virtual machines on a device (virsh, qemu:///system unless LIBVIRT_DEFAULT_URI says otherwise):
    state, vCPUs, memory, autostart; running ones first."""
    result = await state.service.collect(device, "vms", force_refresh=force_refresh)
    return page_of(result, "vms", result.data.vms, limit, offset)


TOOLS = (
    check_updates,
    list_vms,
)
