"""build_server(settings) -> FastMCP: the lifespan that builds AppState, middleware and registration."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastmcp import FastMCP
from fastmcp.tools import Tool
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_server import __version__
from mcp_server.audit import BatchWriter
from mcp_server.auth import SigningKey, dev_token_notice, required_scope, signing_key
from mcp_server.cache import CacheManager
from mcp_server.collection import UnifiedDataCollectionService
from mcp_server.commands import CommandRegistry, default_registry
from mcp_server.db import Database
from mcp_server.db.credentials import (
    check_schema_current,
    credential_provider,
    credentials_path,
    install_credential_hook,
)
from mcp_server.db.engine import migrate as migrate_url
from mcp_server.db.engine import redact_url
from mcp_server.db.tables import CacheMetadata
from mcp_server.devices import DeviceRegistry
from mcp_server.events import EventBus
from mcp_server.executors import LocalExecutor
from mcp_server.middleware import AuditMiddleware, ResultBudgetMiddleware
from mcp_server.secrets import SecretStore
from mcp_server.settings import Settings, load_settings
from mcp_server.ssh import SSHOptions, SSHPool

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Infrastructor gives read access to a fleet of Linux hosts ("devices") and a few audited write actions.
Start with list_devices, then get_fleet_overview for the whole fleet or get_system_metrics, get_disk_usage,
get_network_interfaces and list_processes for one device. Results are cached for a few seconds per command
(each says collected_at, from_cache and age_seconds); pass force_refresh=true when you need a fresh reading.
list_commands shows every registered command; collect runs one by name with parameters.
"""


@dataclass
class AppState:
    """Every live object of a running server, built once by the lifespan."""

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
    started_at: float = field(default_factory=time.monotonic)


@contextlib.asynccontextmanager
async def app_state(
    settings: Settings,
    *,
    migrate: bool = True,
    registry: CommandRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[AppState]:
    """Open the database (migrating it), load devices and build the collection pipeline.

    `registry` and `clock` exist for tests (extra commands, a controllable cache clock).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = await open_database(settings, migrate=migrate)
    secrets = SecretStore.from_settings(db, settings)
    devices = DeviceRegistry(db, secrets, local_device=settings.local_device)
    await devices.load()
    cache = CacheManager(settings.cache_max_entries, clock=clock)
    ssh = SSHPool(
        SSHOptions.from_settings(settings), lookup=devices.get, on_host_key_pinned=devices.pin_host_key
    )
    writer = BatchWriter(db, settings.data_dir / "spool", interval=settings.audit_flush_interval)
    events = EventBus()
    local = LocalExecutor()
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
    )
    state = AppState(settings, db, secrets, devices, registry, cache, ssh, local, writer, events, service)
    writer.start()
    snapshots = asyncio.create_task(_record_cache_stats(state), name="infra-cache-stats")
    log.info("database %s; %d devices", redact_url(db.url), len(devices.names()))
    try:
        yield state
    finally:
        snapshots.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await snapshots
        _queue_cache_stats(state)
        await ssh.close()
        await writer.close()
        await db.close()


def _queue_cache_stats(state: AppState) -> None:
    from datetime import UTC, datetime

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
        },
    )


async def _record_cache_stats(state: AppState, every: float = 60.0) -> None:
    while True:
        await asyncio.sleep(every)
        _queue_cache_stats(state)


def build_server(
    settings: Settings,
    *,
    transport: str = "memory",
    state: AppState | None = None,
    signing_key: SigningKey | None = None,
) -> FastMCP:
    """The MCP server: tools, resources and prompts over one AppState.

    Without `state` the lifespan builds (and closes) its own; with one, clients share that state.
    With `signing_key`, HTTP requests need a bearer JWT it verifies, and tools and resources need their scope.
    """
    from mcp_server import prompts, resources
    from mcp_server.tools import admin, containers, devices, host, services, storage, system

    running: dict[str, AppState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        if state is not None:
            yield {"state": state}
            return
        async with app_state(settings) as own:
            running["state"] = own
            try:
                yield {"state": own}
            finally:
                running.pop("state", None)

    audit = AuditMiddleware(settings, transport, enforce_scopes=signing_key is not None)
    mcp = FastMCP(
        "infrastructor",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        mask_error_details=True,
        auth=signing_key.verifier(settings) if signing_key is not None else None,
        middleware=[audit, ResultBudgetMiddleware(settings.max_result_chars)],
    )
    for area in (devices, system, containers, services, storage, host, admin):
        area.register(mcp)
    if not settings.allow_run_command:
        mcp.disable(names={"run_command"})
    # On the 2026-07-28 protocol the SDK checks Mcp-Param headers on every tools/call with arguments; without
    # a schema lookup it runs the whole tools/list chain per call (10-15 ms, most of a cached call's time).
    # Our tools declare no such headers, so their registered input schemas answer the same question.
    tools = [c for c in mcp.local_provider._components.values() if isinstance(c, Tool)]
    mcp._mcp_server.get_tool_input_schema = {t.name: t.parameters for t in tools}.get
    audit.tool_scopes = {t.name: required_scope(t.tags) for t in tools}
    resources.register(mcp)
    prompts.register(mcp)

    @mcp.custom_route("/health", methods=["GET"])
    async def health(_request: Request) -> JSONResponse:
        """Liveness and database reachability; no auth, nothing sensitive."""
        current = state or running.get("state")
        db_ok = await current.db.ping() if current else None
        body = {
            "status": "ok" if db_ok is not False else "degraded",
            "database": db_ok,
            "version": __version__,
        }
        return JSONResponse(body, status_code=200 if db_ok is not False else 503)

    return mcp


async def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """The database, migrated; with a bootstrapped application role, connected as that role."""
    db = Database(settings.resolved_database_url)
    if credentials_path(settings).exists():
        # the application role cannot create tables: migrate as the owner when given, else insist on head
        install_credential_hook(db.engine, credential_provider(settings))
        if migrate and settings.database_admin_url is not None:
            await asyncio.to_thread(migrate_url, settings.database_admin_url.get_secret_value())
        else:
            await check_schema_current(db)
    elif migrate:
        await db.migrate()
    return db


async def http_signing_key(settings: Settings) -> SigningKey | None:
    """The key that verifies bearer tokens (generated and stored on first start), or None with INFRA_AUTH=false."""
    if not settings.auth:
        return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = await open_database(settings)
    try:
        return await signing_key(settings, SecretStore.from_settings(db, settings))
    finally:
        await db.close()


def create_server() -> FastMCP:
    """Entry point for `fastmcp run fastmcp.json`: settings from the environment, auth as `serve` does it."""
    settings = load_settings()
    # fastmcp may call this factory from inside its event loop: resolve the key on a loop of our own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        key = pool.submit(asyncio.run, http_signing_key(settings)).result()
    if key is not None and key.generated:
        sys.stderr.write(dev_token_notice(key, settings) + "\n")
    return build_server(settings, transport="http", signing_key=key)
