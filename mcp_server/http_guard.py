"""Limits inside the HTTP app: request rate per subject, session caps, and the audit of refused tokens.

HttpGuard sits inside authentication (the subject is known) on the MCP endpoint; SessionManager is FastMCP's
streamable-HTTP session manager with caps that one token cannot exhaust for everyone else. See http_app.py
for where they sit in the stack.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import cachetools
from fastmcp.server.http import FastMCPStreamableHTTPSessionManager
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.transport_security import RequestBodyLimitMiddleware, TransportSecuritySettings
from mcp_types import INTERNAL_ERROR, ErrorData, JSONRPCError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server.audit import CallContext
from mcp_server.auth import ADMIN, REJECTION_SCOPE_KEY, granted, unverified_claims
from mcp_server.fastmcp_internals import open_sessions
from mcp_server.middleware import client_ip
from mcp_server.redact import digest
from mcp_server.settings import Settings

if TYPE_CHECKING:
    from mcp_server.state import AppState

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
CONSOLE_SIGN_IN = "/ui/session"  # the console's sign-in (console/): rate-limited per client IP like the API

# Seconds an HTTP client refused while the audit catches up is told to wait (503 Retry-After).
OVERLOAD_RETRY_AFTER = 2


def audit_http_event(
    state: AppState,
    request: Request,
    *,
    kind: str,
    subject: str | None,
    client_id: str | None,
    ip: str | None,
    arguments: dict[str, Any],
    outcome: str,
    error_type: str | None,
    error_message: str | None,
) -> None:
    """An audit row for something the HTTP edge decided on its own (a refused token, a session opened or
    refused): no request id, no tool, no device, nothing run."""
    edge = CallContext(
        request_id=None,
        transport="http",
        subject=subject,
        client_id=client_id,
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
        request_path=request.url.path,
    )
    state.writer.audit(
        edge.to_audit(
            kind, outcome=outcome, error_type=error_type, error_message=error_message, arguments=arguments
        )
    )


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
        audit_http_event(
            state,
            request,
            kind="auth",
            subject=None,  # nothing about a refused token is verified
            client_id=None,
            ip=ip,
            arguments={
                "claimed_subject": claimed if isinstance(claimed, str) else None,
                "not_recorded_before": self.suppressed,
            },
            outcome="denied",
            error_type="invalid_token",
            error_message=f"token refused: {reason}",
        )
        self.suppressed = 0


class HttpGuard:
    """Per-subject request rate (per client IP without a valid token) on the MCP endpoint and the REST API,
    answered with 429 and Retry-After; refused tokens are audited. Sits inside authentication, so the subject is known."""

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
        self._state_of = state_of

    def _guarded(self, path: str) -> bool:
        """The MCP endpoint, the REST API (api.py) and the console's sign-in."""
        return (
            (path.rstrip("/") or "/") == self.path
            or path.startswith(API_PREFIX + "/")
            or path == CONSOLE_SIGN_IN
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope["path"]):
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
        state = self._state_of()
        reason = state.writer.overloaded() if state is not None and scope["method"] == "POST" else None
        if state is not None and reason is not None:
            state.writer.refused += 1
            message = (
                f"The server is overloaded: {reason}. Retry after {OVERLOAD_RETRY_AFTER} s; nothing was done."
            )
            audit_http_event(
                state,
                Request(scope),
                kind="request",
                subject=subject,
                client_id=None,
                ip=ip,
                arguments={},
                outcome="denied",
                error_type="overloaded",
                error_message=message,
            )
            await _json_error(503, message, OVERLOAD_RETRY_AFTER)(scope, receive, send)
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
        if not admin and len(open_sessions(self)) >= self.total_cap:
            return (
                503,
                f"Too many open MCP sessions in all ({len(open_sessions(self))}, INFRA_HTTP_MAX_SESSIONS); "
                "retry later.",
                self._soonest_expiry(set(open_sessions(self))),
            )
        return None

    def _soonest_expiry(self, session_ids: set[str]) -> float:
        """Seconds until the first of these sessions closes for idleness (its idle deadline)."""
        now = anyio.current_time()
        deadlines = [
            scope.deadline - now
            for sid in session_ids
            if (transport := open_sessions(self).get(sid)) is not None
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
        audit_http_event(
            state,
            request,
            kind="session",
            subject=subject,
            client_id=client,
            ip=client_ip(request, self.trusted),
            # the session id is a capability: only its fingerprint is kept
            arguments={"session": digest(session_id) if session_id else None},
            outcome=outcome,
            error_type=None if outcome == "ok" else "session_limit",
            error_message=message,
        )
