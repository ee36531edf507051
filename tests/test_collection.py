"""The collection pipeline end to end: local device and real sshd hosts, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from mcp_server.commands import CommandDefinition, CommandRegistry, default_registry
from mcp_server.commands.base import NoParams
from mcp_server.db.tables import CollectionSnapshot, ServicePerformanceMetric
from mcp_server.errors import (
    CommandFailed,
    CommandNotAvailable,
    CommandTimeout,
    DeviceNotFound,
    InvalidParameter,
    StorageError,
    SudoPasswordRequired,
    UnknownCommand,
)
from mcp_server.events import CollectionCompleted
from mcp_server.executors import ExecResult, check_exit
from mcp_server.series.system import SystemMetricRow
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings


def meminfo_bytes(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class Output(BaseModel):
    text: str


def _text(stdout: str, _params: Any) -> Output:
    return Output(text=stdout.strip())


def extra_registry() -> CommandRegistry:
    """The built-in commands plus a few that fail in known ways."""
    test_commands = [
        CommandDefinition(
            name=name,
            category="test",
            summary=name,
            argv=argv,
            model=Output,
            parse=_text,
            timeout=timeout,
            ttl=30,
        )
        for name, argv, timeout in (
            ("missing_binary", ("definitely-not-installed-xyz", "--version"), 5.0),
            ("script_missing_binary", ("sh", "-c", "definitely-not-installed-xyz --version"), 5.0),
            ("exits_three", ("sh", "-c", "echo broken >&2; exit 3"), 5.0),
            ("slow", ("sleep", "30"), 0.5),
        )
    ]
    return CommandRegistry([*default_registry(), *test_commands])


async def _snapshot_count(state: AppState, table: Any, **where: Any) -> int:
    await state.writer.flush()
    query = select(func.count()).select_from(table)
    for column, value in where.items():
        query = query.where(getattr(table, column) == value)
    async with state.db.read_session() as session:
        return int(await session.scalar(query) or 0)


async def test_system_metrics_on_local_match_proc_meminfo(state: AppState) -> None:
    result = await state.service.collect("local", "system_metrics", {"interval": 0.2})
    assert result.device == "local" and result.command == "system_metrics"
    assert result.from_cache is False and result.age_seconds == 0
    assert result.data.memory.total_bytes == meminfo_bytes("MemTotal")
    assert 0 <= result.data.cpu.busy_percent <= 100
    assert result.data.cpu_count >= 1


async def test_a_collection_is_stored_as_snapshot_time_series_performance_and_audit(state: AppState) -> None:
    await state.service.collect("local", "system_metrics", {"interval": 0.1})
    assert await _snapshot_count(state, CollectionSnapshot, device="local", command="system_metrics") == 1
    assert await _snapshot_count(state, SystemMetricRow, device="local") == 1
    assert await _snapshot_count(state, ServicePerformanceMetric, device="local", outcome="ok") == 1
    (row,) = await audit_rows(state, command="system_metrics")
    assert row.kind == "collection" and row.outcome == "ok" and row.cache_hit is False
    assert row.device == "local" and row.duration_ms > 0
    assert len(row.ssh_commands) == 1 and row.ssh_commands[0].startswith("sh -c")
    assert row.params == '{"interval":0.1}'


async def test_second_call_within_ttl_is_served_from_cache(state: AppState) -> None:
    first = await state.service.collect("local", "os_info")
    runs = state.local.commands_run
    second = await state.service.collect("local", "os_info")
    assert second.from_cache is True and state.local.commands_run == runs
    assert second.collected_at == first.collected_at and second.age_seconds >= 0
    rows = await audit_rows(state, command="os_info")
    assert [r.cache_hit for r in rows] == [False, True]
    assert rows[1].ssh_commands == []


async def test_concurrent_identical_calls_execute_once(state: AppState) -> None:
    runs = state.local.commands_run
    results = await asyncio.gather(
        *(state.service.collect("local", "system_metrics", {"interval": 0.3}) for _ in range(10))
    )
    assert state.local.commands_run == runs + 1
    assert len({r.collected_at for r in results}) == 1
    rows = await audit_rows(state, command="system_metrics")
    # callers that joined the one run waited for a fresh result: none of them was a cache hit
    assert len(rows) == 10 and not any(r.cache_hit for r in rows)
    assert sum(bool(r.ssh_commands) for r in rows) == 1


async def test_different_parameters_are_cached_separately(state: AppState) -> None:
    a = await state.service.collect("local", "top_processes", {"limit": 3, "interval": 0.1})
    b = await state.service.collect("local", "top_processes", {"limit": 5, "interval": 0.1})
    assert not a.from_cache and not b.from_cache
    assert len(a.data.processes) <= 3 and len(b.data.processes) <= 5


async def test_ttl_expiry_executes_again(tmp_path: Path) -> None:
    now = [1000.0]
    async with open_state(make_settings(tmp_path), clock=lambda: now[0]) as state:
        ttl = state.registry.get("network_interfaces").ttl
        await state.service.collect("local", "network_interfaces")
        now[0] += ttl - 0.5
        assert (await state.service.collect("local", "network_interfaces")).from_cache is True
        runs = state.local.commands_run
        now[0] += 1.0
        refreshed = await state.service.collect("local", "network_interfaces")
        assert refreshed.from_cache is False and state.local.commands_run == runs + 1
        assert state.cache.stats().expirations == 1


async def test_force_refresh_executes_again_and_refreshes_the_cache(state: AppState) -> None:
    await state.service.collect("local", "os_info")
    runs = state.local.commands_run
    forced = await state.service.collect("local", "os_info", force_refresh=True)
    assert forced.from_cache is False and state.local.commands_run == runs + 1
    again = await state.service.collect("local", "os_info")
    assert again.from_cache is True and again.collected_at == forced.collected_at


async def test_a_collection_emits_an_event(state: AppState) -> None:
    queue = state.events.subscribe_queue(types=(CollectionCompleted,))
    await state.service.collect("local", "os_info", force_refresh=True)
    event = await asyncio.wait_for(queue.get(), 5)
    assert isinstance(event, CollectionCompleted)
    assert event.device == "local" and event.command == "os_info"


async def test_unknown_device_error_names_the_known_devices_and_is_audited(state: AppState) -> None:
    with pytest.raises(DeviceNotFound, match=r"Unknown device 'nas01'\. Known devices: local\."):
        await state.service.collect("nas01", "system_metrics")
    (row,) = await audit_rows(state, device="nas01")
    assert row.outcome == "error" and row.error_type == "device_not_found"


async def test_unknown_command_lists_the_registered_ones(state: AppState) -> None:
    with pytest.raises(UnknownCommand, match="Registered commands: .*disk_usage"):
        await state.service.collect("local", "rm_rf")


@pytest.mark.parametrize(
    "params",
    [
        {"interval": "0.5; touch /tmp/pwned"},
        {"interval": "$(id)"},
        {"interval": "`id`"},
        {"interval": "0.5\nid"},
        {"interval": -1},
        {"interval": 1e9},
        {"interval": 0.5, "extra": "x"},
    ],
)
async def test_malformed_or_hostile_parameters_are_rejected_before_anything_runs(
    sqlite_settings: Settings, params: dict[str, Any]
) -> None:
    async with open_state(sqlite_settings) as state:
        with pytest.raises(InvalidParameter, match="system_metrics"):
            await state.service.collect("local", "system_metrics", params)
        assert state.local.commands_run == 0
        assert not Path("/tmp/pwned").exists()
        (row,) = await audit_rows(state)
        assert row.error_type == "invalid_parameter"


@pytest.mark.parametrize("command", ["missing_binary", "script_missing_binary"])
async def test_missing_binary_on_the_device_is_command_not_available(
    sqlite_settings: Settings, command: str
) -> None:
    async with open_state(sqlite_settings, registry=extra_registry()) as state:
        with pytest.raises(CommandNotAvailable, match="definitely-not-installed-xyz.*'local'"):
            await state.service.collect("local", command)
        (row,) = await audit_rows(state, command=command)
        assert row.outcome == "error" and row.error_type == "command_not_available"


async def test_non_zero_exit_is_command_failed_with_stderr(sqlite_settings: Settings) -> None:
    async with open_state(sqlite_settings, registry=extra_registry()) as state:
        with pytest.raises(CommandFailed, match="exited with status 3: broken"):
            await state.service.collect("local", "exits_three")
        # a failure is not cached: the next call runs again
        with pytest.raises(CommandFailed):
            await state.service.collect("local", "exits_three")
        assert state.local.commands_run == 2


async def test_command_timeout_stops_the_command_within_its_timeout(sqlite_settings: Settings) -> None:
    async with open_state(sqlite_settings, registry=extra_registry()) as state:
        started = time.monotonic()
        with pytest.raises(CommandTimeout, match="did not finish within 0.5s"):
            await state.service.collect("local", "slow")
        assert time.monotonic() - started < 5


async def test_unreachable_database_at_start_is_a_clear_error(tmp_path: Path) -> None:
    bad = make_settings(tmp_path, database_url="postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    with pytest.raises(
        StorageError, match=r"Migrating postgresql\+asyncpg://postgres@127.0.0.1:1/nothing failed"
    ):
        async with open_state(bad):
            pass


# ---- over real sshd --------------------------------------------------------------------------------------


async def test_ssh_device_collection_matches_ground_truth_and_pins_the_host_key(
    state: AppState, sshd_fleet: Any
) -> None:
    host = sshd_fleet.hosts["alpha"]
    await add_fleet_host(state, sshd_fleet, host)
    result = await state.service.collect("alpha", "system_metrics", {"interval": 0.1})
    assert result.data.memory.total_bytes == meminfo_bytes("MemTotal")
    assert state.devices.get("alpha").host_key == host.host_key_line
    (row,) = await audit_rows(state, device="alpha")
    assert row.outcome == "ok" and row.ssh_commands[0].startswith("sh -c ")


async def test_pooled_connections_use_aes_gcm_without_compression(state: AppState, sshd_fleet: Any) -> None:
    """asyncssh builds a ChaCha20 cipher context per packet: AES-GCM costs a third less CPU per command."""
    await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["gamma"])
    for _ in range(2):  # the audited command is remembered per argv: the same text the second time
        await state.service.collect("gamma", "os_info", force_refresh=True)
    conn = state.ssh._entries["gamma"].conn
    assert conn is not None
    assert (
        conn.get_extra_info("send_cipher") == conn.get_extra_info("recv_cipher") == "aes256-gcm@openssh.com"
    )
    assert conn.get_extra_info("send_compression") == conn.get_extra_info("recv_compression") == "none"
    first, second = await audit_rows(state, device="gamma")
    assert first.ssh_commands == second.ssh_commands
    assert first.ssh_commands[0] == default_registry().get("os_info").shell_command(NoParams())


async def test_many_calls_to_one_device_open_exactly_one_ssh_connection(
    state: AppState, sshd_fleet: Any
) -> None:
    host = sshd_fleet.hosts["beta"]
    await add_fleet_host(state, sshd_fleet, host)
    logins = host.accepted_logins()
    for command in ("os_info", "disk_usage", "network_interfaces", "os_info"):
        await state.service.collect("beta", command, force_refresh=True)
    await asyncio.gather(*(state.service.collect("beta", "top_processes", {"limit": n}) for n in range(1, 9)))
    assert host.accepted_logins() == logins + 1
    assert state.ssh.stats().connections_opened == 1


async def test_fan_out_reports_a_dead_host_while_the_others_succeed(state: AppState, sshd_fleet: Any) -> None:
    for host in sshd_fleet.hosts.values():
        if host.name in ("alpha", "beta", "gamma"):
            await add_fleet_host(state, sshd_fleet, host)
    await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"], name="dead", port=1)
    started = time.monotonic()
    outcomes = await state.service.collect_many(["alpha", "dead", "beta", "gamma", "local"], "os_info")
    elapsed = time.monotonic() - started
    by_name = {o.device: o for o in outcomes}
    assert [o.device for o in outcomes] == ["alpha", "dead", "beta", "gamma", "local"]
    assert all(by_name[n].ok for n in ("alpha", "beta", "gamma", "local"))
    assert by_name["dead"].ok is False and by_name["dead"].error_type == "host_unreachable"
    assert "dead" in (by_name["dead"].error or "")
    assert elapsed < state.settings.ssh_connect_timeout + 5


async def test_missing_binary_over_ssh_is_command_not_available(
    sqlite_settings: Settings, sshd_fleet: Any
) -> None:
    async with open_state(sqlite_settings, registry=extra_registry()) as state:
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["gamma"])
        with pytest.raises(CommandNotAvailable, match="definitely-not-installed-xyz.*'gamma'"):
            await state.service.collect("gamma", "missing_binary")


async def test_collection_keeps_serving_while_the_database_is_away_and_loses_no_rows(tmp_path: Path) -> None:
    from tests.app_fixtures import _pg_admin, create_pg_database, drop_pg_database

    url = await create_pg_database()
    name = url.rsplit("/", 1)[1]
    try:
        async with open_state(make_settings(tmp_path, database_url=url)) as state:
            await state.service.collect("local", "os_info")
            await state.writer.flush()
            admin = await _pg_admin()
            try:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
                )
                await state.db.engine.dispose()
                for _ in range(3):
                    result = await state.service.collect("local", "os_info", force_refresh=True)
                    assert result.data.hostname
                deadline = time.monotonic() + 10
                while state.writer.failures == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                # the rows are in the fsynced journal, so a crash now would lose nothing
                assert state.writer.failures >= 1
                assert state.writer.segments() and state.writer.status().journal_bytes > 0
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await admin.close()
            rows = await audit_rows(state, command="os_info")
            assert [r.cache_hit for r in rows] == [False, False, False, False]
            assert state.writer.status().journal_bytes == 0
            assert await _snapshot_count(state, ServicePerformanceMetric, command="os_info") == 4
    finally:
        await drop_pg_database(url)


@pytest.fixture
def sudo_rule(sshd_fleet: Any) -> Iterator[None]:
    """Let the test login user run exactly `id -u` as root without a password, for the test's duration."""
    if shutil.which("sudo") is None or os.geteuid() != 0:
        pytest.skip("needs sudo installed and root to write a sudoers rule")
    rule = Path("/etc/sudoers.d/infra-test")
    rule.write_text(f"{sshd_fleet.username} ALL=(root) NOPASSWD: {shutil.which('id')} -u\n")
    rule.chmod(0o440)
    try:
        yield
    finally:
        rule.unlink()


