"""The HTTP face of the server, built one way for every entry point (`infrastructor serve`, `fastmcp run`).

    uvicorn (GuardedH11Protocol: connection caps in all and per client IP, silent connections shed at a cap,
             header and body read timeouts, no proxy headers)
    └── Host/Origin check (DNS rebinding)
        └── bearer-token authentication (auth.py; a refused token leaves its reason in the scope)
            └── HttpGuard: per-subject (or per-IP) request rate -> 429; refused tokens -> audit (rate-limited)
                ├── /mcp -> BearerRequired: no accepted token -> 401 saying how to get one, with the metadata URL
                │   └── SessionManager: body-size cap, per-subject and total session caps -> 429/503,
                │       short idle expiry, session creation audited
                ├── /.well-known/oauth-protected-resource[/mcp]: RFC 9728 metadata, no token needed
                └── /ui: the operator console (console/): sign-in exchanges a token for a session cookie,
                    which ConsoleSession (right after authentication) accepts on /api/v1 from the console's
                    own pages, with a CSRF token on writes
(HttpGuard and SessionManager live in http_guard.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import h11
import uvicorn
from fastmcp.server.auth import AuthProvider
from fastmcp.server.http import (
    HostOriginGuardMiddleware,
    StarletteWithLifespan,
    StreamableHTTPASGIApp,
    create_base_app,
)
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from mcp_server.api import PREFIX, build_api
from mcp_server.auth import READ, REJECTION_SCOPE_KEY, SCOPES
from mcp_server.console import ConsoleSession, Sessions
from mcp_server.console import routes as console_routes
from mcp_server.errors import ConfigurationError
from mcp_server.fastmcp_internals import custom_routes, low_level, open_sessions
from mcp_server.http_guard import HttpGuard, SessionManager
from mcp_server.settings import Settings, comma_list

if TYPE_CHECKING:
    from mcp_server.server import InfrastructorServer

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
    return comma_list(settings.allowed_hosts)


# ---- bearer tokens: the 401 challenge and the protected-resource metadata (RFC 6750, RFC 9728) ------------

METADATA_PATH = "/.well-known/oauth-protected-resource"


Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


def request_origin(request: Request, trusted: Networks) -> str:
    """scheme://host[:port] as the client addressed us: the Host header (it has passed the Host check) and the
    scheme, which a proxy in INFRA_TRUSTED_PROXIES that terminates TLS gives as X-Forwarded-Proto."""
    scheme = request.url.scheme
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    peer = request.client.host if request.client else None
    if forwarded in ("http", "https") and peer is not None and trusted:
        with contextlib.suppress(ValueError):
            if any(ipaddress.ip_address(peer) in network for network in trusted):
                scheme = forwarded
    return f"{scheme}://{request.url.netloc}"


def _how_to_get_a_token(auth: AuthProvider) -> str:
    if getattr(auth, "algorithm", "HS256") == "HS256":
        return "create one with `infrastructor token create --subject NAME --scopes infra:read`"
    issuer = getattr(auth, "issuer", None)
    return f"get one from the identity provider that issues them{f' ({issuer})' if issuer else ''}"


class BearerRequired:
    """The MCP endpoint needs an accepted bearer token; otherwise 401 with a challenge that names the
    resource metadata (RFC 9728 §5.1) and says how to get a token, and the reason a token was refused."""

    def __init__(self, app: ASGIApp, *, path: str, auth: AuthProvider, trusted: Networks) -> None:
        self.app = app
        self.path = path
        self.hint = _how_to_get_a_token(auth)
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or isinstance(scope.get("user"), AuthenticatedUser):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        reason = scope.get(REJECTION_SCOPE_KEY)
        challenge = [
            f'scope="{READ}"',
            f'resource_metadata="{request_origin(request, self.trusted)}{METADATA_PATH}{self.path}"',
        ]
        if reason is None:  # no bearer token at all: no error attribute (RFC 6750 §3.1)
            body = {
                "error": "unauthorized",
                "error_description": f"This MCP endpoint needs a bearer token: send Authorization: Bearer "
                f"<token>; {self.hint}.",
            }
        else:
            described = f"the bearer token was refused ({reason})"
            challenge[:0] = ['error="invalid_token"', f'error_description="{described}"']
            body = {
                "error": "invalid_token",
                "error_description": f"The bearer token was refused ({reason}). Send a valid one as "
                f"Authorization: Bearer <token>; {self.hint}.",
            }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"www-authenticate", ("Bearer " + ", ".join(challenge)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def metadata_routes(path: str, auth: AuthProvider, trusted: Networks) -> list[BaseRoute]:
    """GET /.well-known/oauth-protected-resource (and with the MCP path appended, as RFC 9728 §3.1 and the
    MCP clients look for it): what this resource is and which scopes it knows. Tokens come from
    `infrastructor token create`, so no authorization server is named unless an identity provider issues
    them (RS256 with an https issuer)."""
    issuer = getattr(auth, "issuer", None)
    servers = (
        [issuer]
        if getattr(auth, "algorithm", "HS256") != "HS256"
        and isinstance(issuer, str)
        and issuer.startswith("https://")
        else []
    )

    async def metadata(request: Request) -> JSONResponse:
        document: dict[str, object] = {
            "resource": f"{request_origin(request, trusted)}{path}",
            "bearer_methods_supported": ["header"],
            "scopes_supported": list(SCOPES),
            "resource_name": "Infrastructor",
        }
        if servers:
            document["authorization_servers"] = servers
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})

    paths = dict.fromkeys([METADATA_PATH, f"{METADATA_PATH}{path.rstrip('/')}"])
    return [Route(p, endpoint=metadata, methods=["GET"]) for p in paths]


# ---- the app ----------------------------------------------------------------------------------------------


class ApiDispatch:
    """Every request under /api/v1 goes to the REST API app (api.py), whatever its path holds: a Mount's
    pattern does not match a path with a newline, which would get the outer app's plain-text 404."""

    def __init__(self, app: ASGIApp, *, api: ASGIApp) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.api({**scope, "root_path": scope.get("root_path", "") + PREFIX}, receive, send)
            return
        await self.app(scope, receive, send)


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
    hint = None
    sessions: Sessions | None = None
    if auth is not None:
        hint = _how_to_get_a_token(auth)
        middleware.extend(auth.get_middleware())
        trusted = settings.trusted_proxy_networks
        routes.extend(metadata_routes(path, auth, trusted))
        endpoint = BearerRequired(transport_app, path=path, auth=auth, trusted=trusted)
        sessions = Sessions(auth, settings)
        middleware.append(Middleware(ConsoleSession, server=server, sessions=sessions))
    middleware.append(Middleware(HttpGuard, settings=settings, path=path, state_of=server.state_of))
    # the REST API: behind the same Host/Origin check, authentication and guard (rate limit, body size)
    api = RequestBodyLimitMiddleware(build_api(server, auth_hint=hint), settings.http_max_body_bytes)
    middleware.append(Middleware(ApiDispatch, api=api))
    routes.append(Route(path, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    routes.extend(custom_routes(server))
    routes.extend(console_routes(server, sessions))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        manager = SessionManager(low_level(server), settings=settings, state_of=server.state_of)
        transport_app.session_manager = manager
        async with manager.run():
            try:
                yield
            finally:
                # end open sessions before the task group goes (an SSE stream cut mid-flight logs errors)
                for session in list(open_sessions(manager).values()):
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
    """uvicorn's HTTP/1.1 protocol with caps on open connections and deadlines for slow clients.

    At most `max_connections` connections are open, and at most `max_per_ip` from one client IP (the socket
    peer; `trusted` proxies, which carry many clients, only count against the total). A connection beyond a
    cap takes the place of one that is waiting for the first byte of a request: one that has never sent a
    byte first, else one idle between requests, the longest-waiting first. So connections opened and left
    silent cannot lock a client that sends its request out; only when every connection is busy is a new one
    refused (503).

    A request's headers must arrive within `header_timeout` of the connection opening (or of the previous
    response), and its body within `body_timeout` of the headers; otherwise the connection is answered 408
    and closed. uvicorn alone waits forever for a half-sent request.
    """

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 256
    max_per_ip = 64
    trusted: Networks = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None
        self._spoke = False
        self._idle_since: float | None = None
        super().connection_made(transport)
        refusal = self._make_room()
        if refusal is not None:
            log.warning("refused a connection from %s: %s", self.client, refusal)
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n"
                b"content-length: 0\r\n\r\n"
            )
            transport.close()
            return
        self._follow()

    def _make_room(self) -> str | None:
        """Shed a waiting connection for each cap this one would exceed; why it cannot be admitted, if so."""
        others = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and c is not self and not c.transport.is_closing()
        ]
        ip = self.client[0] if self.client else None
        if ip is not None and not self._trusted(ip):
            same = [c for c in others if c.client is not None and c.client[0] == ip]
            if len(same) >= self.max_per_ip and not _shed(same):
                return f"{len(same)} open from {ip} (INFRA_HTTP_MAX_CONNECTIONS_PER_IP)"
            others = [c for c in others if not c.transport.is_closing()]
        if len(others) >= self.max_connections and not _shed(others):
            return f"{len(others)} open (INFRA_HTTP_MAX_CONNECTIONS)"
        return None

    def _trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def waiting(self) -> tuple[bool, float] | None:
        """(has sent a byte, since when) while the connection waits for the first byte of a request."""
        return None if self._idle_since is None else (self._spoke, self._idle_since)

    def data_received(self, data: bytes) -> None:
        self._spoke = True
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline that matches what the client owes us now (headers, a body, or nothing), and note
        whether it is waiting for the first byte of a request."""
        idle = self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = self.loop.time()
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


def _shed(connections: list[GuardedH11Protocol]) -> bool:
    """Close the connection that has waited longest for a request's first byte, preferring one that never
    sent a byte; False when every one is busy."""
    waiting = [(w, c) for c in connections if (w := c.waiting()) is not None]
    if not waiting:
        return False
    _, victim = min(waiting, key=lambda pair: pair[0])
    log.debug("closed a waiting connection from %s to admit a new one", victim.client)
    victim.transport.close()
    return True


def protocol_for(settings: Settings) -> type[GuardedH11Protocol]:
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": settings.http_header_timeout,
            "body_timeout": settings.http_body_timeout,
            "max_connections": settings.http_max_connections,
            "max_per_ip": settings.http_max_connections_per_ip,
            "trusted": settings.trusted_proxy_networks,
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
