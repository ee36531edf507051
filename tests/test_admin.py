"""run_command: off by default, admin only, allowlisted argv that never meets a shell; and collect's limits."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError

from mcp_server.auth import ADMIN, WRITE
from mcp_server.commands.admin import RUN_SCRIPT
from mcp_server.server import build_server
from mcp_server.state import open_state
from tests.app_fixtures import add_fleet_host, audit_rows, make_settings
from tests.helpers import structured
from tests.test_auth import _serve


async def test_run_command_is_not_offered_unless_enabled(tmp_path: Path) -> None:
    async with Client(build_server(make_settings(tmp_path))) as client:
        assert "run_command" not in {t.name for t in await client.list_tools()}
        with pytest.raises(MCPError, match="Unknown tool: 'run_command'") as info:
            await client.call_tool("run_command", {"device": "local", "argv": ["uname"]})
        assert info.value.error.code == mt.INVALID_PARAMS


async def test_run_command_runs_an_allowlisted_argv_literally_over_ssh(
    tmp_path: Path, sshd_fleet: Any
) -> None:
    settings = make_settings(tmp_path, allow_run_command=True, run_command_allowlist="printf, uname")
    marker = tmp_path / "pwned"
    async with open_state(settings) as state:
        await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"])
        async with Client(build_server(settings, state=state)) as client:
            hostile = f"; touch {marker} $(touch {marker}) `touch {marker}`"
            result = await client.call_tool(
                "run_command", {"device": "alpha", "argv": ["printf", "%s|", hostile, "x y"]}
            )
            data = structured(result)["data"]
            assert data["exit_status"] == 0 and data["output"] == f"{hostile}|x y|"
            assert not marker.exists()
            failing = await client.call_tool("run_command", {"device": "alpha", "argv": ["uname", "--bogus"]})
            assert structured(failing)["data"]["exit_status"] != 0
            assert structured(failing)["from_cache"] is False
            with pytest.raises(
                ToolError, match="'sh' is not in INFRA_RUN_COMMAND_ALLOWLIST; allowed: printf, uname"
            ):
                await client.call_tool("run_command", {"device": "alpha", "argv": ["sh", "-c", "id"]})
            with pytest.raises(ToolError, match="changes things on the device"):
                await client.call_tool(
                    "collect", {"device": "alpha", "command": "run_command", "params": {"argv": ["sh"]}}
                )
        rows = await audit_rows(state, kind="tool", tool="run_command")
        assert [r.outcome for r in rows] == ["ok", "ok", "error"]
        assert rows[0].arguments is not None
        assert rows[0].arguments["argv"] == ["printf", "%s|", hostile, "x y"]
        assert rows[0].ssh_commands == [
            shlex.join(["sh", "-c", RUN_SCRIPT, "sh", "printf", "%s|", hostile, "x y"])
        ]


async def test_run_command_needs_the_admin_scope(tmp_path: Path) -> None:
    async for served in _serve(tmp_path, allow_run_command=True, run_command_allowlist="uname"):
        async with served.client(served.token(WRITE)) as client:
            with pytest.raises(ToolError, match="missing scope infra:admin"):
                await client.call_tool("run_command", {"device": "local", "argv": ["uname"]})
        async with served.client(served.token(ADMIN)) as client:
            result = await client.call_tool("run_command", {"device": "local", "argv": ["uname", "-s"]})
            assert structured(result)["data"]["output"] == "Linux"
