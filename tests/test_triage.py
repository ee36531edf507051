"""Triage: what is using a directory (get_directory_usage) and everything that needs a human across the fleet
(find_problems), end to end through a real MCP client, the service and real sshd hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.commands import default_registry
from mcp_server.commands.storage import DirectoryUsageParams
from mcp_server.errors import InvalidParameter
from mcp_server.parsers.storage_dirs import parse_directory_usage
from mcp_server.state import AppState
from tests.app_fixtures import add_fleet_host, audit_rows
from tests.helpers import call_tool
from tests.sshd import SshdFleet, SshdHost

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
