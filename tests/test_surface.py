"""What an agent pays for the tool surface, and the switches that shrink it: toolsets and read-only mode.

Sizes are measured on what a real client receives from tools/list (compact JSON), at 4 characters a token. When
a budget fails, make the listing leaner (mcp_server/tools/schemas.py, shorter descriptions) before raising it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import mcp_types as mt
import pytest
from fastmcp import Client, FastMCP
from fastmcp.decorators import get_fastmcp_meta
from fastmcp.tools.function_tool import ToolMeta
from mcp import MCPError

from mcp_server.errors import ConfigurationError
from mcp_server.prompts import NEEDS
from mcp_server.server import ALWAYS_OFFERED, areas, build_server
from mcp_server.settings import TOOLSETS
from mcp_server.tools.schemas import CHARS_PER_TOKEN, listed_chars
from tests.app_fixtures import make_settings
from tests.helpers import hints, structured

WHOLE_SURFACE_TOKENS = 15_000
SYSTEM_TOOLSET_TOKENS = 4_000


async def listed(tmp_path: Path, **overrides: Any) -> tuple[list[mt.Tool], list[mt.Prompt]]:
    settings = make_settings(tmp_path, **overrides)
    async with Client(build_server(settings)) as client:
        return await client.list_tools(), await client.list_prompts()


def tokens(tools: list[mt.Tool]) -> int:
    return listed_chars(tools) // CHARS_PER_TOKEN


async def test_the_whole_tool_surface_fits_its_token_budget(tmp_path: Path) -> None:
    tools, _ = await listed(tmp_path)
    assert len(tools) >= 40
    assert tokens(tools) <= WHOLE_SURFACE_TOKENS, f"tools/list is about {tokens(tools)} tokens"


async def test_the_system_toolset_alone_fits_its_token_budget(tmp_path: Path) -> None:
    tools, _ = await listed(tmp_path, toolsets="system")
    assert {"get_system_metrics", "list_processes", "get_fleet_overview"} <= {t.name for t in tools}
    assert tokens(tools) <= SYSTEM_TOOLSET_TOKENS, f"the system toolset is about {tokens(tools)} tokens"


async def test_full_schemas_are_offered_for_clients_that_generate_types(tmp_path: Path) -> None:
    compact, _ = await listed(tmp_path / "compact")
    full, _ = await listed(tmp_path / "full", tool_schemas="full")
    assert listed_chars(full) > 2 * listed_chars(compact)
    schema = next(t for t in full if t.name == "get_container").output_schema
    assert schema is not None and "oom_killed" in json.dumps(schema)  # nested fields listed whole


async def test_compact_schemas_keep_what_agents_and_validating_clients_use(tmp_path: Path) -> None:
    tools = {t.name: t for t in (await listed(tmp_path))[0]}
    logs = tools["get_journal_logs"].input_schema
    assert logs["required"] == ["device"] and logs["additionalProperties"] is False
    assert logs["properties"]["lines"] == {
        "default": 100,
        "description": "Newest matching entries to return.",
        "maximum": 2000,
        "minimum": 1,
        "type": "integer",
    }
    assert "2 hours ago" not in json.dumps(
        logs
    )  # the long time regex is not listed; its description says enough
    assert "-2h" in logs["properties"]["since"]["description"]
    containers = tools["list_containers"].input_schema["properties"]
    assert containers["status"]["type"] == ["string", "null"] and None in containers["status"]["enum"]
    output = tools["list_containers"].output_schema
    assert output is not None
    assert output["required"] == ["device", "command", "collected_at", "from_cache", "age_seconds", "data"]
    assert output["properties"]["data"]["properties"]["containers"] == {
        "items": {"type": "object"},
        "type": "array",
    }
    assert '"title"' not in json.dumps([t.input_schema for t in tools.values()])


async def test_a_collected_result_validates_against_its_listed_schema(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with Client(build_server(settings)) as client:
        tools = {t.name: t for t in await client.list_tools()}
        for name, arguments in [
            ("get_system_metrics", {"device": "local"}),
            ("get_disk_usage", {"device": "local"}),
            ("get_network_interfaces", {"device": "local"}),
            ("list_processes", {"device": "local", "limit": 3}),
            ("list_devices", {}),
            ("get_device", {"device": "local"}),
            ("get_service_health", {}),
        ]:
            result = structured(await client.call_tool(name, arguments))
            jsonschema.validate(result, tools[name].output_schema or {})


@pytest.mark.parametrize("toolset", TOOLSETS)
async def test_a_toolset_offers_its_own_tools_and_list_devices(tmp_path: Path, toolset: str) -> None:
    tools, prompts = await listed(tmp_path, toolsets=toolset, allow_run_command=True)
    names = {t.name for t in tools}
    expected = {name for name, area in _areas().items() if area == toolset} | ALWAYS_OFFERED
    assert names == expected
    assert {p.name for p in prompts} == {name for name, needs in NEEDS.items() if needs <= {toolset}}


async def test_a_prompt_is_offered_only_with_every_tool_it_names(tmp_path: Path) -> None:
    _, prompts = await listed(tmp_path, toolsets="system,storage,config,history")
    assert {p.name for p in prompts} == {"diagnose_device"}


async def test_toolsets_that_do_not_exist_are_refused_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"INFRA_TOOLSETS: .*unknown toolset dockr.*valid: devices, system"
    ):
        make_settings(tmp_path, toolsets="system,dockr")


async def test_read_only_mode_offers_no_tool_that_changes_anything(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, read_only=True, allow_run_command=True)
    async with Client(build_server(settings)) as client:
        tools = await client.list_tools()
        assert tools and all(hints(t).read_only_hint for t in tools)
        names = {t.name for t in tools}
        assert not {"add_device", "restart_container", "restart_service", "run_command"} & names
        assert {"list_devices", "get_system_metrics", "query_audit_log", "list_config_changes"} <= names
        with pytest.raises(MCPError, match="Unknown tool: 'add_device'") as info:
            await client.call_tool("add_device", {"name": "x1", "hostname": "127.0.0.1"})
        assert info.value.error.code == mt.INVALID_PARAMS
        devices = structured(await client.call_tool("list_devices", {}))
        assert [d["name"] for d in devices["devices"]] == ["local"]


def test_serve_refuses_an_unknown_toolset_before_starting(tmp_path: Path) -> None:
    env = {**os.environ, "INFRA_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "mcp_server", "serve", "--read-only", "--toolsets", "system,dockr"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "unknown toolset dockr; valid: devices, system" in done.stderr
    assert not (tmp_path / "data").exists()


def _areas() -> dict[str, str]:
    """Every tool's toolset, from the area module that declares it."""
    scratch: FastMCP[Any] = FastMCP("scratch")
    return {scratch.add_tool(fn).name: area.TOOLSET for area in areas() for fn in area.TOOLS}


def test_every_tool_an_area_module_defines_is_in_its_tools_list() -> None:
    for area in areas():
        defined = [
            value
            for value in vars(area).values()
            if isinstance(get_fastmcp_meta(value), ToolMeta) and value.__module__ == area.__name__
        ]
        assert set(defined) == set(area.TOOLS), area.__name__