async def test_use_sudo_runs_root_commands_through_sudo_without_a_password(
    sqlite_settings: Settings, sshd_fleet: Any, sudo_rule: None
) -> None:
    async with open_state(sqlite_settings, registry=root_registry()) as state:
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"], use_sudo=True)
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["beta"])
        as_root = await state.service.collect("alpha", "whoami_root")
        plain = await state.service.collect("beta", "whoami_root")
        assert as_root.data.text == "0" and plain.data.text != "0"
        # a root command the rule does not allow: sudo -n refuses instead of prompting
        with pytest.raises(SudoPasswordRequired, match="'alpha' needs root and sudo asked for a password"):
            await state.service.collect("alpha", "list_root_home")
        rows = await audit_rows(state, device="alpha")
        assert rows[0].ssh_commands == ["sudo -n -- id -u"]
        assert rows[1].error_type == "sudo_password_required"


def root_registry() -> CommandRegistry:
    commands = [
        CommandDefinition(name=n, category="test", summary=n, argv=argv, model=Output, parse=_text, root=True)
        for n, argv in (("whoami_root", ("id", "-u")), ("list_root_home", ("ls", "/root")))
    ]
    return CommandRegistry([*default_registry(), *commands])


def test_sudo_reporting_a_missing_program_is_command_not_available() -> None:
    # what sudo 1.9 printed here for a user allowed to run ALL when the program does not exist (exit 1, not 127)
    result = ExecResult(
        "sudo -n -- smartctl --json -a -- /dev/sda", "", "sudo: smartctl: command not found\n", 1, 0.01
    )
    with pytest.raises(CommandNotAvailable, match="needs 'smartctl'.*device 'nas'"):
        check_exit(result, "nas", "drive_smart")
