"""The audit trail loses nothing: rows spool to an fsynced file while the database is away and replay once."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from mcp_server.db.tables import DataCollectionAudit
from mcp_server.state import open_state
from tests.app_fixtures import PG_ADMIN_DSN, audit_rows, create_pg_database, drop_pg_database, make_settings


async def _accept_connections(name: str, accept: bool) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(accept).lower()}')
        if not accept:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await admin.close()


async def test_rows_spooled_while_the_database_was_away_are_replayed_after_a_restart(tmp_path: Path) -> None:
    url = await create_pg_database()
    name = url.rsplit("/", 1)[1]
    settings = make_settings(tmp_path, database_url=url)
    try:
        async with open_state(settings) as state:
            await _accept_connections(name, False)
            await state.db.engine.dispose()
            for _ in range(3):
                await state.service.collect("local", "os_info", force_refresh=True)
            # shutting down with the database away: the rows go to the spool, nowhere else
        spooled = sorted((settings.data_dir / "spool").glob("segment-*.jsonl"))
        assert spooled and all(p.stat().st_mode & 0o777 == 0o600 for p in spooled)
        assert sum(len(p.read_text().splitlines()) for p in spooled) >= 3
        await _accept_connections(name, True)
        async with open_state(settings) as state:
            await state.writer.flush()
            assert state.writer.segments() == []
            rows = await audit_rows(state, kind="collection", command="os_info")
            assert len(rows) == 3 and all(r.outcome == "ok" for r in rows)
    finally:
        await _accept_connections(name, True)
        await drop_pg_database(url)


async def test_a_segment_replayed_before_a_crash_is_not_replayed_again(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with open_state(settings) as state:
        row = {
            "occurred_at": datetime.now(UTC),
            "kind": "tool",
            "tool": "probe",
            "cache_hit": False,
            "ssh_commands": [],
            "duration_ms": 1.0,
            "outcome": "ok",
        }
        state.writer._spool_rows([(DataCollectionAudit, row)])
        (segment,) = state.writer.segments()
        copy = tmp_path / segment.name
        shutil.copy(segment, copy)
        await state.writer.flush()
        assert state.writer.segments() == []
        # as if the process died after the commit but before the unlink: the same file is back
        shutil.copy(copy, segment)
        await state.writer.flush()
        assert state.writer.segments() == []
        assert len(await audit_rows(state, tool="probe")) == 1
