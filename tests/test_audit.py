"""The audit trail loses nothing: rows spool to an fsynced file while the database is away and replay once."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from fastmcp import Client
from sqlalchemy import insert, text

from mcp_server.audit import (
    AUDIT_ARGUMENTS_CHARS,
    AUDIT_FIELDS,
    AUDIT_ROW_BYTES,
    SUMMARY_START_CHARS,
    AuditRecord,
    CallContext,
    fingerprint,
    storable,
)
from mcp_server.db.engine import Database
from mcp_server.db.queries import AuditEntry
from mcp_server.db.tables import DataCollectionAudit, ServicePerformanceMetric
from mcp_server.errors import ConfigurationError, DeviceNotFound
from mcp_server.journal import BatchWriter, Row, full_row, write_rows
from mcp_server.redact import digest
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
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
    row = AuditRecord(occurred_at=datetime.now(UTC), kind="tool", tool="probe", outcome="ok").row()
    line = json.dumps(
        {"table": "data_collection_audit", "row": row}, default=lambda d: {"$datetime": d.isoformat()}
    )
    spool = settings.data_dir / "spool"
    spool.mkdir(parents=True)
    segment = spool / "segment-00000000000000000001-deadbeef.jsonl"
    segment.write_text(line + "\n")  # left by a process that died before shipping it
    copy = tmp_path / segment.name
    shutil.copy(segment, copy)
    async with open_state(settings) as state:
        await state.writer.flush()
        assert not segment.exists()
        # as if the process died after the commit but before the unlink: the same file is back
        shutil.copy(copy, segment)
        await state.writer.flush()
        state.writer._adopt()
        await state.writer.flush()
        assert len(await audit_rows(state, tool="probe")) == 1


async def test_a_journal_cut_by_a_crash_or_holding_a_bad_line_ships_every_whole_row_once(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)

    def line(tool: str) -> str:
        row = AuditRecord(occurred_at=datetime.now(UTC), kind="tool", tool=tool, outcome="ok").row()
        encoded = json.dumps(
            {"table": "data_collection_audit", "row": row}, default=lambda d: {"$datetime": d.isoformat()}
        )
        return encoded + "\n"

    spool = settings.data_dir / "spool"
    spool.mkdir(parents=True)
    segment = spool / "segment-00000000000000000002-cafebabe.jsonl"
    # a whole row, a line no version wrote, a whole row, and a row the crash cut (never acknowledged)
    segment.write_text(line("first") + "{not json\n" + line("second") + line("cut")[:40])
    async with open_state(settings) as state:
        await state.writer.flush(10)
        assert not segment.exists()
        rows = await audit_rows(state, kind="tool")
        assert sorted(r.tool for r in rows if r.tool in ("first", "second", "cut")) == ["first", "second"]


# ---- every row is bounded, whatever a caller or a host sends ------------------------------------------------


def _row_bytes(row: DataCollectionAudit) -> int:
    """What a stored row holds: every column's value as compact JSON, in UTF-8 bytes."""
    values = {c.name: getattr(row, c.name) for c in DataCollectionAudit.__table__.columns}
    return len(json.dumps(values, separators=(",", ":"), ensure_ascii=False, default=str).encode())


