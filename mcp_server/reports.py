"""Reports built from collections: the fleet overview, containers with their restarts, directory usage, drive
health and ZFS status.

Each one asks the UnifiedDataCollectionService for what it needs (never a device directly) and combines
the answers; tools and the CLI call these.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from mcp_server.collection import Collected, DeviceOutcome, UnifiedDataCollectionService, paginate
from mcp_server.db.engine import Database
from mcp_server.db.history import DeviceTrend, device_trends
from mcp_server.db.storage import layout
from mcp_server.errors import CommandFailed, CommandTimeout, InfrastructorError, InvalidParameter
from mcp_server.parsers.containers import ContainerList, with_restarts
from mcp_server.parsers.storage_dirs import DirectoryUsage
from mcp_server.parsers.storage_drives import Disk, DriveHealth, unreadable_drive
from mcp_server.parsers.storage_zfs import PoolStatus, PoolUsage, Snapshot, ZpoolList, ZpoolStatus
from mcp_server.parsers.system import SystemMetrics
from mcp_server.progress import OnStep, StepDone, Steps
from mcp_server.settings import Settings

log = logging.getLogger(__name__)

TREND_HOURS = 24  # the fleet overview's trend window (its description says so)


class FleetDevice(BaseModel):
    """One device's headline numbers, or why they are missing."""

    device: str
    ok: bool
    error_type: str | None = None
    error: str | None = None
    cpu_percent: float | None = Field(
        default=None, description="CPU busy percent over the sampling interval."
    )
    cpu_count: int | None = None
    load_1m: float | None = None
    memory_used_percent: float | None = None
    swap_used_percent: float | None = None
    uptime_seconds: float | None = None
    fullest_mount: str | None = Field(default=None, description="Mount point with the highest use_percent.")
    fullest_use_percent: float | None = None
    collected_at: datetime | None = None
    from_cache: bool | None = None
    trend: DeviceTrend | None = Field(
        default=None,
        description="CPU and memory trend over the last 24 h of history; see trend_note if absent.",
    )


class FleetOverview(BaseModel):
    devices: list[FleetDevice]
    total: int
    ok: int
    failed: int
    duration_ms: float = Field(description="Wall time of the whole fan-out.")
    trend_note: str | None = Field(default=None, description="Why devices without a trend have none yet.")


def _fleet_device(metrics: DeviceOutcome[Any], disks: DeviceOutcome[Any]) -> FleetDevice:
    if metrics.result is None:
        return FleetDevice(
            device=metrics.device, ok=False, error_type=metrics.error_type, error=metrics.error
        )
    m: SystemMetrics = metrics.result.data
    row = FleetDevice(
        device=metrics.device,
        ok=True,
        cpu_percent=m.cpu.busy_percent,
        cpu_count=m.cpu_count,
        load_1m=m.load.load_1m,
        memory_used_percent=m.memory.used_percent,
        swap_used_percent=m.swap.used_percent,
        uptime_seconds=m.uptime_seconds,
        collected_at=metrics.result.collected_at,
        from_cache=metrics.result.from_cache,
    )
    if disks.result is not None and disks.result.data.filesystems:
        fullest = max(disks.result.data.filesystems, key=lambda f: f.use_percent)
        row.fullest_mount, row.fullest_use_percent = fullest.mount_point, fullest.use_percent
    elif disks.result is None:
        row.error_type, row.error = disks.error_type, disks.error
    return row


class _Pairs:
    """A device's two collections as one step, reported once both have finished (the first half's failure
    names the outcome, then the second's)."""

    def __init__(self, total: int, report: OnStep | None) -> None:
        self.steps = Steps(total, report)
        self.halves: dict[str, dict[int, StepDone]] = defaultdict(dict)

    def half(self, order: int) -> OnStep | None:
        if self.steps.report is None:
            return None

        async def heard(step: StepDone) -> None:
            both = self.halves[step.name]
            both[order] = step
            if len(both) == 2:
                failed = [both[i] for i in sorted(both) if both[i].outcome != "ok"]
                first = failed[0] if failed else step
                await self.steps.finished(step.name, first.outcome, first.problem)

        return heard


