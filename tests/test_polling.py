"""The polling service against real sshd hosts: history filled, leases, the circuit breaker, health rows."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from sqlalchemy import select

from mcp_server.db.tables import PollLease, ServicePerformanceMetric
from mcp_server.polling import leases
from mcp_server.polling.scheduler import jitter_offset
from mcp_server.polling.service import PollingService
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, _queue_cache_stats, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
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


async def test_a_dead_replicas_unfinished_slot_is_taken_over_when_its_lease_expires(
    tmp_path: Path, database_url: str
) -> None:
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
            now=datetime.now(UTC) - timedelta(seconds=offset),
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
