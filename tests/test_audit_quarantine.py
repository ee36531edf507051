"""A row the database refuses holds up no other row: it is set aside in the spool's quarantine file, the rows
around it arrive exactly once (also across a SIGKILL in the middle), and a database that is away or hung
sets nothing aside. Real SQLite files and PostgreSQL, real writer threads, a real child process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from sqlalchemy import select, text

from mcp_server.audit import AuditRecord
from mcp_server.db.tables import DataCollectionAudit, ServicePerformanceMetric
from mcp_server.journal import BatchWriter
from mcp_server.quarantine import QUARANTINE_AFTER, QUARANTINE_FILE
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import create_pg_database, drop_pg_database, make_settings
from tests.helpers import structured
from tests.test_audit import _accept_connections
from tests.test_audit_durability import Stall


@pytest.fixture(params=["sqlite", "postgresql"])
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    if request.param == "sqlite":
        yield make_settings(tmp_path)
        return
    url = await create_pg_database()
    try:
        yield make_settings(tmp_path, database_url=url)
    finally:
        await drop_pg_database(url)


def _row(tool: str, **fields: Any) -> dict[str, Any]:
    return AuditRecord(occurred_at=datetime.now(UTC), kind="tool", tool=tool, outcome="ok").row() | fields


def _quarantined(settings: Settings) -> list[dict[str, Any]]:
    path = settings.data_dir / "spool" / QUARANTINE_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _tools(state: AppState, prefix: str) -> Counter[str]:
    async with state.db.read_session() as session:
        tools = await session.scalars(select(DataCollectionAudit.tool))
        return Counter(t for t in tools if t and t.startswith(prefix))


async def _writes_until(writer: BatchWriter, failures: int, timeout: float = 30) -> None:
    """Wait (bounded) until the shipper has failed `failures` more attempts."""
    target = writer.failures + failures
    deadline = time.monotonic() + timeout
    while writer.failures < target:
        assert time.monotonic() < deadline, f"only {writer.failures} failed attempts"
        await asyncio.sleep(0.05)


# a batch shipped by INSERT (fewer than COPY_ROWS rows of a table) and one that PostgreSQL takes by COPY
@pytest.mark.parametrize("around", [4, 120])
async def test_a_row_the_database_refuses_is_set_aside_and_the_rows_around_it_arrive_once(
    settings: Settings, around: int
) -> None:
    async with open_state(settings) as state:
        for i in range(around):
            state.writer.add(DataCollectionAudit, _row(f"before-{i}"))
        # NOT NULL: every audit row has an outcome; the database refuses this one whatever else it holds
        state.writer.add(DataCollectionAudit, _row("poison", outcome=None))
        for i in range(around):
            state.writer.add(DataCollectionAudit, _row(f"after-{i}"))
        await state.writer.flush(30)
        before, after = await _tools(state, "before-"), await _tools(state, "after-")
        assert set(before.values()) == set(after.values()) == {1}
        assert len(before) == len(after) == around
        assert await _tools(state, "poison") == Counter()
        status = state.writer.status()
        assert status.pending_rows == 0 and status.journal_bytes == 0
        assert status.quarantine.rows == 1 and "outcome" in (status.quarantine.last_error or "")
        async with Client(build_server(settings, state=state)) as client:
            audit = structured(await client.call_tool("get_service_health", {}))["audit"]
        assert audit["quarantined_rows"] == 1 and audit["last_quarantined_at"] is not None
        assert "outcome" in audit["last_quarantine_error"]
        assert audit["warning"] is not None and "refused 1 audit rows" in audit["warning"]
        # rows journaled after the refusal ship as usual
        state.writer.add(DataCollectionAudit, _row("later"))
        await state.writer.flush(30)
        assert await _tools(state, "later") == Counter({"later": 1})
    (item,) = _quarantined(settings)
    assert item["table"] == "data_collection_audit" and item["row"]["tool"] == "poison"
    assert "outcome" in item["error"] and item["quarantined_at"]
    assert (settings.data_dir / "spool" / QUARANTINE_FILE).stat().st_mode & 0o777 == 0o600
    async with open_state(settings) as state:  # counted again after a restart, and shipped once only
        assert state.writer.status().quarantine.rows == 1
        await state.writer.flush(30)
        assert set((await _tools(state, "before-")).values()) == {1}


async def test_a_value_out_of_a_postgresql_columns_range_is_set_aside(tmp_path: Path) -> None:
    """An integer past int4 refused by the driver encoding it, by INSERT (one row) and by COPY (a batch)."""
    url = await create_pg_database()
    settings = make_settings(tmp_path, database_url=url)
    try:
        async with open_state(settings) as state:
            for burst in (1, 80):
                for i in range(burst):
                    row = {"recorded_at": datetime.now(UTC), "outcome": "ok", "command": f"m{burst}-{i}"}
                    state.writer.add(ServicePerformanceMetric, row | {"collections": 7})
                bad = {"recorded_at": datetime.now(UTC), "outcome": "ok", "command": f"big{burst}"}
                state.writer.add(ServicePerformanceMetric, bad | {"collections": 2**40})
                await state.writer.flush(30)
            async with state.db.read_session() as session:
                commands = Counter(await session.scalars(select(ServicePerformanceMetric.command)))
            assert {c for c in commands if c and c.startswith("m")} == {
                *(f"m1-{i}" for i in range(1)),
                *(f"m80-{i}" for i in range(80)),
            }
            assert set(commands.values()) == {1} and not {"big1", "big80"} & set(commands)
        assert sorted(q["row"]["command"] for q in _quarantined(settings)) == ["big1", "big80"]
        assert all("int32" in q["error"] for q in _quarantined(settings))
    finally:
        await drop_pg_database(url)


_SHIP = """
import asyncio, sys
from mcp_server.state import open_state
from tests.app_fixtures import make_settings
from pathlib import Path

