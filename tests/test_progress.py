"""What a multi-step call tells its client while it runs (progress per device or drive, warnings as log
messages), to the official MCP SDK client over real HTTP and to fastmcp's client; and the CLI's progress."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.client.logging import LogMessage
from fastmcp.utilities.tests import run_server_async
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_server.devices import DeviceSpec
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, make_settings
from tests.helpers import free_port
from tests.test_storage_health import StorageHosts, storage_hosts  # noqa: F401 (a fixture)
from tests.test_transports import CLI, cli_env, run_cli

# alpha and beta are real sshd hosts, local is this machine, gone is a closed loopback port
EXPECTED = {"alpha ok", "beta ok", "local ok", "gone host_unreachable"}
DEADLINE = 60.0


@pytest.fixture
async def fleet(sqlite_settings: Settings, sshd_fleet: Any) -> AsyncIterator[AppState]:
    async with open_state(sqlite_settings) as state:
        for name in ("alpha", "beta"):
            await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts[name])
        await state.devices.add("gone", DeviceSpec(hostname="127.0.0.1", port=free_port()))
        yield state


@pytest.fixture
async def url(fleet: AppState) -> AsyncIterator[str]:
    """The real server over streamable HTTP (uvicorn on a loopback port), on the fleet's state."""
    async with run_server_async(build_server(fleet.settings, transport="http", state=fleet)) as served:
        yield served


