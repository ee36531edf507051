"""build_server(settings) -> FastMCP: the lifespan that builds AppState, middleware and registration."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as mt
from fastmcp import FastMCP
from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import ToolResult
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_server import __version__
from mcp_server.audit import BatchWriter, CallContext, calling
from mcp_server.budget import fit
from mcp_server.cache import CacheManager
from mcp_server.collection import UnifiedDataCollectionService
from mcp_server.commands import CommandRegistry, default_registry
from mcp_server.db import Database
from mcp_server.db.engine import redact_url
from mcp_server.db.tables import CacheMetadata
from mcp_server.devices import DeviceRegistry
from mcp_server.events import EventBus
from mcp_server.executors import LocalExecutor
from mcp_server.secrets import SecretStore, load_master_keys
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
    db = Database(settings.resolved_database_url)
    if migrate:
        await db.migrate()
    secrets = SecretStore(db, load_master_keys(settings))
    devices = DeviceRegistry(db, secrets, local_device=settings.local_device)
    await devices.load()
    cache = CacheManager(settings.cache_max_entries, clock=clock)
    ssh = SSHPool(
        SSHOptions.from_settings(settings), lookup=devices.get, on_host_key_pinned=devices.pin_host_key
    )
    writer = BatchWriter(db, interval=settings.audit_flush_interval)
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


class CallContextMiddleware(Middleware):
    """Records who is calling (transport, client IP, user agent, request id) for the audit rows."""

    def __init__(self, transport: str) -> None:
        self.transport = transport

    def _context(self, tool: str) -> CallContext:
        try:
            request = get_http_request()
        except RuntimeError:
            transport = self.transport
            return CallContext(
                transport=transport,
                tool=tool,
                subject=f"local:{getpass.getuser()}" if transport == "stdio" else None,
            )
        return CallContext(
            transport="http",
            tool=tool,
            client_ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
            request_path=request.url.path,
        )

    async def on_call_tool(
        self, context: MiddlewareContext[mt.CallToolRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        with calling(self._context(context.message.name)):
            return await call_next(context)

    async def on_read_resource(
        self, context: MiddlewareContext[mt.ReadResourceRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        with calling(self._context(str(context.message.uri))):
            return await call_next(context)


class ResultBudgetMiddleware(Middleware):
    """Keeps every tool result within INFRA_MAX_RESULT_CHARS, cutting whole list items (see budget.py)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    async def on_call_tool(
        self, context: MiddlewareContext[mt.CallToolRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        result = await call_next(context)
        structured = getattr(result, "structured_content", None)
        if not structured:
            return result
        fitted = fit(structured, self.max_chars)
        if fitted is structured:
            return result
        text = json.dumps(fitted, separators=(",", ":"), default=str)
        return ToolResult(
            content=[mt.TextContent(type="text", text=text)], structured_content=fitted, meta=result.meta
        )


def build_server(settings: Settings, *, transport: str = "memory", state: AppState | None = None) -> FastMCP:
    """The MCP server: tools, resources and prompts over one AppState.

    Without `state` the lifespan builds (and closes) its own; with one, clients share that state.
    """
    from mcp_server import prompts, resources
    from mcp_server.tools import containers, devices, host, services, storage, system

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

    mcp = FastMCP(
        "infrastructor",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        mask_error_details=True,
        middleware=[CallContextMiddleware(transport), ResultBudgetMiddleware(settings.max_result_chars)],
    )
    for area in (devices, system, containers, services, storage, host):
        area.register(mcp)
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


def create_server() -> FastMCP:
    """Entry point for `fastmcp run fastmcp.json`: settings from the environment."""
    return build_server(load_settings(), transport="http")
