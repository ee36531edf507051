"""Configuration watching against real files: inotify on `local`, inotifywait over real sshd hosts, polling
where inotifywait is missing, and changes made while the server was down."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mcp_server.db.tables import ConfigurationChangeEvent, ConfigurationSnapshot
from mcp_server.errors import InvalidParameter
from mcp_server.events import ConfigChanged, EventQueue
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.helpers import path_without, unavailable
from tests.sshd import SshdFleet

DEADLINE = 20.0
COMPOSE = "services:\n  web:\n    image: nginx:1.25\n    ports:\n      - '8080:80'\n"


async def next_change(queue: EventQueue, deadline: float = DEADLINE) -> ConfigChanged:
    event = await asyncio.wait_for(queue.get(), deadline)
    assert isinstance(event, ConfigChanged)
    return event


async def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def fence(state: AppState, queue: EventQueue, device: str, sentinel: Path) -> list[ConfigChanged]:
    """Every change still queued before a write to `sentinel` (a watched file) is reported.

    A device's changes are handled in order, so once the sentinel's change arrives nothing earlier is
    still on its way: what came before it is everything, which lets a test say "exactly these".
    """
    sentinel.write_text(f"fence {time.monotonic_ns()}\n")
    before: list[ConfigChanged] = []
    while True:
        event = await next_change(queue)
        if event.path == str(sentinel):
            return before
        before.append(event)


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[tuple[AppState, EventQueue]]:
    # a quiet period well above a loaded machine's stalls between a truncate and the write that follows it
    settings = make_settings(tmp_path, config_debounce=0.2)
    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        yield state, queue


async def snapshot_count(state: AppState, device: str, path: str) -> int:
    async with state.db.read_session() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(ConfigurationSnapshot)
                .where(ConfigurationSnapshot.device == device, ConfigurationSnapshot.path == path)
            )
            or 0
        )


# ---- local: inotify in process ---------------------------------------------------------------------------


async def test_in_place_sed_and_rename_edits_of_a_local_file_each_give_one_modified_change(
    watching: tuple[AppState, EventQueue], tmp_path: Path
) -> None:
    state, queue = watching
    stack = tmp_path / "stack"
    stack.mkdir()
    compose = stack / "docker-compose.yml"
    compose.write_text(COMPOSE)
    sentinel = stack / "sentinel.conf"
    sentinel.write_text("x\n")
    await state.config.watch("local", str(compose))
    await state.config.watch("local", str(sentinel))
    await wait_for(lambda: state.config.status("local").mode == "inotify", "inotify mode")

    compose.write_text(COMPOSE.replace("1.25", "1.26"))  # in place
    first = await next_change(queue)
    subprocess.run(["sed", "-i", "s/1.26/1.27/", str(compose)], check=True)  # temp file renamed over it
    second = await next_change(queue)
    tmp = stack / ".docker-compose.yml.tmp"  # an atomic save
    tmp.write_text(COMPOSE.replace("1.25", "1.28"))
    tmp.rename(compose)
    third = await next_change(queue)

    assert [e.change_type for e in (first, second, third)] == ["modified"] * 3
    assert all(e.risk == "high" and "image changed" in e.summary for e in (first, second, third))
    assert "nginx:1.27 -> nginx:1.28" in third.summary
    assert await fence(state, queue, "local", sentinel) == []
    assert await snapshot_count(state, "local", str(compose)) == 4


async def test_deleting_and_recreating_a_watched_file_gives_deleted_then_created(
    watching: tuple[AppState, EventQueue], tmp_path: Path
) -> None:
    state, queue = watching
    unit = tmp_path / "app.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/app\nUser=app\n")
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("x\n")
    await state.config.watch("local", str(unit))
    await state.config.watch("local", str(sentinel))

    unit.unlink()
    deleted = await next_change(queue)
    unit.write_text("[Service]\nExecStart=/usr/bin/app --debug\nUser=root\n")
    created = await next_change(queue)

    assert (deleted.change_type, deleted.risk) == ("deleted", "high")
    assert (created.change_type, created.risk, created.kind) == ("created", "medium", "systemd")
    assert await fence(state, queue, "local", sentinel) == []
    history = await state.config.history("local", str(unit), limit=10, offset=0)
    assert [v.change_type for v in history.versions] == ["created", "deleted", None]
    assert history.versions[1].sha256 is None


async def test_a_burst_of_writes_is_debounced_into_one_change_with_the_final_content(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, config_debounce=1.0)
    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        conf = tmp_path / "site.conf"
        conf.write_text("server { listen 80; }\n")
        sentinel = tmp_path / "sentinel"
        sentinel.write_text("x\n")
        await state.config.watch("local", str(conf), "nginx")
        await state.config.watch("local", str(sentinel))
        await wait_for(lambda: state.config.status("local").mode == "inotify", "inotify mode")

        for port in range(8000, 8020):
            conf.write_text(f"server {{ listen {port}; }}\n")
        change = await next_change(queue)

        assert change.path == str(conf)
        assert await fence(state, queue, "local", sentinel) == []
        diff = await state.config.diff("local", str(conf), None, None)
        assert "+server { listen 8019; }" in diff.diff
        assert diff.risk == "high" and any("listen" in r for r in diff.reasons)


async def test_files_created_in_a_watched_directory_are_changes_and_editor_scratch_files_are_not(
    watching: tuple[AppState, EventQueue], tmp_path: Path
) -> None:
    state, queue = watching
    confs = tmp_path / "nginx" / "conf.d"
    confs.mkdir(parents=True)
    (confs / "old.conf").write_text(
        "server { server_name old.example; location / { proxy_pass http://a:1; } }\n"
    )
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("x\n")
    result = await state.config.watch("local", str(confs))
    await state.config.watch("local", str(sentinel))
    assert result.watched.is_directory and result.watched.kind == "nginx"
    assert result.watched.files == [str(confs / "old.conf")]

    (confs / ".new.conf.swp").write_text("scratch")
    (confs / "notes.txt").write_text("not a conf")
    (confs / "new.conf").write_text(
        "server { server_name new.example; location / { proxy_pass http://b:2; } }\n"
    )
    created = await next_change(queue)
    (confs / "old.conf").unlink()
    deleted = await next_change(queue)

    assert (created.path, created.change_type) == (str(confs / "new.conf"), "created")
    assert (deleted.path, deleted.change_type, deleted.risk) == (str(confs / "old.conf"), "deleted", "high")
    assert await fence(state, queue, "local", sentinel) == []


async def test_a_credential_store_inside_a_watched_directory_is_never_read(
    watching: tuple[AppState, EventQueue], tmp_path: Path
) -> None:
    state, queue = watching
    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.ini").write_text("mode=fast\n")
    (app / "server.key").write_text("not shown\n")
    result = await state.config.watch("local", str(app))
    assert result.watched.files == [str(app / "settings.ini")]

    (app / "server.key").write_text("rotated\n")
    (app / "settings.ini").write_text("mode=slow\n")
    change = await next_change(queue)

    assert change.path == str(app / "settings.ini")
    fetched = [r.params or "" for r in await audit_rows(state, command="config_file")]
    assert not any("server.key" in p for p in fetched)


async def test_a_file_in_a_directory_that_does_not_exist_yet_is_seen_when_both_are_created(
    watching: tuple[AppState, EventQueue], tmp_path: Path
) -> None:
    state, queue = watching
    compose = tmp_path / "stacks" / "media" / "compose.yaml"
    result = await state.config.watch("local", str(compose))
    assert result.exists is False

    compose.parent.mkdir(parents=True)
    compose.write_text(COMPOSE)
    change = await next_change(queue)

    assert (change.path, change.change_type, change.kind) == (str(compose), "created", "compose")
    changes = await state.config.changes(
        device="local", since=None, min_risk=None, limit=10, offset=0, with_diff=False
    )
    assert changes.changes[0].affected_services == ["web"]


async def test_changes_made_while_the_server_was_down_are_found_at_start_up_without_duplicate_versions(
    settings: Settings, tmp_path: Path
) -> None:
    changed = tmp_path / "changed.yml"
    changed.write_text(COMPOSE)
    unchanged = tmp_path / "unchanged.conf"
    unchanged.write_text("server { listen 80; }\n")
    async with open_state(settings) as state:
        await state.config.start()
        await state.config.watch("local", str(changed), "compose")
        await state.config.watch("local", str(unchanged), "nginx")

    changed.write_text(COMPOSE.replace("'8080:80'", "'0.0.0.0:80:80'"))  # while nothing watches

    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        change = await next_change(queue)
        assert (change.path, change.change_type, change.risk) == (str(changed), "modified", "high")
        assert "published ports" in change.summary
        assert await snapshot_count(state, "local", str(unchanged)) == 1
        assert await snapshot_count(state, "local", str(changed)) == 2

    async with open_state(settings) as state:  # a restart with nothing changed records nothing
        await state.config.start()
        await wait_for(lambda: state.config.status("local").mode == "inotify", "inotify mode")
        await state.config.reconcile("local")
        assert await snapshot_count(state, "local", str(changed)) == 2
        async with state.db.read_session() as session:
            assert await session.scalar(select(func.count()).select_from(ConfigurationChangeEvent)) == 1


async def test_a_change_inotify_cannot_see_is_found_by_the_periodic_hash_check(tmp_path: Path) -> None:
    blue, green = tmp_path / "blue", tmp_path / "green"
    for release, image in ((blue, "app:1"), (green, "app:2")):
        release.mkdir()
        (release / "compose.yaml").write_text(f"services:\n  app:\n    image: {image}\n")
    current = tmp_path / "current"
    current.symlink_to(blue)
    settings = make_settings(tmp_path, config_debounce=0.05, config_reconcile_interval=1)
    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        await state.config.watch("local", str(current / "compose.yaml"))
        await wait_for(lambda: state.config.status("local").mode == "inotify", "inotify mode")
        end = time.monotonic() + DEADLINE
        while not await audit_rows(state, command="config_hashes"):  # the check at watcher start is done
            assert time.monotonic() < end, "no hash check after the watcher started"
            await asyncio.sleep(0.02)

        # a blue/green switch: the watch stays on blue's inode, no event reaches it
        swap = tmp_path / "current.new"
        swap.symlink_to(green)
        swap.rename(current)
        change = await next_change(queue)

        assert change.path == str(current / "compose.yaml") and "app:1 -> app:2" in change.summary


async def test_a_symlink_to_a_credential_store_is_refused_on_the_device(
    watching: tuple[AppState, EventQueue], tmp_path: Path
) -> None:
    state, _queue = watching
    link = tmp_path / "innocent.conf"
    link.symlink_to("/etc/shadow")

    with pytest.raises(InvalidParameter, match="resolves to /etc/shadow: a credential store"):
        await state.config.watch("local", str(link))
    assert str(link) not in state.config.targets.get("local", {})


# ---- SSH: one inotifywait stream per device ------------------------------------------------------------


def require_inotifywait() -> None:
    """The sshd test hosts are this machine: their inotifywait is ours (Debian inotify-tools)."""
    if shutil.which("inotifywait") is None:
        message = "inotifywait is not installed (apt-get install inotify-tools)"
        unavailable("sshd", message)


def remote_watchers(marker: str) -> list[int]:
    """Pids of inotifywait processes (on the test hosts, i.e. this machine) watching under `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"inotifywait") and any(marker.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


@pytest.fixture
async def ssh_watching(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> AsyncIterator[tuple[AppState, EventQueue, str, Path]]:
    require_inotifywait()
    settings = make_settings(tmp_path, config_debounce=0.2, config_poll_interval=0.3)
    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        name = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"], name="alpha-cfg")
        yield state, queue, name, sshd_fleet.scratch_dir()


async def test_an_ssh_device_is_watched_through_one_long_lived_inotifywait_stream(
    ssh_watching: tuple[AppState, EventQueue, str, Path], sshd_fleet: SshdFleet
) -> None:
    state, queue, device, scratch = ssh_watching
    compose = scratch / "compose.yaml"
    compose.write_text(COMPOSE)
    conf = scratch / "proxy.conf"
    conf.write_text(
        "server { server_name a.example; listen 443 ssl; location / { proxy_pass http://a:1; } }\n"
    )
    await state.config.watch(device, str(compose))
    await state.config.watch(device, str(conf), "nginx")
    await wait_for(lambda: state.config.status(device).mode == "inotify", "inotify mode over SSH")
    logins = sshd_fleet.hosts["alpha"].accepted_logins()

    compose.write_text(COMPOSE.replace("nginx:1.25", "nginx:1.26"))
    first = await next_change(queue)
    subprocess.run(["sed", "-i", "s/listen 443 ssl/listen 80/", str(conf)], check=True)
    second = await next_change(queue)

    assert (first.path, first.risk) == (str(compose), "high")
    assert (second.path, second.risk) == (str(conf), "high")
    latest = (
        await state.config.changes(device=device, since=None, min_risk=None, limit=1, offset=0)
    ).changes[0]
    assert any("TLS on -> off" in reason for reason in latest.reasons)
    assert len(remote_watchers(str(scratch))) == 1
    assert sshd_fleet.hosts["alpha"].accepted_logins() == logins, "watching opened a new connection"
    streams = await audit_rows(state, command="config_watch")
    assert streams and streams[0].ssh_commands[0].startswith("sh -c ")


async def test_killing_the_remote_inotifywait_restarts_watching_and_loses_no_change(
    ssh_watching: tuple[AppState, EventQueue, str, Path],
) -> None:
    state, queue, device, scratch = ssh_watching
    unit = scratch / "app.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/app\n")
    await state.config.watch(device, str(unit))
    await wait_for(lambda: state.config.status(device).mode == "inotify", "inotify mode over SSH")
    restarts = state.config.status(device).restarts
    [pid] = remote_watchers(str(scratch))

    os.kill(pid, signal.SIGKILL)
    unit.write_text("[Service]\nExecStart=/usr/bin/app --changed-while-down\n")  # maybe before the restart
    change = await next_change(queue)
    await wait_for(
        lambda: (
            state.config.status(device).restarts > restarts and state.config.status(device).mode == "inotify"
        ),
        "the watcher to come back",
    )
    unit.write_text("[Service]\nExecStart=/usr/bin/app --after\nUser=root\n")
    after = await next_change(queue)

    assert change.change_type == "modified" and change.risk == "high"
    assert "ExecStart" in change.summary
    assert after.risk == "high"
    assert len(remote_watchers(str(scratch))) == 1


async def test_a_dropped_ssh_connection_is_reopened_and_watching_resumes(
    ssh_watching: tuple[AppState, EventQueue, str, Path], sshd_fleet: SshdFleet
) -> None:
    state, queue, device, scratch = ssh_watching
    conf = scratch / "site.conf"
    conf.write_text("server { server_name a.example; location / { proxy_pass http://a:1; } }\n")
    await state.config.watch(device, str(conf), "nginx")
    await wait_for(lambda: state.config.status(device).mode == "inotify", "inotify mode over SSH")
    restarts = state.config.status(device).restarts
    logins = sshd_fleet.hosts["alpha"].accepted_logins()

    assert sshd_fleet.hosts["alpha"].kill_sessions() >= 1  # as if the host rebooted its sshd sessions
    await wait_for(lambda: state.config.status(device).restarts > restarts, "the watcher to notice")
    await wait_for(lambda: state.config.status(device).mode == "inotify", "the watcher to come back")
    conf.write_text("server { server_name a.example; location / { proxy_pass http://b:2; } }\n")
    change = await next_change(queue)

    assert change.risk == "high" and "upstream a:1 -> b:2" in change.summary
    assert sshd_fleet.hosts["alpha"].accepted_logins() == logins + 1, "one new connection, reused"


async def test_unwatching_the_last_file_stops_the_remote_inotifywait(
    ssh_watching: tuple[AppState, EventQueue, str, Path],
) -> None:
    state, _queue, device, scratch = ssh_watching
    conf = scratch / "only.conf"
    conf.write_text("a=1\n")
    await state.config.watch(device, str(conf))
    await wait_for(lambda: len(remote_watchers(str(scratch))) == 1, "a remote watcher")

    await state.config.unwatch(device, str(conf))

    await wait_for(lambda: not remote_watchers(str(scratch)), "the remote watcher to exit")
    assert state.config.status(device).mode == "not watching"


async def test_a_device_without_inotifywait_is_polled_with_one_batched_hash_command(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    scratch = sshd_fleet.scratch_dir()
    host = sshd_fleet.start_host("no-inotify", env={"PATH": str(path_without(scratch, "inotifywait"))})
    settings = make_settings(tmp_path, config_debounce=0.05, config_poll_interval=0.3)
    async with open_state(settings) as state:
        queue = state.events.subscribe_queue(types=(ConfigChanged,))
        await state.config.start()
        device = await add_fleet_host(state, sshd_fleet, host)
        files = [scratch / f"f{i}.conf" for i in range(5)]
        for f in files:
            f.write_text("value=1\n")
        for f in files:
            await state.config.watch(device, str(f))
        await wait_for(lambda: state.config.status(device).mode == "polling", "polling mode")
        assert "inotifywait" in (state.config.status(device).last_error or "")

        files[3].write_text("value=2\n")
        change = await next_change(queue)

        assert (change.path, change.change_type) == (str(files[3]), "modified")
        polls = await audit_rows(state, command="config_hashes", device=device)
        assert polls and all(len(row.ssh_commands) == 1 for row in polls)
        # the poll that found the change asked for all five files in its one command
        assert all(str(f) in (polls[-1].params or "") for f in files)
        fetched = [r.params for r in await audit_rows(state, command="config_file", device=device)]
        # five baselines when watched, then only the file that changed
        assert sum(str(files[3]) in (p or "") for p in fetched) == 2
        assert sum(str(files[0]) in (p or "") for p in fetched) == 1


async def test_a_device_allowed_one_ssh_session_is_polled_rather_than_starved(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, config_debounce=0.05, config_poll_interval=0.3, ssh_max_sessions=1)
    scratch = sshd_fleet.scratch_dir()
    async with open_state(settings) as state:
        await state.config.start()
        device = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["beta"], name="beta-one-session")
        conf = scratch / "a.conf"
        conf.write_text("a=1\n")
        await state.config.watch(device, str(conf))
        await wait_for(lambda: state.config.status(device).mode == "polling", "polling mode")

        assert "INFRA_SSH_MAX_SESSIONS" in (state.config.status(device).last_error or "")
        result = await state.service.collect(device, "os_info", force_refresh=True)  # commands still run
        assert result.device == device
