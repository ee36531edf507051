"""The polling service against real sshd hosts: history filled, leases, the circuit breaker, health rows."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from sqlalchemy import select

from mcp_server.db.series import as_utc
from mcp_server.db.tables import PollLease, ServicePerformanceMetric
from mcp_server.polling import leases
from mcp_server.polling.scheduler import RAMP_YIELD, first_due, jitter_offset
from mcp_server.polling.service import PollingService
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, _queue_cache_stats, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.helpers import delaying_relay
from tests.sshd import SshdFleet

DEADLINE = 90.0
# Only what a test names is polled; everything else is off.
QUIET = {
    "poll_enabled": True,
    "poll_system_interval": 0,
    "poll_network_interval": 0,
    "poll_disk_interval": 0,
    "poll_containers_interval": 0,
    "poll_drives_interval": 0,
    "poll_report_interval": 1.0,
}


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def polling(state: AppState, **kwargs: Any) -> AsyncIterator[PollingService]:
    """The polling service as a server's lifespan runs it."""
    service = PollingService.of(state, **kwargs)
    state.polling = service
    service.start()
    try:
        yield service
    finally:
        await service.stop()
        state.polling = None


def poll_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    return make_settings(tmp_path, database_url=database_url, **(QUIET | overrides))


async def tool(state: AppState, name: str, args: dict[str, Any]) -> dict[str, Any]:
    async with Client(build_server(state.settings, state=state)) as client:
        result = await client.call_tool(name, args)
    content: dict[str, Any] | None = result.structured_content
    assert content is not None
    return content


async def test_the_poller_fills_history_from_the_sshd_fleet(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    settings = poll_settings(
        tmp_path, database_url, poll_system_interval=1, poll_network_interval=1, poll_disk_interval=2
    )
    async with open_state(settings) as state:
        names = [await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts[h]) for h in ("alpha", "beta")]
        async with polling(state):

            async def history_of(name: str) -> bool:
                cpu = await tool(state, "get_metrics_history", {"device": name, "metric": "cpu_percent"})
                rx = await tool(
                    state,
                    "get_metrics_history",
                    {"device": name, "metric": "net_rx_bytes_per_s", "interface": "lo", "bucket": "1m"},
                )
                disk = await tool(
                    state,
                    "get_metrics_history",
                    {"device": name, "metric": "disk_used_percent", "mount": "/"},
                )
                cpu_samples = sum(p["samples"] for p in cpu["points"])
                return cpu_samples >= 3 and bool(rx["points"]) and bool(disk["points"])

            for name in names:
                await eventually(
                    functools.partial(history_of, name), f"system, network and disk polls of {name}"
                )
            devices = await tool(state, "list_devices", {})
        health = {d["name"]: d["health"] for d in devices["devices"]}
        for name in names:
            assert health[name]["status"] == "ok" and health[name]["breaker"] == "closed"
        assert health["local"]["status"] in ("ok", "unknown")
        polls = await audit_rows(state, transport="poller", device="alpha", command="system_metrics")
        assert polls and all(r.subject == f"poller:{settings.replica_name}" for r in polls)
        assert all(r.tool == "poll:system" and r.kind == "collection" and not r.cache_hit for r in polls)
        async with state.db.read_session() as session:
            held = set(
                (await session.scalars(select(PollLease.request_id).where(PollLease.device == "alpha"))).all()
            )
        assert {r.request_id for r in polls} <= held  # each poll's collections carry its lease's id


