"""Content from hosts is hostile until bounded: output caps, parse workers with deadlines and memory caps,
stream framing, diffs with a budget; the event loop keeps turning whatever a host sends."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import random
import re
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mcp_server.config_monitoring.changes import assess
from mcp_server.config_monitoring.diff import unified_diff
from mcp_server.devices import Device
from mcp_server.errors import OutputTooLarge, ParseError
from mcp_server.events import ConfigChanged
from mcp_server.executors import LocalExecutor
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from mcp_server.workers import WorkerPool, WorkLimitExceeded
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.hostile import hostile_registry
from tests.sshd import SshdFleet
from tests.test_config_watch import require_inotifywait

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """How late a 10 ms timer fires, over and over, while the block runs: the event loop's stalls."""
    lags: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started - 0.01)

    ticker = asyncio.create_task(tick())
    try:
        yield lags
    finally:
        done.set()
        await ticker


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.asynccontextmanager
async def hostile_state(tmp_path: Path, **overrides: Any) -> AsyncIterator[AppState]:
    async with open_state(make_settings(tmp_path, **overrides), registry=hostile_registry()) as state:
        yield state


# ---- the worker pool ----------------------------------------------------------------------------------------


async def test_a_worker_call_past_its_deadline_is_stopped_and_the_next_call_gets_a_new_worker() -> None:
    pool = WorkerPool(size=1, memory_mb=512)
    try:
        async with loop_lag() as lags:
            with pytest.raises(WorkLimitExceeded, match=r"Matching took longer than 0\.5s and was stopped"):
                await pool.call(re.match, r"(a+)+$", "a" * 60 + "b", deadline=0.5, what="Matching")
        assert max(lags) < 0.2
        assert await pool.call(len, "four", deadline=10, what="Counting") == 4
        assert (pool.calls, pool.replaced, pool.running) == (2, 1, 1)
    finally:
        await pool.close()
    assert pool.running == 0


async def test_a_deadline_counts_the_workers_cpu_time_so_a_busy_machine_does_not_refuse_ordinary_work() -> (
    None
):
    """A worker starved of CPU (a loaded machine, the worker niced) waits without working: that wait is not
    charged to the call, up to WALL_FACTOR times its deadline; starting a worker is never charged."""
    pool = WorkerPool(size=1, memory_mb=512)
    try:
        await pool.call(time.sleep, 0.8, deadline=0.4, what="Waiting")  # twice the deadline, but no CPU used
        with pytest.raises(WorkLimitExceeded, match=r"Waiting took longer than 0\.2s"):
            await pool.call(time.sleep, 30, deadline=0.2, what="Waiting")  # stopped at 5x in wall time
        assert (pool.calls, pool.replaced) == (2, 1)
    finally:
        await pool.close()


async def test_a_worker_that_asks_for_more_memory_than_allowed_is_stopped_and_replaced() -> None:
    pool = WorkerPool(size=1, memory_mb=256)
    before = rss_mb()
    try:
        with pytest.raises(WorkLimitExceeded, match="needed more than 256 MiB"):
            await pool.call(bytearray, 1 << 30, deadline=10, what="Allocating")
        assert await pool.call(len, "ok", deadline=10, what="Counting") == 2
        assert pool.replaced == 1
    finally:
        await pool.close()
    assert rss_mb() - before < 50  # the gigabyte was the worker's, never the server's


# ---- parsing off the event loop -----------------------------------------------------------------------------


async def test_a_small_output_is_parsed_in_place_and_a_large_one_in_a_worker(tmp_path: Path) -> None:
    async with hostile_state(tmp_path) as state:
        small = await state.service.collect("local", "small_text")
        assert small.data.text == "small" and state.service.workers.calls == 0
        big = await state.service.collect("local", "big_text")
        assert big.data.text == "a" * 100 and state.service.workers.calls == 1


async def test_a_parse_past_its_deadline_is_refused_while_the_event_loop_keeps_turning(
    tmp_path: Path,
) -> None:
    async with hostile_state(tmp_path, parse_timeout=1.0) as state:
        async with loop_lag() as lags:
            with pytest.raises(ParseError, match=r"big_backtracking.*took longer than 1s and was stopped"):
                await state.service.collect("local", "big_backtracking")
        assert max(lags) < 0.2, f"the event loop stalled for {max(lags):.3f}s"
        assert (await state.service.collect("local", "big_text")).data.text.startswith("aaa")
        rows = await audit_rows(state, command="big_backtracking")
        assert [(r.outcome, r.error_type) for r in rows] == [("error", "parse_error")]


async def test_a_command_with_a_fallback_answers_without_its_costly_part_when_the_parse_runs_too_long(
    tmp_path: Path,
) -> None:
    async with hostile_state(tmp_path, parse_timeout=1.0) as state:
        result = await state.service.collect("local", "big_backtracking_with_fallback")
    assert result.data.text == "a" * 100
    assert result.data.note is not None and "took longer than 1s" in result.data.note


