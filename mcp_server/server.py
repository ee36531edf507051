"""build_server(settings) -> FastMCP: auth, lifespan, middleware and the registration of every area."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import mcp_types as mt
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.http import HostOriginProtection, StarletteWithLifespan
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import Tool
from mcp import MCPError
from mcp.server.streamable_http import EventStore
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.middleware import Middleware as ASGIMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_server import __version__
from mcp_server.auth import SigningKey, dev_token_notice, required_scope
from mcp_server.config_monitoring.notifier import ConfigNotifier
from mcp_server.errors import ConfigurationError, InfrastructorError
from mcp_server.events import ConfigChanged
from mcp_server.fastmcp_internals import low_level
from mcp_server.logs import redact_log_handlers
from mcp_server.middleware import AuditMiddleware, InvalidParamsMiddleware, ResultBudgetMiddleware
from mcp_server.permissions import restrict_umask
from mcp_server.redact import redact_text
from mcp_server.settings import Settings, load_settings
from mcp_server.subscriptions import Subscriptions

if TYPE_CHECKING:
    from types import ModuleType

    from mcp_server.state import AppState

# What answers `initialize` is imported above; the state (SQLAlchemy, the tables, the parsers' models), the
# tools and the background services are imported where they are first needed, so that a deferred start
# (`serve --stdio`) answers before it loads them.

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Infrastructor gives read access to a fleet of Linux hosts ("devices") and a few audited write actions.
Start with list_devices, then find_problems for what needs attention on every device (worst first, each with
the call that shows more), get_fleet_overview for the fleet's headline numbers, or get_system_metrics,
get_disk_usage (then get_directory_usage for what fills a mount), get_network_interfaces and list_processes
for one device. Results are cached for a few seconds per command
(each says collected_at, from_cache and age_seconds); pass force_refresh=true when you need a fresh reading.
list_commands shows every registered command; collect runs one by name with parameters.
Configuration files watched with watch_config_file keep a version history: list_config_changes shows what
changed, how risky it is and why; get_config_diff shows the diff. Subscribe to infra://config/{device}/{path}
to be told when a watched file changes.
"""


_UNSUPPORTED = "Infrastructor builds its HTTP app itself, with its own settings (INFRA_*); remove"


