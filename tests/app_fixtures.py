"""Fixtures for the application: databases (SQLite and the real PostgreSQL), settings, AppState, MCP clients."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastmcp import Client
from sqlalchemy import select

from mcp_server.db.tables import DataCollectionAudit
from mcp_server.devices import DeviceSpec
from mcp_server.server import build_server
from mcp_server.settings import Settings, load_settings
from mcp_server.state import AppState, open_state
from tests.helpers import unavailable

PG_ADMIN_DSN = os.environ.get("INFRA_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin() -> asyncpg.Connection:
    return await asyncpg.connect(PG_ADMIN_DSN, timeout=5)


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def new_database(admin_url: str, *, prefix: str = "infra_test", extension: str | None = None) -> str:
    """A new, empty database on the cluster `admin_url` (a maintenance database's URL) names, with
    `extension` created in it; returns its SQLAlchemy URL. Shared by the tests and bench/."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = f"{_asyncpg_dsn(admin_url).rsplit('/', 1)[0]}/{name}"
    if extension:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')
        finally:
            await conn.close()
    return url.replace("postgresql://", "postgresql+asyncpg://")


async def drop_database(admin_url: str, url: str) -> None:
    """Drop the database `url` names (made by new_database), closing whoever is still connected."""
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_pg_database() -> str:
    """A new, empty PostgreSQL database; returns its SQLAlchemy URL."""
    try:
        return await new_database(PG_ADMIN_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable("postgres", f"PostgreSQL not reachable at {PG_ADMIN_DSN}: {exc}")


async def drop_pg_database(url: str) -> None:
    await drop_database(PG_ADMIN_DSN, url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using this runs twice: on a SQLite file and on a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'infra.db'}"
        return
    url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


TIMESCALE_URL = os.environ.get("INFRA_TEST_TIMESCALE_URL")


async def create_timescale_database() -> str:
    """A new database with the timescaledb extension on the INFRA_TEST_TIMESCALE_URL cluster; its URL.

    TimescaleDB comes from no package registry these machines reach, so its tests run only where that
    variable names a cluster with the extension available; a cluster that is named but unreachable fails."""
    if not TIMESCALE_URL:
        pytest.skip(
            "TimescaleDB tests need INFRA_TEST_TIMESCALE_URL (a cluster with the extension available)"
        )
    try:
        return await new_database(TIMESCALE_URL, extension="timescaledb")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"INFRA_TEST_TIMESCALE_URL names a cluster that is not usable ({TIMESCALE_URL}): {exc}")


async def drop_timescale_database(url: str) -> None:
    assert TIMESCALE_URL
    await drop_database(TIMESCALE_URL, url)


@pytest.fixture(params=["sqlite", "postgresql", "timescale"])
async def series_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using this runs three times: SQLite (plain tables), PostgreSQL (native partitions) and
    PostgreSQL with TimescaleDB (hypertables)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'infra.db'}"
        return
    timescale = request.param == "timescale"
    url = await (create_timescale_database() if timescale else create_pg_database())
    try:
        yield url
    finally:
        await (drop_timescale_database(url) if timescale else drop_pg_database(url))


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url=database_url)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings on SQLite only, for tests whose subject is not the database."""
    return make_settings(tmp_path)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        # test keys and SSH configs live in temporary directories (the sshd fleet's, tmp_path)
        "ssh_file_dirs": tempfile.gettempdir(),
        # so are the configuration files tests watch (the server's own data dir there stays refused)
        "config_watch_allow": f"{tempfile.gettempdir()}/*",
        "ssh_known_hosts": tmp_path / "known_hosts",
        "ssh_connect_timeout": 3.0,
        "audit_flush_interval": 0.05,
        # the background poller is off unless a test turns it on
        "poll_enabled": False,
    }
    return load_settings(**(defaults | overrides))


@pytest.fixture
async def state(settings: Settings) -> AsyncIterator[AppState]:
    async with open_state(settings) as running:
        yield running


@pytest.fixture
async def client(state: AppState) -> AsyncIterator[Client[Any]]:
    """An in-memory MCP client sharing the test's AppState."""
    async with Client(build_server(state.settings, state=state)) as connected:
        yield connected


async def audit_rows(state: AppState, **where: Any) -> list[DataCollectionAudit]:
    """Every audit row so far (after flushing the writer), optionally filtered by column values.

    On a loaded machine SQLite's write lock can be held past the writer's deadline several times in a row
    (each writer's transaction spans event-loop turns, and SQLite's busy handler is not first come, first
    served); the rows stay journaled and ship on a later attempt, which this waits for, within a bound."""
    for attempt in range(1, 5):
        try:
            await state.writer.flush()
            break
        except TimeoutError:
            if attempt == 4:
                raise
    query = select(DataCollectionAudit).order_by(DataCollectionAudit.id)
    for column, value in where.items():
        query = query.where(getattr(DataCollectionAudit, column) == value)
    async with state.db.read_session() as session:
        return list((await session.scalars(query)).all())


async def add_fleet_host(
    state: AppState, fleet: Any, host: Any, name: str | None = None, **overrides: Any
) -> str:
    """Register an sshd test host as an SSH device through the registry (host key pinned on first use)."""
    fields: dict[str, Any] = {
        "hostname": host.hostname,
        "port": host.port,
        "username": fleet.username,
        "key_path": str(fleet.client_key_path),
    }
    device = await state.devices.add(name or host.name, DeviceSpec(**(fields | overrides)))
    return device.name