async def test_a_call_with_many_maximal_arguments_is_audited_in_a_few_kilobytes_with_fingerprints(
    client: Client[Any], state: AppState
) -> None:
    # what a read token could send many times a second: about 64 kB of arguments, under the 65,536 limit
    tags = [f"{i:02}" + "t" * 998 for i in range(20)]
    arguments: dict[str, Any] = {"tags": tags} | {f"extra{i:02}": "v" * 1000 for i in range(40)}
    result = await client.call_tool("list_devices", arguments, raise_on_error=False)
    assert result.is_error  # the extra arguments are unknown; the call is audited all the same
    (row,) = await audit_rows(state, kind="tool", tool="list_devices")
    assert _row_bytes(row) <= AUDIT_ROW_BYTES
    assert len(json.dumps(row.arguments, separators=(",", ":"))) <= AUDIT_ARGUMENTS_CHARS
    assert row.error_message is not None and len(row.error_message) <= 1024
    summary = row.arguments
    assert summary is not None
    # the fingerprints match the call as the client sent it
    assert summary["sha256"] == digest(json.dumps(arguments, separators=(",", ":"), ensure_ascii=False))
    assert summary["characters"] > 60_000
    sent = json.dumps(tags, separators=(",", ":"))
    assert fingerprint(tags) == digest(sent)
    assert summary["arguments"]["tags"] == {
        "start": sent[:SUMMARY_START_CHARS],
        "characters": len(sent),
        "sha256": digest(sent),
    }
    assert summary["arguments"]["extra00"]["sha256"] == fingerprint("v" * 1000) == digest("v" * 1000)
    shown = len(summary["arguments"])
    assert shown >= 10 and summary["more_arguments"] == len(arguments) - shown


async def test_every_variable_column_of_an_audit_row_is_bounded(state: AppState) -> None:
    huge = "password=hunter2 " + "é" * 50_000
    commands = [f"sh -c 'step {i}' " + "x" * 5000 for i in range(300)]
    state.writer.audit(
        AuditRecord(
            occurred_at=datetime.now(UTC),
            kind="tool",
            request_id=huge,
            transport=huge,
            tool=huge,
            subject=huge,
            client_id=huge,
            client_ip=huge,
            user_agent=huge,
            request_path=huge,
            arguments={f"{i}{huge[:2000]}": [huge[:5000], {"k": huge[:5000]}] for i in range(50)},
            device=huge,
            command=huge,
            params=huge,
            cache_hit=False,
            ssh_commands=tuple(commands + commands),
            duration_ms=1.0,
            outcome="error",
            error_type=huge,
            error_message=huge,
        )
    )
    (row,) = await audit_rows(state, kind="tool")
    assert _row_bytes(row) <= AUDIT_ROW_BYTES
    assert "hunter2" not in json.dumps([row.arguments, row.params, row.error_message, row.user_agent])
    assert row.arguments is not None and row.arguments["more_arguments"] > 30
    assert row.ssh_commands[0].startswith("sh -c 'step 0' xxx") and "sha256:" in row.ssh_commands[0]
    assert row.ssh_commands[-1].endswith("more distinct commands, 600 run in all]")


async def test_an_argument_json_cannot_hold_is_stored_as_text_and_holds_up_no_later_row(
    tmp_path: Path,
) -> None:
    """A REST call's arguments hold what its route parsed (a datetime `until`, say): the row is stored with the
    value as its text, and the rows journaled after it ship too (one unstorable row used to fail every
    shipping attempt of its batch, and the API's audit query answered 500)."""
    until = datetime(2482, 1, 5, 15, 13, 24, tzinfo=UTC)
    async with open_state(make_settings(tmp_path)) as state:
        state.writer.audit(
            AuditRecord(
                occurred_at=datetime.now(UTC), kind="tool", outcome="ok", request_id="first",
                tool="query_audit_log", arguments={"until": until, "path": Path("/etc"), "limit": 20},
            )
        )  # fmt: skip
        state.writer.audit(
            AuditRecord(occurred_at=datetime.now(UTC), kind="tool", outcome="ok", request_id="next")
        )
        await state.writer.flush(timeout=15)
        rows = {row.request_id: row for row in await audit_rows(state, kind="tool")}
    assert set(rows) == {"first", "next"}
    assert rows["first"].arguments == {"until": until.isoformat(), "path": "/etc", "limit": 20}