class InfrastructorServer(FastMCP[dict[str, Any]]):
    """FastMCP with the server's settings attached. However it is served over HTTP (`infrastructor serve`,
    `fastmcp run fastmcp.json`, `http_app()` in tests), it goes through http_app.py and its refusals."""

    def __init__(self, settings: Settings, audit: AuditMiddleware, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.audit = audit
        self.app_state: AppState | None = None
        # tools the settings turn off (INFRA_READ_ONLY, INFRA_ALLOW_RUN_COMMAND): the REST API has no route for
        # them either (INFRA_TOOLSETS only trims what an agent's context pays for; it leaves the API whole)
        self.disabled_tools: set[str] = set()
        self.notifier = ConfigNotifier()
        self.subscriptions = Subscriptions(settings, audit, self.state_of, self.notifier)
        # A deferred start (build_server(defer_start=True)): the components still to build, and the task opening
        # the state; both are None once done (or when nothing was deferred).
        self.unbuilt: Callable[[], None] | None = None
        self.starting: asyncio.Task[None] | None = None
        # set by the first message after `initialize` (the client has its answer): a deferred start imports
        # and opens the state only then, so that its work does not hold up the answer
        self.negotiated = asyncio.Event()

    def state_of(self) -> AppState | None:
        """The running AppState (None before the lifespan has opened it)."""
        return self.app_state

    def build_deferred(self) -> None:
        """Build what a deferred start left for after `initialize` (tools, resources, prompts, views), once."""
        build, self.unbuilt = self.unbuilt, None
        if build is not None:
            build()

    async def started(self) -> None:
        """Wait until a deferred start has opened the state; raise why it could not (ConfigurationError)."""
        if self.starting is None:
            return
        try:
            await asyncio.shield(self.starting)
        except Exception as exc:
            raise ConfigurationError(start_failure(exc)) from exc

    def http_app(
        self,
        path: str | None = None,
        middleware: list[ASGIMiddleware] | None = None,
        json_response: bool | None = None,
        stateless_http: bool | None = None,
        transport: Literal["http", "streamable-http", "sse"] = "http",
        event_store: EventStore | None = None,
        retry_interval: int | None = None,
        host_origin_protection: HostOriginProtection | None = None,
        allowed_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        session_idle_timeout: float | Literal["auto"] | None = None,
    ) -> StarletteWithLifespan:
        given = {
            "middleware": middleware,
            "json_response": json_response,
            "stateless_http": stateless_http,
            "event_store": event_store,
            "retry_interval": retry_interval,
            "allowed_origins": allowed_origins,
            "session_idle_timeout": session_idle_timeout,
        }
        refused = [name for name, value in given.items() if value not in (None, False)]
        if transport == "sse" or host_origin_protection not in (None, True) or refused:
            what = ", ".join(refused + (["sse"] if transport == "sse" else []))
            raise ConfigurationError(f"{_UNSUPPORTED}: {what or 'host_origin_protection'}")
        from mcp_server.http_app import build_http_app  # the HTTP stack: not loaded to serve stdio

        return build_http_app(self, path=path or self.settings.http_path, extra_hosts=allowed_hosts)

    async def run_http_async(
        self,
        show_banner: bool = True,
        transport: Literal["http", "streamable-http", "sse"] = "http",
        host: str | None = None,
        port: int | None = None,
        log_level: str | None = None,
        path: str | None = None,
        uvicorn_config: dict[str, Any] | None = None,
        middleware: list[ASGIMiddleware] | None = None,
        json_response: bool | None = None,
        stateless_http: bool | None = None,
        stateless: bool | None = None,
        host_origin_protection: HostOriginProtection | None = None,
        allowed_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        given = {
            "uvicorn_config": uvicorn_config,
            "middleware": middleware,
            "json_response": json_response,
            "stateless": stateless_http or stateless,
            "allowed_hosts (use INFRA_ALLOWED_HOSTS)": allowed_hosts,
            "allowed_origins": allowed_origins,
            "sockets": sockets,
        }
        refused = [name for name, value in given.items() if value not in (None, False)]
        if transport == "sse" or host_origin_protection not in (None, True) or refused:
            what = ", ".join(refused + (["sse"] if transport == "sse" else []))
            raise ConfigurationError(f"{_UNSUPPORTED}: {what or 'host_origin_protection'}")
        from mcp_server.http_app import serve_http

        await serve_http(
            self,
            host=host or self.settings.http_host,
            port=port or self.settings.http_port,
            path=path or self.settings.http_path,
            log_level=log_level,
        )

    async def run_stdio_async(
        self, show_banner: bool = True, log_level: str | None = None, stateless: bool = False
    ) -> None:
        self.audit.transport = "stdio"  # the audit records the local user, as `serve --stdio` does
        await super().run_stdio_async(show_banner=show_banner, log_level=log_level, stateless=stateless)


def start_failure(exc: BaseException) -> str:
    """What a client and the log are told when the server could not open its state."""
    what = str(exc) if isinstance(exc, InfrastructorError) else f"{type(exc).__name__}: {exc}"
    return redact_text(
        f"the server could not open its state, so no tool can run: {what.rstrip('.')}. Fix what it names "
        "(INFRA_DATABASE_URL, INFRA_DATA_DIR, ...; `infrastructor migrate` shows a migration's whole error), "
        "then restart the server."
    )


# Answered at once by a deferred start: what a client waits for at launch (`initialize` up to the 2025
# protocols, `server/discover` on 2026-07-28), and pings.
NEGOTIATION = frozenset({"initialize", "server/discover", "ping"})
# Seconds a deferred start waits for the client to finish the handshake before it opens the state anyway
NEGOTIATION_WAIT = 2.0


class StartGate(Middleware):
    """A deferred start's gate (`serve --stdio`, whose client waits for `initialize` at every launch): the
    first message after `initialize` builds the tools, and every request but a ping or a listing waits until
    the state is open, or is answered with why it could not be opened."""

    def __init__(self) -> None:
        self.server: InfrastructorServer | None = None

    async def on_message(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        method = context.method or ""
        if self.server is not None and method not in NEGOTIATION:
            self.server.negotiated.set()
            self.server.build_deferred()
            if context.type == "request" and not method.endswith("/list") and method != "logging/setLevel":
                try:
                    await self.server.started()
                except ConfigurationError as exc:
                    if method == "tools/call":
                        raise ToolError(str(exc)) from exc
                    raise MCPError(code=mt.INTERNAL_ERROR, message=str(exc)) from exc
        return await call_next(context)


async def _stop_polling(state: AppState) -> None:
    if state.polling is not None:
        await state.polling.stop()
        state.polling = None


async def _stop_alerts(state: AppState) -> None:
    if state.alerts is not None:
        await state.alerts.stop()
        state.alerts = None


def build_server(
    settings: Settings,
    *,
    transport: str = "memory",
    state: AppState | None = None,
    signing_key: SigningKey | None = None,
    defer_start: bool = False,
) -> InfrastructorServer:
    """The MCP server: tools, resources and prompts over one AppState.

    Without `state` the lifespan builds (and closes) its own; with one, clients share that state.
    With `signing_key`, HTTP requests need a bearer JWT it verifies, and tools and resources need their scope.
    With `defer_start` (`serve --stdio`), the server answers `initialize` before it builds its tools and while
    it opens its state: see StartGate.
    """

    @contextlib.asynccontextmanager
    async def lifespan(server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        assert isinstance(server, InfrastructorServer)
        # FastMCP (run_stdio_async with a log level) and uvicorn replace their handlers after start-up
        redact_log_handlers()
        context: dict[str, Any] = {}  # FastMCP hands this very dict to every request: "state" once open

        async def start(stack: contextlib.AsyncExitStack) -> None:
            from mcp_server.alerts import AlertService
            from mcp_server.coherence import ChangeFeed
            from mcp_server.polling.service import PollingService
            from mcp_server.state import open_state

            running = state
            if running is None:
                # a state of its own: this server also runs its watchers and its poller (a shared state's
                # owner does that)
                running = await stack.enter_async_context(open_state(settings))
                feed = ChangeFeed(running, since=running.changes_seen)
                feed.start()  # before the watchers: on PostgreSQL it holds their leases
                running.feed = feed
                stack.push_async_callback(feed.stop)
                await running.config.start()
                running.polling = PollingService.of(running)
                running.polling.start()
                stack.push_async_callback(_stop_polling, running)
                running.alerts = AlertService(running)
                running.alerts.start()
                stack.push_async_callback(_stop_alerts, running)
                if transport in ("stdio", "http"):
                    # the CLI's collections on this data dir are answered here, over the pooled connections
                    from mcp_server.control import ControlSocket

                    control = ControlSocket(running)
                    await control.start()
                    stack.push_async_callback(control.stop)
            server.app_state = running
            stack.callback(setattr, server, "app_state", None)
            stack.callback(server.subscriptions.close)
            stack.callback(running.events.subscribe(server.notifier.on_event, types=(ConfigChanged,)))
            context["state"] = running

        opening = False  # the deferred start has stopped waiting for the handshake

        async def start_logged(stack: contextlib.AsyncExitStack) -> None:
            nonlocal opening
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.negotiated.wait(), NEGOTIATION_WAIT)
            opening = True
            try:
                await start(stack)
            except Exception as exc:
                log.error("%s", start_failure(exc))
                raise

        async with contextlib.AsyncExitStack() as stack:
            if not defer_start:
                await start(stack)
                yield context
                return
            server.starting = asyncio.create_task(start_logged(stack), name="infra-start")
            try:
                yield context
            finally:
                if not opening:  # the client left before its handshake ended: nothing to open, or to close
                    server.starting.cancel()
                # what the start entered is in `stack`: it finishes before the stack unwinds (a cancelled
                # open_state would leave its database connections open)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await server.starting
                server.starting = None

    # Log notifications (tools/notify.py) are a deprecated feature used on purpose: its one warning per
    # process says nothing the operator can act on. Clients that set no level get warnings and above.
    warnings.filterwarnings(
        "ignore", "The logging capability is deprecated", MCPDeprecationWarning, r"fastmcp\.server\.context"
    )
    audit = AuditMiddleware(settings, transport, enforce_scopes=signing_key is not None)
    budget = ResultBudgetMiddleware(settings.max_result_chars)
    invalid = InvalidParamsMiddleware()
    gate = StartGate()
    mcp = InfrastructorServer(
        settings,
        audit,
        name="infrastructor",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        mask_error_details=True,
        client_log_level="warning",
        auth=signing_key.verifier(settings) if signing_key is not None else None,
        middleware=[gate, audit, invalid, budget] if defer_start else [audit, invalid, budget],
    )
    # On the 2026-07-28 protocol the SDK checks Mcp-Param headers on every tools/call with arguments; without
    # a schema lookup it runs the whole tools/list chain per call (10-15 ms, most of a cached call's time).
    # Our tools declare no such headers, so their registered input schemas answer the same question.
    input_schemas: dict[str, dict[str, Any]] = {}
    low_level(mcp).get_tool_input_schema = input_schemas.get

    def build_tools() -> None:
        from mcp_server.tools import KEEP_NEWEST

        tools = _register_tools(mcp, settings)
        invalid.offered = {t.name for t in tools}
        input_schemas.update({t.name: t.parameters for t in tools})
        audit.tool_scopes = {t.name: required_scope(t.tags) for t in tools}
        budget.keep_newest = {t.name for t in tools if KEEP_NEWEST in t.tags}

    def build_components() -> None:
        from mcp_server import prompts, resources, ui

        build_tools()
        resources.register(mcp)
        ui.register(mcp)
        prompts.register(mcp, offered=settings.offered_toolsets)

    mcp.subscriptions.install(mcp)
    if defer_start:
        # their schemas and imports are most of a start's work, and a client waits for `initialize` at every
        # launch: built by the first message after it
        mcp.unbuilt = build_components
        gate.server = mcp
    else:
        build_components()

    @mcp.custom_route("/health", methods=["GET"])
    async def health(_request: Request) -> JSONResponse:
        """Liveness and database reachability; no auth, nothing sensitive."""
        current = mcp.state_of()
        db_ok = await current.db.ping() if current else None
        body = {
            "status": "ok" if db_ok is not False else "degraded",
            "database": db_ok,
            "version": __version__,
        }
        return JSONResponse(body, status_code=200 if db_ok is not False else 503)

    return mcp


def areas() -> tuple[ModuleType, ...]:
    """The tool modules, each with its `TOOLS` and `TOOLSET`."""
    from mcp_server.tools import (
        admin,
        config,
        containers,
        devices,
        history,
        host,
        network,
        services,
        storage,
        system,
    )

    return (devices, system, network, storage, containers, services, host, admin, config, history)


# Offered whatever the toolsets: every other tool takes a device name from it.
ALWAYS_OFFERED = {"list_devices"}


def _register_tools(mcp: InfrastructorServer, settings: Settings) -> list[Tool]:
    """Register the tools the settings offer (INFRA_TOOLSETS, INFRA_READ_ONLY, INFRA_ALLOW_RUN_COMMAND), with
    compact listed schemas; the others are not built at all (their schemas are most of a start's work), so
    they are unknown to clients. Those that read-only or run_command settings turn off are recorded in
    `mcp.disabled_tools`: the REST API has no route for them either. Returns the registered tools."""
    from mcp_server.tools.schemas import compact, lean

    registered: list[Tool] = []
    for area in areas():
        for fn in area.TOOLS:
            name = fn.__name__
            annotations = fn.__fastmcp__.annotations  # set by @tool
            if settings.read_only and not (annotations is not None and annotations.read_only_hint):
                mcp.disabled_tools.add(name)
                continue
            if name == "run_command" and not settings.allow_run_command:
                mcp.disabled_tools.add(name)
                continue
            if area.TOOLSET not in settings.offered_toolsets and name not in ALWAYS_OFFERED:
                continue
            component = mcp.add_tool(fn)
            registered.append(component)
            if settings.tool_schemas == "compact":
                compact(component)
            lean(component)
    return registered


async def http_signing_key(settings: Settings) -> SigningKey | None:
    """The key that verifies bearer tokens (generated and stored on first start), or None with INFRA_AUTH=false."""
    if not settings.auth:
        return None
    from mcp_server.auth import signing_key
    from mcp_server.secrets import SecretStore
    from mcp_server.state import open_database

    db = await open_database(settings)
    try:
        return await signing_key(settings, SecretStore.from_settings(db, settings))
    finally:
        await db.close()


def create_server() -> InfrastructorServer:
    """Entry point for `fastmcp run fastmcp.json`: settings from the environment, auth as `serve` does it.

    Serving it over HTTP goes through the same app builder and refusals as `infrastructor serve`
    (InfrastructorServer.run_http_async); host, port and path default to INFRA_HTTP_*.
    """
    restrict_umask()
    redact_log_handlers()
    settings = load_settings()
    # fastmcp may call this factory from inside its event loop: resolve the key on a loop of our own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        key = pool.submit(asyncio.run, http_signing_key(settings)).result()
    if key is not None and key.generated:
        sys.stderr.write(dev_token_notice(key, settings) + "\n")
    return build_server(settings, transport="http", signing_key=key)