async def test_a_parse_that_wants_gigabytes_is_refused_and_the_server_is_unharmed(tmp_path: Path) -> None:
    async with hostile_state(tmp_path, parse_memory_mb=256) as state:
        before = rss_mb()
        with pytest.raises(ParseError, match="needed more than 256 MiB"):
            await state.service.collect("local", "big_greedy")
        assert rss_mb() - before < 50
        assert (await state.service.collect("local", "big_text")).from_cache is False


async def test_errors_a_parser_raises_in_a_worker_reach_the_caller_unchanged(tmp_path: Path) -> None:
    async with hostile_state(tmp_path) as state:
        with pytest.raises(ParseError, match=r"Could not parse refusing output\. Output began: 'aaaa"):
            await state.service.collect("local", "big_refusing")


# ---- output caps ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "ssh"])
async def test_a_command_writing_more_than_the_output_limit_is_stopped_and_the_device_stays_usable(
    where: str, sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    host = sshd_fleet.hosts["alpha"]
    async with hostile_state(tmp_path, max_output_bytes=1 << 20) as state:
        device = "local" if where == "local" else await add_fleet_host(state, sshd_fleet, host)
        logins = host.accepted_logins()
        with pytest.raises(OutputTooLarge, match=r"'flood' on device .* more than 1,048,576 bytes"):
            await state.service.collect(device, "flood")
        # stderr is not held either: its start is kept, the rest read and dropped
        assert (await state.service.collect(device, "stderr_flood")).data.text == "done"
        assert (await state.service.collect(device, "small_text")).data.text == "small"
        if where == "ssh":
            assert host.accepted_logins() == logins + 1  # one pooled connection throughout
        rows = await audit_rows(state, command="flood")
        assert [(r.outcome, r.error_type) for r in rows] == [("error", "output_too_large")]


# ---- streams --------------------------------------------------------------------------------------------------

RECORDS_SCRIPT = (
    "printf 'first\\nstill first\\0second\\0'; head -c 200000 /dev/zero | tr '\\0' x; printf '\\0last'"
)


@pytest.mark.parametrize("where", ["local", "ssh"])
async def test_stream_records_end_at_their_separator_and_a_huge_one_is_cut(
    where: str, sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    async with hostile_state(tmp_path) as state:
        name = (
            "local" if where == "local" else await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["beta"])
        )
        device: Device = state.devices.get(name)
        executor = state.service.executor(device)
        async with executor.stream(
            device, ["sh", "-c", RECORDS_SCRIPT], label="records", separator=b"\0"
        ) as s:
            records = [record async for record in s.lines]
    assert records[:2] == ["first\nstill first", "second"]
    assert records[2].startswith("x" * 65_536) and records[2].endswith("…[record cut at 65536 bytes]")
    assert len(records[2]) < 65_600
    assert records[3:] == ["last"]


async def test_a_file_name_holding_a_newline_arrives_whole_from_inotifywait(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    require_inotifywait()
    scratch = sshd_fleet.scratch_dir()
    async with hostile_state(tmp_path) as state:
        device = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["gamma"])
        async with state.service.stream(device, "config_watch", {"dirs": [str(scratch)]}) as chunks:
            seen: list[str] = []
            async for chunk in chunks:
                if chunk.ready:
                    (scratch / "app.conf\nMODIFY twice.conf").write_text("x")
                seen += [e.path for e in chunk.events]
                if seen:
                    break
    assert seen[0] == f"{scratch}/app.conf\nMODIFY twice.conf"


async def test_a_stream_record_cut_short_never_becomes_an_event() -> None:
    device = Device(name="local", hostname="localhost")
    executor = LocalExecutor()
    script = (
        "printf 'Watches established.\\n\\0CREATE /x/'; head -c 100000 /dev/zero | tr '\\0' y; printf '\\0'"
    )
    async with executor.stream(device, ["sh", "-c", script], label="t", separator=b"\0") as stream:
        records = [record async for record in stream.lines]
    assert records[0] == "Watches established.\n" and "record cut" in records[1]


# ---- diffs with a budget ---------------------------------------------------------------------------------------


def periodic(lines: int, step: int) -> str:
    """Text that drives difflib's matching towards its worst case (found by measuring: 10k lines ≈ 10 s)."""
    return "".join(f"v{(i * step) % 300}\n" for i in range(lines))


async def test_a_change_too_costly_to_diff_is_recorded_with_sizes_and_hashes_and_rated_high(
    tmp_path: Path,
) -> None:
    watched = tmp_path / "big.conf"
    watched.write_text(periodic(10_000, 1))
    # a deadline far shorter than diffing and assessing 10,000 lines takes (tens of milliseconds): the path of a
    # change too costly to assess (the worker's start-up is not counted, and its first call no longer imports
    # the server's database side, so a deadline merely shorter than starting a worker no longer gets there)
    async with hostile_state(tmp_path, parse_timeout=0.002, config_watch=False) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.watch("local", str(watched))
        watched.write_text(periodic(10_000, 7))
        async with loop_lag() as lags:
            await state.config.refresh("local", [str(watched)])
        change = await asyncio.wait_for(queue.get(), 10)
        assert isinstance(change, ConfigChanged) and change.risk == "high"
        page = await state.config.changes(
            device="local", since=None, min_risk=None, limit=5, offset=0, with_diff=True
        )
    assert max(lags) < 0.2, f"the event loop stalled for {max(lags):.3f}s"
    found = page.changes[0]
    assert found.diff is not None and found.diff.startswith(f"changed, too large to diff: a{watched} (")
    assert "(46,320 bytes, 10,000 lines, sha256 f504c1679374a4bc)" in found.diff
    assert any(
        "could not be diffed or assessed" in r and "took longer than 0.002s" in r for r in found.reasons
    )


async def test_a_large_change_is_diffed_in_a_worker_while_the_event_loop_keeps_turning(
    tmp_path: Path,
) -> None:
    old, new = periodic(4_000, 1), periodic(4_000, 7)
    watched = tmp_path / "large.conf"
    watched.write_text(old)
    async with hostile_state(tmp_path, config_watch=False) as state:
        await state.config.watch("local", str(watched))
        watched.write_text(new)
        async with loop_lag() as lags:
            await state.config.refresh("local", [str(watched)])
        page = await state.config.changes(
            device="local", since=None, min_risk=None, limit=5, offset=0, with_diff=True
        )
        assert state.service.workers.calls >= 1
    assert max(lags) < 0.2, f"the event loop stalled for {max(lags):.3f}s"
    assert page.changes[0].diff == assess("file", str(watched), "modified", old, new).diff


def _apply(old: list[str], diff: str) -> list[str]:
    """Apply a unified diff to `old` (lines with their newlines)."""
    out: list[str] = []
    at = 0
    lines = diff.split("\n")[2:]
    for index, line in enumerate(lines):
        hunk = re.match(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@$", line)
        if hunk:
            start = int(hunk.group(1)) - (1 if hunk.group(2) != "0" else 0)
            out += old[at:start]
            at = start
        elif line.startswith(" "):
            out.append(old[at])
            at += 1
        elif line.startswith("-"):
            at += 1
        elif line.startswith("+"):
            out.append(line[1:] + "\n")
        elif line.startswith("\\") and lines[index - 1].startswith("+"):
            out[-1] = out[-1][:-1]
    return out + old[at:]


def test_the_diff_turns_the_old_text_into_the_new_and_reads_like_difflibs() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        old = [rng.choice("abcde") + "\n" for _ in range(rng.randint(0, 40))]
        new = list(old)
        for _ in range(rng.randint(0, 6)):
            roll = rng.random()
            if roll < 0.3 and new:
                del new[rng.randrange(len(new))]
            elif roll < 0.6:
                new.insert(rng.randint(0, len(new)), rng.choice("abcdef") + "\n")
            elif new:
                new[rng.randrange(len(new))] = rng.choice("abcdef") + "\n"
        if new and rng.random() < 0.2:
            new[-1] = new[-1].rstrip("\n")
        diff = unified_diff("".join(old), "".join(new), "a/f", "b/f")
        assert "".join(_apply(old, diff)) == "".join(new), diff
    # one edit in a long file: the same text difflib writes
    old_text = "".join(f"line {i}\n" for i in range(500))
    new_text = old_text.replace("line 250\n", "line two hundred fifty\n")
    expected = "".join(
        difflib.unified_diff(
            old_text.splitlines(True), new_text.splitlines(True), fromfile="a/f", tofile="b/f"
        )
    )
    assert unified_diff(old_text, new_text, "a/f", "b/f") == expected


def test_one_edit_in_a_long_file_costs_time_linear_in_its_length() -> None:
    old = periodic(50_000, 1)
    new = old.replace("v150\n", "changed\n", 1)
    started = time.perf_counter()
    diff = unified_diff(old, new, "a", "b")
    assert time.perf_counter() - started < 1.0  # difflib alone: minutes on this text
    assert diff.count("\n+changed") == 1


def _settings_parse_bounds(settings: Settings) -> tuple[float, int, int]:
    return settings.parse_timeout, settings.parse_memory_mb, settings.max_output_bytes


def test_the_bounds_have_safe_defaults(tmp_path: Path) -> None:
    assert _settings_parse_bounds(make_settings(tmp_path)) == (10.0, 1024, 16_777_216)
