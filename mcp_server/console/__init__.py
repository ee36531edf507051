"""The operator console at /ui: a few static pages and one small script (app.js, reusing the in-chat views'
views.js/views.css) that read and act through the REST API (/api/v1) with a session cookie.

Sign-in exchanges a bearer token (a form POST) for a signed session cookie: HttpOnly, SameSite=Strict, Secure
over https, bound to the token's subject and effective scopes and expiring with the token or after
INFRA_CONSOLE_SESSION_TTL, whichever is first. The token itself is not kept. On /api/v1 the cookie counts
only when no bearer token is sent and the request comes from the console's own origin (Sec-Fetch-Site, else
Origin); anything but GET/HEAD must also carry the session's CSRF token in X-CSRF-Token (double submit: the
`infra_csrf` cookie, readable by the script, holds the same value the signed session carries). The API then
applies its scopes and audit exactly as for a bearer token, with client id `console`. Sign-in, its refusals
and sign-out are audited (kind `session`).

Every console response carries a strict CSP (scripts and styles from this server's files only, no inline
code, fetches to this origin only); nothing is loaded from anywhere else.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import html
import json
import secrets
import time
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastmcp.server.auth import AccessToken
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_server.audit import CallContext
from mcp_server.auth import SCOPES, granted
from mcp_server.http_guard import API_PREFIX, CONSOLE_SIGN_IN, RateLimiter
from mcp_server.middleware import client_ip
from mcp_server.verifier import RememberingJWTVerifier

if TYPE_CHECKING:
    from mcp_server.server import InfrastructorServer
    from mcp_server.settings import Settings

PREFIX = "/ui"
SESSION_COOKIE = "infra_session"
CSRF_COOKIE = "infra_csrf"
CSRF_HEADER = "x-csrf-token"
CLIENT_ID = "console"
MAX_FORM_BYTES = 16_384
SAFE_METHODS = frozenset({"GET", "HEAD"})

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The files the console serves: its own, and the views it shares with the in-chat views (mcp_server.ui).
ASSETS = {
    "app.js": ("mcp_server.console", "text/javascript; charset=utf-8"),
    "app.css": ("mcp_server.console", "text/css; charset=utf-8"),
    "views.js": ("mcp_server.ui", "text/javascript; charset=utf-8"),
    "views.css": ("mcp_server.ui", "text/css; charset=utf-8"),
}


@functools.cache
def asset(package: str, name: str) -> bytes:
    return resources.files(package).joinpath(name).read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """What a console session cookie carries (signed): who, with which effective scopes, until when."""

    subject: str
    scopes: tuple[str, ...]
    expires_at: int
    csrf: str

    def access_token(self) -> AccessToken:
        return AccessToken(
            token="console-session",  # nothing secret: the cookie stands for the token
            client_id=CLIENT_ID,
            scopes=list(self.scopes),
            expires_at=self.expires_at,
            claims={"sub": self.subject, "console": True},
        )


class Sessions:
    """Signs and reads session cookies. With an HS256 signing key the cookie key is derived from it (sessions
    survive a restart and hold across replicas); with RS256 it is random per process."""

    def __init__(self, auth: Any, settings: Settings) -> None:
        secret = getattr(auth, "public_key", None)
        if getattr(auth, "algorithm", None) == "HS256" and isinstance(secret, str):
            self.key = hmac.new(secret.encode(), b"infrastructor console session v1", hashlib.sha256).digest()
        else:
            self.key = secrets.token_bytes(32)
        self.ttl = settings.console_session_ttl
        self.refusals = RefusalLog(settings.audit_auth_failures_per_minute)

    def sign(self, session: Session) -> str:
        payload = _b64(
            json.dumps(
                {
                    "sub": session.subject,
                    "scp": session.scopes,
                    "exp": session.expires_at,
                    "csrf": session.csrf,
                },
                separators=(",", ":"),
            ).encode()
        )
        mac = hmac.new(self.key, payload.encode(), hashlib.sha256).digest()
        return f"v1.{payload}.{_b64(mac)}"

    def read(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie holds, or None when it is missing, forged, malformed or expired."""
        if not cookie or len(cookie) > 4096:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or parts[0] != "v1":
            return None
        expected = hmac.new(self.key, parts[1].encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(expected, _unb64(parts[2])):
                return None
            data = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict):
            return None
        sub, scopes, exp, csrf = data.get("sub"), data.get("scp"), data.get("exp"), data.get("csrf")
        if not (
            isinstance(sub, str)
            and isinstance(scopes, list)
            and all(s in SCOPES for s in scopes)
            and isinstance(exp, int)
            and isinstance(csrf, str)
        ):
            return None
        if exp <= (time.time() if now is None else now):
            return None
        return Session(sub, tuple(scopes), exp, csrf)


