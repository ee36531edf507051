"""PostgreSQL application credentials against a private PostgreSQL cluster that checks passwords (SCRAM)."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import text

from mcp_server.db.credentials import (
    SECRET_NAME,
    AppCredential,
    application_url,
    bootstrap_credentials,
    check_schema_current,
    credential_provider,
    credentials_path,
    install_credential_hook,
    read_credential,
    retire_previous,
    rotate_credentials,
    write_credential,
)
from mcp_server.db.engine import Database, migrate
from mcp_server.errors import ConfigurationError, StorageError
from mcp_server.secrets import SecretStore, load_master_keys, rotate_master_key
from mcp_server.settings import Settings
from tests.app_fixtures import make_settings
from tests.helpers import free_port, unavailable

SUPERUSER_PASSWORD = "cluster-admin-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Cluster:
    port: int

    def url(self, database: str, user: str = "postgres", password: str | None = SUPERUSER_PASSWORD) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql+asyncpg://{auth}@127.0.0.1:{self.port}/{database}"

    async def connect(self, database: str, user: str, password: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=user, password=password, database=database, timeout=5
        )


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster on a free loopback port with scram-sha-256 for every connection."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or (os.geteuid() == 0 and shutil.which("runuser") is None):
        message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        unavailable("postgres", message)
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="infra-pg-"))
    pwfile = root / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    data = root / "data"
    port = free_port()
    _as_postgres(
        str(bindir / "initdb"), "-D", str(data), "-A", "scram-sha-256", f"--pwfile={pwfile}",
        "-U", "postgres", "--no-sync",
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    _as_postgres(
        str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o", options, "start"
    )
    try:
        yield Cluster(port)
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Env:
    cluster: Cluster
    settings: Settings
    database: str
    admin_url: str
    base: str

    async def admin(self) -> asyncpg.Connection:
        return await self.cluster.connect(self.database, "postgres", SUPERUSER_PASSWORD)

    async def login(self, role: str, password: str) -> asyncpg.Connection:
        return await self.cluster.connect(self.database, role, password)


async def _new_env(cluster: Cluster, tmp_path: Path, *, migrated: bool = True) -> Env:
    name = f"infra_{uuid.uuid4().hex[:10]}"
    conn = await cluster.connect("postgres", "postgres", SUPERUSER_PASSWORD)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    admin_url = cluster.url(name)
    if migrated:
        await asyncio.to_thread(migrate, admin_url)
    settings = make_settings(tmp_path, database_url=cluster.url(name, user="app", password=None))
    return Env(cluster, settings, name, admin_url, f"app_{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def env(pg_cluster: Cluster, tmp_path: Path) -> Env:
    """A migrated database in the private cluster, settings pointing at it, and a unique role base."""
    return await _new_env(pg_cluster, tmp_path)


@pytest.fixture
async def bootstrapped(env: Env) -> AsyncIterator[Env]:
    await bootstrap_credentials(env.settings, env.admin_url, role_base=env.base)
    yield env


def _stored(env: Env) -> AppCredential:
    credential = read_credential(env.settings)
    assert credential is not None
    return credential


async def test_bootstrap_creates_a_login_role_with_only_data_privileges(env: Env) -> None:
    report = await bootstrap_credentials(env.settings, env.admin_url, role_base=env.base)
    assert (report.role, report.previous_role, report.database, report.mirrored) == (
        f"{env.base}_a",
        None,
        env.database,
        True,
    )
    admin = await env.admin()
    try:
        flags = {
            r["rolname"]: r
            for r in await admin.fetch(
                "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
                "rolcanlogin FROM pg_roles WHERE rolname LIKE $1",
                f"{env.base}%",
            )
        }
        assert sorted(flags) == [env.base, f"{env.base}_a", f"{env.base}_b"]
        for row in flags.values():
            assert not any(row[f] for f in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication"))
            assert not row["rolbypassrls"]
        assert [flags[r]["rolcanlogin"] for r in sorted(flags)] == [False, True, False]
        role = f"{env.base}_a"
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            assert await admin.fetchval("SELECT has_table_privilege($1, 'secrets', $2)", role, privilege)
        for privilege in ("TRUNCATE", "REFERENCES", "TRIGGER"):
            assert not await admin.fetchval("SELECT has_table_privilege($1, 'secrets', $2)", role, privilege)
        assert not await admin.fetchval("SELECT has_schema_privilege($1, 'public', 'CREATE')", role)
        assert not await admin.fetchval(
            "SELECT has_database_privilege($1, current_database(), 'CREATE')", role
        )
        owned = await admin.fetchval(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname LIKE $1",
            f"{env.base}%",
        )
        members_of_logins = await admin.fetchval(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE r.rolname IN ($1, $2)",
            f"{env.base}_a",
            f"{env.base}_b",
        )
        assert (owned, members_of_logins) == (0, 0)
    finally:
        await admin.close()
    app = await env.login(role, _stored(env).password)
    try:
        assert await app.fetchval("SELECT count(*) FROM devices") == 0
        for ddl in ("CREATE TABLE public.intruder (x int)", "DROP TABLE devices", "TRUNCATE secrets"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(ddl)
    finally:
        await app.close()


async def test_the_stored_credential_is_encrypted_in_the_file_and_the_secrets_row(bootstrapped: Env) -> None:
    env = bootstrapped
    credential = _stored(env)
    path = credentials_path(env.settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credential.password.encode() not in path.read_bytes()
    assert credential.password not in repr(credential)
    admin = await env.admin()
    try:
        token = await admin.fetchval("SELECT ciphertext FROM secrets WHERE name = $1", SECRET_NAME)
    finally:
        await admin.close()
    assert credential.password not in token
    db = Database(env.admin_url)
    try:
        mirrored = json.loads(await SecretStore(db, load_master_keys(env.settings)).get(SECRET_NAME) or "{}")
    finally:
        await db.close()
    assert (mirrored["role"], mirrored["password"]) == (credential.role, credential.password)


async def test_application_url_reads_and_writes_tables_after_migration(bootstrapped: Env) -> None:
    env = bootstrapped
    url = application_url(env.settings)
    assert url is not None and url.startswith("postgresql+asyncpg://")
    db = Database(url)
    try:
        store = SecretStore(db, load_master_keys(env.settings))
        await store.put("device:web1:password", "hunter2")
        assert await store.get("device:web1:password") == "hunter2"
        await store.delete("device:web1:password")
        async with db.engine.connect() as conn:
            assert await conn.scalar(text("SELECT current_user")) == f"{env.base}_a"
        await check_schema_current(db)
    finally:
        await db.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await env.login(f"{env.base}_a", "not-the-password")


async def test_tables_the_owner_creates_later_are_covered_by_default_privileges(bootstrapped: Env) -> None:
    env = bootstrapped
    admin = await env.admin()
    try:
        await admin.execute("CREATE TABLE later_revision (id serial PRIMARY KEY, note text)")
    finally:
        await admin.close()
    app = await env.login(f"{env.base}_a", _stored(env).password)
    try:
        await app.execute("INSERT INTO later_revision (note) VALUES ('added by the app role')")
        assert await app.fetchval("SELECT note FROM later_revision") == "added by the app role"
    finally:
        await app.close()


async def test_rotation_switches_roles_without_disturbing_an_open_transaction(bootstrapped: Env) -> None:
    env = bootstrapped
    old = _stored(env)
    provider = credential_provider(env.settings)
    assert provider() == (old.role, old.password)
    db = Database(env.settings.resolved_database_url)
    install_credential_hook(db.engine, provider)
    held = await env.login(old.role, old.password)
    try:
        async with db.engine.connect() as pooled_before:
            assert await pooled_before.scalar(text("SELECT current_user")) == old.role
            transaction = held.transaction()
            await transaction.start()
            await held.execute("DELETE FROM secrets WHERE name = 'mid-rotation'")
            report = await rotate_credentials(env.settings, env.admin_url)
            assert (report.role, report.previous_role) == (f"{env.base}_b", old.role)
            new = _stored(env)
            assert provider() == (new.role, new.password) != (old.role, old.password)
            # Still the transaction opened before the switch, on the old role's session.
            await held.execute("INSERT INTO secrets VALUES ('mid-rotation', 'x', now(), now())")
            await transaction.commit()
            assert await pooled_before.scalar(text("SELECT current_user")) == old.role
            async with db.engine.connect() as opened_after:
                assert await opened_after.scalar(text("SELECT current_user")) == new.role
                assert (
                    await opened_after.scalar(text("SELECT count(*) FROM secrets WHERE name='mid-rotation'"))
                    == 1
                )
        overlap = await env.login(old.role, old.password)
        await overlap.close()
    finally:
        await held.close()
        await db.close()


async def test_the_previous_password_stops_working_after_the_next_rotation(bootstrapped: Env) -> None:
    env = bootstrapped
    first = _stored(env)
    await rotate_credentials(env.settings, env.admin_url)
    second = _stored(env)
    report = await rotate_credentials(env.settings, env.admin_url)
    third = _stored(env)
    assert (report.role, report.previous_role) == (first.role, second.role)
    assert third.role == first.role and third.password != first.password
    with pytest.raises(asyncpg.InvalidPasswordError):
        await env.login(first.role, first.password)
    for still_valid in (second, third):
        conn = await env.login(still_valid.role, still_valid.password)
        await conn.close()


async def test_retire_previous_refuses_new_logins_but_keeps_open_sessions(bootstrapped: Env) -> None:
    env = bootstrapped
    old = _stored(env)
    held = await env.login(old.role, old.password)
    try:
        await rotate_credentials(env.settings, env.admin_url)
        assert await retire_previous(env.settings, env.admin_url) == old.role
        assert await held.fetchval("SELECT count(*) FROM devices") == 0
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await env.login(old.role, old.password)
    finally:
        await held.close()
    current = _stored(env)
    conn = await env.login(current.role, current.password)
    await conn.close()


async def test_master_key_rotation_keeps_the_database_credential_usable(bootstrapped: Env) -> None:
    env = bootstrapped
    before = _stored(env)
    token_before = credentials_path(env.settings).read_bytes()
    provider = credential_provider(env.settings)
    url = application_url(env.settings)
    assert url is not None
    db = Database(url)
    try:
        report = await rotate_master_key(env.settings, db)
        assert report.rows == 1 and report.files == ("database.credentials",)
        keys = load_master_keys(env.settings)
        assert len(keys) == 1
        after = read_credential(env.settings, MultiFernet([Fernet(keys[0])]))
        assert after is not None and (after.role, after.password) == (before.role, before.password)
        assert credentials_path(env.settings).read_bytes() != token_before
        assert provider() == (before.role, before.password)
        assert json.loads(await SecretStore(db, keys).get(SECRET_NAME) or "{}")["password"] == before.password
    finally:
        await db.close()


async def test_bootstrap_before_migration_skips_the_mirror_and_start_up_asks_for_migrate(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    env = await _new_env(pg_cluster, tmp_path, migrated=False)
    report = await bootstrap_credentials(env.settings, env.admin_url, role_base=env.base)
    assert not report.mirrored
    url = application_url(env.settings)
    assert url is not None
    db = Database(url)
    try:
        with pytest.raises(ConfigurationError, match="infrastructor migrate"):
            await check_schema_current(db)
    finally:
        await db.close()


async def test_bootstrap_refuses_an_admin_url_for_another_database(env: Env) -> None:
    other = env.cluster.url("postgres")
    with pytest.raises(ConfigurationError, match="same one"):
        await bootstrap_credentials(env.settings, other, role_base=env.base)
    assert application_url(env.settings) is None


async def test_a_wrong_admin_password_is_a_storage_error_without_the_password(env: Env) -> None:
    wrong = env.cluster.url(env.database, password="definitely-wrong")
    with pytest.raises(StorageError) as caught:
        await bootstrap_credentials(env.settings, wrong, role_base=env.base)
    assert "definitely-wrong" not in str(caught.value)


def test_the_provider_rereads_the_file_only_after_it_is_replaced(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url="postgresql+asyncpg://app@127.0.0.1:1/db")
    fernet = MultiFernet([Fernet(k) for k in load_master_keys(settings)])
    now = datetime.now(UTC)
    write_credential(settings, AppCredential("app", "app_a", "first", now), fernet)
    provider = credential_provider(settings)
    assert provider() == ("app_a", "first")
    write_credential(settings, AppCredential("app", "app_b", "second", now), fernet)
    assert provider() == ("app_b", "second")
    stranger = MultiFernet([Fernet(Fernet.generate_key())])
    write_credential(settings, AppCredential("app", "app_a", "third", now), stranger)
    assert provider() == ("app_b", "second")


def test_a_credential_file_with_a_sqlite_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    fernet = MultiFernet([Fernet(k) for k in load_master_keys(settings)])
    write_credential(settings, AppCredential("app", "app_a", "pw", datetime.now(UTC)), fernet)
    with pytest.raises(ConfigurationError, match="INFRA_DATABASE_URL"):
        application_url(settings)
