"""Streaming commands through the collection service and the executors, and device events that retarget the
configuration watchers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mcp_server.errors import InvalidParameter, SessionLimit
from mcp_server.events import DeviceChanged
from mcp_server.parsers.config_files import InotifyEvents
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.sshd import SshdFleet
from tests.test_config_watch import require_inotifywait

DEADLINE = 20.0


async def test_a_stream_on_the_local_executor_yields_parsed_inotify_lines_and_is_audited_twice(
    state: AppState, tmp_path: Path
) -> None:
    require_inotifywait()
    watched = tmp_path / "etc"
    watched.mkdir()
    seen: list[str] = []
    async with state.service.stream("local", "config_watch", {"dirs": [str(watched)]}) as chunks:
        async for chunk in chunks:
            assert isinstance(chunk, InotifyEvents)
            if chunk.ready:
                (watched / "app.conf").write_text("a=1\n")
            seen.extend(f"{name} {e.path}" for e in chunk.events for name in e.events)
            if f"CLOSE_WRITE {watched / 'app.conf'}" in seen:
                break
    assert seen[0] == f"CREATE {watched / 'app.conf'}"
    rows = await audit_rows(state, command="config_watch")
    assert [r.outcome for r in rows] == ["ok", "ok"]
    assert rows[0].ssh_commands == rows[1].ssh_commands and rows[0].ssh_commands[0].startswith("sh -c ")


async def test_streams_and_collections_refuse_each_others_commands(sqlite_settings: Settings) -> None:
    async with open_state(sqlite_settings) as state:
        with pytest.raises(InvalidParameter, match="long-lived stream"):
            await state.service.collect("local", "config_watch", {"dirs": ["/etc"]})
        with pytest.raises(InvalidParameter, match="not a stream"):
            async with state.service.stream("local", "os_info"):
                pass


async def test_a_stream_over_ssh_holds_a_session_slot_and_frees_it_when_closed(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    require_inotifywait()
    settings = make_settings(tmp_path, ssh_max_sessions=2)
    scratch = sshd_fleet.scratch_dir()
    async with open_state(settings) as state:
        device = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["gamma"], name="gamma-stream")
        async with state.service.stream(device, "config_watch", {"dirs": [str(scratch)]}) as chunks:
            first = await asyncio.wait_for(anext(aiter(chunks)), DEADLINE)
            assert isinstance(first, InotifyEvents)
            # the one slot left still runs commands; a second stream would take it and is refused
            assert (await state.service.collect(device, "os_info", force_refresh=True)).device == device
            with pytest.raises(SessionLimit, match="INFRA_SSH_MAX_SESSIONS"):
                async with state.service.stream(device, "config_watch", {"dirs": [str(scratch)]}):
                    pass
        async with state.service.stream(device, "config_watch", {"dirs": [str(scratch)]}) as chunks:
            assert isinstance(await asyncio.wait_for(anext(aiter(chunks)), DEADLINE), InotifyEvents)


async def test_the_registry_publishes_device_changes_and_a_removed_device_stops_being_watched(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, config_debounce=0.05)
    scratch = sshd_fleet.scratch_dir()
    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(DeviceChanged,))
        await state.config.start()
        device = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["beta"], name="beta-removed")
        conf = scratch / "x.conf"
        conf.write_text("x=1\n")
        await state.config.watch(device, str(conf))
        await state.devices.update(device, {"description": "edited"})
        await state.devices.remove(device)

        changes = [await asyncio.wait_for(queue.get(), DEADLINE) for _ in range(3)]
        assert [(c.device, c.change) for c in changes if isinstance(c, DeviceChanged)] == [
            (device, "added"),
            (device, "updated"),
            (device, "removed"),
        ]
        end = time.monotonic() + DEADLINE
        while device in state.config.monitors:
            assert time.monotonic() < end, "the removed device is still watched"
            await asyncio.sleep(0.02)
        assert device not in state.config.targets
        assert (await state.config.watched(None, 100, 0)).total == 0
