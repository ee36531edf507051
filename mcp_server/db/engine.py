"""The async engine, sessions and Alembic migrations."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from mcp_server.errors import StorageError
from mcp_server.permissions import create_private_file

log = logging.getLogger(__name__)


def _migrations_dir() -> Path:
    """The Alembic script directory, installed as mcp_server.migrations or beside the package in a checkout."""
    import mcp_server.migrations as pkg

    return Path(pkg.__file__).resolve().parent


def redact_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """One engine per process; `session()` hands out AsyncSessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.origin = uuid.uuid4().hex  # names this process's changes in `registry_changes`
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        # Statement parameters (audit rows, snapshots) never appear in error messages and logs.
        kwargs: dict[str, object] = {"hide_parameters": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                # 0600 before SQLite opens it; its -wal and -shm files take the same mode
                create_private_file(Path(parsed.database))
            kwargs["connect_args"] = {"timeout": 15}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True, pool_recycle=1800)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False, class_=AsyncSession)
        # Read-only work takes no write lock on SQLite (see _sqlite_begin), so it never waits on a writer.
        self.read_session = async_sessionmaker(
            self.engine.execution_options(infra_read_only=True), expire_on_commit=False, class_=AsyncSession
        )

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError):
            return False

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate, self.url)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
    dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes cannot wait for another writer (SQLITE_BUSY at
    # once); taking the write lock up front makes writers queue on busy_timeout instead. Sessions from
    # `read_session` only read, and begin deferred so they never hold up a writer.
    read_only = conn.get_execution_options().get("infra_read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["url"] = url
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (blocking; runs its own event loop)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        create_private_file(Path(parsed.database))
    try:
        command.upgrade(alembic_config(url), revision)
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"Migrating {redact_url(url)} failed: {exc.__class__.__name__}: {exc}") from exc