async def main() -> None:
    async with open_state(make_settings(Path(sys.argv[1]), database_url=sys.argv[2] or None)) as state:
        await state.writer.flush()

asyncio.run(main())
"""


async def test_a_sigkill_while_a_refused_batch_ships_in_parts_replays_nothing_twice(
    settings: Settings, tmp_path: Path
) -> None:
    """A process dies (SIGKILL) while it ships a segment in parts around many refused rows; the next start
    ships the rest: every good row once, every refused row set aside once."""
    spool = settings.data_dir / "spool"
    spool.mkdir(parents=True)
    poison = set(range(7, 1000, 23))
    lines = []
    for i in range(1000):
        row = _row(f"r-{i}", outcome=None if i in poison else "ok")
        item = {"table": "data_collection_audit", "row": row}
        lines.append(json.dumps(item, default=lambda d: {"$datetime": d.isoformat()}) + "\n")
    (spool / "segment-00000000000000000003-0badf00d.jsonl").write_text("".join(lines))
    url = settings.database_url or ""
    log = (tmp_path / "child.log").open("w")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-c", _SHIP, str(tmp_path), url], stderr=log, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(_quarantined(settings)) < 3:
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            assert time.monotonic() < deadline, "nothing was set aside"
            await asyncio.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    set_aside = len(_quarantined(settings))
    assert 3 <= set_aside < len(poison), "the kill did not land in the middle"
    async with open_state(settings) as state:
        await state.writer.flush(60)
        tools = await _tools(state, "r-")
        assert state.writer.status().quarantine.rows == len(poison)
    assert tools == Counter({f"r-{i}": 1 for i in range(1000) if i not in poison})
    keys = [(q["segment"], q["offset"]) for q in _quarantined(settings)]
    assert len(keys) == len(set(keys)) == len(poison)
    assert {q["row"]["tool"] for q in _quarantined(settings)} == {f"r-{i}" for i in poison}


# ---- a database that is away or hung sets nothing aside ------------------------------------------


async def test_a_postgresql_that_refuses_connections_sets_nothing_aside(tmp_path: Path) -> None:
    """Also with a row it would refuse waiting behind the outage: set aside only once the database answers."""
    url = await create_pg_database()
    name = url.rsplit("/", 1)[1]
    settings = make_settings(tmp_path, database_url=url, audit_write_timeout=1)
    try:
        async with open_state(settings) as state:
            await _accept_connections(name, False)
            await state.db.engine.dispose()
            state.writer.add(DataCollectionAudit, _row("down-0"))
            state.writer.add(DataCollectionAudit, _row("down-poison", outcome=None))
            state.writer.add(DataCollectionAudit, _row("down-1"))
            await _writes_until(state.writer, QUARANTINE_AFTER + 2)
            assert state.writer.status().quarantine.rows == 0 and _quarantined(settings) == []
            assert state.writer.status().pending_rows == 3
            await _accept_connections(name, True)
            await state.writer.flush(30)
            assert await _tools(state, "down-") == Counter({"down-0": 1, "down-1": 1})
        assert [q["row"]["tool"] for q in _quarantined(settings)] == ["down-poison"]
    finally:
        await _accept_connections(name, True)
        await drop_pg_database(url)


async def test_a_hanging_postgresql_sets_nothing_aside(tmp_path: Path) -> None:
    url = await create_pg_database()
    try:
        with Stall() as stall:
            settings = make_settings(tmp_path, database_url=stall.url(url), audit_write_timeout=0.3)
            async with open_state(settings) as state:
                stall.flow(False)
                for i in range(5):
                    state.writer.add(DataCollectionAudit, _row(f"hang-{i}"))
                await _writes_until(state.writer, QUARANTINE_AFTER + 2)
                assert "timed out" in (state.writer.status().last_error or "")
                assert state.writer.status().quarantine.rows == 0 and _quarantined(settings) == []
                stall.flow(True)
                await state.writer.flush(30)
                assert await _tools(state, "hang-") == Counter({f"hang-{i}": 1 for i in range(5)})
        assert _quarantined(settings) == []
    finally:
        await drop_pg_database(url)


async def test_rows_put_back_as_a_new_segment_ship_once_the_cause_is_fixed(tmp_path: Path) -> None:
    """The procedure docs/audit.md gives: the quarantine's `table` and `row` as a new segment, restart."""
    url = await create_pg_database()
    settings = make_settings(tmp_path, database_url=url)
    try:
        async with open_state(settings) as state:
            state.writer.add(DataCollectionAudit, _row("refused-then-fixed", outcome=None))
            await state.writer.flush(30)
            async with state.db.session() as session, session.begin():  # the operator fixes the cause
                await session.execute(text("ALTER TABLE data_collection_audit ALTER outcome DROP NOT NULL"))
        spool = settings.data_dir / "spool"
        lines = [json.dumps({"table": q["table"], "row": q["row"]}) + "\n" for q in _quarantined(settings)]
        (spool / f"segment-{time.time_ns()}-{os.urandom(4).hex()}.jsonl").write_text("".join(lines))
        (spool / QUARANTINE_FILE).rename(spool / "quarantine.replayed.jsonl")
        async with open_state(settings) as state:
            await state.writer.flush(30)
            assert await _tools(state, "refused-") == Counter({"refused-then-fixed": 1})
            assert state.writer.status().quarantine.rows == 0
    finally:
        await drop_pg_database(url)
