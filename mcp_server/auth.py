"""Bearer-token auth: scopes, the signing key, token issuing and FastMCP's JWT verifier configuration."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cachetools
import jwt
from fastmcp.server.auth import AccessToken
from fastmcp.server.auth.providers.jwt import JWTVerifier

from mcp_server.errors import ConfigurationError, InvalidParameter
from mcp_server.secrets import SecretStore
from mcp_server.settings import Settings

READ, WRITE, ADMIN = "infra:read", "infra:write", "infra:admin"
SCOPES = (READ, WRITE, ADMIN)
SCOPE_TAG = "scope:"  # tool tag carrying the scope a tool needs, e.g. "scope:infra:write"
JWT_SECRET_NAME = "jwt:hs256"


def granted(scopes: Iterable[str]) -> set[str]:
    """The scopes a token effectively has: infra:admin implies write, infra:write implies read."""
    have = set(scopes)
    if ADMIN in have:
        have |= {WRITE, READ}
    if WRITE in have:
        have.add(READ)
    return have


def required_scope(tags: Iterable[str]) -> str:
    for tag in tags:
        if tag.startswith(SCOPE_TAG):
            return tag[len(SCOPE_TAG) :]
    return READ


class RememberingJWTVerifier(JWTVerifier):
    """FastMCP's JWT verifier, remembering tokens it accepted for up to a minute (never past their expiry).

    Agents send the same token on every call; re-verifying its signature each time is most of auth's cost.
    Tokens cannot be revoked before they expire, so remembering an accepted one changes nothing about
    which requests get in. Rejected tokens are never remembered.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._accepted: cachetools.TTLCache[str, AccessToken] = cachetools.TTLCache(maxsize=1024, ttl=60)

    async def verify_token(self, token: str) -> AccessToken | None:
        known = self._accepted.get(token)
        if known is not None and (known.expires_at is None or known.expires_at > time.time()):
            return known
        verified = await super().verify_token(token)
        if verified is not None:
            self._accepted[token] = verified
        return verified


@dataclass(frozen=True)
class SigningKey:
    """What verifies (and, for HS256, signs) tokens."""

    algorithm: str
    secret: str | None  # HS256 only
    public_key: str | None  # RS256 PEM
    jwks_url: str | None
    generated: bool = False  # True on the start that created it

    def verifier(self, settings: Settings) -> JWTVerifier:
        return RememberingJWTVerifier(
            public_key=self.secret if self.algorithm == "HS256" else self.public_key,
            jwks_uri=self.jwks_url,
            algorithm=self.algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )


async def signing_key(settings: Settings, store: SecretStore) -> SigningKey:
    """The configured key: INFRA_JWT_SECRET, INFRA_JWT_PUBLIC_KEY or INFRA_JWKS_URL, else the stored/generated HS256 key."""
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
        if len(secret) < 32:
            raise ConfigurationError(
                "INFRA_JWT_SECRET: use at least 32 characters (e.g. `openssl rand -hex 32`)"
            )
        return SigningKey("HS256", secret, None, None)
    if settings.jwt_public_key:
        text = settings.jwt_public_key
        if not text.lstrip().startswith("-----BEGIN"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise ConfigurationError("INFRA_JWT_PUBLIC_KEY: neither a PEM public key nor a readable file")
            text = path.read_text()
        return SigningKey("RS256", None, text, None)
    if settings.jwks_url:
        return SigningKey("RS256", None, None, settings.jwks_url)
    stored = await store.get(JWT_SECRET_NAME)
    if stored is not None:
        return SigningKey("HS256", stored, None, None)
    secret = secrets.token_urlsafe(48)
    await store.put(JWT_SECRET_NAME, secret)
    return SigningKey("HS256", secret, None, None, generated=True)


_TTL = re.compile(r"^(\d+)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_ttl(text: str) -> int:
    """'90s', '15m', '12h', '30d', '1w' or plain seconds."""
    match = _TTL.match(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise InvalidParameter(f"--ttl {text!r}: use a positive number with s, m, h, d or w (e.g. 12h)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def issue_token(
    key: SigningKey, settings: Settings, *, subject: str, scopes: Iterable[str], ttl_seconds: int
) -> tuple[str, int]:
    """A signed HS256 token and its expiry (epoch seconds)."""
    wanted = list(dict.fromkeys(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InvalidParameter(f"scopes {unknown or wanted}: choose from {', '.join(SCOPES)}")
    if key.secret is None:
        raise ConfigurationError(
            "tokens are verified with an RS256 public key (INFRA_JWT_PUBLIC_KEY / INFRA_JWKS_URL): "
            "issue them with your identity provider, not here"
        )
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": subject,
        "scope": " ".join(wanted),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "client_id": subject,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, key.secret, algorithm="HS256"), now + ttl_seconds


DEV_TOKEN_TTL = 7 * 86400


def dev_token_notice(key: SigningKey, settings: Settings) -> str:
    """The one-time message with an admin token, printed on the start that generated the key."""
    token, expires = issue_token(key, settings, subject="dev", scopes=[ADMIN], ttl_seconds=DEV_TOKEN_TTL)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
    return (
        "Generated a signing key for bearer tokens (stored encrypted). Development token with scope "
        f"infra:admin, valid until {when}:\n\n  {token}\n\n"
        "Send it as 'Authorization: Bearer <token>'. Issue more with: "
        "infrastructor token create --subject NAME --scopes infra:read --ttl 12h"
    )