async def test_the_shipper_stores_on_sqlite_what_an_insert_through_sqlalchemy_stores(tmp_path: Path) -> None:
    """The shipper binds SQLite rows itself (one executemany, each value through its column type's processor):
    every kind of value comes back as SQLAlchemy's own insert stores it."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    record = AuditRecord(
        occurred_at=at, kind="tool", outcome="error", request_id="r1", tool="collect", cache_hit=True,
        arguments={"device": "nas", "nested": {"list": [1, 2.5, None, "é"]}}, ssh_commands=("uptime",),
        duration_ms=1.25, error_message="refusé\x00 password=hunter2",
    )  # fmt: skip
    metric = {"recorded_at": at, "device": "nas", "command": "uptime", "execute_ms": 1.5, "outcome": "ok"}
    rows: list[Row] = [
        (table, full_row(table, storable(table, row)))
        for table, row in [
            (DataCollectionAudit, record.row()),
            (DataCollectionAudit, AuditRecord(occurred_at=at, kind="collection", outcome="ok").row()),
            (ServicePerformanceMetric, metric),
        ]
    ]
    async with open_state(make_settings(tmp_path)) as state:
        assert state.db.dialect == "sqlite"
        async with state.db.session() as session, session.begin():
            await write_rows(session, "sqlite", rows)
            for table, row in rows:
                await session.execute(insert(table), [row])
        async with state.db.session() as session:
            for table in (DataCollectionAudit, ServicePerformanceMetric):
                stored = [
                    tuple(r)[1:] for r in await session.execute(text(f"SELECT * FROM {table.__tablename__}"))
                ]
                half = len(stored) // 2
                assert half and stored[:half] == stored[half:]
            (entry, *_) = await audit_rows(state, kind="tool")
    assert entry.occurred_at == at and entry.cache_hit is True and entry.arguments == record.arguments
    assert entry.error_message == "refusé\ufffd password=***"


# ---- one record type, built from the call context ----------------------------------------------------------


def test_the_audit_record_has_the_audit_tables_columns_and_the_read_model_mirrors_it() -> None:
    columns = {c.name for c in DataCollectionAudit.__table__.columns} - {"id"}
    assert set(AUDIT_FIELDS) == columns
    # what query_audit_log returns: the row with its id, without the collection's parameter key
    assert set(AuditEntry.model_fields) == set(AUDIT_FIELDS) - {"params"} | {"id"}


def test_an_audit_record_keeps_a_device_only_when_it_is_shaped_like_a_device_name() -> None:
    call = CallContext(transport="memory", tool="get_disk_usage")
    assert call.to_audit("tool", device="nas01").device == "nas01"
    for given in ("x password=hunter2", "NAS01", "a" * 64, "", 7, ["nas01"], None):
        assert call.to_audit("tool", device=given).device is None, given


async def test_a_stream_asked_of_a_device_that_is_no_name_is_audited_without_it(state: AppState) -> None:
    with pytest.raises(DeviceNotFound):
        async with state.service.stream("x password=hunter2", "config_watch", {"dirs": ["/etc"]}):
            pass
    (row,) = await audit_rows(state, kind="collection")
    assert (row.device, row.outcome, row.error_type) == (None, "error", "device_not_found")
    assert "hunter2" not in json.dumps([row.device, row.error_message, row.arguments])


def _journaled_lines(settings: Any) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted((settings.data_dir / "spool").glob("segment-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


@pytest.mark.parametrize("mode", ["write", "fsync"])
async def test_an_answered_calls_rows_are_in_the_journal_file_before_the_answer_and_fsynced_soon(
    tmp_path: Path, mode: str
) -> None:
    # the journal thread's own timer is far away: only the call's path can have put the rows there
    settings = make_settings(tmp_path, audit_sync=mode, audit_flush_interval=30)
    async with open_state(settings) as state:
        async with Client(build_server(settings, state=state)) as client:
            for _ in range(3):
                await client.call_tool("collect", {"command": "os_info", "device": "local"})
                lines = _journaled_lines(settings)  # read at once, before anything else runs
                calls = [line["row"] for line in lines if line["row"].get("kind") == "tool"]
                assert calls and calls[-1]["tool"] == "collect" and calls[-1]["outcome"] == "ok"
        # write: the fsync was issued as the answer left; fsync: done before it left
        for _ in range(200):
            if state.writer.unsynced_rows == 0:
                break
            await asyncio.sleep(0.01)
        assert state.writer.unsynced_rows == 0


async def test_rows_that_come_one_call_at_a_time_are_shipped_together_not_a_transaction_each(
    tmp_path: Path,
) -> None:
    # each call writes its own rows to the journal (INFRA_AUDIT_SYNC=write); the shipper must still batch
    # them: one SQLite transaction (and commit fsync) per call cost more CPU than the call itself
    settings = make_settings(tmp_path, audit_flush_interval=0.1)
    async with open_state(settings) as state:
        writer = state.writer
        await writer.flush()
        before_batches, before_rows = writer.batches, writer.written
        started = time.monotonic()
        calls = 100
        for i in range(calls):
            for kind in ("collection", "tool"):
                writer.audit(
                    AuditRecord(occurred_at=datetime.now(UTC), kind=kind, outcome="ok", tool=f"t{i}")
                )
            await writer.durable(synced=False, inline=True)
            await asyncio.sleep(0.005)  # the calls outlast several shipping intervals
        intervals = (time.monotonic() - started) / settings.audit_flush_interval
        await writer.flush()
        assert writer.written - before_rows == 2 * calls
        # at most one transaction per interval (and the flush's), however long the calls take; before, once
        # an interval had started the shipper, one for every call or few calls that came during the last
        assert writer.batches - before_batches <= intervals + 2


async def test_calls_written_within_the_sync_window_share_one_fsync_issued_when_it_ends(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    async with open_state(settings) as state:
        # the journal thread's own timer far away: only the window can fsync these rows
        writer = BatchWriter(state.db, tmp_path / "journal", interval=30, sync_window=2.0)
        writer.start()
        try:
            for i in range(5):
                writer.audit(
                    AuditRecord(occurred_at=datetime.now(UTC), kind="tool", outcome="ok", tool=f"t{i}")
                )
                await writer.durable(synced=False, inline=True)  # written to the journal file, not fsynced
            assert writer.unsynced_rows == 5 and writer.fsyncs == 0
            for _ in range(1000):  # bounded: the window ends 2 s after the first write
                if writer.unsynced_rows == 0:
                    break
                await asyncio.sleep(0.01)
            assert writer.unsynced_rows == 0 and writer.fsyncs == 1
            await writer.flush()
            assert writer.written == 5
        finally:
            await writer.close()


def test_audit_sync_reads_the_old_booleans_and_names_the_modes_when_wrong(tmp_path: Path) -> None:
    assert make_settings(tmp_path).audit_sync == "write"
    assert make_settings(tmp_path, audit_sync="true").audit_sync == "fsync"
    assert make_settings(tmp_path, audit_sync=False).audit_sync == "off"
    assert make_settings(tmp_path, audit_sync="FSYNC").audit_sync == "fsync"
    with pytest.raises(ConfigurationError, match="INFRA_AUDIT_SYNC: .*'write', 'fsync' or 'off'"):
        make_settings(tmp_path, audit_sync="sometimes")


async def test_the_shippers_sqlite_commits_are_fsynced_before_a_shipped_segment_can_be_deleted(
    tmp_path: Path,
) -> None:
    # WAL with synchronous=NORMAL (the server's engine) can lose its last commits to a power loss; the
    # shipper deletes a journal segment once its rows are committed, so its own commits are FULL
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    for durable, expected in ((False, 1), (True, 2)):
        db = Database(url, durable_commits=durable)
        try:
            async with db.engine.connect() as conn:
                assert await conn.scalar(text("PRAGMA synchronous")) == expected
        finally:
            await db.close()
    settings = make_settings(tmp_path)
    async with open_state(settings) as state:
        shipper = state.writer._connect()
        try:
            async with shipper.engine.connect() as conn:
                assert await conn.scalar(text("PRAGMA synchronous")) == 2
        finally:
            await shipper.close()
