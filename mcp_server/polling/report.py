"""The service's own health: a periodic row per replica, recorded cache counters, and the reports built
from them for get_service_health and get_cache_stats."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field
from sqlalchemy import select

from mcp_server.cache import CacheManager, CacheStats
from mcp_server.db.engine import Database
from mcp_server.db.series import as_utc
from mcp_server.db.storage import StorageInfo
from mcp_server.db.tables import CacheMetadata, ServicePerformanceMetric
from mcp_server.devices import DeviceHealth
from mcp_server.events import CollectionCompleted, CollectionFailed, Event, EventBus
from mcp_server.ssh import SSHPool

if TYPE_CHECKING:
    from mcp_server.state import AppState

RECENT = timedelta(hours=1)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (share in 0..1) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(share * 100) * len(ordered) // 100))
    return ordered[rank - 1]


class ReplicaStats:
    """Collections, failures and durations of this replica since the last row, from the event bus."""

    def __init__(self, replica: str, *, cache: CacheManager, events: EventBus, ssh: SSHPool) -> None:
        self._replica = replica
        self._cache = cache
        self._ssh = ssh
        self._durations: list[float] = []
        self._collections = 0
        self._failures = 0
        self._started = time.monotonic()
        stats = cache.stats()
        self._hits, self._misses = stats.hits, stats.misses
        self._unsubscribe = events.subscribe(self._on_event, types=(CollectionCompleted, CollectionFailed))

    def _on_event(self, event: Event) -> None:
        self._collections += 1
        if isinstance(event, CollectionCompleted):
            self._durations.append(event.duration_ms)
        else:
            self._failures += 1

    def close(self) -> None:
        self._unsubscribe()

    def take_row(self, now: datetime) -> dict[str, Any]:
        """This period's summary as a service_performance_metrics row; starts the next period."""
        cache = self._cache.stats()
        hits, misses = cache.hits - self._hits, cache.misses - self._misses
        row = {
            "recorded_at": now,
            "kind": "replica",
            "outcome": "ok",
            "replica": self._replica,
            "period_seconds": round(time.monotonic() - self._started, 3),
            "collections": self._collections,
            "failures": self._failures,
            "p50_ms": percentile(self._durations, 0.50),
            "p95_ms": percentile(self._durations, 0.95),
            "cache_hit_ratio": hits / (hits + misses) if hits + misses else None,
            "ssh_connections_open": self._ssh.stats().open_connections,
            "execute_ms": 0.0,
            "parse_ms": 0.0,
            "total_ms": 0.0,
        }
        self._durations, self._collections, self._failures = [], 0, 0
        self._hits, self._misses, self._started = cache.hits, cache.misses, time.monotonic()
        return row


class ReplicaReport(BaseModel):
    """The latest periodic row of one server replica."""

    replica: str
    recorded_at: datetime
    alive: bool = Field(description="True when the replica reported within three report intervals.")
    period_seconds: float | None
    collections: int | None = Field(description="Commands executed in the period (cache hits excluded).")
    failures: int | None
    p50_ms: float | None = Field(description="Median duration of the period's successful collections.")
    p95_ms: float | None
    cache_hit_ratio: float | None = Field(description="Hits / lookups in the period; null without lookups.")
    ssh_connections_open: int | None


class RecordedCache(BaseModel):
    """The latest cache counters a replica recorded in cache_metadata."""

    replica: str | None
    recorded_at: datetime
    entries: int
    max_entries: int
    hits: int
    misses: int
    evictions: int
    expirations: int
    hit_ratio: float


class CacheStatsReport(CacheStats):
    replica: str = Field(description="This server replica (INFRA_REPLICA_NAME).")
    recorded: list[RecordedCache] = Field(
        description="Latest counters each replica recorded in the last hour (cache_metadata), newest first."
    )


class PollerStatus(BaseModel):
    running: bool = Field(description="True when this process runs the background poller.")
    intervals: dict[str, float] = Field(description="Seconds between polls per category (INFRA_POLL_*).")
    completed: int
    failed: int
    skipped_breaker_open: int
    skipped_unsupported: int
    held_elsewhere: int = Field(description="Due slots another replica had already claimed.")
    taken_over: int = Field(description="Slots taken over after another replica's lease expired.")
    missed: int = Field(
        description="Slots taken on that ended before their poll was stored: not started in time (overload), "
        "finished after the slot, the database away, or skipped by a stalled loop."
    )
    not_taken_on: int = Field(
        description="Slots a new device (server start, device added) never had the chance of: they ended, or "
        "had less than a tenth of their length left, while its first connection was opening. Not missed: a "
        "new device is taken on from its first slot with that much left, and polled at once in it."
    )
    waited_for_connection: int = Field(
        description="First polls (one per new device and category) whose schedule waited for the device's "
        "first connection attempt to finish (the ramp: connections first, then the schedule)."
    )
    connecting: int = Field(description="Devices whose pooled connection the poller is opening right now.")
    lag_p50_seconds: float | None = Field(
        description="Median time from a poll's due time to stored, over the last 1,000 polls; a new device's "
        "first poll is due when it was taken on (its first connection attempt finished, its lease claimed)."
    )
    lag_p95_seconds: float | None
    lag_max_seconds: float | None


