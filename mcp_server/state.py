"""AppState: every live object of a running server, opened once and handed to tools, resources and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcp_server.cache import CacheManager
from mcp_server.collection import UnifiedDataCollectionService
from mcp_server.commands import CommandRegistry, default_registry
from mcp_server.config_monitoring.service import ConfigurationMonitoringService
from mcp_server.db import Database, changes
from mcp_server.db.credentials import (
    check_schema_current,
    credential_provider,
    credentials_path,
    install_credential_hook,
)
from mcp_server.db.engine import migrate as migrate_url
from mcp_server.db.engine import redact_url
from mcp_server.db.queries import AuditPage, audit_page
from mcp_server.db.storage import ConfigureReport
from mcp_server.db.storage import configure as configure_storage
from mcp_server.db.tables import CacheMetadata
from mcp_server.devices import Device, DeviceInfo, DeviceRegistry, describe
from mcp_server.errors import DatabaseTimeout
from mcp_server.event_log import record_events
from mcp_server.events import EventBus
from mcp_server.executors import LocalExecutor
from mcp_server.journal import BatchWriter
from mcp_server.permissions import secure_data_dir
from mcp_server.polling.breaker import BreakerPolicy, HealthBook
from mcp_server.secrets import SecretStore
from mcp_server.settings import Settings
from mcp_server.ssh import SSHOptions, SSHPool
from mcp_server.workers import WorkerPool

if TYPE_CHECKING:
    from mcp_server.alerts import AlertService
    from mcp_server.coherence import ChangeFeed
    from mcp_server.polling.service import PollingService

log = logging.getLogger(__name__)

# After the database failed to answer a health reload in time, seconds before it is asked again
HEALTH_RETRY_AFTER = 30.0
# At shutdown, the time given to the database to take the journaled rows, and then to close its connections
SHUTDOWN_SHIP_SECONDS = 0.5


@dataclass
class AppState:
    """Every live object of a running server, built once by `open_state`."""

    settings: Settings
    db: Database
    secrets: SecretStore
    devices: DeviceRegistry
    registry: CommandRegistry
    cache: CacheManager
    ssh: SSHPool
    local: LocalExecutor
    writer: BatchWriter
    events: EventBus
    service: UnifiedDataCollectionService
    config: ConfigurationMonitoringService
    health: HealthBook
    started_at: float = field(default_factory=time.monotonic)
    polling: PollingService | None = None  # set while a server's lifespan runs the polling service
    feed: ChangeFeed | None = None  # set while a server's lifespan runs the change feed
    changes_seen: int = 0  # the last registry change already reflected in what open_state loaded
    alerts: AlertService | None = None  # set while a server's lifespan evaluates the alert rules
    health_retry_at: float = 0.0  # monotonic time before which refresh_health keeps the copy it has

    def describe(self, device: Device) -> DeviceInfo:
        """A device as clients see it, with whether its pooled connection is open now and its health."""
        return describe(
            device, connected=self.ssh.is_connected(device.name), health=self.health.get(device.name)
        )

    async def refresh_health(self) -> None:
        """Reload the devices' shared health (circuit breakers) if this copy is a few seconds old. A database
        that does not answer within INFRA_DB_READ_TIMEOUT leaves this copy in use, and is asked again only
        after HEALTH_RETRY_AFTER seconds, so the calls that show health answer from memory meanwhile."""
        if time.monotonic() < self.health_retry_at:
            return
        try:
            await self.health.refresh()
        except DatabaseTimeout as exc:
            self.health_retry_at = time.monotonic() + HEALTH_RETRY_AFTER
            log.warning("device health not reloaded, the last copy is shown: %s", exc)

    async def audit_page(self, *, limit: int, offset: int, **filters: Any) -> AuditPage:
        """Audit entries matching `filters`: everything audited up to this moment when the database takes it
        within a second or two, else what it holds, with how far behind it is."""
        await self.writer.caught_up(min(2.0, self.settings.audit_write_timeout))
        async with self.db.read_session() as session:
            page = await audit_page(session, limit=limit, offset=offset, **filters)
        status = self.writer.status()
        page.unshipped_rows = status.pending_rows
        page.oldest_unshipped_seconds = status.oldest_unshipped_seconds
        return page

    async def forget_connection(self, name: str) -> int:
        """Close a changed or removed device's connection and drop its cached results; returns how many."""
        await self.ssh.drop(name)
        return self.cache.invalidate(device=name)


