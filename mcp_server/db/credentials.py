"""PostgreSQL application credentials: a least-privilege role, stored encrypted, rotated without downtime.

Roles: `<base>` (NOLOGIN) holds every grant; `<base>_a` and `<base>_b` are login roles that inherit it.
One of them is active; a rotation gives the other a fresh password and makes it active, leaving the old
one's sessions and password alone until the rotation after (or `retire_previous`). The credential lives
in `<data_dir>/database.credentials` (a Fernet token, read before the database can be reached) and is
mirrored in the `secrets` table as `db:app`. asyncpg is imported by the functions that talk to PostgreSQL
directly, so a server on SQLite never loads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import event
from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_server.db.engine import Database, redact_url, schema_head
from mcp_server.errors import ConfigurationError, StorageError
from mcp_server.secrets import DB_CREDENTIALS_FILE, MasterKeys, write_private
from mcp_server.settings import Settings

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

SECRET_NAME = "db:app"
_ROLE_BASE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_DML = "SELECT, INSERT, UPDATE, DELETE"


@dataclass(frozen=True)
class AppCredential:
    """The active application login: role `<base>_a` or `<base>_b` and its password."""

    base: str
    role: str
    password: str = field(repr=False)
    rotated_at: datetime

    @property
    def other_role(self) -> str:
        return f"{self.base}_b" if self.role == f"{self.base}_a" else f"{self.base}_a"

    def to_json(self) -> str:
        data = {"base": self.base, "role": self.role, "password": self.password}
        return json.dumps(data | {"rotated_at": self.rotated_at.isoformat()})

    @classmethod
    def from_json(cls, text: str) -> AppCredential:
        data = json.loads(text)
        when = datetime.fromisoformat(data["rotated_at"])
        return cls(data["base"], data["role"], data["password"], when)


@dataclass(frozen=True)
class CredentialReport:
    """What bootstrap or rotation did; never carries a password."""

    role: str
    previous_role: str | None
    database: str
    path: Path
    mirrored: bool


def credentials_path(settings: Settings) -> Path:
    return settings.data_dir / DB_CREDENTIALS_FILE


def read_credential(settings: Settings, fernet: MultiFernet | None = None) -> AppCredential | None:
    """The stored credential, or None when none was bootstrapped."""
    path = credentials_path(settings)
    if not path.exists():
        return None
    fernet = fernet or MasterKeys(settings).fernet()
    try:
        return AppCredential.from_json(fernet.decrypt(path.read_bytes().strip()).decode())
    except InvalidToken:
        raise ConfigurationError(
            f"{path}: cannot be decrypted with the configured master key(s) (INFRA_MASTER_KEY or master.key)"
        ) from None


def write_credential(settings: Settings, credential: AppCredential, fernet: MultiFernet) -> str:
    """Encrypt and store the credential file (0600, atomic); returns the token, also used for the mirror row."""
    token = fernet.encrypt(credential.to_json().encode())
    write_private(credentials_path(settings), token + b"\n")
    return token.decode()


def _app_url(settings: Settings) -> URL:
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"{credentials_path(settings)} holds a PostgreSQL credential but INFRA_DATABASE_URL is "
            f"{redact_url(str(url))}; point it at the PostgreSQL database or delete the file"
        )
    return url


def application_url(settings: Settings) -> str | None:
    """INFRA_DATABASE_URL with the stored role and password, or None when no credential was bootstrapped."""
    credential = read_credential(settings)
    if credential is None:
        return None
    url = _app_url(settings).set(username=credential.role, password=credential.password)
    return url.render_as_string(hide_password=False)


def credential_provider(settings: Settings) -> Callable[[], tuple[str, str]]:
    """(role, password) for each new connection; re-reads the file only when it has been replaced."""
    path = credentials_path(settings)
    keys = MasterKeys(settings)
    stamp: tuple[int, int, int] | None = None
    current: tuple[str, str] | None = None

    def provide() -> tuple[str, str]:
        nonlocal stamp, current
        st = path.stat()
        now = (st.st_ino, st.st_mtime_ns, st.st_size)
        if now != stamp:
            try:
                credential = read_credential(settings, keys.fernet())
            except ConfigurationError:
                if current is None:
                    raise
                # An environment key rotated by another process: new connections keep working on the
                # credential already known until this process is restarted with the new key.
                log.warning("%s changed but cannot be decrypted; keeping the previous credential", path)
                return current
            if credential is None:
                raise ConfigurationError(f"{path}: missing")
            current, stamp = (credential.role, credential.password), now
        assert current is not None
        return current

    return provide


def install_credential_hook(engine: AsyncEngine, provider: Callable[[], tuple[str, str]]) -> None:
    """Every new pooled connection logs in with what `provider` returns at that moment."""

    def supply(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["user"], cparams["password"] = provider()

    event.listen(engine.sync_engine, "do_connect", supply)


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores, so the clear password never reaches the server or its logs."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    stored = b64(hashlib.sha256(client_key).digest()).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${stored}:{b64(server_key).decode()}"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _admin_connect(settings: Settings, admin_url: str) -> asyncpg.Connection:
    import asyncpg

    app = _app_url(settings)
    admin = make_url(admin_url)
    if admin.get_backend_name() != "postgresql":
        raise ConfigurationError("INFRA_DATABASE_ADMIN_URL: must be a postgresql:// URL")
    database = admin.database or app.database
    if database != app.database:
        raise ConfigurationError(
            f"INFRA_DATABASE_ADMIN_URL names database {database!r} but INFRA_DATABASE_URL uses "
            f"{app.database!r}; grants are per database, so both must name the same one"
        )
    try:
        return await asyncpg.connect(
            host=admin.host or app.host,
            port=admin.port or app.port,
            user=admin.username,
            password=admin.password,
            database=database,
            timeout=15,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageError(
            f"Connecting to {redact_url(admin_url)} failed: {exc.__class__.__name__}: {exc}"
        ) from exc


async def _set_password(conn: asyncpg.Connection, role: str, password: str, *, login: bool = True) -> None:
    verifier = scram_verifier(password)
    await conn.execute(f"ALTER ROLE {_ident(role)} WITH {'' if login else 'NO'}LOGIN PASSWORD '{verifier}'")


_ATTRIBUTES = {
    "rolsuper": "NOSUPERUSER",
    "rolcreatedb": "NOCREATEDB",
    "rolcreaterole": "NOCREATEROLE",
    "rolreplication": "NOREPLICATION",
    "rolbypassrls": "NOBYPASSRLS",
}


async def _strip_attributes(conn: asyncpg.Connection, role: str) -> None:
    """Take from `role` every attribute beyond data access. Only those it has are named: PostgreSQL lets a
    CREATEROLE admin who is not a superuser name none of SUPERUSER, REPLICATION, BYPASSRLS, even to deny."""
    row = await conn.fetchrow(
        f"SELECT rolinherit, {', '.join(_ATTRIBUTES)} FROM pg_roles WHERE rolname = $1", role
    )
    assert row is not None
    changes = [deny for column, deny in _ATTRIBUTES.items() if row[column]]
    changes += [] if row["rolinherit"] else ["INHERIT"]
    if changes:
        await conn.execute(f"ALTER ROLE {_ident(role)} {' '.join(changes)}")


async def _mirror(conn: asyncpg.Connection, token: str) -> bool:
    if await conn.fetchval("SELECT to_regclass('public.secrets')") is None:
        return False
    await conn.execute(
        "INSERT INTO secrets (name, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $3) "
        "ON CONFLICT (name) DO UPDATE SET ciphertext = EXCLUDED.ciphertext, updated_at = EXCLUDED.updated_at",
        SECRET_NAME,
        token,
        datetime.now(UTC),
    )
    return True


async def bootstrap_credentials(
    settings: Settings, admin_url: str, *, role_base: str = "infrastructor_app"
) -> CredentialReport:
    """Create (or repair) the application roles and grants with the admin URL, then store the credential."""
    import asyncpg

    if not _ROLE_BASE.match(role_base):
        raise ConfigurationError(f"role base {role_base!r}: use lower-case letters, digits and '_'")
    fernet = MasterKeys(settings).fernet()
    base, active, spare = role_base, f"{role_base}_a", f"{role_base}_b"
    credential = AppCredential(base, active, secrets.token_urlsafe(32), datetime.now(UTC))
    token = fernet.encrypt(credential.to_json().encode()).decode()
    conn = await _admin_connect(settings, admin_url)
    try:
        owner = await conn.fetchval("SELECT current_user")
        database = await conn.fetchval("SELECT current_database()")
        async with conn.transaction():
            for role in (base, active, spare):
                if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role) is None:
                    await conn.execute(f"CREATE ROLE {_ident(role)} NOLOGIN")
                await _strip_attributes(conn, role)
            await conn.execute(f"GRANT {_ident(base)} TO {_ident(active)}, {_ident(spare)}")
            await conn.execute(f"ALTER ROLE {_ident(spare)} NOLOGIN PASSWORD NULL")
            await _set_password(conn, active, credential.password)
            g = _ident(base)
            # PostgreSQL 15 already withholds CREATE on public from PUBLIC; older clusters do not.
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {g}")
            await conn.execute(f"GRANT USAGE ON SCHEMA public TO {g}")
            await conn.execute(f"GRANT {_DML} ON ALL TABLES IN SCHEMA public TO {g}")
            await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {g}")
            # Tables the migration owner creates later (new Alembic revisions) are covered as well.
            defaults = f"ALTER DEFAULT PRIVILEGES FOR ROLE {_ident(owner)} IN SCHEMA public GRANT"
            await conn.execute(f"{defaults} {_DML} ON TABLES TO {g}")
            await conn.execute(f"{defaults} USAGE, SELECT ON SEQUENCES TO {g}")
            mirrored = await _mirror(conn, token)
    except asyncpg.PostgresError as exc:
        raise StorageError(f"Creating the application role failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        await conn.close()
    write_private(credentials_path(settings), token.encode() + b"\n")
    log.info("database credential bootstrapped: role %s on %s (owner %s)", active, database, owner)
    return CredentialReport(active, None, database, credentials_path(settings), mirrored)


async def rotate_credentials(settings: Settings, admin_url: str, *, verify: bool = True) -> CredentialReport:
    """Switch to the other login role with a fresh password; open sessions of the old role keep working.

    The database changes first, the file last: a failure in between leaves the old, still valid, credential.
    """
    import asyncpg

    keys = MasterKeys(settings)
    current = read_credential(settings, keys.fernet())
    if current is None:
        raise ConfigurationError(
            "No database credential stored; run `infrastructor db bootstrap-credentials`"
        )
    fresh = AppCredential(current.base, current.other_role, secrets.token_urlsafe(32), datetime.now(UTC))
    token = keys.fernet().encrypt(fresh.to_json().encode()).decode()
    conn = await _admin_connect(settings, admin_url)
    try:
        database = await conn.fetchval("SELECT current_database()")
        async with conn.transaction():
            await _set_password(conn, fresh.role, fresh.password)
            mirrored = await _mirror(conn, token)
    except asyncpg.PostgresError as exc:
        raise StorageError(f"Rotating the application role failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        await conn.close()
    if verify:
        await _check_login(settings, fresh)
    write_private(credentials_path(settings), token.encode() + b"\n")
    log.info("database credential rotated: %s -> %s", current.role, fresh.role)
    return CredentialReport(fresh.role, current.role, database, credentials_path(settings), mirrored)


async def _check_login(settings: Settings, credential: AppCredential) -> None:
    import asyncpg

    url = _app_url(settings)
    try:
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=credential.role,
            password=credential.password,
            database=url.database,
            timeout=15,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageError(
            f"The new credential for role {credential.role} cannot log in to {redact_url(str(url))} "
            f"({exc.__class__.__name__}); the stored credential was not changed"
        ) from exc
    await conn.close()


async def retire_previous(settings: Settings, admin_url: str) -> str:
    """Refuse new logins by the previous role now (NOLOGIN, unknown password); its open sessions go on."""
    import asyncpg

    current = read_credential(settings)
    if current is None:
        raise ConfigurationError(
            "No database credential stored; run `infrastructor db bootstrap-credentials`"
        )
    conn = await _admin_connect(settings, admin_url)
    try:
        await _set_password(conn, current.other_role, secrets.token_urlsafe(32), login=False)
    except asyncpg.PostgresError as exc:
        raise StorageError(f"Retiring role {current.other_role} failed: {exc.__class__.__name__}") from exc
    finally:
        await conn.close()
    log.info("database role %s retired", current.other_role)
    return current.other_role


async def check_schema_current(db: Database) -> None:
    """Fail with the fix when the schema is behind the code: the application role cannot migrate it."""

    current, head = await db.revision(), schema_head()
    if current != head:
        raise ConfigurationError(
            f"The database schema is at revision {current or 'none'} but this version needs {head}, and the "
            "application role may not change the schema: run `infrastructor migrate` with "
            "INFRA_DATABASE_ADMIN_URL set"
        )
