"""Bearer-token verification for HTTP: FastMCP's JWT verifier behind our claim checks (auth.py), and the
Starlette backend that keeps a refused token's reason. Loaded only by servers that verify tokens."""

from __future__ import annotations

import time
from typing import Any

import cachetools
from fastmcp.server.auth import AccessToken
from fastmcp.server.auth.providers.jwt import JWTVerifier
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.authentication import AuthCredentials, AuthenticationBackend
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from mcp_server.auth import MAX_TOKEN_CHARS, REJECTION_SCOPE_KEY, claims_problem, unverified_claims


class RememberingJWTVerifier(JWTVerifier):
    """FastMCP's JWT verifier behind our claim checks, remembering accepted tokens for up to a minute.

    Before any signature work a token is screened: at most MAX_TOKEN_CHARS, a JSON payload whose `exp`
    is present, finite and within INFRA_JWT_MAX_TTL, `nbf`/`iat` not in the future (INFRA_JWT_LEEWAY of
    skew). FastMCP's verifier then checks signature, issuer and audience. Agents send the same token on
    every call; re-verifying its signature each time is most of auth's cost, and tokens cannot be revoked
    before they expire, so remembering an accepted one changes nothing about which requests get in.
    Rejected tokens are never remembered.
    """

    def __init__(self, *, max_ttl: int = 30 * 86_400, leeway: int = 30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_ttl = max_ttl
        self.leeway = leeway
        self._accepted: cachetools.TTLCache[str, AccessToken] = cachetools.TTLCache(maxsize=1024, ttl=60)

    async def verify_token(self, token: str) -> AccessToken | None:
        return (await self.check(token))[0]

    async def check(self, token: str) -> tuple[AccessToken | None, str | None]:
        """(the accepted token, None) or (None, why it was refused)."""
        now = time.time()
        known = self._accepted.get(token)
        if known is not None and (known.expires_at is None or known.expires_at > now):
            return known, None
        if len(token) > MAX_TOKEN_CHARS:
            return None, f"token longer than {MAX_TOKEN_CHARS} characters"
        claims = unverified_claims(token)
        problem = claims_problem(claims, now=now, max_ttl=self.max_ttl, leeway=self.leeway)
        if problem is not None:
            return None, problem
        try:
            verified = await super().verify_token(token)
        except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError):
            return None, "malformed token"
        if verified is None:
            return None, self._rejection(claims or {})
        self._accepted[token] = verified
        return verified, None

    def _rejection(self, claims: dict[str, Any]) -> str:
        """The likely reason FastMCP's verifier refused a token whose claims passed our screening."""
        if self.issuer and claims.get("iss") != self.issuer:
            return "wrong issuer"
        audience = claims.get("aud")
        offered = audience if isinstance(audience, list) else [audience]
        expected = self.audience if isinstance(self.audience, list) else [self.audience]
        if self.audience and not any(a in offered for a in expected):
            return "wrong audience"
        return "bad signature or unsupported algorithm"

    def get_middleware(self) -> list[Any]:
        return [
            Middleware(AuthenticationMiddleware, backend=ReasonedBearerBackend(self)),
            Middleware(AuthContextMiddleware),
        ]


class ReasonedBearerBackend(AuthenticationBackend):
    """The SDK's bearer backend, except that a refused token leaves its reason in the request scope."""

    def __init__(self, verifier: RememberingJWTVerifier) -> None:
        self.verifier = verifier

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, AuthenticatedUser] | None:
        header = conn.headers.get("authorization")
        if not header or not header.lower().startswith("bearer "):
            return None
        token, reason = await self.verifier.check(header[7:].strip())
        if token is None:
            conn.scope[REJECTION_SCOPE_KEY] = reason
            return None
        return AuthCredentials(token.scopes), AuthenticatedUser(token)