class Heard:
    """Everything an official SDK client session received: progress, log messages, every notification."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, float | None, str | None]] = []
        self.logs: list[mt.LoggingMessageNotificationParams] = []
        self.notifications: list[Any] = []

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total, message))

    async def on_log(self, params: mt.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def on_message(self, message: Any) -> None:
        self.notifications.append(message)

    def progress_notifications(self) -> list[mt.ProgressNotification]:
        return [n for n in self.notifications if isinstance(n, mt.ProgressNotification)]


@contextlib.asynccontextmanager
async def sdk_session(
    url: str, heard: Heard, *, era: str, log_level: Any = None
) -> AsyncIterator[ClientSession]:
    """An official `mcp.ClientSession` over streamable HTTP, negotiated as a 2025-11-25 session (`legacy`:
    initialize) or as 2026-07-28 requests (`modern`: server/discover)."""
    async with (
        streamable_http_client(url) as (read, write),
        ClientSession(
            read,
            write,
            logging_callback=heard.on_log,
            message_handler=heard.on_message,
            log_level=log_level,
        ) as session,
    ):
        await (session.initialize() if era == "legacy" else session.discover())
        yield session


def overview(result: mt.CallToolResult) -> dict[str, Any]:
    assert not result.is_error and isinstance(result.structured_content, dict), result
    return result.structured_content


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_the_fleet_overview_reports_each_device_as_it_finishes_to_an_sdk_client(
    url: str, era: str
) -> None:
    heard = Heard()
    async with sdk_session(url, heard, era=era) as session:
        result = overview(
            await session.call_tool(
                "get_fleet_overview", {}, read_timeout_seconds=DEADLINE, progress_callback=heard.on_progress
            )
        )
    assert result["total"] == 4 and result["failed"] == 1
    assert [p for p, _, _ in heard.progress] == [1, 2, 3, 4]
    assert {total for _, total, _ in heard.progress} == {4}
    assert {message for _, _, message in heard.progress} == EXPECTED
    assert len(heard.progress_notifications()) == 4  # as they came over the wire


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_without_a_progress_token_the_server_sends_no_progress(url: str, era: str) -> None:
    heard = Heard()
    async with sdk_session(url, heard, era=era) as session:
        overview(await session.call_tool("get_fleet_overview", {}, read_timeout_seconds=DEADLINE))
    assert heard.progress_notifications() == [] and heard.progress == []


async def test_a_2025_session_gets_a_warning_per_failed_device_at_or_above_the_level_it_set(url: str) -> None:
    heard = Heard()
    async with sdk_session(url, heard, era="legacy") as session:
        assert session.server_capabilities is not None and session.server_capabilities.logging is not None
        overview(await session.call_tool("get_fleet_overview", {}, read_timeout_seconds=DEADLINE))
        assert len(heard.logs) == 1  # no level set: warnings and above
        with pytest.warns(Warning, match="logging capability is deprecated"):
            await session.set_logging_level("error")
        overview(await session.call_tool("get_fleet_overview", {"force_refresh": True}))
        assert len(heard.logs) == 1  # a warning is below error
        with pytest.warns(Warning, match="logging capability is deprecated"):
            await session.set_logging_level("debug")
        overview(await session.call_tool("get_fleet_overview", {"force_refresh": True}))
    assert len(heard.logs) == 2
    for log in heard.logs:
        assert (log.level, log.logger) == ("warning", "infrastructor")
        assert "Cannot reach device 'gone'" in log.data["msg"]


@pytest.mark.parametrize(("level", "expected"), [(None, 0), ("error", 0), ("warning", 1), ("debug", 1)])
async def test_a_2026_request_gets_log_messages_only_when_it_opts_in_at_that_level(
    url: str, level: Any, expected: int
) -> None:
    heard = Heard()
    async with sdk_session(url, heard, era="modern", log_level=level) as session:
        # still advertised on 2026-07-28 (deprecated there, not removed): the server honours the opt-in
        assert session.server_capabilities is not None and session.server_capabilities.logging is not None
        overview(await session.call_tool("get_fleet_overview", {}, read_timeout_seconds=DEADLINE))
    assert len(heard.logs) == expected
    assert all(log.level == "warning" and "'gone'" in log.data["msg"] for log in heard.logs)


async def test_a_result_cut_to_the_budget_is_a_warning_naming_what_was_cut(tmp_path: Path) -> None:
    logs: list[LogMessage] = []

    async def on_log(message: LogMessage) -> None:
        logs.append(message)

    settings = make_settings(tmp_path, max_result_chars=1_000)
    async with open_state(settings) as state:
        async with Client(build_server(settings, state=state), log_handler=on_log) as client:
            result = await client.call_tool("list_processes", {"device": "local", "limit": 200})
    assert result.structured_content is not None
    marker = result.structured_content["result_truncated"]
    (cut,) = logs
    assert (cut.level, cut.data["msg"]) == ("warning", f"list_processes: {marker}")


async def test_drive_health_reports_each_drive_and_warns_of_one_smartctl_could_not_read(
    sqlite_settings: Settings,
    sshd_fleet: Any,
    storage_hosts: StorageHosts,  # noqa: F811
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[LogMessage] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def on_log(message: LogMessage) -> None:
        logs.append(message)

    async with open_state(sqlite_settings) as state:
        await add_fleet_host(state, sshd_fleet, storage_hosts.usb, name="usb-box")
        server = build_server(sqlite_settings, state=state)
        async with Client(server, progress_handler=on_progress, log_handler=on_log) as client:
            await client.call_tool("get_drive_health", {"device": "usb-box"})
    assert progress == [(1, 1, "/dev/vda unknown")]
    (warning,) = logs
    assert warning.level == "warning"
    assert warning.data["msg"].startswith("Drive /dev/vda on device 'usb-box': unknown: smartctl failed")


# ---- the CLI ------------------------------------------------------------------------------------------------


def _add_devices(tmp_path: Path, sshd_fleet: Any) -> None:
    host = sshd_fleet.hosts["alpha"]
    for args in (
        ("alpha", host.hostname, "--port", str(host.port), "--username", sshd_fleet.username),
        ("gone", "127.0.0.1", "--port", str(free_port())),
    ):
        extra = ("--key-path", str(sshd_fleet.client_key_path)) if args[0] == "alpha" else ()
        added = run_cli(tmp_path, "devices", "add", *args, *extra)
        assert added.returncode == 0, added.stderr


def test_collect_all_reports_each_device_on_stderr_and_keeps_stdout_for_the_result(
    tmp_path: Path, sshd_fleet: Any
) -> None:
    _add_devices(tmp_path, sshd_fleet)
    result = run_cli(tmp_path, "collect", "os_info", "--all", "--json")
    assert result.returncode == 1, result.stderr  # gone failed
    outcomes = {o["device"]: o["ok"] for o in json.loads(result.stdout)}
    assert outcomes == {"alpha": True, "local": True, "gone": False}
    # not a terminal: one plain line per device, no escape codes
    lines = [line.split(" ")[1:] for line in result.stderr.splitlines() if line.startswith("os_info: ")]
    assert sorted(count for count, *_ in lines) == ["1/3", "2/3", "3/3"]
    assert {" ".join(rest) for _, *rest in lines} == {"alpha ok", "local ok", "gone host_unreachable"}
    assert "\x1b[" not in result.stderr


def test_collect_all_on_a_terminal_draws_a_progress_bar_on_stderr_only(
    tmp_path: Path, sshd_fleet: Any
) -> None:
    _add_devices(tmp_path, sshd_fleet)
    master, slave = pty.openpty()
    env = cli_env(tmp_path, TERM="xterm-256color", COLUMNS="100")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [CLI, "collect", "os_info", "--all", "--json"], stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    drawn = bytearray()

    def drain() -> None:  # the terminal's side: read until the process closes it
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 4096):
                drawn.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=120)
    finally:
        reader.join(timeout=10)
        os.close(master)
    assert {o["device"] for o in json.loads(stdout)} == {"alpha", "local", "gone"}
    screen = drawn.decode(errors="replace")
    assert "os_info" in screen and "/3" in screen and "\x1b[" in screen, screen
    assert b"\x1b[" not in stdout
