"""find_problems: everything on every device that needs a human, worst first, each with the call that shows more.

Every check goes through the UnifiedDataCollectionService (cached, audited, stored) or reads what the server
already recorded (breakers, configuration changes, the last package check); nothing runs on a device any other
way. A device that cannot be reached is one problem, not one per check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from mcp_server.cache import CacheKey
from mcp_server.collection import UnifiedDataCollectionService
from mcp_server.config_monitoring.service import ConfigurationMonitoringService
from mcp_server.db.engine import Database
from mcp_server.db.tables import CollectionSnapshot
from mcp_server.devices import DeviceHealth
from mcp_server.errors import CommandNotAvailable, ConnectionError_, InfrastructorError
from mcp_server.parsers.containers import ContainerSummary
from mcp_server.parsers.services import UnitList
from mcp_server.parsers.storage import DiskUsage
from mcp_server.progress import OnStep, Steps
from mcp_server.reports import containers_with_restarts, drive_health

log = logging.getLogger(__name__)

Severity = Literal["critical", "high", "medium"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium")
Check = Literal["disks", "drives", "services", "containers", "config", "updates"]
CHECKS: tuple[Check, ...] = ("disks", "drives", "services", "containers", "config", "updates")
# within a severity: what stops a device first, then what loses data, then what stops a service
KINDS = (
    "unreachable",
    "device_down",
    "drive_failing",
    "disk_full",
    "inodes_full",
    "container_restarting",
    "container_unhealthy",
    "service_failed",
    "container_exited",
    "config_change",
    "device_degraded",
    "drive_watch",
    "security_updates",
)
# a filesystem this much over the threshold (or at 98%) is critical, not just high
CRITICAL_MARGIN = 5.0


def call(tool: str, **arguments: Any) -> str:
    """A tool call as agents copy it: `name` {"arg": value}."""
    return f"`{tool}` {json.dumps(arguments)}"


class Problem(BaseModel):
    severity: Severity = Field(description="critical: act now; high: act today; medium: look when you can.")
    device: str
    kind: str = Field(description=f"One of: {', '.join(KINDS)}.")
    subject: str = Field(description="What is affected: the device, a mount, drive, unit, container or file.")
    summary: str = Field(description="What is wrong, with the numbers that show it.")
    since: datetime | None = Field(default=None, description="When it started or was seen, where known.")
    next: str = Field(description="The tool call that shows more, with its arguments as JSON.")


class ProblemReport(BaseModel):
    problems: list[Problem] = Field(description="Worst first: by severity, then kind, then device.")
    total: int = Field(description="Problems found in all (before `limit`).")
    truncated: bool = Field(description="True when more problems exist than this list holds (raise limit).")
    counts: dict[str, int] = Field(description="Problems per severity.")
    devices: int = Field(description="Devices checked.")
    devices_with_problems: int
    not_checked: list[str] = Field(
        description="Checks that could not run on a device and why (a missing program, a refused sudo)."
    )
    checked_at: datetime
    duration_ms: float


@dataclass
class _Found:
    problems: list[Problem] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)

    def add(
        self,
        severity: Severity,
        device: str,
        kind: str,
        subject: str,
        summary: str,
        next_call: str,
        since: datetime | None = None,
    ) -> None:
        self.problems.append(
            Problem(
                severity=severity,
                device=device,
                kind=kind,
                subject=subject,
                summary=summary,
                since=since,
                next=next_call,
            )
        )

    def skipped(self, device: str, check: str, exc: InfrastructorError) -> None:
        reason = f"{exc.binary} is not installed" if isinstance(exc, CommandNotAvailable) else str(exc)
        self.not_checked.append(f"{device} {check}: {reason}")


def _disks(found: _Found, device: str, usage: DiskUsage, threshold: float) -> None:
    critical = min(threshold + CRITICAL_MARGIN, 98.0)
    for fs in usage.filesystems:
        if fs.pseudo:
            continue
        more = call("get_directory_usage", device=device, path=fs.mount_point)
        if fs.use_percent >= threshold:
            free_gib = fs.available_bytes / 1024**3
            found.add(
                "critical" if fs.use_percent >= critical else "high",
                device,
                "disk_full",
                fs.mount_point,
                f"{fs.mount_point} is {fs.use_percent:g}% full ({free_gib:.1f} GiB free of "
                f"{fs.size_bytes / 1024**3:.1f} GiB).",
                more,
            )
        if fs.inodes_use_percent is not None and fs.inodes_use_percent >= threshold:
            found.add(
                "critical" if fs.inodes_use_percent >= critical else "high",
                device,
                "inodes_full",
                fs.mount_point,
                f"{fs.mount_point} has used {fs.inodes_use_percent:g}% of its inodes ({fs.inodes_free} free): "
                "new files fail even with space left.",
                more,
            )


def _containers(found: _Found, device: str, containers: Sequence[ContainerSummary]) -> None:
    for c in containers:
        logs = call("get_container_logs", device=device, container=c.name, tail=100)
        restarts = f", restarted {c.restart_count} times" if c.restart_count else ""
        if c.restarting:
            found.add(
                "high",
                device,
                "container_restarting",
                c.name,
                f"{c.name} ({c.image}) is in a restart loop{restarts}; now {c.state}.",
                logs,
                c.last_exit_at,
            )
        elif c.health == "unhealthy":
            found.add(
                "high",
                device,
                "container_unhealthy",
                c.name,
                f"{c.name} ({c.image}) fails its health check{restarts}.",
                call("get_container", device=device, container=c.name),
            )
        elif c.state == "dead" or (c.state == "exited" and c.exit_code not in (None, 0)):
            found.add(
                "medium",
                device,
                "container_exited",
                c.name,
                f"{c.name} ({c.image}) exited with code {c.exit_code}{restarts}: {c.status}.",
                logs,
                c.last_exit_at,
            )


def _services(found: _Found, device: str, units: UnitList) -> None:
    for unit in units.units:
        if unit.active == "failed":
            found.add(
                "high",
                device,
                "service_failed",
                unit.unit,
                f"{unit.unit} failed ({unit.sub}): {unit.description}.",
                call("get_service_status", device=device, unit=unit.unit),
            )


async def _drives(found: _Found, service: UnifiedDataCollectionService, device: str, force: bool) -> None:
    report = await drive_health(service, device, None, force)
    for drive in report.data.drives:
        if drive.status not in ("failing", "watch"):
            continue
        found.add(
            "critical" if drive.status == "failing" else "medium",
            device,
            "drive_failing" if drive.status == "failing" else "drive_watch",
            drive.path,
            f"{drive.path} ({drive.model or 'unknown model'}): {drive.verdict}",
            call("get_drive_health", device=device, drive=drive.path),
        )


def _health(found: _Found, device: str, health: DeviceHealth | None) -> bool:
    """Report what the poller knows; True when the device is down (its breaker open: do not try it now)."""
    if health is None:
        return False
    error = f": {health.last_error}" if health.last_error else ""
    if health.status == "down":
        retry = f"; polls retry at {health.retry_at:%H:%M:%S} UTC" if health.retry_at else ""
        found.add(
            "critical",
            device,
            "device_down",
            device,
            f"{device} failed its last {health.consecutive_failures} polls{error}{retry}.",
            call("test_device_connection", device=device),
            health.last_failure_at,
        )
        return True
    if health.status == "degraded":
        found.add(
            "medium",
            device,
            "device_degraded",
            device,
            f"{device} failed {health.consecutive_failures} recent polls{error}.",
            call("test_device_connection", device=device),
            health.last_failure_at,
        )
    return False


async def _device(
    service: UnifiedDataCollectionService, device: str, checks: set[str], threshold: float, force: bool
) -> _Found:
    found = _Found()
    # disk use first: it also tells whether the device answers at all
    try:
        usage = await service.collect(device, "disk_usage", force_refresh=force)
    except ConnectionError_ as exc:
        found.add(
            "critical", device, "unreachable", device, str(exc), call("test_device_connection", device=device)
        )
        return found
    except InfrastructorError as exc:
        found.skipped(device, "disks", exc)
    else:
        if "disks" in checks:
            _disks(found, device, usage.data, threshold)

    async def guarded(check: str, run: Any) -> None:
        try:
            await run
        except InfrastructorError as exc:
            found.skipped(device, check, exc)

    async def containers() -> None:
        listed = await containers_with_restarts(service, device, all=True, force=force)
        _containers(found, device, listed.data.containers)

    async def services() -> None:
        units = await service.collect(device, "services", force_refresh=force)
        _services(found, device, units.data)

    runs = {
        "drives": lambda: _drives(found, service, device, force),
        "services": services,
        "containers": containers,
    }
    await asyncio.gather(*(guarded(name, run()) for name, run in runs.items() if name in checks))
    return found


async def _config_changes(
    found: _Found, config: ConfigurationMonitoringService, devices: set[str], since: datetime
) -> None:
    changes = await config.changes(device=None, since=since, min_risk="high", limit=200, offset=0)
    for change in changes.changes:
        if change.device not in devices:
            continue
        affected = f" (affects {', '.join(change.affected_services[:5])})" if change.affected_services else ""
        reasons = "; ".join(change.reasons[:3])
        found.add(
            "high",
            change.device,
            "config_change",
            change.path,
            f"{change.change_type} {change.path}{affected}: {reasons or change.summary}",
            call("get_config_diff", device=change.device, path=change.path, to=change.to_version)
            if change.to_version is not None
            else call("list_config_changes", device=change.device, since="24h", min_risk="high"),
            change.detected_at,
        )


async def _updates(
    found: _Found, service: UnifiedDataCollectionService, db: Database, devices: list[str], since: datetime
) -> None:
    """Pending security updates as the last package check saw them (cache, else its stored snapshot within
    `since`); devices nobody checked are not checked here either (it takes apt or dnf a while)."""
    known: dict[str, tuple[int, datetime]] = {}
    try:
        async with db.read_session() as session:
            rows = await session.execute(
                select(
                    CollectionSnapshot.device, CollectionSnapshot.collected_at, CollectionSnapshot.data
                ).where(
                    CollectionSnapshot.command == "package_updates",
                    CollectionSnapshot.device.in_(devices),
                    CollectionSnapshot.collected_at >= since,
                )
            )
            for device, at, data in rows:
                known[device] = (int(data.get("security_total") or 0), at)
    except SQLAlchemyError as exc:
        log.warning("find_problems without stored package checks: %s", exc)
    for device in devices:
        cached = service.cache.peek(CacheKey(device, "package_updates", "packages", "{}"))
        if cached is not None:
            known[device] = (int(cached.value.security_total or 0), cached.collected_at)
    for device, (count, at) in sorted(known.items()):
        if count:
            found.add(
                "medium",
                device,
                "security_updates",
                device,
                f"{count} security update{'s' if count != 1 else ''} pending (checked {at:%Y-%m-%d %H:%M} UTC).",
                call("check_updates", device=device, security_only=True),
                at,
            )


def _order(problem: Problem) -> tuple[int, int, str, str]:
    kind = KINDS.index(problem.kind) if problem.kind in KINDS else len(KINDS)
    return SEVERITIES.index(problem.severity), kind, problem.device, problem.subject


async def find_problems(
    service: UnifiedDataCollectionService,
    config: ConfigurationMonitoringService,
    db: Database,
    devices: list[str],
    health: dict[str, DeviceHealth | None],
    *,
    checks: Sequence[str] = CHECKS,
    disk_threshold: float = 90.0,
    since: timedelta = timedelta(hours=24),
    limit: int = 50,
    force: bool = False,
    on_device: OnStep | None = None,
) -> ProblemReport:
    """Check every device concurrently (a failing device is a problem, never an exception) and rank what
    needs a human. `health` is what the poller knows of each device; a device it sees as down is reported
    as such and not tried again now."""
    started = time.perf_counter()
    wanted = set(checks)
    steps = Steps(len(devices), on_device)
    found = _Found()

    async def one(device: str) -> None:
        if _health(found, device, health.get(device)):
            await steps.finished(device, "device_down")
            return
        known = health.get(device)
        # the poller found these programs missing within the hour: not tried again now
        missing = wanted & set(known.unsupported if known is not None else ())
        found.not_checked.extend(
            f"{device} {check}: its program is not installed" for check in sorted(missing)
        )
        mine = await _device(service, device, wanted - missing, disk_threshold, force)
        found.problems.extend(mine.problems)
        found.not_checked.extend(mine.not_checked)
        unreachable = any(p.kind == "unreachable" for p in mine.problems)
        await steps.finished(device, "unreachable" if unreachable else "ok")

    cutoff = datetime.now(UTC) - since
    extra = []
    if "config" in wanted:
        extra.append(_config_changes(found, config, set(devices), cutoff))
    if "updates" in wanted:
        extra.append(_updates(found, service, db, devices, cutoff))
    await asyncio.gather(*(one(d) for d in devices), *extra)
    ranked = sorted(found.problems, key=_order)
    counts = Counter(p.severity for p in ranked)
    return ProblemReport(
        problems=ranked[:limit],
        total=len(ranked),
        truncated=len(ranked) > limit,
        counts={s: counts[s] for s in SEVERITIES},
        devices=len(devices),
        devices_with_problems=len({p.device for p in ranked}),
        not_checked=sorted(found.not_checked),
        checked_at=datetime.now(UTC),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
