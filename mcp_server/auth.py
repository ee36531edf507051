"""Bearer-token auth: scopes, the signing key, token issuing and FastMCP's JWT verifier configuration."""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_server.errors import ConfigurationError, InvalidParameter
from mcp_server.settings import Settings
from mcp_server.times import parse_duration, span

if TYPE_CHECKING:
    from mcp_server.secrets import SecretStore
    from mcp_server.verifier import RememberingJWTVerifier

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


# Where the auth backend leaves, in the ASGI scope, why a bearer token was refused (read by the HTTP guard).
REJECTION_SCOPE_KEY = "infra.token_rejected"
MAX_TOKEN_CHARS = 8192
MAX_SUBJECT_CHARS = 255
_STRING_CLAIMS = ("client_id", "azp", "jti")


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWT, decoded WITHOUT checking anything: for screening and reasons only."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, binascii.Error, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _number(value: object) -> float | None:
    """A finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def subject_problem(subject: object) -> str | None:
    """Why `subject` cannot be a token's subject, or None: it must be a non-empty string of at most
    MAX_SUBJECT_CHARS printable characters, not all spaces."""
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_CHARS:
        return f"not a non-empty string of at most {MAX_SUBJECT_CHARS} characters"
    if not subject.isprintable():
        return "it holds control characters"
    return None


def claims_problem(claims: dict[str, Any] | None, *, now: float, max_ttl: int, leeway: int) -> str | None:
    """Why a token's claims are unacceptable whatever its signature, or None.

    Every token must name its subject (`sub`: the audit's who) and expire (`exp`), may not be used before
    `nbf` or claim to be issued in the future (`iat`), and may not live longer than INFRA_JWT_MAX_TTL; every
    time claim is a finite number.
    """
    if claims is None:
        return "malformed token (not a JWT with a JSON payload)"
    times: dict[str, float | None] = {}
    for name in ("exp", "nbf", "iat"):
        raw = claims.get(name)
        times[name] = None if raw is None else _number(raw)
        if raw is not None and times[name] is None:
            return f"malformed {name} claim (not a finite number)"
    sub = claims.get("sub")
    if sub is None:
        return "no sub claim (tokens must name their subject, who the audit log records)"
    if (problem := subject_problem(sub)) is not None:
        return f"malformed sub claim ({problem})"
    for name in _STRING_CLAIMS:
        value = claims.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 255):
            return f"malformed {name} claim (not a string of at most 255 characters)"
    scope = claims.get("scope")
    if scope is not None and not isinstance(scope, str):
        return "malformed scope claim (not a space-separated string)"
    scp = claims.get("scp")
    if scp is not None and not (
        isinstance(scp, str) or (isinstance(scp, list) and all(isinstance(s, str) for s in scp))
    ):
        return "malformed scp claim (not a string or a list of strings)"
    exp, nbf, iat = times["exp"], times["nbf"], times["iat"]
    if exp is None:
        return "no exp claim (tokens must expire)"
    if exp < now - leeway:
        return "expired"
    if nbf is not None and nbf > now + leeway:
        return "not valid yet (nbf is in the future)"
    if iat is not None and iat > now + leeway:
        return "issued in the future (iat)"
    if exp - min(iat if iat is not None else now, now) > max_ttl + leeway:
        return f"lifetime longer than INFRA_JWT_MAX_TTL ({max_ttl} s)"
    return None


@dataclass(frozen=True)
class SigningKey:
    """What verifies (and, for HS256, signs) tokens."""

    algorithm: str
    secret: str | None  # HS256 only
    public_key: str | None  # RS256 PEM
    jwks_url: str | None
    generated: bool = False  # True on the start that created it

    def verifier(self, settings: Settings) -> RememberingJWTVerifier:
        from mcp_server.verifier import RememberingJWTVerifier  # HTTP only: a stdio start never loads it

        return RememberingJWTVerifier(
            max_ttl=settings.jwt_max_ttl,
            leeway=settings.jwt_leeway,
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


def parse_ttl(text: str) -> int:
    """'90s', '15m', '12h', '30d', '1w' or plain seconds."""
    value = text.strip().lower()
    try:
        duration = parse_duration(value) if not value.isdigit() else span(int(value))
    except ValueError:
        duration = None
    if duration is None or duration.total_seconds() <= 0:
        raise InvalidParameter(f"--ttl {text!r}: use a positive number with s, m, h, d or w (e.g. 12h)")
    return int(duration.total_seconds())


def issue_token(
    key: SigningKey, settings: Settings, *, subject: str, scopes: Iterable[str], ttl_seconds: int
) -> tuple[str, int]:
    """A signed HS256 token and its expiry (epoch seconds)."""
    problem = subject_problem(subject)
    if problem is not None:
        raise InvalidParameter(f"--subject {subject!r}: {problem}; name who the token is for (e.g. ci-bot)")
    wanted = list(dict.fromkeys(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise InvalidParameter(f"scopes {unknown or wanted}: choose from {', '.join(SCOPES)}")
    if ttl_seconds > settings.jwt_max_ttl:
        raise InvalidParameter(
            f"--ttl {ttl_seconds}s is longer than INFRA_JWT_MAX_TTL ({settings.jwt_max_ttl}s), which the server "
            "would refuse; choose a shorter lifetime or raise INFRA_JWT_MAX_TTL"
        )
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
    import jwt  # PyJWT (and the cryptography it loads) only where a token is made, not at every start

    return jwt.encode(claims, key.secret, algorithm="HS256"), now + ttl_seconds


DEV_TOKEN_TTL = 7 * 86400


def dev_token_notice(key: SigningKey, settings: Settings) -> str:
    """The one-time message with an admin token, printed on the start that generated the key."""
    ttl = min(DEV_TOKEN_TTL, settings.jwt_max_ttl)
    token, expires = issue_token(key, settings, subject="dev", scopes=[ADMIN], ttl_seconds=ttl)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
    return (
        "Generated a signing key for bearer tokens (stored encrypted). Development token with scope "
        f"infra:admin, valid until {when}:\n\n  {token}\n\n"
        "Send it as 'Authorization: Bearer <token>'. Issue more with: "
        "infrastructor token create --subject NAME --scopes infra:read --ttl 12h"
    )
