"""The time series as declared in mcp_server/series/: what every part reads from the declarations, the drive
temperature series end to end (the real poller, a real sshd host, SQLite and PostgreSQL), and migrations that
create what they created on the day they were written."""

from __future__ import annotations

import ast
import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastmcp import Client
from sqlalchemy import Connection, func, insert, inspect, select, text

from mcp_server.commands import default_registry
from mcp_server.db import timescale
from mcp_server.db.engine import Database, alembic_config, migrate
from mcp_server.db.storage import configure, layout, maintain
from mcp_server.db.tables import Base, DataCollectionAudit
from mcp_server.devices import DeviceSpec
from mcp_server.errors import ConfigurationError
from mcp_server.metrics_history import metrics_history
from mcp_server.series import CATEGORIES, KEYS, METRICS, SERIES, key_help, metric_help
from mcp_server.series.drives import DriveMetricRow
from mcp_server.series.system import SystemMetricRow
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.sshd import SshdFleet
from tests.test_config_schema import _table_of
from tests.test_polling import eventually, poll_settings, polling, tool
from tests.test_storage import _system_row
from tests.test_storage_health import StorageHosts, storage_hosts  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
REVISIONS = ROOT / "migrations" / "versions"
REGISTRY = default_registry()
DEVICE = "nas01"


# ---- the declarations, and what is generated from them ---------------------------------------------------------


async def test_every_series_names_a_read_command_a_poll_setting_a_retention_setting_and_its_tool(
    tmp_path: Path,
) -> None:
    tools = {t.name for t in await _tools(make_settings(tmp_path))}
    for series in SERIES:
        assert REGISTRY.get(series.command).read_only, series.name
        assert series.poll in CATEGORIES and series.command in series.poll.commands, series.name
        assert series.poll.setting in Settings.model_fields and series.retention in Settings.model_fields
        with pytest.raises(ConfigurationError, match="at least 1 second"):
            make_settings(tmp_path, **{series.poll.setting: 0.5})  # a poll interval is off (0) or >= 1 s
        assert series.tool in tools, series.name
        assert 86_400 % series.storage.interval_seconds == 0, series.name
        columns = set(series.table.__table__.columns.keys())
        assert {"id", "device", "collected_at"} <= columns
        assert series.key is None or series.key.name in columns, series.name


async def _tools(settings: Settings) -> list[Any]:
    async with Client(build_server(settings)) as client:
        return list(await client.list_tools())


async def test_the_history_tool_offers_every_declared_metric_and_an_argument_per_series_key(
    tmp_path: Path,
) -> None:
    tools = {t.name: t for t in await _tools(make_settings(tmp_path))}
    schema = tools["get_metrics_history"].input_schema["properties"]
    assert schema["metric"]["enum"] == list(METRICS)
    assert schema["metric"]["description"] == metric_help()
    assert "drive_temperature_c (SMART temperature, °C); needs drive" in metric_help()
    for key in KEYS:
        assert schema[key]["description"] == key_help(key)
    assert key_help("drive") == "Drive (e.g. /dev/sda), for drive_temperature_c."
    filters = set(schema) - {"device", "metric", "since", "until", "bucket"}
    assert filters == set(KEYS)


def test_metrics_served_from_the_rollup_are_its_columns_as_migration_0005_created_them() -> None:
    frozen = _revision("0005_time_series_storage.py")
    rolled = {
        name: spec.expression.format(f="double precision") for name, spec in METRICS.items() if spec.rollup
    }
    assert rolled == frozen["_ROLLUP_COLUMNS"]