async def fleet_overview(
    service: UnifiedDataCollectionService,
    devices: list[str],
    *,
    force_refresh: bool = False,
    db: Database | None = None,
    on_device: OnStep | None = None,
) -> FleetOverview:
    """Headline numbers of every given device, collected concurrently; a failing device is reported, not raised.

    With `db`, each device with recorded history also gets its 24 h CPU and memory trend. `on_device` hears
    about each device once both its collections have finished.
    """
    started = time.perf_counter()
    pairs = _Pairs(len(devices), on_device)
    metrics, disks = await asyncio.gather(
        service.collect_many(devices, "system_metrics", force_refresh=force_refresh, on_device=pairs.half(0)),
        service.collect_many(devices, "disk_usage", force_refresh=force_refresh, on_device=pairs.half(1)),
    )
    rows = [_fleet_device(m, d) for m, d in zip(metrics, disks, strict=True)]
    note = None
    if db is not None:
        trends = await _trends(db, devices)
        for row in rows:
            row.trend = trends.get(row.device)
        if any(row.trend is None for row in rows):
            note = _no_trend(service.settings)
    ok = sum(r.ok for r in rows)
    return FleetOverview(
        devices=rows,
        total=len(rows),
        ok=ok,
        failed=len(rows) - ok,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
        trend_note=note,
    )


def _no_trend(settings: Settings) -> str:
    """Why a device has no 24 h trend: it needs samples in 3 hourly buckets, which only the poller records."""
    interval = settings.poll_system_interval
    if not settings.poll_enabled or not interval:
        return (
            "No CPU and memory history is recorded: background polling is off (INFRA_POLL_ENABLED, "
            "INFRA_POLL_SYSTEM_INTERVAL). Turn it on and a trend appears about 2 h later."
        )
    return (
        f"Not enough history yet: a trend needs samples in 3 hourly buckets; the server samples every "
        f"{interval:g} s while it runs, so it appears about 2 h after the device's first sample."
    )


async def _trends(db: Database, devices: list[str]) -> dict[str, DeviceTrend]:
    try:
        mode, _, _ = await layout(db)
        async with db.read_session() as session:
            return await device_trends(session, mode, devices, datetime.now(UTC), TREND_HOURS)
    except SQLAlchemyError as exc:
        # the live numbers matter more than their history: answer without trends
        log.warning("fleet overview without trends: database unavailable: %s", exc)
        return {}


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
    service: UnifiedDataCollectionService, device: str, disk: Disk, force: bool
) -> Collected[DriveHealth] | DriveHealth:
    try:
        return await service.collect(device, "drive_smart", {"drive": disk.path}, force_refresh=force)
    except CommandFailed as exc:
        # exit bit 0: smartctl could not even address the drive (unknown device type, typical of USB bridges)
        reason = f"smartctl failed with exit status {exc.exit_status}"
        detail = exc.stderr_tail or "unknown device type or bad option; a USB bridge may need -d sat"
        return unreadable_drive(disk, f"{reason} ({detail})", exc.exit_status)
    except CommandTimeout as exc:
        return unreadable_drive(disk, f"smartctl did not answer within {exc.timeout:g}s", None)


