"""Storage health tools: SMART drive health, ZFS pool status and ZFS snapshots."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated, Any, Literal, TypeVar

from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from pydantic import BaseModel, Field

from mcp_server.collection import Collected
from mcp_server.errors import CommandFailed, CommandTimeout, InvalidParameter
from mcp_server.parsers.drives import Disk, DriveHealth, DrivePath, unreadable_drive
from mcp_server.parsers.zfs import DatasetName, PoolName, PoolStatus, PoolUsage, Snapshot
from mcp_server.server import AppState
from mcp_server.tools import READ_ONLY, DeviceArg, ForceRefresh, app_state, expected_errors, paginate

M = TypeVar("M", bound=BaseModel)


class DriveHealthReport(BaseModel):
    drives: list[DriveHealth] = Field(description="One entry per checked drive, in lsblk order.")
    total: int
    healthy: int
    watch: int
    failing: int
    unknown: int


class PoolReport(BaseModel):
    name: str
    health: str = Field(description="Pool health: ONLINE, DEGRADED, FAULTED, OFFLINE, UNAVAIL or REMOVED.")
    usage: PoolUsage | None = Field(description="Size, allocation and fragmentation from zpool list.")
    status: PoolStatus | None = Field(description="Vdev tree, error counters, scrub state from zpool status.")


class ZfsStatusReport(BaseModel):
    pools: list[PoolReport]
    total: int
    unhealthy: list[str] = Field(description="Pools whose health is not ONLINE, or with a vdev not ONLINE.")


class SnapshotPage(BaseModel):
    snapshots: list[Snapshot]
    total: int = Field(description="Snapshots matching the filter, before paging.")
    truncated: bool = Field(description="True when more snapshots exist beyond this page (raise offset).")
    sort_by: str


def _combined(results: list[Collected[Any]], command: str, data: M) -> Collected[M]:
    """One result made of several collections: as old as the oldest of them, cached only if all were."""
    oldest = min(results, key=lambda r: r.collected_at)
    return Collected(
        device=oldest.device,
        command=command,
        collected_at=oldest.collected_at,
        from_cache=all(r.from_cache for r in results),
        age_seconds=max(r.age_seconds for r in results),
        data=data,
    )


async def _drive(
    state: AppState, device: str, disk: Disk, force: bool
) -> Collected[DriveHealth] | DriveHealth:
    try:
        return await state.service.collect(device, "drive_smart", {"drive": disk.path}, force_refresh=force)
    except CommandFailed as exc:
        # exit bit 0: smartctl could not even address the drive (unknown device type, typical of USB bridges)
        reason = f"smartctl failed with exit status {exc.exit_status}"
        detail = exc.stderr_tail or "unknown device type or bad option; a USB bridge may need -d sat"
        return unreadable_drive(disk, f"{reason} ({detail})", exc.exit_status)
    except CommandTimeout as exc:
        return unreadable_drive(disk, f"smartctl did not answer within {exc.timeout:g}s", None)


async def drive_health(
    state: AppState, device: str, drive: str | None, force: bool
) -> Collected[DriveHealthReport]:
    inventory = await state.service.collect(device, "drive_inventory", force_refresh=force)
    disks: list[Disk] = inventory.data.disks
    if drive is not None:
        disks = [d for d in disks if d.path == drive]
        if not disks:
            known = ", ".join(d.path for d in inventory.data.disks) or "none"
            raise InvalidParameter(
                f"Unknown drive {drive!r} on device {device!r}. Drives found by lsblk: {known}."
            )
    outcomes = await asyncio.gather(*(_drive(state, device, d, force) for d in disks))
    collected = [inventory, *(o for o in outcomes if isinstance(o, Collected))]
    drives = [o.data if isinstance(o, Collected) else o for o in outcomes]
    counts = Counter(d.status for d in drives)
    report = DriveHealthReport(
        drives=drives,
        total=len(drives),
        healthy=counts["healthy"],
        watch=counts["watch"],
        failing=counts["failing"],
        unknown=counts["unknown"],
    )
    return _combined(collected, "drive_smart", report)


async def zfs_status(
    state: AppState, device: str, pool: str | None, force: bool
) -> Collected[ZfsStatusReport]:
    listed, status = await asyncio.gather(
        state.service.collect(device, "zpool_list", force_refresh=force),
        state.service.collect(device, "zpool_status", force_refresh=force),
    )
    usage = {p.name: p for p in listed.data.pools}
    details = {p.name: p for p in status.data.pools}
    # a pool imported or exported between the two commands shows up in only one of them
    names = sorted(usage.keys() | details.keys())
    if pool is not None:
        if pool not in names:
            known = ", ".join(names) or "none imported"
            raise InvalidParameter(f"Unknown pool {pool!r} on device {device!r}. Pools: {known}.")
        names = [pool]
    pools = [
        PoolReport(
            name=name,
            health=usage[name].health if name in usage else details[name].state,
            usage=usage.get(name),
            status=details.get(name),
        )
        for name in names
    ]
    unhealthy = [p.name for p in pools if p.health != "ONLINE" or _troubled(p.status)]
    report = ZfsStatusReport(pools=pools, total=len(pools), unhealthy=unhealthy)
    return _combined([listed, status], "zpool_status", report)


def _troubled(status: PoolStatus | None) -> bool:
    """A vdev not ONLINE, or any read/write/checksum error, even while the pool itself still says ONLINE."""
    if status is None:
        return False
    return bool(status.data_errors) or any(
        v.state not in (None, "ONLINE", "AVAIL") or any((v.read_errors, v.write_errors, v.checksum_errors))
        for v in status.vdevs
    )


SORT_KEYS = {
    "creation": lambda s: (-s.created_at.timestamp(), s.name),
    "name": lambda s: (s.name,),
    "used": lambda s: (-s.used_bytes, s.name),
}


def register(mcp: FastMCP) -> None:
    """Add this area's tools to the server."""

    @mcp.tool(annotations=READ_ONLY)
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
        state: AppState = Depends(app_state),
    ) -> Collected[DriveHealthReport]:
        """SMART health of a device's disks: overall health, temperature, power-on hours, reallocated and pending
        sectors, NVMe wear, and a plain-language verdict per drive (healthy / watch / failing / unknown)."""
        return await drive_health(state, device, drive, force_refresh)

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def get_zfs_status(
        device: DeviceArg,
        pool: Annotated[PoolName | None, Field(description="Only this pool; omit for all pools.")] = None,
        force_refresh: ForceRefresh = False,
        state: AppState = Depends(app_state),
    ) -> Collected[ZfsStatusReport]:
        """ZFS pools of a device: health, size/allocated/free, fragmentation, scrub or resilver state, and read,
        write and checksum errors per vdev and disk."""
        return await zfs_status(state, device, pool, force_refresh)

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def list_zfs_snapshots(
        device: DeviceArg,
        dataset: Annotated[
            DatasetName | None,
            Field(
                description="Only snapshots of this dataset and its children, e.g. tank/data; omit for all."
            ),
        ] = None,
        sort_by: Annotated[
            Literal["creation", "name", "used"],
            Field(description="creation: newest first; name: alphabetical; used: largest first."),
        ] = "creation",
        limit: Annotated[int, Field(ge=1, le=500, description="Snapshots per page.")] = 50,
        offset: Annotated[int, Field(ge=0, description="Snapshots to skip (for paging).")] = 0,
        force_refresh: ForceRefresh = False,
        state: AppState = Depends(app_state),
    ) -> Collected[SnapshotPage]:
        """ZFS snapshots of a device, newest first by default, with the space each one alone holds."""
        result = await state.service.collect(
            device, "zfs_snapshots", {"dataset": dataset}, force_refresh=force_refresh
        )
        ordered = sorted(result.data.snapshots, key=SORT_KEYS[sort_by])
        page, total, truncated = paginate(ordered, limit, offset)
        data = SnapshotPage(snapshots=page, total=total, truncated=truncated, sort_by=sort_by)
        return Collected[SnapshotPage](**{**dict(result), "data": data})
