"""run_command: off by default, admin only, allowlisted argv that never meets a shell; collect's limits; and
collect_many, one command on many devices in one call."""

from __future__ import annotations

import contextlib
import shlex
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError

from mcp_server.auth import ADMIN, WRITE
from mcp_server.commands.admin import RUN_SCRIPT
from mcp_server.devices import DeviceSpec
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


# ---- collect_many: one command on many devices in one call ------------------------------------------------


@contextlib.contextmanager
def silent_host() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung host): each caller waits out its own
    connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_collect_many_by_list_and_by_tag_with_a_hung_host_among_live_ones(
    tmp_path: Path, sshd_fleet: Any
) -> None:
    settings = make_settings(tmp_path, ssh_connect_timeout=1.0)
    with silent_host() as port:
        async with open_state(settings) as state:
            for name in ("alpha", "beta", "gamma"):
                web = ("web",) if name != "gamma" else ()
                await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts[name], tags=(*web, "lab"))
            await state.devices.add("hung", DeviceSpec(hostname="127.0.0.1", port=port, tags=("web",)))
            async with Client(build_server(settings, state=state)) as client:
                listed = structured(
                    await client.call_tool(
                        "collect_many", {"command": "os_info", "devices": ["gamma", "alpha"]}
                    )
                )
                assert (listed["command"], listed["total"], listed["failed"]) == ("os_info", 2, 0)
                assert [d["device"] for d in listed["devices"]] == ["alpha", "gamma"]
                for entry in listed["devices"]:
                    assert entry["ok"] is True and entry["result"]["device"] == entry["device"]
                    assert entry["result"]["data"]["hostname"]  # parsed data, as collect returns it

                tagged = structured(
                    await client.call_tool("collect_many", {"command": "os_info", "tags": ["web"]})
                )
                by_name = {d["device"]: d for d in tagged["devices"]}
                assert set(by_name) == {"alpha", "beta", "hung"} and tagged["failed"] == 1
                assert by_name["alpha"]["ok"] and by_name["beta"]["ok"]
                assert by_name["alpha"]["result"]["from_cache"] is True  # collected by the first call
                assert by_name["hung"]["ok"] is False and by_name["hung"]["error_type"] == "host_unreachable"
                assert "no SSH server answered" in by_name["hung"]["error"]

                both = structured(
                    await client.call_tool(
                        "collect_many",
                        {"command": "os_info", "devices": ["alpha", "gamma"], "tags": ["web", "lab"]},
                    )
                )
                assert [d["device"] for d in both["devices"]] == ["alpha"]

                with pytest.raises(ToolError, match=r"Unknown device 'nope'\. Known devices: alpha, beta"):
                    await client.call_tool(
                        "collect_many", {"command": "os_info", "devices": ["alpha", "nope"]}
                    )
                with pytest.raises(ToolError, match="No device carries all of the tags db"):
                    await client.call_tool("collect_many", {"command": "os_info", "tags": ["db"]})
                with pytest.raises(ToolError, match="devices"):
                    await client.call_tool("collect_many", {"command": "os_info"})
                with pytest.raises(ToolError, match="changes things on the device"):
                    await client.call_tool(
                        "collect_many", {"command": "run_command", "devices": ["alpha"], "params": {}}
                    )

            # one tool row per call, and one collection row per device under the call's request id
            (call,) = [r for r in await audit_rows(state, kind="tool", tool="collect_many")][1:2]
            rows = await audit_rows(state, kind="collection", request_id=call.request_id)
            assert sorted((r.device, r.outcome) for r in rows) == [
                ("alpha", "ok"),
                ("beta", "ok"),
                ("hung", "error"),
            ]
            assert {r.command for r in rows} == {"os_info"}


async def test_collect_many_is_cut_to_the_result_budget_by_whole_devices(
    tmp_path: Path, sshd_fleet: Any
) -> None:
    settings = make_settings(tmp_path)
    names = ["alpha", "beta", "gamma"]
    async with open_state(settings) as state:
        for name in names:
            await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts[name])
        whole = await state.service.collect_many(names, "top_processes")  # cached for the call below
        sizes = [len(o.model_dump_json()) for o in whole]
        budget = max(int(sum(sizes) * 0.6), 1_000)
        assert sum(sizes) > budget > max(sizes) + 300  # all three do not fit, any one does
        small = settings.model_copy(update={"max_result_chars": budget})
        async with Client(build_server(small, state=state)) as client:
            cut = structured(
                await client.call_tool("collect_many", {"command": "top_processes", "devices": names})
            )
    kept = cut["devices"]
    assert 1 <= len(kept) < 3 and cut["total"] == 3
    assert f"devices: kept {len(kept)} of 3 items" in cut["result_truncated"]
    for entry, outcome in zip(kept, whole, strict=False):  # each device shown is shown whole
        assert entry["result"]["from_cache"] is True
        assert entry["result"]["data"] == outcome.model_dump(mode="json")["result"]["data"]
