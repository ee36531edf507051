"""Migration 0004 runs up and down on SQLite and PostgreSQL, and leaves the schema the models describe."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from mcp_server.db.engine import Database, alembic_config, migrate
from mcp_server.db.tables import Base

CONFIG_TABLES = {"config_watch_targets", "configuration_snapshots", "configuration_change_events"}


def _table_of(entry: tuple[Any, ...]) -> str | None:
    """The table an autogenerate difference is about."""
    kind = entry[0]
    if kind in ("add_table", "remove_table"):
        return str(entry[1].name)
    if kind in ("add_column", "remove_column") or kind.startswith("modify_"):
        return str(entry[2])
    table = getattr(entry[1], "table", None)
    return str(table.name) if table is not None else None


def _differences(connection: Connection) -> list[Any]:
    """Where the migrated configuration tables differ from the models (types included)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    found = []
    for diff in compare_metadata(context, Base.metadata):
        for entry in diff if isinstance(diff, list) else [diff]:
            if _table_of(entry) in CONFIG_TABLES:
                found.append(entry)
    return found


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migration_0004_goes_up_and_down_and_matches_the_models(database_url: str) -> None:
    await asyncio.to_thread(migrate, database_url)
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            assert CONFIG_TABLES <= await conn.run_sync(_tables)
            assert await conn.run_sync(_differences) == []
        await asyncio.to_thread(command.downgrade, alembic_config(database_url), "0003")
        async with db.engine.connect() as conn:
            assert not CONFIG_TABLES & await conn.run_sync(_tables)
        await asyncio.to_thread(migrate, database_url)
        async with db.engine.connect() as conn:
            assert CONFIG_TABLES <= await conn.run_sync(_tables)
    finally:
        await db.close()
