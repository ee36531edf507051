"""The async engine, sessions and Alembic migrations.

Alembic is imported only to migrate: a process that opens a database already at the latest schema
(every CLI command and server start after the first) compares the `alembic_version` row with the head
revision read from the migration files, and goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, event, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from mcp_server.audit import read_deadline_seconds
from mcp_server.errors import DatabaseTimeout, StorageError
from mcp_server.permissions import create_private_file

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

# `revision = "0006"` and `down_revision = "0005"` (None, or a tuple after a merge) in a migration script
_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=(.*)$", re.M)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")


def _migrations_dir() -> Path:
    """The Alembic script directory, installed as mcp_server.migrations or beside the package in a checkout."""
    import mcp_server.migrations as pkg

    return Path(pkg.__file__).resolve().parent


@functools.cache
def schema_head() -> str:
    """The revision the migration scripts end at, read from their `revision`/`down_revision` lines
    (what Alembic's ScriptDirectory reports as the single head, without loading Alembic)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (_migrations_dir() / "versions").glob("*.py"):
        found = {key: _QUOTED.findall(value) for key, value in _REVISION_LINE.findall(script.read_text())}
        if found.get("revision"):
            revisions.add(found["revision"][0])
            parents.update(found.get("down_revision", []))
    heads = revisions - parents
    if len(heads) != 1:
        raise StorageError(f"the migration scripts must end in one head revision, found {sorted(heads)}")
    return heads.pop()


_CLOSING: set[asyncio.Task[None]] = set()  # sessions cut at their deadline, closed in the background


def _close_later(session: AsyncSession) -> None:
    task = asyncio.get_running_loop().create_task(session.close())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # its connection is gone: nothing to say


def redact_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """One engine per process; `session()` hands out AsyncSessions."""

    def __init__(self, url: str, *, durable_commits: bool = False) -> None:
        """`durable_commits`: on SQLite every commit is fsynced (synchronous=FULL) rather than at the WAL's
        checkpoints (NORMAL, which a power loss can roll back): the audit shipper's engine, which deletes a
        journal segment once its rows are committed."""
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
            pragmas = _sqlite_pragmas_full if durable_commits else _sqlite_pragmas
            event.listen(self.engine.sync_engine, "connect", pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False, class_=AsyncSession)
        # Read-only work takes no write lock on SQLite (see _sqlite_begin), so it never waits on a writer.
        self._read_session = async_sessionmaker(
            self.engine.execution_options(infra_read_only=True), expire_on_commit=False, class_=AsyncSession
        )

    @contextlib.asynccontextmanager
    async def read_session(self) -> AsyncIterator[AsyncSession]:
        """A session for read-only work. Within a call (see `audit.read_deadline`) it must be done, closed
        included, within the call's deadline: past it the work is cut, the connection is closed without
        waiting for it, and DatabaseTimeout is raised."""
        seconds = read_deadline_seconds()
        if seconds is None:
            async with self._read_session() as session:
                yield session
            return
        session = self._read_session()
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                try:
                    yield session
                finally:
                    if not scope.expired():
                        await session.close()
        except TimeoutError as exc:
            if not scope.expired():
                raise
            _close_later(session)
            raise DatabaseTimeout(
                f"The database did not answer within {seconds:g} s (INFRA_DB_READ_TIMEOUT): it is hanging or "
                "overloaded. Retry later; answers that need no stored data (cached collections, list_devices) "
                "still work."
            ) from exc

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError):
            return False

    async def revision(self) -> str | None:
        """The schema revision recorded in the database (None before the first migration)."""
        async with self.engine.connect() as conn:
            try:
                revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
            except SQLAlchemyError:
                return None  # connected, but no alembic_version table yet: a new database
        return None if revision is None else str(revision)

    async def migrate(self) -> None:
        """Upgrade to the latest schema; a database already there is left alone without loading Alembic."""
        try:
            current = await self.revision()
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(
                f"Migrating {redact_url(self.url)} failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        if current != schema_head():
            await asyncio.to_thread(migrate, self.url)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: object, _record: object, synchronous: str = "NORMAL") -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
    dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


def _sqlite_pragmas_full(dbapi_conn: object, record: object) -> None:
    _sqlite_pragmas(dbapi_conn, record, "FULL")


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes cannot wait for another writer (SQLITE_BUSY at
    # once); taking the write lock up front makes writers queue on busy_timeout instead. Sessions from
    # `read_session` only read, and begin deferred so they never hold up a writer.
    read_only = conn.get_execution_options().get("infra_read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["url"] = url
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (blocking; runs its own event loop)."""
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        create_private_file(Path(parsed.database))
    try:
        command.upgrade(alembic_config(url), revision)
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"Migrating {redact_url(url)} failed: {exc.__class__.__name__}: {exc}") from exc
