"""The HTTP face of the server, built one way for every entry point (`infrastructor serve`, `fastmcp run`).

uvicorn (GuardedH11Protocol: connection cap, header and body read timeouts, no proxy headers)
└── Host/Origin check (DNS rebinding)
    └── bearer-token authentication (auth.py; a refused token leaves its reason in the scope)
        └── HttpGuard: per-subject (or per-IP) request rate -> 429; refused tokens -> audit (rate-limited)
            └── /mcp -> SessionManager: body-size cap, per-subject and total session caps -> 429/503,
                short idle expiry, session creation audited
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import cachetools
import h11
import uvicorn
from fastmcp.server.auth.middleware import RequireAuthMiddleware
from fastmcp.server.http import (
    FastMCPStreamableHTTPSessionManager,
    HostOriginGuardMiddleware,
    StarletteWithLifespan,
    StreamableHTTPASGIApp,
    create_base_app,
)
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.transport_security import RequestBodyLimitMiddleware, TransportSecuritySettings
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mcp_server.auth import ADMIN, REJECTION_SCOPE_KEY, granted, unverified_claims
from mcp_server.errors import ConfigurationError
from mcp_server.middleware import client_ip
from mcp_server.redact import digest
from mcp_server.settings import Settings

if TYPE_CHECKING:
    from mcp_server.server import InfrastructorServer
    from mcp_server.state import AppState

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, auth: bool) -> None:
    """The refusal every entry point applies before listening: no auth off a loopback address."""
    if not auth and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host} with INFRA_AUTH=false: without bearer-token auth the server only "
            "listens on loopback (127.0.0.1, ::1, localhost)."
        )


def allowed_hosts(settings: Settings) -> list[str]:
    return [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]


# ---- rate limits ------------------------------------------------------------------------------------------


class RateLimiter:
    """Token buckets per key: `per_minute` sustained, `burst` at once. Keys beyond `max_keys` (least
    recently seen first) are forgotten, which only ever gives a forgotten key a full bucket again."""

    def __init__(
        self,
        per_minute: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: cachetools.LRUCache[str, tuple[float, float]] = cachetools.LRUCache(max_keys)

    def acquire(self, key: str) -> float:
        """0 when a request for `key` may go ahead now, else the seconds until it may."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