def current_state() -> AppState:
    """Dependency for tools and resources: the running server's AppState (hidden from schemas).

    FastMCP is imported here, at the first call, not with this module: the CLI opens state without it."""
    from fastmcp.server.dependencies import get_context

    return get_context().lifespan_context["state"]  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def open_state(
    settings: Settings,
    *,
    migrate: bool = True,
    registry: CommandRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[AppState]:
    """Open the database (migrating it), load devices and build the collection pipeline; close it all after.

    `registry` and `clock` exist for tests (extra commands, a controllable cache clock).
    """
    db = await open_database(settings, migrate=migrate)
    secrets = SecretStore.from_settings(db, settings)
    events = EventBus()
    devices = DeviceRegistry(
        db,
        secrets,
        local_device=settings.local_device,
        max_devices=settings.max_devices,
        file_dirs=settings.ssh_file_directories,
        data_dir=settings.data_dir,
        events=events,
    )
    async with db.read_session() as session:
        seen = await changes.latest_id(session)  # before loading: a change made meanwhile is applied again
    await devices.load()
    cache = CacheManager(settings.cache_max_entries, clock=clock)
    ssh = SSHPool(
        SSHOptions.from_settings(settings), lookup=devices.get, on_host_key_pinned=devices.pin_host_key
    )
    writer = BatchWriter(
        db,
        settings.data_dir / "spool",
        interval=settings.audit_flush_interval,
        write_timeout=settings.audit_write_timeout,
        queue_max=settings.audit_queue_max,
        journal_max_bytes=int(settings.audit_journal_max_mb * (1 << 20)),
        connect=lambda: connect_database(settings, durable_commits=True),
    )
    local = LocalExecutor(max_output=settings.max_output_bytes)
    workers = WorkerPool(size=min(2, os.cpu_count() or 1), memory_mb=settings.parse_memory_mb)
    registry = registry or default_registry()
    service = UnifiedDataCollectionService(
        settings,
        registry=registry,
        devices=devices,
        cache=cache,
        ssh=ssh,
        local=local,
        writer=writer,
        events=events,
        workers=workers,
    )
    config = ConfigurationMonitoringService(settings, service=service, db=db, devices=devices, events=events)
    policy = BreakerPolicy(
        settings.poll_breaker_threshold, settings.poll_breaker_backoff, settings.poll_breaker_max_backoff
    )
    health = HealthBook(db, policy, settings.replica_name, events=events)
    state = AppState(
        settings, db, secrets, devices, registry, cache, ssh, local, writer, events, service, config, health
    )
    state.changes_seen = seen
    writer.start()
    stop_recording = record_events(events, writer)  # what GET /api/v1/events streams and resumes from
    snapshots = asyncio.create_task(
        _record_cache_stats(state, settings.poll_report_interval), name="infra-cache-stats"
    )
    log.info("database %s; %d devices", redact_url(db.url), len(devices.names()))
    try:
        yield state
    finally:
        stop_recording()
        snapshots.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await snapshots
        await config.stop()  # watchers run commands: stop them before the pool and the writer close
        _queue_cache_stats(state)
        await ssh.close()
        await workers.close()
        await writer.close(timeout=SHUTDOWN_SHIP_SECONDS)  # what the database does not take stays journaled
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_SHIP_SECONDS):  # a hung database must not hold up the exit
                await db.close()


async def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """The database, migrated; with a bootstrapped application role, connected as that role.

    The data dir is made private first (created 0700, or tightened with a warning): every command that
    touches state comes through here.
    """
    secure_data_dir(settings.data_dir)
    db = connect_database(settings)
    if credentials_path(settings).exists():
        # the application role cannot create tables: migrate as the owner when given, else insist on head
        if migrate and settings.database_admin_url is not None:
            await migrate_and_configure(settings.database_admin_url.get_secret_value(), settings)
        else:
            await check_schema_current(db)
    elif migrate:
        await db.migrate()
        await configure_storage(db, settings)
    return db


def connect_database(settings: Settings, *, durable_commits: bool = False) -> Database:
    """A new engine on the configured database, logging in as the bootstrapped role when there is one."""
    db = Database(settings.resolved_database_url, durable_commits=durable_commits)
    if credentials_path(settings).exists():
        install_credential_hook(db.engine, credential_provider(settings))
    return db


async def migrate_and_configure(url: str, settings: Settings, *, run_jobs: bool = False) -> ConfigureReport:
    """Migrate the database at `url` to the latest schema and apply the storage settings (as its owner);
    with `run_jobs`, also run the TimescaleDB policies whose scheduler runs fail."""
    await asyncio.to_thread(migrate_url, url)
    owner = Database(url)
    try:
        return await configure_storage(owner, settings, run_jobs=run_jobs)
    finally:
        await owner.close()


def _queue_cache_stats(state: AppState) -> None:
    s = state.cache.stats()
    state.writer.add(
        CacheMetadata,
        {
            "recorded_at": datetime.now(UTC),
            "entries": s.entries,
            "max_entries": s.max_entries,
            "hits": s.hits,
            "misses": s.misses,
            "evictions": s.evictions,
            "expirations": s.expirations,
            "hit_ratio": s.hit_ratio,
            "replica": state.settings.replica_name,
        },
    )


async def _record_cache_stats(state: AppState, every: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every)
        _queue_cache_stats(state)