def _revision(filename: str) -> dict[str, Any]:
    """The module-level constants of a migration file."""
    tree = ast.parse((REVISIONS / filename).read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def _case_params(case: Path) -> Any:
    params = case.with_name(case.stem + ".params.json")
    return REGISTRY.get(case.parent.name).validate(json.loads(params.read_text()) if params.exists() else {})


async def test_every_declared_metric_answers_from_the_rows_its_series_stores_for_real_outputs(
    state: AppState,
) -> None:
    """Each series' golden outputs, parsed and mapped to rows twice a minute apart, give every metric points."""
    await state.devices.add(DEVICE, DeviceSpec(hostname="192.0.2.10"))
    t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    keys: dict[str, set[str]] = {}
    for series in SERIES:
        definition = REGISTRY.get(series.command)
        for case in sorted((GOLDEN / series.command).glob("*.txt")):
            result = definition.parse(case.read_text(), _case_params(case))
            for at in (t0, t0 + timedelta(minutes=1)):
                for row in series.to_rows(DEVICE, at, result):
                    state.writer.add(series.table, row)
                    if series.key:
                        keys.setdefault(series.name, set()).add(row[series.key.name])
    await state.writer.flush()
    since, until = t0.isoformat(), (t0 + timedelta(hours=1)).isoformat()
    for name, spec in METRICS.items():
        answers = []
        for key in sorted(keys.get(spec.table, {""})):
            given: dict[str, Any] = {spec.key: key} if spec.key else {}
            answer = await metrics_history(
                state.db,
                state.devices,
                state.settings,
                device=DEVICE,
                metric=name,
                since=since,
                until=until,
                bucket="1h",
                **given,
            )
            answers.append(answer)
        assert any(a.points for a in answers), name
    # a drive that reports no temperature (smartctl could not read it) adds no row
    reporting = {
        json.loads(case.read_text())["path"]
        for case in (GOLDEN / "drive_smart").glob("*.json")
        if not case.name.endswith(".params.json")
        and json.loads(case.read_text())["temperature_c"] is not None
    }
    assert keys["drive_metrics"] == reporting and len(reporting) >= 3


# ---- drive temperatures through the real poller --------------------------------------------------------------


def _set_temperature(hosts: StorageHosts, celsius: int) -> None:
    """Make the fixture smartctl report `celsius` for /dev/vda from now on."""
    capture = hosts.data / "smartctl" / "vda.json"
    report = json.loads(capture.read_text())
    report["temperature"]["current"] = celsius
    staged = capture.with_suffix(".tmp")
    staged.write_text(json.dumps(report, indent=2))
    staged.replace(capture)  # the fixture never reads half a file


async def test_the_drives_poll_records_drive_temperatures_that_get_metrics_history_answers(
    sshd_fleet: SshdFleet,
    storage_hosts: StorageHosts,  # noqa: F811
    tmp_path: Path,
    database_url: str,
) -> None:
    _set_temperature(storage_hosts, 25)
    settings = poll_settings(tmp_path, database_url, poll_drives_interval=1)
    ask = {
        "device": "nas",
        "metric": "drive_temperature_c",
        "drive": "/dev/vda",
        "since": "1h",
        "bucket": "1h",
    }
    async with open_state(settings) as state:
        await add_fleet_host(state, sshd_fleet, storage_hosts.fixtures, name="nas")
        async with polling(state):

            async def hottest() -> float | None:
                points = (await tool(state, "get_metrics_history", ask))["points"]
                return max((p["max"] for p in points), default=None)

            assert await eventually(hottest, "a first drive temperature sample") == 25
            _set_temperature(storage_hosts, 41)

            async def warmed() -> bool:
                return await hottest() == 41

            await eventually(warmed, "a poll after the drive warmed up")
        answer = await tool(state, "get_metrics_history", ask)
        async with Client(build_server(state.settings, state=state)) as client:
            without = await client.call_tool(
                "get_metrics_history",
                {"device": "nas", "metric": "drive_temperature_c"},
                raise_on_error=False,
            )
        polls = await audit_rows(state, transport="poller", device="nas", command="drive_smart")
    points = answer["points"]  # one, or two when the test ran across the hour
    assert (min(p["min"] for p in points), max(p["max"] for p in points)) == (25, 41)
    assert sum(p["samples"] for p in points) >= 2
    assert answer["unit"] == "°C" and answer["key"] == "/dev/vda"
    assert answer["summary"]["latest"] == 41
    assert without.is_error and "needs `drive`. Known for nas: /dev/vda" in without.content[0].text
    assert polls and all(r.tool == "poll:drives" for r in polls)


async def test_an_empty_drive_history_says_which_poll_and_tool_fill_it(state: AppState) -> None:
    await state.devices.add(DEVICE, DeviceSpec(hostname="192.0.2.10"))
    answer = await metrics_history(
        state.db, state.devices, state.settings, device=DEVICE, metric="drive_temperature_c", drive="/dev/sda"
    )
    assert answer.points == [] and answer.note is not None
    assert (
        "INFRA_POLL_DRIVES_INTERVAL" in answer.note and "every get_drive_health call adds one" in answer.note
    )


# ---- migrations as history ----------------------------------------------------------------------------------


def test_migrations_import_nothing_of_the_live_schema() -> None:
    """A revision creates what it created on the day: names, columns and storage SQL are copied into it.
    The one live call allowed is 0005's look at what the database offers (choose_mode)."""
    allowed = {"__future__", "datetime", "sqlalchemy", "alembic"}
    for path in sorted(REVISIONS.glob("0*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                if (node.module, names) == ("mcp_server.db.series", {"choose_mode"}):
                    continue
                assert node.module.split(".")[0] in allowed, f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] in allowed for a in node.names), path.name


async def _count(db: Database, table: Any) -> int:
    async with db.read_session() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


async def _storage_of(db: Database, table: str) -> str:
    """plain, partitioned (with its DEFAULT partition) or hypertable."""
    if db.dialect != "postgresql":
        return "plain"
    async with db.read_session() as session:
        if await session.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")):
            hyper = await session.scalar(
                text("SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = :t"),
                {"t": table},
            )
            if hyper:
                return "hypertable"
        kind = await session.scalar(
            text("SELECT relkind::text FROM pg_class WHERE relname = :t"), {"t": table}
        )
        default = await session.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{table}_default"})
    return "partitioned" if kind == "p" and default else ("plain" if kind == "r" else f"relkind {kind}")


def _model_differences(connection: Connection, table: str) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    found = []
    for diff in compare_metadata(context, Base.metadata):
        for entry in diff if isinstance(diff, list) else [diff]:
            if _table_of(entry) == table:
                found.append(entry)
    return found


STORED = {"plain": "plain", "partitioned": "partitioned", "timescale": "hypertable"}


async def test_migrating_a_database_with_data_from_0005_to_head_keeps_it_and_adds_drive_metrics(
    series_database_url: str, tmp_path: Path
) -> None:
    url = series_database_url
    now = datetime.now(UTC)
    await asyncio.to_thread(migrate, url, "0005")
    db = Database(url)
    try:
        async with db.session() as session, session.begin():
            await session.execute(
                insert(SystemMetricRow), [_system_row(now - timedelta(hours=h), DEVICE) for h in range(48)]
            )
            await session.execute(
                insert(DataCollectionAudit),
                [
                    {
                        "occurred_at": now - timedelta(days=d),
                        "kind": "tool",
                        "duration_ms": 1.0,
                        "outcome": "ok",
                    }
                    for d in range(20)
                ],
            )
    finally:
        await db.close()
    await asyncio.to_thread(migrate, url)
    db = Database(url)
    try:
        mode, _, _ = await layout(db)
        assert await _count(db, SystemMetricRow) == 48 and await _count(db, DataCollectionAudit) == 20
        assert await _storage_of(db, "drive_metrics") == STORED[mode]
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_model_differences, "drive_metrics") == []
        rows = [
            {
                "device": DEVICE,
                "collected_at": now - timedelta(minutes=m),
                "drive": "/dev/sda",
                "temperature_c": 40.0,
            }
            for m in range(3)
        ]
        async with db.session() as session, session.begin():
            await session.execute(insert(DriveMetricRow), rows)
        settings = make_settings(tmp_path, database_url=url)
        report = await maintain(db, settings, now)
        assert report.error is None
        if mode == "timescale":
            await configure(db, settings)  # 0006 asked for the policies to be applied again
            async with db.engine.connect() as conn:
                jobs = await conn.run_sync(timescale.job_states)
            assert {j.policy for j in jobs if j.target == "drive_metrics"} == {
                "policy_compression",
                "policy_retention",
            }
        if mode == "partitioned":
            assert any(p.startswith("drive_metrics_p") for p in report.partitions_created)
            async with db.read_session() as session:
                stray = await session.scalar(text("SELECT count(*) FROM drive_metrics_default"))
            assert stray == 0  # the rows moved into their day's partition
        async with db.read_session() as session:
            ids = (await session.scalars(select(DriveMetricRow.id))).all()
        assert len(set(ids)) == 3
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0005")
    finally:
        await db.close()
    db = Database(url)
    try:
        assert await _count(db, SystemMetricRow) == 48 and await _count(db, DataCollectionAudit) == 20
        async with db.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert "drive_metrics" not in tables and "system_metrics" in tables
    finally:
        await db.close()