async def drive_health(
    service: UnifiedDataCollectionService,
    device: str,
    drive: str | None,
    force: bool,
    on_drive: OnStep | None = None,
) -> Collected[DriveHealthReport]:
    """SMART health of every disk lsblk lists (or one), with a verdict per drive and counts.

    `on_drive` hears about each drive as it is checked (its status; a problem when smartctl gave no answer).
    """
    inventory = await service.collect(device, "drive_inventory", force_refresh=force)
    disks: list[Disk] = inventory.data.disks
    if drive is not None:
        disks = [d for d in disks if d.path == drive]
        if not disks:
            known = ", ".join(d.path for d in inventory.data.disks) or "none"
            raise InvalidParameter(
                f"Unknown drive {drive!r} on device {device!r}. Drives found by lsblk: {known}."
            )
    steps = Steps(len(disks), on_drive)

    async def checked(disk: Disk) -> Collected[DriveHealth] | DriveHealth:
        outcome = await _drive(service, device, disk, force)
        if isinstance(outcome, Collected):
            await steps.finished(disk.path, outcome.data.status)
        else:
            await steps.finished(
                disk.path, outcome.status, f"Drive {disk.path} on device {device!r}: {outcome.verdict}"
            )
        return outcome

    outcomes = await asyncio.gather(*(checked(d) for d in disks))
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
    service: UnifiedDataCollectionService, device: str, pool: str | None, force: bool
) -> Collected[ZfsStatusReport]:
    """zpool list and zpool status joined per pool, with the pools that need attention named."""
    # both run to the end (each audited) before an error of either is the answer: nothing outlives the call
    outcomes = await asyncio.gather(
        service.collect(device, "zpool_list", force_refresh=force),
        service.collect(device, "zpool_status", force_refresh=force),
        return_exceptions=True,
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise failed[0]
    listed, status = cast("tuple[Collected[ZpoolList], Collected[ZpoolStatus]]", tuple(outcomes))
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


def snapshot_page(result: Collected[Any], sort_by: str, limit: int, offset: int) -> Collected[SnapshotPage]:
    """One sorted page of a zfs_snapshots collection."""
    ordered = sorted(result.data.snapshots, key=SORT_KEYS[sort_by])
    page, total, truncated = paginate(ordered, limit, offset)
    data = SnapshotPage(snapshots=page, total=total, truncated=truncated, sort_by=sort_by)
    return Collected[SnapshotPage](**{**dict(result), "data": data})


async def directory_usage(
    service: UnifiedDataCollectionService,
    device: str,
    path: str,
    *,
    depth: int = 2,
    top: int = 20,
    timeout: int = 20,
    force: bool = False,
) -> Collected[DirectoryUsage]:
    """The biggest entries under `path` on `device`; a path that is missing or not a directory is an error.

    The walk's time limit stays below the command timeout (INFRA_SSH_COMMAND_TIMEOUT), so a slow walk still
    answers with what it measured instead of failing.
    """
    limit = max(1, min(timeout, int(service.settings.ssh_command_timeout) - 5))
    params = {"path": path, "depth": depth, "top": top, "timeout": limit}
    result = await service.collect(device, "directory_usage", params, force_refresh=force)
    state = result.data.state
    if state == "missing":
        raise InvalidParameter(f"path: {path!r} does not exist on device {device!r}.")
    if state == "not_directory":
        raise InvalidParameter(
            f"path: {path!r} on device {device!r} is a file, not a directory; give the directory holding it."
        )
    return result


async def containers_with_restarts(
    service: UnifiedDataCollectionService, device: str, *, all: bool, force: bool = False
) -> Collected[ContainerList]:
    """`docker ps` joined with each container's restart count and policy (docker inspect), and whether it is
    in a restart loop. Without the restart data (an engine whose inspect fails) the listing still answers."""

    async def restarts() -> Collected[Any] | None:
        try:
            return await service.collect(device, "container_restarts", force_refresh=force)
        except InfrastructorError as exc:
            log.info("containers of %s without restart counts: %s", device, exc)
            return None

    listed, joined = await asyncio.gather(
        service.collect(device, "containers", {"all": all}, force_refresh=force), restarts()
    )
    result: Collected[ContainerList] = listed
    if joined is None:
        return result
    data = with_restarts(result.data, joined.data, joined.collected_at)
    return result.model_copy(update={"data": data})
