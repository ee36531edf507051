"""Database tables (SQLAlchemy 2 declarative). The same schema on SQLite and PostgreSQL.

The time-series tables are declared with their series in mcp_server/series/ (the db package imports that
index, so Base.metadata always lists them too)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable), plain JSON text on SQLite.
# None is stored as SQL NULL (not JSON null), whether a row leaves the column out or renders it (journal.py)
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as an aware UTC datetime on every backend (SQLite keeps no
    zone: without this its values come back naive and reach clients without their `Z`)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo is not None else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    hostname: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer, default=22)
    username: Mapped[str | None] = mapped_column(String(255))
    key_path: Mapped[str | None] = mapped_column(Text)
    password_secret: Mapped[str | None] = mapped_column(String(255), doc="Name of the row in `secrets`.")
    jump_host: Mapped[str | None] = mapped_column(String(63))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    host_key: Mapped[str | None] = mapped_column(Text)
    use_sudo: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DataCollectionAudit(Base):
    """One row per collection, tool call and resource read: who, from where, what, with what result."""

    __tablename__ = "data_collection_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), doc="collection | tool | resource")
    subject: Mapped[str | None] = mapped_column(String(255))
    client_id: Mapped[str | None] = mapped_column(String(255))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    request_path: Mapped[str | None] = mapped_column(String(512))
    transport: Mapped[str | None] = mapped_column(String(16))
    tool: Mapped[str | None] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    device: Mapped[str | None] = mapped_column(String(63))
    command: Mapped[str | None] = mapped_column(String(128))
    params: Mapped[str | None] = mapped_column(Text)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    ssh_commands: Mapped[list[str]] = mapped_column(JSONType, default=list)
    duration_ms: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16), doc="ok | error | denied")
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_audit_occurred_at", "occurred_at"),
        Index("ix_audit_device_occurred_at", "device", "occurred_at"),
        Index("ix_audit_request_id", "request_id"),
    )


class CollectionSnapshot(Base):
    """The latest parsed result per device, command and parameters."""

    __tablename__ = "collection_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    command: Mapped[str] = mapped_column(String(128))
    params: Mapped[str] = mapped_column(Text)
    collected_at: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (UniqueConstraint("device", "command", "params", name="uq_snapshot_identity"),)


class CacheMetadata(Base):
    """Periodic snapshots of the CacheManager's counters."""

    __tablename__ = "cache_metadata"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recorded_at: Mapped[datetime]
    entries: Mapped[int] = mapped_column(Integer)
    max_entries: Mapped[int] = mapped_column(Integer)
    hits: Mapped[int] = mapped_column(BigInteger)
    misses: Mapped[int] = mapped_column(BigInteger)
    evictions: Mapped[int] = mapped_column(BigInteger)
    expirations: Mapped[int] = mapped_column(BigInteger)
    hit_ratio: Mapped[float] = mapped_column(Float)
    replica: Mapped[str | None] = mapped_column(String(128), doc="Server replica whose cache this is.")


class ServicePerformanceMetric(Base):
    """Timing of each executed collection (kind "collection"), and a periodic summary per server replica
    (kind "replica": collections, failures, p50/p95 durations, cache hit ratio, open SSH connections)."""

    __tablename__ = "service_performance_metrics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recorded_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16), default="collection", server_default="collection")
    device: Mapped[str | None] = mapped_column(String(63))
    command: Mapped[str | None] = mapped_column(String(128))
    execute_ms: Mapped[float] = mapped_column(Float, default=0.0)
    parse_ms: Mapped[float] = mapped_column(Float, default=0.0)
    total_ms: Mapped[float] = mapped_column(Float, default=0.0)
    outcome: Mapped[str] = mapped_column(String(16))
    replica: Mapped[str | None] = mapped_column(String(128))
    period_seconds: Mapped[float | None] = mapped_column(Float)
    collections: Mapped[int | None] = mapped_column(Integer)
    failures: Mapped[int | None] = mapped_column(Integer)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    cache_hit_ratio: Mapped[float | None] = mapped_column(Float)
    ssh_connections_open: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_perf_device_command", "device", "command", "recorded_at"),
        Index("ix_perf_kind_replica", "kind", "replica", "recorded_at"),
    )


