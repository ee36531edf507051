"""build_server(settings) -> FastMCP: auth, lifespan, middleware and the registration of every area."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastmcp import FastMCP
from fastmcp.tools import Tool
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_server import __version__, prompts, resources
from mcp_server.auth import SigningKey, dev_token_notice, required_scope, signing_key
from mcp_server.middleware import AuditMiddleware, ResultBudgetMiddleware
from mcp_server.polling.service import PollingService
from mcp_server.secrets import SecretStore
from mcp_server.settings import Settings, load_settings
from mcp_server.state import AppState, open_database, open_state
from mcp_server.tools import admin, containers, devices, history, host, services, storage, system

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Infrastructor gives read access to a fleet of Linux hosts ("devices") and a few audited write actions.
Start with list_devices, then get_fleet_overview for the whole fleet or get_system_metrics, get_disk_usage,
get_network_interfaces and list_processes for one device. Results are cached for a few seconds per command
(each says collected_at, from_cache and age_seconds); pass force_refresh=true when you need a fresh reading.
list_commands shows every registered command; collect runs one by name with parameters.
"""


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
    running: dict[str, AppState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        if state is not None:
            yield {"state": state}
            return
        async with open_state(settings) as own:
            running["state"] = own
            own.polling = PollingService(own)
            own.polling.start()
            try:
                yield {"state": own}
            finally:
                await own.polling.stop()
                own.polling = None
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
    for area in (devices, system, containers, services, storage, host, admin, history):
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
