"""The polling service a server runs in the background: the poller, this replica's periodic health row,
and storage maintenance (retention, partitions ahead, TimescaleDB policies whose scheduler fails) claimed
by one replica per interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from mcp_server.db import storage
from mcp_server.db.engine import Database
from mcp_server.db.tables import ServicePerformanceMetric
from mcp_server.devices import DeviceHealth
from mcp_server.journal import BatchWriter
from mcp_server.polling import leases
from mcp_server.polling.report import (
    AuditPipeline,
    DeviceHealthEntry,
    PollerStatus,
    ReplicaStats,
    ServiceHealth,
    percentile,
    recorded_cache,
    replica_reports,
)
from mcp_server.polling.scheduler import Poller
from mcp_server.settings import Settings

if TYPE_CHECKING:
    from mcp_server.state import AppState

log = logging.getLogger(__name__)

MAINTENANCE = ("*", "maintenance")  # the lease key of a storage maintenance run
STOP_TIMEOUT = 10.0


class PollingService:
    """Started and stopped by the server's lifespan; `poller` is None with INFRA_POLL_ENABLED=false."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        writer: BatchWriter,
        poller: Poller | None,
        stats: ReplicaStats,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._db = db
        self._writer = writer
        self._clock = clock
        self.poller = poller
        self.stats = stats
        self.last_maintenance: storage.MaintenanceReport | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def of(cls, state: AppState, *, clock: Callable[[], float] = time.time) -> PollingService:
        """The polling service of a running server, wired to its live objects."""
        settings = state.settings
        poller = (
            Poller(
                settings,
                service=state.service,
                registry=state.registry,
                devices=state.devices,
                health=state.health,
                db=state.db,
                ssh=state.ssh,
                clock=clock,
            )
            if settings.poll_enabled
            else None
        )
        stats = ReplicaStats(settings.replica_name, cache=state.cache, events=state.events, ssh=state.ssh)
        return cls(settings, db=state.db, writer=state.writer, poller=poller, stats=stats, clock=clock)

    def start(self) -> None:
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("infra-replica-report", self._report_loop),
            ("infra-maintenance", self._maintenance_loop),
        ]
        if self.poller is not None:
            loops.append(("infra-poller", self.poller.run))
        self._tasks = [asyncio.create_task(loop(), name=name) for name, loop in loops]
        intervals = self.poller.intervals() if self.poller else {}
        log.info(
            "polling service started as %s; poll intervals: %s",
            self._settings.replica_name,
            ", ".join(f"{k} {v:g}s" for k, v in intervals.items()) or "polling off",
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
        self._tasks = []
        self._writer.add(ServicePerformanceMetric, self.stats.take_row(self._now()))
        self.stats.close()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def _report_loop(self) -> None:
        every = self._settings.poll_report_interval
        while True:
            await asyncio.sleep(every)
            self._writer.add(ServicePerformanceMetric, self.stats.take_row(self._now()))

    async def _maintenance_loop(self) -> None:
        every = self._settings.maintenance_interval
        while True:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self.maintain_once()
            await asyncio.sleep(every - self._clock() % every + 1.0)

    async def maintain_once(self) -> storage.MaintenanceReport | None:
        """Run retention for this maintenance slot unless another replica already claimed it."""
        every = self._settings.maintenance_interval
        slot = int(self._clock() // every)
        device, category = MAINTENANCE
        claim = await leases.claim(
            self._db,
            device,
            category,
            slot,
            owner=self._settings.replica_name,
            ttl=timedelta(seconds=min(every, 3600)),
            now=self._now(),
        )
        if not claim.ours:
            return None
        report = await storage.maintain(self._db, self._settings, self._now())
        self.last_maintenance = report
        outcome = "ok" if report.error is None else "error"
        await leases.complete(
            self._db,
            device,
            category,
            slot,
            request_id=claim.request_id,
            outcome=outcome,
            now=self._now(),
        )
        if report.partitions_dropped or any(report.rows_deleted.values()):
            log.info(
                "retention: dropped partitions %s, deleted rows %s",
                report.partitions_dropped,
                {k: v for k, v in report.rows_deleted.items() if v},
            )
        if report.jobs_run:
            log.info(
                "TimescaleDB policies run by this server: %s",
                ", ".join(
                    f"job {i} {'ok' if r.ok else 'failed'} in {r.seconds:g} s"
                    for i, r in report.jobs_run.items()
                ),
            )
        return report

    def status(self) -> PollerStatus:
        return poller_status(self.poller)


def poller_status(poller: Poller | None) -> PollerStatus:
    if poller is None:
        return PollerStatus(
            running=False,
            intervals={},
            completed=0,
            failed=0,
            skipped_breaker_open=0,
            skipped_unsupported=0,
            held_elsewhere=0,
            taken_over=0,
            missed=0,
            not_taken_on=0,
            waited_for_connection=0,
            connecting=0,
            lag_p50_seconds=None,
            lag_p95_seconds=None,
            lag_max_seconds=None,
        )
    c = poller.counters
    lags = list(poller.lags)

    def lag(share: float) -> float | None:
        value = percentile(lags, share)
        return round(value, 3) if value is not None else None

    return PollerStatus(
        running=True,
        intervals=poller.intervals(),
        completed=c.completed,
        failed=c.failed,
        skipped_breaker_open=c.skipped_breaker_open,
        skipped_unsupported=c.skipped_unsupported,
        held_elsewhere=c.held_elsewhere,
        taken_over=c.taken_over,
        missed=c.missed,
        not_taken_on=c.not_taken_on,
        waited_for_connection=c.waited_for_connection,
        connecting=poller.connecting,
        lag_p50_seconds=lag(0.50),
        lag_p95_seconds=lag(0.95),
        lag_max_seconds=lag(1.0),
    )


def audit_pipeline(state: AppState) -> AuditPipeline:
    """The audit writer's backlog, with a warning past INFRA_AUDIT_LAG_WARNING."""
    s = state.writer.status()
    threshold = state.settings.audit_lag_warning
    warning = None
    if s.oldest_unshipped_seconds is not None and s.oldest_unshipped_seconds > threshold:
        warning = (
            f"the database is {s.oldest_unshipped_seconds:.0f} s behind the audit journal ({s.pending_rows:,} "
            f"rows, {s.journal_bytes:,} bytes waiting; last error: {s.last_error or 'none'}); the rows are safe "
            "on disk and are written once it catches up"
        )
    q = s.quarantine
    if q.rows:
        refusal = (
            f"the database refused {q.rows:,} audit rows (last: {q.last_error}); they are set aside, whole, in "
            "<data dir>/spool/quarantine.jsonl, and the rows around them were written"
        )
        warning = f"{warning}; {refusal}" if warning else refusal
    return AuditPipeline(
        pending_rows=s.pending_rows,
        unjournaled_rows=s.unjournaled_rows,
        journal_bytes=s.journal_bytes,
        journal_segments=s.journal_segments,
        oldest_unshipped_seconds=s.oldest_unshipped_seconds,
        shipped_rows=s.shipped_rows,
        refused_calls=s.refused_calls,
        last_error=s.last_error,
        last_error_at=s.last_error_at,
        quarantined_rows=q.rows,
        last_quarantine_error=q.last_error,
        last_quarantined_at=q.last_at,
        warning=warning,
    )


async def service_health(state: AppState) -> ServiceHealth:
    """This replica, every replica that reported recently, storage, the poller and unhealthy devices."""
    now = datetime.now(UTC)
    database_ok = await state.db.ping()
    await state.writer.caught_up(min(1.0, state.settings.audit_write_timeout))
    await state.health.refresh(force=True)
    unhealthy = []
    for name in state.devices.names():
        health: DeviceHealth | None = state.health.get(name, now)
        if health is not None and health.status != "ok":
            unhealthy.append(DeviceHealthEntry(device=name, health=health))
    polling = state.polling
    return ServiceHealth(
        replica=state.settings.replica_name,
        uptime_seconds=round(time.monotonic() - state.started_at, 1),
        database_ok=database_ok,
        storage=await storage.info(state.db, state.settings, polling.last_maintenance if polling else None),
        poller=polling.status() if polling is not None else poller_status(None),
        replicas=await replica_reports(state.db, now, state.settings.poll_report_interval),
        devices_not_ok=unhealthy,
        audit=audit_pipeline(state),
        cache=state.cache.stats(),
        cache_recorded=await recorded_cache(state.db, now),
    )