class SecretRow(Base):
    """Values encrypted with the master key (Fernet tokens); never stored in clear."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SpoolSegment(Base):
    """How far each journal segment has been written to the database (see journal.py): its mark advances in
    the transaction that inserts its rows, so a replay after a crash skips what is already here."""

    __tablename__ = "spool_segments"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    replayed_at: Mapped[datetime]
    rows: Mapped[int] = mapped_column(Integer)
    # bytes of the segment shipped; NULL: a whole spool file replayed at once (before journals)
    shipped_bytes: Mapped[int | None] = mapped_column(BigInteger)


class ConfigWatchTarget(Base):
    """A file (or a directory of files) watched for configuration changes on a device."""

    __tablename__ = "config_watch_targets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    path: Mapped[str] = mapped_column(Text, doc="Absolute path on the device.")
    kind: Mapped[str] = mapped_column(String(16), doc="compose | nginx | systemd | file")
    source: Mapped[str] = mapped_column(String(16), doc="explicit | discovered")
    is_directory: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime]
    baseline_at: Mapped[datetime | None] = mapped_column(
        doc="When the first versions were recorded; until then nothing found is reported as a change."
    )

    __table_args__ = (UniqueConstraint("device", "path", name="uq_watch_target"),)


class ConfigurationSnapshot(Base):
    """One version of a watched file: written only when its content hash differs from the latest version."""

    __tablename__ = "configuration_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    collected_at: Mapped[datetime]
    content_hash: Mapped[str | None] = mapped_column(
        String(64), doc="sha256 of the raw content; NULL when the file is absent (deleted)."
    )
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    content: Mapped[str | None] = mapped_column(Text, doc="The content with secrets redacted.")

    __table_args__ = (Index("ix_config_snapshots_device_path", "device", "path", "id"),)


class ConfigurationChangeEvent(Base):
    """A detected change of a watched file: the diff, its risk and why (time series)."""

    __tablename__ = "configuration_change_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    detected_at: Mapped[datetime]
    device: Mapped[str] = mapped_column(String(63))
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    change_type: Mapped[str] = mapped_column(String(16), doc="created | modified | deleted")
    risk: Mapped[str] = mapped_column(String(8), doc="low | medium | high")
    reasons: Mapped[list[str]] = mapped_column(JSONType, default=list)
    affected_services: Mapped[list[str]] = mapped_column(JSONType, default=list)
    summary: Mapped[str] = mapped_column(Text, default="")
    diff: Mapped[str] = mapped_column(Text, default="", doc="Unified diff, secrets redacted.")
    from_snapshot_id: Mapped[int | None] = mapped_column(BigInteger)
    to_snapshot_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_config_changes_detected_at", "detected_at"),
        Index("ix_config_changes_device_detected_at", "device", "detected_at"),
        Index("ix_config_changes_device_path", "device", "path", "detected_at"),
    )


class StorageLayout(Base):
    """How the time-series tables are stored, chosen once by migration 0005 from the live database."""

    __tablename__ = "storage_layout"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[str] = mapped_column(String(16), doc="timescale | partitioned | plain")
    detail: Mapped[str] = mapped_column(Text, default="")
    policies: Mapped[str] = mapped_column(
        Text, default="", server_default="", doc="The retention and compression settings last applied."
    )
    configured_at: Mapped[datetime]


class PollLease(Base):
    """A claim on one poll: (device, category, slot) is collected by whichever replica inserts it first.

    A replica that dies leaves its claim uncompleted; once `expires_at` passes another replica may take it.
    """

    __tablename__ = "poll_leases"

    device: Mapped[str] = mapped_column(String(63), primary_key=True)
    category: Mapped[str] = mapped_column(String(32), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True, doc="floor(epoch seconds / interval).")
    owner: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(64), doc="The audit request_id of the poll's collections.")
    claimed_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_poll_leases_claimed_at", "claimed_at"),)


class DeviceHealthRow(Base):
    """The poller's circuit breaker per device, shared by every replica."""

    __tablename__ = "device_health"

    device: Mapped[str] = mapped_column(String(63), primary_key=True)
    breaker: Mapped[str] = mapped_column(String(16), doc="closed | open")
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None]
    retry_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]
    last_error_type: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(128))


class RegistryChange(Base):
    """One change to shared state that every running server must apply: a device added, updated or removed,
    a device's watch targets changed, or a new version of a watched file. Servers read the rows after the
    last one they applied (woken by NOTIFY on PostgreSQL, by `PRAGMA data_version` on SQLite); rows older
    than an hour are deleted."""

    __tablename__ = "registry_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    changed_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16), doc="device | watch | config")
    device: Mapped[str] = mapped_column(String(63))
    path: Mapped[str | None] = mapped_column(Text, doc="The watched path (config).")
    snapshot_id: Mapped[int | None] = mapped_column(BigInteger, doc="The new version (config).")
    event_id: Mapped[int | None] = mapped_column(BigInteger, doc="Its change event, if any (config).")
    origin: Mapped[str] = mapped_column(String(64), doc="The process that made it (it applied it already).")

    # AUTOINCREMENT on SQLite: ids never go back, even once every row was deleted
    __table_args__ = (Index("ix_registry_changes_changed_at", "changed_at"), {"sqlite_autoincrement": True})


class EventLogRow(Base):
    """What GET /api/v1/events streams, kept so a client resumes from its Last-Event-ID: configuration
    changes, device health changes and failed polls, as they happened on this replica."""

    __tablename__ = "event_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32), doc="config_change | device_health | poll_failure | alert")
    device: Mapped[str | None] = mapped_column(String(63))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (Index("ix_event_log_occurred_at", "occurred_at"),)


class AlertRuleRow(Base):
    """An alert rule (alerts.py); its webhook URL is a secret (`alert:<name>` in secrets)."""

    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(
        String(32), doc="disk_use | smart | device_down | config_risk | container_restarts"
    )
    device: Mapped[str | None] = mapped_column(String(63))
    threshold: Mapped[float | None] = mapped_column(Float)
    min_risk: Mapped[str | None] = mapped_column(String(8))
    window_minutes: Mapped[int | None] = mapped_column(Integer, doc="container_restarts: the window (M).")
    channel: Mapped[str] = mapped_column(String(16), doc="ntfy | gotify | webhook")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(255))


class AlertFiring(Base):
    """An alert rule's condition that holds for a subject now (it fired when the row was inserted)."""

    __tablename__ = "alert_firing"

    rule: Mapped[str] = mapped_column(String(63), primary_key=True)
    subject: Mapped[str] = mapped_column(String(512), primary_key=True)
    fired_at: Mapped[datetime]