def origin_of(request: Request, settings: Settings) -> str:
    from mcp_server.http_app import request_origin  # the scheme and host as the client addressed us

    return request_origin(request, settings.trusted_proxy_networks)


def same_origin(request: Request, settings: Settings) -> bool:
    """The request comes from a page of this origin: the browser says so (Sec-Fetch-Site), or, from a
    browser that does not send that header, its Origin is ours. Anything else (no header at all) is not."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    return origin is not None and origin == origin_of(request, settings)


class RefusalLog:
    """Refused sign-ins and refused session requests are audited at most INFRA_AUDIT_AUTH_FAILURES_PER_MINUTE
    times a minute in all and a tenth of that per client IP (as refused bearer tokens are), so a flood cannot
    fill the disk."""

    def __init__(self, per_minute: int) -> None:
        per_ip = max(per_minute // 10, 1)
        self.per_minute = per_minute
        self._all = RateLimiter(per_minute, max(per_minute, 1))
        self._per_ip = RateLimiter(per_ip, per_ip)

    def admits(self, ip: str | None) -> bool:
        return self.per_minute > 0 and not self._per_ip.acquire(ip or "?") and not self._all.acquire("all")


def _audit(
    server: InfrastructorServer,
    sessions: Sessions | None,
    request: Request,
    tool: str,
    *,
    subject: str | None,
    outcome: str,
    error_type: str | None = None,
    message: str | None = None,
) -> None:
    state = server.state_of()
    ip = client_ip(request, server.settings.trusted_proxy_networks)
    if state is None or (outcome != "ok" and sessions is not None and not sessions.refusals.admits(ip)):
        return
    ctx = CallContext(
        request_id=None,
        transport="http",
        tool=tool,
        subject=subject,
        client_id=CLIENT_ID,
        client_ip=ip,
        user_agent=(request.headers.get("user-agent") or "")[:512] or None,
        request_path=request.url.path,
    )
    state.writer.audit(
        ctx.to_audit("session", outcome=outcome, error_type=error_type, error_message=message, arguments={})
    )


def _refused(status: int, error_type: str, detail: str) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "error_type": error_type,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class ConsoleSession:
    """On /api/v1: a request without a bearer token but with a valid session cookie, from the console's own
    origin, is authenticated as the session's subject and scopes; a write without the session's CSRF token,
    or a cookie sent from elsewhere, is refused (403, audited). Sits right after authentication."""

    def __init__(self, app: ASGIApp, *, server: InfrastructorServer, sessions: Sessions) -> None:
        self.app = app
        self.server = server
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or isinstance(scope.get("user"), AuthenticatedUser)
            or not (path == API_PREFIX or path.startswith(API_PREFIX + "/"))
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None or request.headers.get("authorization"):
            await self.app(scope, receive, send)
            return
        problem = None
        if not same_origin(request, self.server.settings):
            problem = ("cross_origin", "The console session is only accepted from the console's own pages.")
        elif scope["method"] not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                problem = (
                    "csrf",
                    f"A console request that changes something needs the session's CSRF token in "
                    f"{CSRF_HEADER.title()} (the {CSRF_COOKIE} cookie); reload the console.",
                )
        if problem is not None:
            _audit(
                self.server,
                self.sessions,
                request,
                f"{scope['method']} {path[:200]}",
                subject=session.subject,
                outcome="denied",
                error_type=problem[0],
                message=problem[1],
            )
            await _refused(403, *problem)(scope, receive, send)
            return
        token = session.access_token()
        scope["user"] = AuthenticatedUser(token)
        scope["auth"] = AuthCredentials(token.scopes)
        await self.app(scope, receive, send)


def _page(name: str, **values: str) -> Response:
    text = asset("mcp_server.console", name).decode()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return Response(text, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


def routes(server: InfrastructorServer, sessions: Sessions | None) -> list[BaseRoute]:
    """/ui: the app page, the sign-in page and form, the session (for the script), sign-out, the assets."""
    settings = server.settings
    auth = server.auth

    def current(request: Request) -> Session | None:
        return None if sessions is None else sessions.read(request.cookies.get(SESSION_COOKIE))

    async def index(request: Request) -> Response:
        if sessions is not None and current(request) is None:
            return RedirectResponse(f"{PREFIX}/signin", status_code=303, headers=SECURITY_HEADERS)
        return _page("index.html")

    async def root(_request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    async def signin_page(_request: Request) -> Response:
        if sessions is None:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        return _page("signin.html", error="")

    def refuse(
        request: Request, status: int, error_type: str, message: str, claimed: str | None = None
    ) -> Response:
        _audit(
            server,
            sessions,
            request,
            "console.sign_in",
            subject=None,
            outcome="denied",
            error_type=error_type,
            message=message if claimed is None else f"{message} (claimed subject {claimed[:80]!r})",
        )
        page = _page("signin.html", error=message)
        page.status_code = status
        return page

    async def sign_in(request: Request) -> Response:
        if sessions is None or not isinstance(auth, RememberingJWTVerifier):
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        if not same_origin(request, settings):
            return refuse(request, 403, "cross_origin", "Sign in from the console's own sign-in page.")
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return refuse(request, 413, "invalid_token", "That is not a token (too long).")
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        raw = (form.get("token") or [""])[0].strip()
        if raw.lower().startswith("bearer "):
            raw = raw[7:].strip()
        if not raw:
            return refuse(request, 400, "invalid_token", "Paste a bearer token (infrastructor token create).")
        token, reason = await auth.check(raw)
        if token is None:
            return refuse(request, 401, "invalid_token", f"The token was refused ({reason}).")
        subject = str((token.claims or {}).get("sub") or token.client_id)
        now = int(time.time())
        expires = now + sessions.ttl
        if token.expires_at is not None:
            expires = min(expires, int(token.expires_at))
        session = Session(
            subject,
            tuple(s for s in SCOPES if s in granted(token.scopes)),
            expires,
            secrets.token_urlsafe(24),
        )
        _audit(server, sessions, request, "console.sign_in", subject=subject, outcome="ok")
        response = RedirectResponse(f"{PREFIX}/", status_code=303, headers=SECURITY_HEADERS)
        secure = origin_of(request, settings).startswith("https://")
        max_age = max(expires - now, 1)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.sign(session),
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        response.set_cookie(
            CSRF_COOKIE,
            session.csrf,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=False,
            samesite="strict",
        )
        return response

    async def session_info(request: Request) -> Response:
        if sessions is None:
            return JSONResponse(
                {"auth": False, "subject": None, "scopes": list(SCOPES), "expires_at": None, "csrf": ""},
                headers=SECURITY_HEADERS,
            )
        session = current(request)
        if session is None:
            return _refused(401, "unauthorized", "Not signed in: sign in at /ui/signin.")
        return JSONResponse(
            {
                "auth": True,
                "subject": session.subject,
                "scopes": list(session.scopes),
                "expires_at": session.expires_at,
                "csrf": session.csrf,
            },
            headers=SECURITY_HEADERS,
        )

    async def sign_out(request: Request) -> Response:
        session = current(request)
        if sessions is not None:
            if session is None:
                return _refused(401, "unauthorized", "Not signed in.")
            sent = request.headers.get(CSRF_HEADER, "")
            if not same_origin(request, settings) or not hmac.compare_digest(
                sent.encode(), session.csrf.encode()
            ):
                _audit(
                    server,
                    sessions,
                    request,
                    "console.sign_out",
                    subject=session.subject,
                    outcome="denied",
                    error_type="csrf",
                    message="sign-out without the session's CSRF token",
                )
                return _refused(
                    403, "csrf", f"Sign out needs the session's CSRF token in {CSRF_HEADER.title()}."
                )
            _audit(server, sessions, request, "console.sign_out", subject=session.subject, outcome="ok")
        response = Response(status_code=204, headers=SECURITY_HEADERS)
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            response.delete_cookie(name, path="/", samesite="strict", httponly=name == SESSION_COOKIE)
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
        package, media = ASSETS[name]
        return Response(
            asset(package, name), media_type=media, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        )

    return [
        Route(PREFIX, root, methods=["GET"]),
        Route(f"{PREFIX}/", index, methods=["GET"]),
        Route(f"{PREFIX}/signin", signin_page, methods=["GET"]),
        Route(CONSOLE_SIGN_IN, sign_in, methods=["POST"]),
        Route(CONSOLE_SIGN_IN, session_info, methods=["GET"]),
        Route(f"{PREFIX}/signout", sign_out, methods=["POST"]),
        Route(PREFIX + "/static/{name}", static, methods=["GET"]),
    ]