def _json_error(status: int, message: str, retry_after: float | None = None) -> Response:
    """A JSON-RPC error body (no request id) with the given HTTP status, as the MCP SDK answers."""
    body = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INTERNAL_ERROR, message=message))
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return Response(
        body.model_dump_json(by_alias=True, exclude_unset=True),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _principal(scope: Scope) -> tuple[str | None, set[str]]:
    """The verified subject of the request (sub, else client id) and its effective scopes."""
    user = scope.get("user")
    if not isinstance(user, AuthenticatedUser):
        return None, set()
    token = user.access_token
    subject = (token.claims or {}).get("sub")
    return str(subject or token.client_id), granted(token.scopes)


class AuthFailureLog:
    """Refused bearer tokens, written to the audit log at most `per_minute` times a minute in all and a tenth
    of that per client IP, so a flood cannot fill the disk; what is left out is counted in the next row."""

    def __init__(
        self,
        per_minute: int,
        state_of: Callable[[], AppState | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self._state_of = state_of
        per_ip = max(per_minute // 10, 1)
        self._all = RateLimiter(per_minute, max(per_minute, 1), clock=clock)
        self._per_ip = RateLimiter(per_ip, per_ip, clock=clock)
        self.suppressed = 0

    def record(self, scope: Scope, ip: str | None, reason: str) -> None:
        state = self._state_of()
        if (
            state is None
            or self.per_minute == 0
            or self._per_ip.acquire(ip or "?")
            or self._all.acquire("all")
        ):
            self.suppressed += 1
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        claims = unverified_claims(header[7:].strip()) if header[:7].lower() == "bearer " else None
        claimed = (claims or {}).get("sub")
        state.writer.audit(
            occurred_at=datetime.now(UTC),
            kind="auth",
            request_id=None,
            transport="http",
            tool=None,
            subject=None,  # nothing about a refused token is verified
            client_id=None,
            client_ip=ip,
            user_agent=request.headers.get("user-agent"),
            request_path=request.url.path,
            arguments={
                "claimed_subject": claimed if isinstance(claimed, str) else None,
                "not_recorded_before": self.suppressed,
            },
            device=None,
            command=None,
            params=None,
            cache_hit=False,
            ssh_commands=[],
            duration_ms=0.0,
            outcome="denied",
            error_type="invalid_token",
            error_message=f"token refused: {reason}",
        )
        self.suppressed = 0


class HttpGuard:
    """Per-subject request rate (per client IP without a valid token) on the MCP endpoint, answered with 429
    and Retry-After; refused tokens are audited. Sits inside authentication, so the subject is known."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        path: str,
        state_of: Callable[[], AppState | None],
    ) -> None:
        self.app = app
        self.path = path.rstrip("/") or "/"
        self.trusted = settings.trusted_proxy_networks
        self.limiter = RateLimiter(settings.http_rate_limit, settings.http_rate_burst)
        self.failures = AuthFailureLog(settings.audit_auth_failures_per_minute, state_of)
        self._warned: cachetools.TTLCache[str, bool] = cachetools.TTLCache(maxsize=1024, ttl=60)
        self.rate_per_minute = settings.http_rate_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"].rstrip("/") or "/") != self.path:
            await self.app(scope, receive, send)
            return
        subject, _ = _principal(scope)
        ip = client_ip(Request(scope), self.trusted)
        key = f"subject:{subject}" if subject is not None else f"ip:{ip}"
        wait = self.limiter.acquire(key)
        if wait:
            if key not in self._warned:
                self._warned[key] = True
                log.warning("rate limit: %s is over %d requests a minute", key, self.rate_per_minute)
            who = f"subject {subject!r}" if subject is not None else f"client {ip}"
            await _json_error(
                429,
                f"Too many requests: {who} is over {self.rate_per_minute} requests a minute "
                f"(INFRA_HTTP_RATE_LIMIT); retry after {max(1, math.ceil(wait))} s.",
                wait,
            )(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        reason = scope.get(REJECTION_SCOPE_KEY)
        if status and status[0] == 401 and reason:
            self.failures.record(scope, ip, str(reason))


# ---- sessions ---------------------------------------------------------------------------------------------


class SessionManager(FastMCPStreamableHTTPSessionManager):
    """FastMCP's session manager with caps that one token cannot exhaust for everyone else.

    Each subject holds at most INFRA_HTTP_MAX_SESSIONS_PER_SUBJECT sessions (429 beyond, Retry-After when
    its soonest idle session expires); INFRA_HTTP_MAX_SESSIONS caps them all (503), except for admin tokens,
    which stay within their own per-subject cap. Sessions close after INFRA_HTTP_SESSION_IDLE_TIMEOUT idle
    seconds; each one opened (or refused) is audited. Stateless (2026-07-28) requests hold no session.
    """

    def __init__(self, app: Any, *, settings: Settings, state_of: Callable[[], AppState | None]) -> None:
        super().__init__(
            app=app,
            session_idle_timeout=settings.http_session_idle_timeout,
            # FastMCP's Host/Origin middleware guards the app (see build_http_app)
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self.max_request_body_size = settings.http_max_body_bytes
        self.asgi_app = RequestBodyLimitMiddleware(self._handle_request, settings.http_max_body_bytes)
        self.max_sessions = None  # the total cap is applied below, with room for admins
        self.total_cap = settings.http_max_sessions
        self.subject_cap = settings.http_max_sessions_per_subject
        self.trusted = settings.trusted_proxy_networks
        self._state_of = state_of
        self._owner: dict[str, str] = {}
        self._owned: defaultdict[str, set[str]] = defaultdict(set)

    def sessions_of(self, owner: str) -> int:
        return len(self._owned.get(owner, ()))

    async def _handle_stateful_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        if Request(scope).headers.get(MCP_SESSION_ID_HEADER) is not None:
            await super()._handle_stateful_request(scope, receive, send)
            return
        subject, scopes = _principal(scope)
        owner = subject or "(no token)"
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        async with self._session_creation_lock:
            refusal = self._refusal(owner, ADMIN in scopes)
            transport = None if refusal else self._admit_session(requestor)
            if transport is not None and transport.mcp_session_id is not None:
                self._owner[transport.mcp_session_id] = owner
                self._owned[owner].add(transport.mcp_session_id)
        if transport is None or transport.mcp_session_id is None:
            status, message, retry_after = refusal or (503, "no session could be opened", 1.0)
            self._audit(scope, subject, None, "denied", message)
            await _json_error(status, message, retry_after)(scope, receive, send)
            return
        session_id = transport.mcp_session_id

        async def audited(message: Message) -> None:
            # recorded as the answer starts, before the client can act on the new session
            if message["type"] == "http.response.start" and message["status"] < 400:
                self._audit(scope, subject, session_id, "ok", None)
            await send(message)

        await self._serve_opening_request(transport, scope, receive, audited)

    def _refusal(self, owner: str, admin: bool) -> tuple[int, str, float] | None:
        held = self._owned.get(owner, set())
        if len(held) >= self.subject_cap:
            return (
                429,
                f"Too many open MCP sessions: {owner} already holds {len(held)} "
                "(INFRA_HTTP_MAX_SESSIONS_PER_SUBJECT). End one (HTTP DELETE with its Mcp-Session-Id) or "
                "wait for an idle one to close.",
                self._soonest_expiry(held),
            )
        if not admin and len(self._server_instances) >= self.total_cap:
            return (
                503,
                f"Too many open MCP sessions in all ({len(self._server_instances)}, INFRA_HTTP_MAX_SESSIONS); "
                "retry later.",
                self._soonest_expiry(set(self._server_instances)),
            )
        return None

    def _soonest_expiry(self, session_ids: set[str]) -> float:
        """Seconds until the first of these sessions closes for idleness (its idle deadline)."""
        now = anyio.current_time()
        deadlines = [
            scope.deadline - now
            for sid in session_ids
            if (transport := self._server_instances.get(sid)) is not None
            and (scope := transport.idle_scope) is not None
            and math.isfinite(scope.deadline)
        ]
        return max(min(deadlines), 1.0) if deadlines else float(self.session_idle_timeout or 60)

    async def _discard_session(self, session_id: str, transport: Any) -> None:
        owner = self._owner.pop(session_id, None)
        if owner is not None:
            held = self._owned.get(owner)
            if held is not None:
                held.discard(session_id)
                if not held:
                    del self._owned[owner]
        await super()._discard_session(session_id, transport)

    def _audit(
        self, scope: Scope, subject: str | None, session_id: str | None, outcome: str, message: str | None
    ) -> None:
        state = self._state_of()
        if state is None:
            return
        request = Request(scope)
        user = scope.get("user")
        client = user.access_token.client_id if isinstance(user, AuthenticatedUser) else None
        state.writer.audit(
            occurred_at=datetime.now(UTC),
            kind="session",
            request_id=None,
            transport="http",
            tool=None,
            subject=subject,
            client_id=client,
            client_ip=client_ip(request, self.trusted),
            user_agent=request.headers.get("user-agent"),
            request_path=request.url.path,
            # the session id is a capability: only its fingerprint is kept
            arguments={"session": digest(session_id) if session_id else None},
            device=None,
            command=None,
            params=None,
            cache_hit=False,
            ssh_commands=[],
            duration_ms=0.0,
            outcome=outcome,
            error_type=None if outcome == "ok" else "session_limit",
            error_message=message,
        )


# ---- the app ----------------------------------------------------------------------------------------------


def build_http_app(
    server: InfrastructorServer, *, path: str, extra_hosts: list[str] | None = None
) -> StarletteWithLifespan:
    """The streamable-HTTP app: FastMCP's pieces, assembled with our guard and session manager."""
    settings = server.settings
    transport_app = StreamableHTTPASGIApp(None)
    routes: list[BaseRoute] = []
    middleware = [
        # Host/Origin validation against DNS rebinding, on every request (strict)
        Middleware(
            HostOriginGuardMiddleware,
            allowed_hosts=[*allowed_hosts(settings), *(extra_hosts or [])],
            allowed_origins=None,
            mode="strict",
        )
    ]
    auth = server.auth
    endpoint: ASGIApp = transport_app
    if auth is not None:
        middleware.extend(auth.get_middleware())
        routes.extend(auth.get_routes(mcp_path=path))
        endpoint = RequireAuthMiddleware(transport_app, auth.required_scopes, None, auth.challenge_scopes)
    middleware.append(Middleware(HttpGuard, settings=settings, path=path, state_of=server.state_of))
    routes.append(Route(path, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    routes.extend(server._get_additional_http_routes())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        manager = SessionManager(server._mcp_server, settings=settings, state_of=server.state_of)
        transport_app.session_manager = manager
        async with manager.run():
            try:
                yield
            finally:
                # end open sessions before the task group goes (an SSE stream cut mid-flight logs errors)
                for session in list(manager._server_instances.values()):
                    with contextlib.suppress(Exception):
                        await session.terminate()

    app = create_base_app(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.fastmcp_server = server
    app.state.fastmcp_auth = auth
    app.state.path = path
    app.state.transport_type = "streamable-http"
    return app


# ---- the server: connections, header and body read timeouts -----------------------------------------------


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a cap on open connections and deadlines for slow clients.

    A request's headers must arrive within `header_timeout` of the connection opening (or of the previous
    response), and its body within `body_timeout` of the headers; otherwise the connection is answered 408
    and closed. uvicorn alone waits forever for a half-sent request.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("refused a connection from %s: %d open", self.client, len(self.connections) - 1)
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n"
                b"content-length: 0\r\n\r\n"
            )
            transport.close()
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline that matches what the client owes us now (headers, a body, or nothing)."""
        if self.transport.is_closing():
            self._arm(None)
        elif self.conn.their_state is h11.IDLE:
            self._arm("headers")
        elif self.conn.their_state is h11.SEND_BODY:
            self._arm("body")
        else:
            self._arm(None)

    def _arm(self, waiting_for: str | None) -> None:
        if waiting_for == self._waiting_for:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = waiting_for
        if waiting_for is not None:
            timeout = self.header_timeout if waiting_for == "headers" else self.body_timeout
            self._deadline = self.loop.call_later(timeout, self._expired, waiting_for, timeout)

    def _expired(self, waiting_for: str, timeout: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        log.warning(
            "closed a connection from %s: request %s not received within %gs",
            self.client,
            waiting_for,
            timeout,
        )
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            )
        self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": settings.http_header_timeout,
            "body_timeout": settings.http_body_timeout,
            "max_connections": settings.http_max_connections,
        },
    )


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, host: str, port: int, log_level: str | None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        http=protocol_for(settings),
        ws="none",
        # The audit records the socket peer; forwarded headers count only through INFRA_TRUSTED_PROXIES.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=2,
        log_level=(log_level or settings.log_level).lower(),
    )


async def serve_http(
    server: InfrastructorServer, *, host: str, port: int, path: str, log_level: str | None = None
) -> None:
    """Listen on host:port until stopped, after the refusals every entry point shares."""
    check_bind(host, auth=server.auth is not None)
    app = build_http_app(server, path=path)
    log.info("serving MCP at http://%s:%d%s", host if ":" not in host else f"[{host}]", port, path)
    await uvicorn.Server(
        uvicorn_config(app, server.settings, host=host, port=port, log_level=log_level)
    ).serve()
