"""Triage: what is using a directory (get_directory_usage) and everything that needs a human across the fleet
(find_problems), end to end through a real MCP client, the service and real sshd hosts."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.commands import default_registry
from mcp_server.commands.storage import DirectoryUsageParams
from mcp_server.devices import DeviceSpec
from mcp_server.errors import InvalidParameter
from mcp_server.parsers.storage_dirs import parse_directory_usage
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.helpers import call_tool, fixture_bin, free_port, path_without
from tests.podman import (
    IMAGE,
    ContainerEngine,
    engine_fixture,  # noqa: F401  (the container_engine session fixture)
    poll,
)
from tests.sshd import SshdFleet, SshdHost

GOLDEN = Path(__file__).parent / "golden"

REGISTRY = default_registry()


# ---- get_directory_usage ---------------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    """A directory whose biggest entries are known: big/ (3 MB), 'two words'/ (1 MB), a 200 KB file, and a
    directory the sshd login user may not read."""
    (root / "big" / "inner").mkdir(parents=True)
    (root / "big" / "inner" / "blob").write_bytes(b"\1" * 3_000_000)
    (root / "two words").mkdir()
    (root / "two words" / "data").write_bytes(b"\1" * 1_000_000)
    (root / "file.log").write_bytes(b"\1" * 200_000)
    (root / "locked").mkdir()
    (root / "locked" / "secret").write_bytes(b"\1" * 50_000)
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (root / "locked").chmod(0o700)  # owned by root: the login user cannot enter it
    return root


@pytest.fixture(scope="module")
def du_host(sshd_fleet: SshdFleet) -> SshdHost:
    return sshd_fleet.start_host("du-host")


async def test_directory_usage_lists_the_biggest_entries_first_through_ssh(
    client: Client[Any], state: AppState, sshd_fleet: SshdFleet, du_host: SshdHost
) -> None:
    await add_fleet_host(state, sshd_fleet, du_host, name="du-host")
    root = _tree(sshd_fleet.scratch_dir() / "srv")
    result = await call_tool(client, "get_directory_usage", device="du-host", path=str(root), depth=1, top=3)
    data = result["data"]
    assert [e["path"] for e in data["entries"]] == [f"{root}/big", f"{root}/two words", f"{root}/file.log"]
    assert data["entries"][0]["bytes"] >= 3_000_000 and data["total_bytes"] >= 4_200_000
    assert data["complete"] is True
    assert data["unreadable"] is sshd_fleet.is_root  # the login user cannot read `locked`
    deeper = await call_tool(client, "get_directory_usage", device="du-host", path=str(root), depth=2, top=2)
    assert [e["path"] for e in deeper["data"]["entries"]] == [f"{root}/big", f"{root}/big/inner"]
    rows = await audit_rows(state, kind="collection", command="directory_usage")
    assert rows and "du -x" in rows[-1].ssh_commands[0]


async def test_a_missing_path_or_a_file_is_a_clear_error(
    client: Client[Any], state: AppState, sshd_fleet: SshdFleet, du_host: SshdHost
) -> None:
    await add_fleet_host(state, sshd_fleet, du_host, name="du-host")
    root = _tree(sshd_fleet.scratch_dir() / "srv")
    with pytest.raises(ToolError, match=r"path: '.*/nowhere' does not exist on device 'du-host'"):
        await client.call_tool("get_directory_usage", {"device": "du-host", "path": f"{root}/nowhere"})
    with pytest.raises(ToolError, match="is a file, not a directory"):
        await client.call_tool("get_directory_usage", {"device": "du-host", "path": f"{root}/file.log"})


@pytest.mark.parametrize(
    "path", ["relative/dir", "-rf", "/tmp/a\nb", "/tmp/a\x00b", "", "/" + "a" * 4096, "$(reboot)"]
)
async def test_paths_that_are_not_absolute_or_hold_control_characters_are_refused_before_anything_runs(
    client: Client[Any], state: AppState, path: str
) -> None:
    with pytest.raises(ToolError, match="path"):
        await client.call_tool("get_directory_usage", {"device": "local", "path": path})
    assert not await audit_rows(state, kind="collection", command="directory_usage")


def test_a_path_reaches_the_device_only_as_a_positional_argument() -> None:
    definition = REGISTRY.get("directory_usage")
    hostile = "/tmp/x'; reboot; echo '$(id)`id`"
    argv = definition.render(definition.validate({"path": hostile}))
    assert argv[:2] == ["sh", "-c"] and hostile not in argv[2] and argv[4] == hostile


def test_a_walk_cut_by_its_timeout_says_so_and_keeps_what_it_measured() -> None:
    params = DirectoryUsageParams(path="/srv", top=5)
    text = "@@du-gnu\n@@status 124\n4096\t/srv/a\x008192\t/srv/b\x00\n@@end\n"
    result = parse_directory_usage(text, params)
    assert (result.complete, result.total_bytes) == (False, None)
    assert [e.path for e in result.entries] == ["/srv/b", "/srv/a"]


def test_the_walk_is_bounded_below_the_command_timeout() -> None:
    with pytest.raises(InvalidParameter, match="timeout"):
        REGISTRY.get("directory_usage").validate({"path": "/", "timeout": 121})
    assert REGISTRY.get("directory_usage").timeout > 120


# ---- find_problems ---------------------------------------------------------------------------------------------


def _triage_bin(root: Path, engine: ContainerEngine) -> str:
    """PATH for a host with a failing disk (lsblk and smartctl fixtures), a failed unit (systemctl fixture),
    dnf with a pending security update (dnf and rpm fixtures), the real docker CLI reaching the test engine,
    and every other real program but apt (so the dnf fixture answers the package check)."""
    bin_dir = root / "bin"
    data = root / "data"
    for area, programs in (
        ("storage", ("lsblk", "smartctl")),
        ("services", ("systemctl",)),
        ("host", ("dnf", "rpm")),
    ):
        fixture_bin(root / area, area, programs)
        bin_dir.mkdir(exist_ok=True)
        for program in programs:
            shutil.copy(root / area / "bin" / program, bin_dir / program)
        shutil.copytree(root / area / "data", data, dirs_exist_ok=True)
    (data / "smartctl").mkdir(exist_ok=True)
    shutil.copy(GOLDEN / "drive_inventory/debian12_virtio_zram_loop.txt", data / "lsblk.json")
    shutil.copy(GOLDEN / "drive_smart/usb_jmicron_hdd_failing.txt", data / "smartctl/vda.json")
    # sshd passes on one variable (PATH): the engine's docker config travels in this wrapper instead
    cli = shutil.which("docker")
    (bin_dir / "docker").write_text(f'#!/bin/sh\nDOCKER_CONFIG={engine.docker_config} exec {cli} "$@"\n')
    for executable in bin_dir.iterdir():
        executable.chmod(0o755)
    for path in (data, *data.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    return f"{bin_dir}:{path_without(root, 'apt')}"


@pytest.fixture(scope="module")
def triage_host(sshd_fleet: SshdFleet, container_engine: ContainerEngine) -> SshdHost:
    path = _triage_bin(sshd_fleet.scratch_dir(), container_engine)
    return sshd_fleet.start_host("triage-host", env={"PATH": path})


@pytest.fixture
async def running(sqlite_settings: Settings) -> AsyncIterator[AppState]:
    settings = sqlite_settings.model_copy(update={"config_debounce": 0.05})
    async with open_state(settings) as state:
        await state.config.start()
        yield state


@pytest.fixture
def crash_loop(container_engine: ContainerEngine) -> Iterator[None]:
    container_engine.docker(
        "run", "-d", "--network", "host", "--name", "triage-loop", "--restart", "always", IMAGE,
        "sh", "-c", "sleep 1; exit 4",
    )  # fmt: skip
    try:
        count = ("inspect", "--format", "{{.RestartCount}}", "triage-loop")
        poll(lambda: int(container_engine.docker(*count).stdout) >= 2, 30, "the restart loop")
        yield
    finally:
        container_engine.run("podman", "rm", "--force", "--time", "0", "triage-loop", check=False)


async def test_find_problems_ranks_everything_that_needs_a_human_worst_first(
    running: AppState, sshd_fleet: SshdFleet, triage_host: SshdHost, crash_loop: None, tmp_path: Path
) -> None:
    await add_fleet_host(running, sshd_fleet, triage_host, name="nas")
    closed = free_port()
    await running.devices.add("gone", DeviceSpec(hostname="127.0.0.1", port=closed, username="x"))
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  app:\n    image: app:1\n")
    async with Client(build_server(running.settings, state=running)) as client:
        await call_tool(client, "watch_config_file", device="local", path=str(compose))
        compose.write_text("services:\n  app:\n    image: app:2\n    privileged: true\n")
        await wait_for_change(running)
        await call_tool(client, "check_updates", device="nas")  # the package check find_problems reuses
        report = await call_tool(client, "find_problems", disk_threshold=1)

    problems = report["problems"]
    assert (problems[0]["device"], problems[0]["kind"], problems[0]["severity"]) == (
        "gone",
        "unreachable",
        "critical",
    )
    assert problems[0]["next"] == '`test_device_connection` {"device": "gone"}'
    assert not [p for p in problems if p["device"] == "gone" and p["kind"] != "unreachable"]
    order = ["critical", "high", "medium"]
    assert [order.index(p["severity"]) for p in problems] == sorted(
        order.index(p["severity"]) for p in problems
    )

    def one(device: str, kind: str, subject: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            p for p in problems if (p["device"], p["kind"], p["subject"]) == (device, kind, subject)
        ]
        assert len(found) == 1, (device, kind, subject, problems)
        return found[0]

    drive = one("nas", "drive_failing", "/dev/vda")
    assert drive["severity"] == "critical" and drive["next"].startswith("`get_drive_health`")
    disk = one("nas", "disk_full", "/")
    assert disk["next"] == '`get_directory_usage` {"device": "nas", "path": "/"}'
    unit = one("nas", "service_failed", "zfs-import-cache.service")
    assert unit["severity"] == "high" and "get_service_status" in unit["next"]
    loop = one("nas", "container_restarting", "triage-loop")
    assert loop["severity"] == "high" and "restarted" in loop["summary"]
    assert loop["next"] == '`get_container_logs` {"device": "nas", "container": "triage-loop", "tail": 100}'
    exited = one("nas", "container_exited", "oneshot")
    assert "code 3" in exited["summary"] and exited["severity"] == "medium"
    change = one("local", "config_change", str(compose))
    assert change["severity"] == "high" and "image changed" in change["summary"]
    assert change["next"].startswith('`get_config_diff` {"device": "local"')
    updates = one("nas", "security_updates", "nas")
    assert updates["summary"].startswith("1 security update pending")
    assert report["counts"]["critical"] >= 2 and report["devices"] == 3
    assert any(n.startswith("local drives:") for n in report["not_checked"]) or shutil.which("smartctl")

    # every device check went through the collection pipeline: audited with the call's request id
    rows = await audit_rows(running, kind="collection", device="nas")
    assert {"disk_usage", "services", "containers", "container_restarts", "drive_smart"} <= {
        r.command for r in rows
    }
    call_row = (await audit_rows(running, kind="tool", tool="find_problems"))[-1]
    assert all(r.request_id == call_row.request_id for r in rows if r.command == "services")


async def test_find_problems_is_bounded_by_limit_and_checks(
    running: AppState, sshd_fleet: SshdFleet, triage_host: SshdHost
) -> None:
    await add_fleet_host(running, sshd_fleet, triage_host, name="nas")
    async with Client(build_server(running.settings, state=running)) as client:
        only_disks = await call_tool(client, "find_problems", checks=["disks"], disk_threshold=1, limit=1)
        assert (
            only_disks["total"] >= 2 and only_disks["truncated"] is True and len(only_disks["problems"]) == 1
        )
        assert {p["kind"] for p in only_disks["problems"]} <= {"disk_full", "inodes_full"}
        with pytest.raises(ToolError, match="checks"):
            await client.call_tool("find_problems", {"checks": ["everything"]})


async def wait_for_change(state: AppState) -> None:
    end = time.monotonic() + 20
    while not (await state.config.changes(device=None, since=None, min_risk="high", limit=1, offset=0)).total:
        assert time.monotonic() < end, "no configuration change within 20 s"
        await asyncio.sleep(0.02)


async def test_find_problems_is_cut_to_the_result_budget_keeping_the_worst(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_result_chars=1500)
    async with open_state(settings) as state:
        for n in range(6):  # nothing listens there: each one is a critical problem
            await state.devices.add(
                f"gone{n}", DeviceSpec(hostname="127.0.0.1", port=free_port(), username="x")
            )
        async with Client(build_server(settings, state=state)) as client:
            report = await call_tool(client, "find_problems", checks=["disks"], disk_threshold=1)
    assert "result_truncated" in report and report["total"] >= 7
    assert 0 < len(report["problems"]) < report["total"]
    assert {p["kind"] for p in report["problems"]} == {"unreachable"}  # the worst kept, the disk_full cut