async def test_the_circuit_breaker_opens_on_a_stopped_sshd_and_closes_when_it_returns(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    settings = poll_settings(
        tmp_path,
        database_url,
        poll_system_interval=1,
        poll_breaker_threshold=2,
        poll_breaker_backoff=1.0,
        poll_breaker_max_backoff=2.0,
        ssh_connect_timeout=2.0,
    )
    host = sshd_fleet.start_host(f"brk{uuid.uuid4().hex[:8]}")
    try:
        async with open_state(settings) as state:
            name = await add_fleet_host(state, sshd_fleet, host)
            async with polling(state) as service:

                async def health() -> dict[str, Any]:
                    info = await tool(state, "get_device", {"device": name})
                    return info["health"]  # type: ignore[no-any-return]

                await eventually(lambda: _is(health, "ok"), f"{name} polled once")
                host.stop()
                down = await eventually(lambda: _is(health, "down"), f"{name}'s breaker to open")
                assert down["breaker"] in ("open", "half_open")
                assert down["consecutive_failures"] >= 2
                assert down["last_error_type"] == "host_unreachable"
                assert down["retry_at"] is not None
                poller = service.poller
                assert poller is not None

                async def skipped() -> bool:
                    return poller.counters.skipped_breaker_open > 0

                await eventually(skipped, "a poll skipped while the breaker is open")
                report = await tool(state, "get_service_health", {})
                assert [d["device"] for d in report["devices_not_ok"]] == [name]
                sshd_fleet.launch(host)
                sshd_fleet.wait_listening([host])
                back = await eventually(lambda: _is(health, "ok"), f"{name}'s breaker to close")
                assert back["breaker"] == "closed" and back["consecutive_failures"] == 0
                assert back.get("retry_at") is None
    finally:
        host.stop()


async def _is(health: Callable[[], Awaitable[dict[str, Any]]], status: str) -> dict[str, Any] | None:
    current = await health()
    return current if current["status"] == status else None


async def test_a_lease_is_held_by_one_replica_until_it_expires_uncompleted(
    tmp_path: Path, database_url: str
) -> None:
    async with open_state(make_settings(tmp_path, database_url=database_url)) as state:
        db, now, ttl = state.db, datetime.now(UTC), timedelta(seconds=30)
        first = await leases.claim(db, "nas01", "system", 100, owner="a", ttl=ttl, now=now)
        second = await leases.claim(
            db, "nas01", "system", 100, owner="b", ttl=ttl, now=now + timedelta(seconds=5)
        )
        assert first.ours and not second.ours
        assert (second.owner, second.request_id, second.completed_at) == ("a", first.request_id, None)
        assert second.expires_at == now + ttl
        other_slot = await leases.claim(db, "nas01", "system", 101, owner="b", ttl=ttl, now=now)
        assert other_slot.ours
        # "a" died: once its lease expires, "b" takes the slot over
        later = now + ttl + timedelta(seconds=1)
        taken = await leases.claim(db, "nas01", "system", 100, owner="b", ttl=ttl, now=later)
        assert taken.ours and taken.request_id != first.request_id
        assert not await leases.complete(
            db, "nas01", "system", 100, request_id=first.request_id, outcome="ok", now=later
        )
        assert await leases.complete(
            db, "nas01", "system", 100, request_id=taken.request_id, outcome="ok", now=later
        )
        # a completed slot is never collected again, however late
        again = await leases.claim(
            db, "nas01", "system", 100, owner="c", ttl=ttl, now=later + timedelta(hours=1)
        )
        assert not again.ours and again.owner == "b" and again.completed_at is not None
        async with db.read_session() as session:
            row = await session.scalar(select(PollLease).where(PollLease.slot == 100))
        assert row is not None and row.attempts == 2 and row.outcome == "ok"


@pytest.mark.parametrize("expired_before_start", [False, True], ids=["live lease", "expired lease"])
async def test_a_dead_replicas_unfinished_slot_is_taken_over_when_its_lease_expires(
    tmp_path: Path, database_url: str, expired_before_start: bool
) -> None:
    """Counted as taken over whether the poller waited for the lease to expire or (a loaded machine starting
    it late) found it expired already: the second case once counted 0."""
    interval = 3600.0
    settings = poll_settings(tmp_path, database_url, poll_system_interval=interval, poll_jitter=0.0)
    # a clock five seconds into an hour-long slot, so the slot cannot end while the test runs
    real = time.time()
    offset = real % interval - 5.0
    slot = int((real - offset) // interval)
    async with open_state(settings) as state:
        ghost = await leases.claim(
            state.db,
            "local",
            "system",
            slot,
            owner="ghost-replica",
            ttl=timedelta(seconds=2),
            now=datetime.now(UTC) - timedelta(seconds=offset + (3 if expired_before_start else 0)),
        )
        assert ghost.ours
        async with polling(state, clock=lambda: time.time() - offset) as service:

            async def completed() -> PollLease | None:
                async with state.db.read_session() as session:
                    row = await session.scalar(
                        select(PollLease).where(PollLease.device == "local", PollLease.slot == slot)
                    )
                return row if row is not None and row.completed_at is not None else None

            row = await eventually(completed, "the ghost's slot to be taken over and polled")
            assert row.owner == settings.replica_name and row.attempts == 2 and row.outcome == "ok"
            assert service.poller is not None and service.poller.counters.taken_over == 1
        polls = await audit_rows(state, transport="poller", command="system_metrics")
        assert [r.request_id for r in polls] == [row.request_id]


def test_each_device_and_category_is_due_at_the_same_offset_on_every_replica() -> None:
    offsets = {jitter_offset(f"host{i}", "system", 60.0, 0.2) for i in range(50)}
    assert all(0 <= o < 12.0 for o in offsets) and len(offsets) == 50
    assert jitter_offset("host1", "system", 60.0, 0.2) == jitter_offset("host1", "system", 60.0, 0.2)
    assert jitter_offset("host1", "system", 60.0, 0.0) == 0.0


def test_by_default_a_fleets_polls_spread_over_nine_tenths_of_the_interval() -> None:
    """500 devices, system + network every 60 s: 1,000 polls a minute. At the old default (jitter 0.2) they
    were packed into the first 12 s; by default every 6 s of the first 54 holds about a ninth of them. Poll
    concurrency follows the cores (16 each, at most 64); the per-device bound stays 2."""
    settings = Settings()
    assert settings.poll_jitter == 0.9
    assert settings.poll_concurrency == min(64, 16 * (os.cpu_count() or 1))
    assert settings.poll_device_concurrency == 2
    offsets = [
        jitter_offset(f"h{i:04d}", category, 60.0, settings.poll_jitter)
        for i in range(500)
        for category in ("system", "network")
    ]
    assert all(0 <= o < 54.0 for o in offsets)
    per_six_seconds = Counter(int(o // 6) for o in offsets)
    assert sorted(per_six_seconds) == list(range(9))
    assert all(90 <= n <= 135 for n in per_six_seconds.values()), per_six_seconds


def test_a_fleet_taken_on_late_in_a_slot_is_polled_over_the_next_slots_first_tenth() -> None:
    """500 devices whose connections finished with less than a tenth of the slot left are taken on in the next
    slot. Their first polls were all due at its start: 1,000 polls at one instant, queued for the 32 poll
    slots (in bench/bench_poller.py, 484 first polls at once gave a ramp lag p95 of 4.0 s on a quiet machine,
    6.0 s under load). Each is now due at its pair's share of the slot's first tenth (6 s of 60); a device
    taken on inside its first slot is still polled at once."""
    interval, slot = 60.0, 1000
    start = slot * interval
    dues = [
        first_due(f"h{i:04d}", category, interval, slot, start - 3.0)
        for i in range(500)
        for category in ("system", "network")
    ]
    assert all(start <= due < start + 6.0 for due in dues)
    per_second = Counter(int(due - start) for due in dues)
    assert sorted(per_second) == list(range(6)) and all(130 <= n <= 205 for n in per_second.values()), (
        per_second
    )
    assert first_due("h0001", "system", interval, slot, start - 3.0) == dues[2]  # the same on every replica
    assert first_due("h0001", "system", interval, slot, start + 2.5) == start + 2.5


async def test_each_replica_records_its_health_and_get_service_health_reports_it(
    tmp_path: Path, database_url: str
) -> None:
    settings = poll_settings(tmp_path, database_url, poll_system_interval=2)
    async with open_state(settings) as state, polling(state):

        async def reported() -> list[ServicePerformanceMetric]:
            await state.writer.flush()
            async with state.db.read_session() as session:
                rows = (
                    await session.scalars(
                        select(ServicePerformanceMetric).where(
                            ServicePerformanceMetric.kind == "replica",
                            ServicePerformanceMetric.collections > 0,
                        )
                    )
                ).all()
            return list(rows)

        rows = await eventually(reported, "a replica row counting a poll")
        assert rows[0].replica == settings.replica_name and rows[0].p50_ms is not None
        assert rows[0].p95_ms is not None and rows[0].p95_ms >= rows[0].p50_ms
        health = await tool(state, "get_service_health", {})

        async def recorded() -> dict[str, Any] | None:
            cache = await tool(state, "get_cache_stats", {})
            return cache if cache["recorded"] else None

        cache = await eventually(recorded, "recorded cache counters")
    assert health["replica"] == settings.replica_name and health["database_ok"] is True
    assert health["poller"]["running"] is True and health["poller"]["intervals"] == {"system": 2.0}
    assert health["storage"]["mode"] in ("plain", "partitioned")
    mine = [r for r in health["replicas"] if r["replica"] == settings.replica_name]
    # the latest period may have had no poll (interval 2 s, a row per second)
    assert mine and mine[0]["alive"] is True and mine[0]["collections"] >= 0
    assert cache["replica"] == settings.replica_name and "hits" in cache
    assert cache["recorded"][0]["replica"] == settings.replica_name


async def test_get_cache_stats_reads_what_is_stored_and_never_makes_the_audit_writer_flush(
    tmp_path: Path,
) -> None:
    """A cached-call-cheap tool: it reports the recorded counters as stored, and leaves the queued rows to the
    writer's own batches (the audit of the call itself included)."""
    settings = make_settings(tmp_path, audit_flush_interval=60.0)
    async with open_state(settings) as state:
        _queue_cache_stats(state)
        written, queued = state.writer.written, state.writer.pending
        assert queued >= 1
        report = await tool(state, "get_cache_stats", {})
        assert report["replica"] == settings.replica_name
        assert state.writer.written == written and state.writer.pending > queued


def test_every_poll_category_has_a_setting_and_runs_registered_read_commands() -> None:
    from mcp_server.commands import default_registry
    from mcp_server.series import CATEGORIES

    registry = default_registry()
    for category in CATEGORIES:
        assert category.setting in Settings.model_fields
        for command in category.commands:
            assert registry.get(command).read_only, command


# ---- a fleet connecting: the ramp and missed slots ----------------------------------------------------------


@contextlib.asynccontextmanager
async def slow_to_answer(port: int, delay: float) -> AsyncIterator[int]:
    """A TCP relay on 127.0.0.1 in front of an sshd that holds each new connection `delay` seconds before
    forwarding it (a host slow to answer while a fleet connects); yields its port."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await server.wait_closed()


def slot_start_clock(interval: float, lead: float = 0.2) -> tuple[Callable[[], float], int]:
    """A clock `lead` seconds into the start of a slot right now, and that slot: every device is due within the
    test's first slot, none half-way through it."""
    real = time.time()
    offset = real % interval - lead
    return (lambda: time.time() - offset), int((real - offset) // interval)


async def stored_slots(state: AppState, interval: float) -> dict[str, dict[int, bool]]:
    """Per device and slot: whether a lease of this replica was completed before its slot ended."""
    async with state.db.read_session() as session:
        rows = (await session.scalars(select(PollLease).where(PollLease.category == "system"))).all()
    stored: dict[str, dict[int, bool]] = {}
    for row in rows:
        in_time = (
            row.completed_at is not None and as_utc(row.completed_at).timestamp() < (row.slot + 1) * interval
        )
        stored.setdefault(row.device, {})[row.slot] = in_time
    return stored


async def test_a_fleet_connecting_misses_no_slot_while_slow_hosts_open_their_connections(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    """Eight hosts take three seconds to answer a new connection, ten answer at once; two polls run at a time.
    When a poll opened its device's connection inside its poll slot, the slow connects alone (8 x 3 s / 2)
    ran past the end of the 10 s slot, and the polls queued behind them were missed. The ramp opens the
    connections beside the polls: every device is stored in its first two slots."""
    interval = 10.0
    settings = poll_settings(
        tmp_path,
        database_url,
        poll_system_interval=interval,
        poll_jitter=0.2,
        poll_concurrency=2,
        poll_connect_concurrency=8,
        ssh_connect_timeout=10.0,
        local_device=False,
    )
    alpha = sshd_fleet.hosts["alpha"]
    hosts = [sshd_fleet.hosts[h] for h in ("alpha", "beta", "gamma")]
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(slow_to_answer(alpha.port, 3.0))
        state = await stack.enter_async_context(open_state(settings))
        for i in range(8):
            await add_fleet_host(state, sshd_fleet, alpha, f"slow{i}", port=relay)
        for i in range(10):
            await add_fleet_host(state, sshd_fleet, hosts[i % 3], f"fast{i}")
        clock, first = slot_start_clock(interval)
        service = await stack.enter_async_context(polling(state, clock=clock))
        poller = service.poller
        assert poller is not None

        async def two_slots_ended() -> bool:
            return clock() >= (first + 2) * interval + 0.5

        await eventually(two_slots_ended, "two slots to pass", timeout=3 * interval)
        report = (await tool(state, "get_service_health", {}))["poller"]
        stored = await stored_slots(state, interval)
    assert report["missed"] == 0, report
    assert report["waited_for_connection"] >= 8 and report["connecting"] == 0
    names = [f"slow{i}" for i in range(8)] + [f"fast{i}" for i in range(10)]
    # a connection opened after the first eight, held back while their polls queue, may finish with under a
    # tenth of the first slot left on a loaded machine: that slot is not taken on (the ramp rule), the next
    # one is owed
    taken_on = {n: min(stored.get(n, {}), default=first + 2) for n in names}
    assert report["not_taken_on"] == sum(taken_on[n] - first for n in names), (report, taken_on)
    late = {n: s for n in names for s in range(taken_on[n], first + 2) if not stored.get(n, {}).get(s)}
    assert not late and max(taken_on.values()) <= first + 1, f"slots not stored before they ended: {late}"
    assert report["lag_p95_seconds"] is not None and report["lag_max_seconds"] < interval
    assert state.ssh.stats().connections_opened == 18  # one pooled connection per device, opened once


async def leases_of(state: AppState, device: str) -> dict[int, PollLease]:
    async with state.db.read_session() as session:
        rows = (
            await session.scalars(
                select(PollLease).where(PollLease.device == device, PollLease.category == "system")
            )
        ).all()
    return {row.slot: row for row in rows}


async def test_a_slot_that_ends_while_a_new_device_is_still_connecting_is_not_taken_on_and_later_ones_are_owed(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    """A host that takes 3 s to answer, polled every 2 s: its first slot ends while it connects. That slot was
    never possible: not taken on, not missed. From its first lease on every slot is owed. Whatever else the
    machine's load makes late, the server's counts equal what the lease table shows, judged the way
    bench/bench_poller.py judges it: slots before a device's first lease are not taken on, and every slot
    from it on that was not stored in time (a completed lease before the slot's end) is missed."""
    interval = 2.0
    settings = poll_settings(
        tmp_path,
        database_url,
        poll_system_interval=interval,
        poll_jitter=0.0,
        ssh_connect_timeout=10.0,
        local_device=False,
    )
    alpha = sshd_fleet.hosts["alpha"]
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(slow_to_answer(alpha.port, 3.0))
        state = await stack.enter_async_context(open_state(settings))
        await add_fleet_host(state, sshd_fleet, alpha, "slow", port=relay)
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["beta"], "fast")
        clock, first = slot_start_clock(interval)
        async with polling(state, clock=clock) as service:
            poller = service.poller
            assert poller is not None

            async def four_slots_ended() -> bool:
                # stop half-way through a slot, far from the boundaries the judgement below uses
                return clock() >= (first + 4.5) * interval

            await eventually(four_slots_ended, "four slots to pass", timeout=8 * interval)
        stored = await stored_slots(state, interval)
        slow = await leases_of(state, "slow")
    assert first not in slow, "the slot the slow host's connection outlasted was polled"
    first_lease = {n: min(stored.get(n, {}), default=first + 4) for n in ("slow", "fast")}
    not_taken_on = [(n, s) for n in first_lease for s in range(first, first_lease[n])]
    missed = [
        (n, s) for n in first_lease for s in range(first_lease[n], first + 4) if not stored.get(n, {}).get(s)
    ]
    assert ("slow", first) in not_taken_on and first_lease["fast"] == first
    assert poller.counters.not_taken_on == len(not_taken_on), not_taken_on
    assert poller.counters.missed == len(missed), missed


async def test_a_new_device_is_polled_at_once_then_at_its_offset_and_a_slot_it_could_not_reach_is_not_missed(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    """The default spread (jitter 0.9), 10 s slots, the poller starting half a second into one. `prompt` is
    due 7 s or more into each slot: it is polled at once in the slot under way (a new device, a homelab's single
    host included, does not wait for its offset), and at its offset in the next. `slow` takes 9 s to answer a
    new connection: ready with less than a tenth of the slot left, it is not taken on in that slot (never
    possible: not missed) and is polled at once in the next. Before, `prompt` waited 7 s for its first poll and
    `slow`'s first slot was counted missed."""
    interval = 10.0
    settings = poll_settings(
        tmp_path, database_url, poll_system_interval=interval, ssh_connect_timeout=15.0, local_device=False
    )
    assert settings.poll_jitter == 0.9
    prompt = next(
        n for n in (f"prompt{i}" for i in range(100)) if jitter_offset(n, "system", interval, 0.9) >= 7
    )
    offset = jitter_offset(prompt, "system", interval, 0.9)
    alpha = sshd_fleet.hosts["alpha"]
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(slow_to_answer(alpha.port, 9.0))
        state = await stack.enter_async_context(open_state(settings))
        await add_fleet_host(state, sshd_fleet, alpha, "slow", port=relay)
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["beta"], prompt)
        clock, first = slot_start_clock(interval, lead=0.5)
        async with polling(state, clock=clock):

            async def two_slots_ended() -> bool:
                return clock() >= (first + 2) * interval + 0.3

            await eventually(two_slots_ended, "two slots to pass", timeout=3 * interval)
            report = (await tool(state, "get_service_health", {}))["poller"]
        polled, slow = await leases_of(state, prompt), await leases_of(state, "slow")
    # (a later slot may have been claimed too while the machine was slow to answer get_service_health)
    assert min(polled) == first and first + 1 in polled and min(slow) == first + 1, (polled, slow)

    def into_slot(moment: datetime | None, slot: int) -> float:
        assert moment is not None, f"slot {slot} never stored"
        return as_utc(moment).timestamp() - slot * interval

    claimed = {s: into_slot(r.claimed_at, s) for s, r in polled.items()}
    assert claimed[first] < 5.0 < offset, (
        f"first poll {claimed[first]:.2f} s into its slot, due at {offset:.2f}"
    )
    assert claimed[first + 1] >= offset - 0.01, "the next slot is polled at the device's own offset"
    assert all(into_slot(r.completed_at, s) < interval for s, r in polled.items())
    # the slow host: polled as soon as its connection was ready (at the start of the next slot, or just after)
    slow_claimed = into_slot(slow[first + 1].claimed_at, first + 1)
    assert slow_claimed < jitter_offset("slow", "system", interval, 0.9) and slow_claimed < 4.0, slow_claimed
    assert into_slot(slow[first + 1].completed_at, first + 1) < interval
    assert report["missed"] == 0 and report["not_taken_on"] == 1, report
    assert report["waited_for_connection"] >= 1 and report["connecting"] == 0


async def test_a_device_slow_to_connect_is_due_when_its_connection_finished_then_at_its_offset_and_owed(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    """Connections first, then the schedule. `slow` takes 3 s to answer a new connection and is due under a
    second into each 10 s slot, so its due time in the slot under way passes while it connects. It is taken on
    once its connection attempt has finished, in that slot (more than a tenth of it left): its first lease is
    claimed then, and the lag the poller records for that first poll runs from that claim to stored (what
    bench/bench_poller.py reads from the lease table), not from the offset that passed while it connected.
    Its next slots are polled at its offset and owed: none is counted not taken on, every one not stored in
    time is counted missed."""
    interval = 10.0
    settings = poll_settings(
        tmp_path, database_url, poll_system_interval=interval, ssh_connect_timeout=15.0, local_device=False
    )
    slow = next(
        n for n in (f"slow{i}" for i in range(500)) if jitter_offset(n, "system", interval, 0.9) < 1.0
    )
    offset = jitter_offset(slow, "system", interval, 0.9)
    alpha = sshd_fleet.hosts["alpha"]
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(slow_to_answer(alpha.port, 3.0))
        state = await stack.enter_async_context(open_state(settings))
        await add_fleet_host(state, sshd_fleet, alpha, slow, port=relay)
        clock, first = slot_start_clock(interval)
        async with polling(state, clock=clock) as service:
            poller = service.poller
            assert poller is not None

            async def three_slots_ended() -> bool:
                # stop half-way through a slot, far from the boundaries judged below
                return clock() >= (first + 3.5) * interval

            await eventually(three_slots_ended, "three slots to pass", timeout=5 * interval)
        polled = await leases_of(state, slow)
        in_time = (await stored_slots(state, interval)).get(slow, {})
    lags, counters = list(poller.lags), poller.counters
    assert min(polled) == first, f"not taken on in the slot its connection finished in: {sorted(polled)}"

    def at(moment: datetime | None, what: str) -> float:
        assert moment is not None, f"{what} never happened"
        return as_utc(moment).timestamp()

    claimed, completed = (
        at(polled[first].claimed_at, "first claim"),
        at(polled[first].completed_at, "first poll"),
    )
    assert claimed - first * interval >= 3.0 > offset, "claimed before its connection could have opened"
    # the first poll's lag, as the server records it: from the device taken on (its lease claimed) to stored
    assert abs(lags[0] - (completed - claimed)) < 0.01, (lags[0], completed - claimed)
    assert lags[0] < completed - (first * interval + offset) - 2.0, "lag measured from the offset that passed"
    for slot in (first + 1, first + 2):
        assert slot in polled, f"slot {slot} was not polled"
        into = at(polled[slot].claimed_at, f"slot {slot}'s claim") - slot * interval
        assert into >= offset - 0.01, (
            f"slot {slot} polled {into:.2f} s into it, before its offset {offset:.2f}"
        )
        stored = at(polled[slot].completed_at, f"slot {slot}'s poll")
        # a later poll's lag runs from its offset in its slot
        assert stored - (slot * interval + offset) in [pytest.approx(lag, abs=0.01) for lag in lags[1:]]
    assert counters.not_taken_on == 0 and counters.waited_for_connection == 1, counters
    assert counters.missed == sum(not in_time.get(s) for s in range(first, first + 3)), (counters, in_time)


async def test_a_new_connection_is_held_back_while_polls_wait_for_a_poll_slot_but_no_longer_than_the_limit(
    sshd_fleet: SshdFleet, tmp_path: Path, database_url: str
) -> None:
    """Polls first, then connections. Eight distant hosts (every chunk held 0.6 s each way) are polled one at a
    time, so their first polls queue for the single poll slot for many seconds. A device added meanwhile is
    not connected at once: its connection waits while polls taken on wait for a poll slot, up to RAMP_YIELD
    (5 s), and then opens although the queue has not drained (a long queue does not shut new devices out)."""
    settings = poll_settings(
        tmp_path,
        database_url,
        poll_system_interval=600.0,
        poll_concurrency=1,
        poll_connect_concurrency=8,
        ssh_connect_timeout=30.0,
        local_device=False,
    )
    alpha, beta = sshd_fleet.hosts["alpha"], sshd_fleet.hosts["beta"]
    async with contextlib.AsyncExitStack() as stack:
        link = await stack.enter_async_context(delaying_relay(alpha.port, 0.6))
        state = await stack.enter_async_context(open_state(settings))
        for i in range(8):
            await add_fleet_host(state, sshd_fleet, alpha, f"far{i}", port=link)
        clock, _ = slot_start_clock(settings.poll_system_interval)  # a whole slot ahead: taken on in it
        service = await stack.enter_async_context(polling(state, clock=clock))
        poller = service.poller
        assert poller is not None

        async def queued() -> bool:
            return poller.queued >= 6

        await eventually(queued, "six polls waiting for the poll slot")
        added = time.monotonic()
        newcomer = await add_fleet_host(state, sshd_fleet, beta, "newcomer")

        async def connected() -> bool:
            return state.ssh.is_connected(newcomer)

        await eventually(connected, "the new device's connection to open")
        held, waiting = time.monotonic() - added, poller.queued
    assert waiting > 0, "the connection waited for the queue to drain, not for RAMP_YIELD at most"
    # the poller sees the device at its next wake, after `added`: it held the connection at least this long
    assert held >= RAMP_YIELD - 1.0, f"connected {held:.2f} s after it was added, while polls waited"