class DeviceHealthEntry(BaseModel):
    device: str
    health: DeviceHealth


class AuditPipeline(BaseModel):
    pending_rows: int = Field(description="Rows audited or collected but not yet in the database.")
    unjournaled_rows: int = Field(description="Rows still only in memory (the journal fsyncs them next).")
    journal_bytes: int = Field(description="Journaled bytes not yet in the database.")
    journal_segments: int = Field(description="Journal files on disk.")
    oldest_unshipped_seconds: float | None = Field(
        description="Age of the oldest row not yet in the database; None when none is waiting."
    )
    shipped_rows: int = Field(description="Rows this process wrote to the database.")
    refused_calls: int = Field(description="Calls refused because the audit could not keep up.")
    last_error: str | None = Field(description="The last journal or database write error.")
    last_error_at: datetime | None
    quarantined_rows: int = Field(
        description="Rows the database refused (a constraint, a value a column rejects), set aside in the "
        "spool's quarantine.jsonl so they hold up no other row."
    )
    last_quarantine_error: str | None = Field(description="Why the database refused the last row set aside.")
    last_quarantined_at: datetime | None
    warning: str | None = Field(
        description="Set when the database is behind by more than INFRA_AUDIT_LAG_WARNING, or has refused rows."
    )


class ServiceHealth(BaseModel):
    replica: str
    uptime_seconds: float
    database_ok: bool
    storage: StorageInfo
    poller: PollerStatus
    replicas: list[ReplicaReport] = Field(description="Every replica that reported in the last hour.")
    devices_not_ok: list[DeviceHealthEntry] = Field(description="Devices whose polls fail or back off.")
    audit: AuditPipeline = Field(description="The audit journal and how far the database is behind it.")
    cache: CacheStats
    cache_recorded: list[RecordedCache]


def _latest_per_replica(rows: list[Any]) -> list[Any]:
    seen: dict[str | None, Any] = {}
    for row in rows:  # newest first
        seen.setdefault(row.replica, row)
    return list(seen.values())


async def replica_reports(db: Database, now: datetime, report_interval: float) -> list[ReplicaReport]:
    async with db.read_session() as session:
        rows = (
            await session.scalars(
                select(ServicePerformanceMetric)
                .where(
                    ServicePerformanceMetric.kind == "replica",
                    ServicePerformanceMetric.recorded_at >= now - RECENT,
                )
                .order_by(ServicePerformanceMetric.recorded_at.desc())
                .limit(1000)
            )
        ).all()
    return [
        ReplicaReport(
            replica=r.replica or "?",
            recorded_at=as_utc(r.recorded_at),
            alive=now - as_utc(r.recorded_at) <= timedelta(seconds=3 * report_interval),
            period_seconds=r.period_seconds,
            collections=r.collections,
            failures=r.failures,
            p50_ms=round(r.p50_ms, 2) if r.p50_ms is not None else None,
            p95_ms=round(r.p95_ms, 2) if r.p95_ms is not None else None,
            cache_hit_ratio=r.cache_hit_ratio,
            ssh_connections_open=r.ssh_connections_open,
        )
        for r in _latest_per_replica(list(rows))
    ]


async def recorded_cache(db: Database, now: datetime) -> list[RecordedCache]:
    async with db.read_session() as session:
        rows = (
            await session.scalars(
                select(CacheMetadata)
                .where(CacheMetadata.recorded_at >= now - RECENT)
                .order_by(CacheMetadata.recorded_at.desc())
                .limit(1000)
            )
        ).all()
    return [
        RecordedCache(
            replica=r.replica,
            recorded_at=as_utc(r.recorded_at),
            entries=r.entries,
            max_entries=r.max_entries,
            hits=r.hits,
            misses=r.misses,
            evictions=r.evictions,
            expirations=r.expirations,
            hit_ratio=r.hit_ratio,
        )
        for r in _latest_per_replica(list(rows))
    ]


async def cache_report(state: AppState) -> CacheStatsReport:
    # what replicas recorded is read as stored: a flush here would cost every caller a database write
    recorded = await recorded_cache(state.db, datetime.now(UTC))
    return CacheStatsReport(
        **state.cache.stats().model_dump(), replica=state.settings.replica_name, recorded=recorded
    )
