"""Storage tools: disk usage, SMART drive health, ZFS pool status and ZFS snapshots."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server.collection import Collected
from mcp_server.commands.base import Limit, Offset
from mcp_server.commands.storage import AbsolutePath, DatasetName, DrivePath, PoolName
from mcp_server.parsers.storage import DiskUsage
from mcp_server.parsers.storage_dirs import DirectoryUsage
from mcp_server.progress import OnStep
from mcp_server.reports import (
    DriveHealthReport,
    SnapshotPage,
    ZfsStatusReport,
    directory_usage,
    drive_health,
    snapshot_page,
    zfs_status,
)
from mcp_server.state import AppState, current_state
from mcp_server.tools import READ_ONLY, DeviceArg, ForceRefresh, expected_errors
from mcp_server.tools.notify import step_reporter

TOOLSET = "storage"


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_disk_usage(
    device: DeviceArg,
    force_refresh: ForceRefresh = False,
    include_pseudo: Annotated[
        bool, Field(description="Also list tmpfs, overlay and other virtual filesystems.")
    ] = False,
    state: AppState = Depends(current_state),
) -> Collected[DiskUsage]:
    """Space and inode use per mounted filesystem of one device."""
    return await state.service.collect(
        device, "disk_usage", {"include_pseudo": include_pseudo}, force_refresh=force_refresh
    )


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_directory_usage(
    device: DeviceArg,
    path: Annotated[
        AbsolutePath, Field(description="Absolute path, e.g. a mount point from get_disk_usage.")
    ],
    depth: Annotated[int, Field(ge=1, le=6, description="Levels below the path to list.")] = 2,
    top: Annotated[int, Field(ge=1, le=200, description="How many of the biggest entries to return.")] = 20,
    timeout: Annotated[
        int, Field(ge=1, le=120, description="Seconds to walk; a slower walk returns what it measured.")
    ] = 20,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[DirectoryUsage]:
    """What is using the space under a path: its biggest files and directories (du -x, this filesystem only),
    biggest first."""
    return await directory_usage(
        state.service, device, path, depth=depth, top=top, timeout=timeout, force=force_refresh
    )


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_drive_health(
    device: DeviceArg,
    drive: Annotated[
        DrivePath | None,
        Field(
            description="One disk as lsblk lists it, e.g. /dev/sda or /dev/nvme0n1; omit to check every disk."
        ),
    ] = None,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
    on_drive: OnStep = Depends(step_reporter),
) -> Collected[DriveHealthReport]:
    """SMART health of a device's disks: overall health, temperature, power-on hours, reallocated and pending
    sectors, NVMe wear, and a plain-language verdict per drive (healthy / watch / failing / unknown)."""
    return await drive_health(state.service, device, drive, force_refresh, on_drive)


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_zfs_status(
    device: DeviceArg,
    pool: Annotated[PoolName | None, Field(description="Only this pool; omit for all pools.")] = None,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ZfsStatusReport]:
    """ZFS pools of a device: health, size/allocated/free, fragmentation, scrub or resilver state, and read,
    write and checksum errors per vdev and disk."""
    return await zfs_status(state.service, device, pool, force_refresh)


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_zfs_snapshots(
    device: DeviceArg,
    dataset: Annotated[
        DatasetName | None,
        Field(description="Only snapshots of this dataset and its children, e.g. tank/data; omit for all."),
    ] = None,
    sort_by: Annotated[
        Literal["creation", "name", "used"],
        Field(description="creation: newest first; name: alphabetical; used: largest first."),
    ] = "creation",
    limit: Limit = 50,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[SnapshotPage]:
    """ZFS snapshots of a device, newest first by default, with the space each one alone holds."""
    result = await state.service.collect(
        device, "zfs_snapshots", {"dataset": dataset}, force_refresh=force_refresh
    )
    return snapshot_page(result, sort_by, limit, offset)


TOOLS = (
    get_disk_usage,
    get_directory_usage,
    get_drive_health,
    get_zfs_status,
    list_zfs_snapshots,
)
