"""The MCP surface through an in-memory client: tools, annotations, results, errors, resources, prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError
from sqlalchemy import select

from mcp_server.db.tables import DeviceRow, SecretRow
from mcp_server.state import AppState
from tests.app_fixtures import audit_rows
from tests.test_collection import meminfo_bytes

READ_TOOLS = {
    "list_devices",
    "get_device",
    "test_device_connection",
    "list_commands",
    "collect",
    "get_system_metrics",
    "get_disk_usage",
    "get_network_interfaces",
    "list_processes",
    "get_fleet_overview",
    "get_cache_stats",
}
WRITE_TOOLS = {"add_device", "update_device", "remove_device", "import_ssh_config"}
FRESHNESS = {"device", "command", "collected_at", "from_cache", "age_seconds"}


async def test_every_tool_has_a_description_annotations_and_an_output_schema(client: Client[Any]) -> None:
    tools = {t.name: t for t in await client.list_tools()}
    assert READ_TOOLS | WRITE_TOOLS <= set(tools)
    for name, tool in tools.items():
        assert tool.description and len(tool.description) > 20, name
        assert tool.output_schema is not None, name
        assert tool.annotations is not None, name
        tags = set(tool.meta["fastmcp"]["tags"]) if tool.meta else set()
        if "scope:infra:write" in tags or name in WRITE_TOOLS:
            assert tool.annotations.read_only_hint is False, name
            assert "scope:infra:write" in tags, name
        elif "scope:infra:admin" not in tags:
            assert tool.annotations.read_only_hint is True, name
    for name in READ_TOOLS:
        assert tools[name].annotations.read_only_hint is True, name
    assert tools["remove_device"].annotations.destructive_hint is True
    assert tools["add_device"].annotations.destructive_hint is False
    schema = tools["get_system_metrics"].output_schema
    assert FRESHNESS <= set(schema["properties"])
    assert "memory" in json.dumps(schema)


async def test_get_system_metrics_returns_structured_fresh_data(client: Client[Any]) -> None:
    first = await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
    data = first.structured_content
    assert data is not None and FRESHNESS <= set(data)
    assert data["from_cache"] is False and data["device"] == "local"
    assert data["data"]["memory"]["total_bytes"] == meminfo_bytes("MemTotal")
    second = await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
    assert second.structured_content["from_cache"] is True
    assert second.structured_content["collected_at"] == data["collected_at"]


@pytest.mark.parametrize(
    ("tool", "args", "key"),
    [
        ("get_disk_usage", {}, "filesystems"),
        ("get_network_interfaces", {}, "interfaces"),
        ("list_processes", {"limit": 3, "sort_by": "memory"}, "processes"),
        ("collect", {"command": "os_info"}, "hostname"),
    ],
)
async def test_read_tools_return_their_data_with_freshness(
    client: Client[Any], tool: str, args: dict[str, Any], key: str
) -> None:
    result = await client.call_tool(tool, {"device": "local", **args})
    assert FRESHNESS <= set(result.structured_content)
    assert key in result.structured_content["data"]


async def test_list_processes_honours_limit_and_order(client: Client[Any]) -> None:
    result = await client.call_tool("list_processes", {"device": "local", "limit": 4, "sort_by": "memory"})
    processes = result.structured_content["data"]["processes"]
    assert 1 <= len(processes) <= 4
    rss = [p["rss_bytes"] for p in processes]
    assert rss == sorted(rss, reverse=True)


async def test_list_commands_describes_parameters(client: Client[Any]) -> None:
    result = await client.call_tool("list_commands", {})
    commands = {c["name"]: c for c in result.structured_content["commands"]}
    assert {"system_metrics", "disk_usage", "network_interfaces", "top_processes", "os_info"} <= set(commands)
    assert "interval" in commands["system_metrics"]["parameters"]["properties"]


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("get_system_metrics", {"device": "nas01"}, "Unknown device 'nas01'. Known devices: local."),
        ("collect", {"device": "local", "command": "reboot"}, "Unknown command 'reboot'"),
        ("collect", {"device": "local", "command": "top_processes", "params": {"limit": "5; id"}}, "limit"),
        ("collect", {"device": "local", "command": "disk_usage", "params": {"x": 1}}, "Extra inputs"),
        ("get_device", {"device": "nope"}, "Unknown device 'nope'"),
        ("remove_device", {"device": "local"}, "cannot be removed"),
    ],
)
async def test_expected_failures_reach_the_agent_as_clear_tool_errors(
    client: Client[Any], tool: str, args: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError) as raised:
        await client.call_tool(tool, args)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "args",
    [
        {"device": "local", "limit": 0},
        {"device": "local", "limit": 10_000},
        {"device": "local", "sort_by": "cpu; rm -rf /"},
    ],
)
async def test_out_of_range_arguments_are_rejected_by_the_schema(
    client: Client[Any], args: dict[str, Any]
) -> None:
    with pytest.raises(ToolError, match="validation error"):
        await client.call_tool("list_processes", args)


async def test_device_lifecycle_through_tools(client: Client[Any], state: AppState, sshd_fleet: Any) -> None:
    host = sshd_fleet.hosts["alpha"]
    added = await client.call_tool(
        "add_device",
        {
            "name": "alpha",
            "hostname": host.hostname,
            "port": host.port,
            "username": sshd_fleet.username,
            "key_path": str(sshd_fleet.client_key_path),
            "tags": ["lab", "test"],
        },
    )
    assert (
        added.structured_content["auth"] == "key" and added.structured_content["host_key_fingerprint"] is None
    )

    test = await client.call_tool("test_device_connection", {"device": "alpha"})
    assert test.structured_content["ok"] is True
    assert test.structured_content["host_key_source"] == "pinned_now"
    assert test.structured_content["host_key_fingerprint"] == host.host_key_fingerprint

    info = await client.call_tool("get_device", {"device": "alpha"})
    assert info.structured_content["host_key_fingerprint"] == host.host_key_fingerprint

    listed = await client.call_tool("list_devices", {"tags": ["lab"]})
    assert [d["name"] for d in listed.structured_content["devices"]] == ["alpha"]

    metrics = await client.call_tool("get_system_metrics", {"device": "alpha", "interval": 0.1})
    assert metrics.structured_content["data"]["memory"]["total_bytes"] == meminfo_bytes("MemTotal")

    updated = await client.call_tool(
        "update_device", {"device": "alpha", "description": "rack 1", "tags": ["x"]}
    )
    assert updated.structured_content["description"] == "rack 1"
    assert updated.structured_content["tags"] == ["x"]
    again = await client.call_tool("get_system_metrics", {"device": "alpha", "interval": 0.1})
    assert again.structured_content["from_cache"] is False  # an update drops the device's cache

    removed = await client.call_tool("remove_device", {"device": "alpha"})
    assert removed.structured_content["removed"] == "alpha"
    with pytest.raises(ToolError, match="Unknown device 'alpha'"):
        await client.call_tool("get_device", {"device": "alpha"})


async def test_a_device_password_is_encrypted_at_rest_and_never_returned(
    client: Client[Any], state: AppState
) -> None:
    password = "correct horse battery staple"
    result = await client.call_tool(
        "add_device", {"name": "pw-host", "hostname": "127.0.0.1", "port": 1, "password": password}
    )
    assert password not in json.dumps(result.structured_content)
    assert result.structured_content["auth"] == "password"
    async with state.db.read_session() as session:
        secrets = (await session.scalars(select(SecretRow))).all()
        rows = (await session.scalars(select(DeviceRow))).all()
    assert len(secrets) == 1 and password not in secrets[0].ciphertext
    assert all(password not in repr(vars(r)) for r in rows)
    assert state.devices.get("pw-host").password == password
    failed = await client.call_tool("test_device_connection", {"device": "pw-host"})
    assert failed.structured_content["ok"] is False
    assert failed.structured_content["error_type"] == "host_unreachable"
    assert password not in json.dumps(failed.structured_content)
    for row in await audit_rows(state):
        assert password not in json.dumps([row.arguments, row.error_message])


async def test_add_device_rejects_bad_input_with_actionable_messages(client: Client[Any]) -> None:
    with pytest.raises(ToolError, match="key_path '/nonexistent/key' is outside the directories"):
        await client.call_tool("add_device", {"name": "x1", "hostname": "h", "key_path": "/nonexistent/key"})
    with pytest.raises(ToolError, match="validation error"):
        await client.call_tool("add_device", {"name": "Bad Name!", "hostname": "h"})
    with pytest.raises(ToolError, match="hostname"):
        await client.call_tool("add_device", {"name": "x2", "hostname": "h; touch /tmp/p"})
    with pytest.raises(ToolError, match="Unknown device 'nowhere'"):
        await client.call_tool("add_device", {"name": "x3", "hostname": "h", "jump_host": "nowhere"})
    await client.call_tool("add_device", {"name": "x4", "hostname": "h"})
    with pytest.raises(ToolError, match="already exists"):
        await client.call_tool("add_device", {"name": "x4", "hostname": "h"})


async def test_import_ssh_config_registers_hosts_and_jump_hosts(
    client: Client[Any], sshd_fleet: Any, tmp_path: Path
) -> None:
    alpha, beta = sshd_fleet.hosts["alpha"], sshd_fleet.hosts["beta"]
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host lab-alpha\n  HostName 127.0.0.1\n  Port {alpha.port}\n"
        f"Host lab-beta\n  HostName 127.0.0.1\n  Port {beta.port}\n  ProxyJump lab-alpha\n"
        "Host *.wild\n  User nobody\n"
        f"Host *\n  User {sshd_fleet.username}\n  IdentityFile {sshd_fleet.client_key_path}\n"
    )
    result = await client.call_tool("import_ssh_config", {"path": str(config), "tags": ["imported"]})
    assert result.structured_content["added"] == 2
    beta_info = await client.call_tool("get_device", {"device": "lab-beta"})
    assert beta_info.structured_content["jump_host"] == "lab-alpha"
    assert beta_info.structured_content["username"] == sshd_fleet.username
    assert beta_info.structured_content["key_path"] == str(sshd_fleet.client_key_path)
    again = await client.call_tool("import_ssh_config", {"path": str(config)})
    assert again.structured_content["added"] == 0 and again.structured_content["skipped"] == 2
    with pytest.raises(ToolError, match="Cannot use SSH config .*: it must be an existing, readable file"):
        await client.call_tool("import_ssh_config", {"path": str(tmp_path / "missing")})


async def test_fleet_overview_reports_every_device(client: Client[Any], sshd_fleet: Any) -> None:
    for name in ("alpha", "beta"):
        host = sshd_fleet.hosts[name]
        await client.call_tool(
            "add_device",
            {
                "name": name,
                "hostname": host.hostname,
                "port": host.port,
                "username": sshd_fleet.username,
                "key_path": str(sshd_fleet.client_key_path),
            },
        )
    await client.call_tool("add_device", {"name": "gone", "hostname": "127.0.0.1", "port": 1})
    result = await client.call_tool("get_fleet_overview", {})
    overview = result.structured_content
    assert overview["total"] == 4 and overview["ok"] == 3 and overview["failed"] == 1
    rows = {d["device"]: d for d in overview["devices"]}
    assert rows["gone"]["error_type"] == "host_unreachable"
    for name in ("alpha", "beta", "local"):
        assert rows[name]["ok"] and rows[name]["fullest_mount"] and rows[name]["cpu_count"] >= 1


async def test_cache_stats_count_hits_and_misses(client: Client[Any]) -> None:
    await client.call_tool("get_network_interfaces", {"device": "local"})
    await client.call_tool("get_network_interfaces", {"device": "local"})
    stats = (await client.call_tool("get_cache_stats", {})).structured_content
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["entries"] == 1


async def test_resources_serve_devices_commands_and_results(client: Client[Any]) -> None:
    templates = {t.uri_template for t in await client.list_resource_templates()}
    assert {"infra://devices/{device}", "infra://devices/{device}/{command}"} <= templates
    devices = json.loads((await client.read_resource("infra://devices"))[0].text)
    assert [d["name"] for d in devices] == ["local"]
    commands = json.loads((await client.read_resource("infra://commands"))[0].text)
    assert commands["total"] >= 5
    result = json.loads((await client.read_resource("infra://devices/local/os_info"))[0].text)
    assert result["data"]["hostname"] and FRESHNESS <= set(result)
    stats = json.loads((await client.read_resource("infra://cache/stats"))[0].text)
    assert stats["misses"] >= 1
    with pytest.raises(MCPError, match="Unknown device 'nas9'"):
        await client.read_resource("infra://devices/nas9/os_info")


async def test_diagnose_device_prompt_walks_through_the_tools(client: Client[Any]) -> None:
    prompt = await client.get_prompt("diagnose_device", {"device": "nas01", "symptom": "slow"})
    text = prompt.messages[0].content.text
    assert "nas01" in text and "get_system_metrics" in text and "list_processes" in text


async def test_tool_calls_are_audited_and_linked_to_the_collections_they_caused(
    client: Client[Any], state: AppState
) -> None:
    await client.call_tool("get_disk_usage", {"device": "local"})
    await client.call_tool("get_disk_usage", {"device": "local"})
    with pytest.raises(ToolError):
        await client.call_tool("get_disk_usage", {"device": "ghost"})
    tools = await audit_rows(state, kind="tool", tool="get_disk_usage")
    assert [(r.outcome, r.cache_hit, r.device) for r in tools] == [
        ("ok", False, "local"),
        ("ok", True, "local"),
        ("error", False, "ghost"),
    ]
    assert tools[2].error_type == "device_not_found" and "Known devices" in (tools[2].error_message or "")
    first = tools[0]
    assert first.transport == "memory" and first.command == "disk_usage" and first.ssh_commands
    assert first.arguments == {"device": "local"}
    (collection,) = await audit_rows(state, kind="collection", request_id=first.request_id)
    assert collection.command == "disk_usage" and collection.ssh_commands == first.ssh_commands


async def test_a_changed_host_key_is_refused_until_the_operator_clears_it(
    client: Client[Any], sshd_fleet: Any
) -> None:
    import uuid

    host = sshd_fleet.start_host(f"rekey-{uuid.uuid4().hex[:6]}")
    args = {"hostname": host.hostname, "port": host.port, "username": sshd_fleet.username}
    await client.call_tool(
        "add_device", {"name": "rekey", "key_path": str(sshd_fleet.client_key_path), **args}
    )
    first = await client.call_tool("test_device_connection", {"device": "rekey"})
    assert first.structured_content["host_key_source"] == "pinned_now"
    host.restart_with_new_host_key()
    # a no-op update drops the pooled connection, so the next call reconnects and meets the new key
    await client.call_tool("update_device", {"device": "rekey", "description": "rebuilt"})
    with pytest.raises(ToolError, match="Host key verification FAILED for device 'rekey'") as refused:
        await client.call_tool("get_system_metrics", {"device": "rekey", "interval": 0.1})
    assert "clear_host_key" in str(refused.value)
    await client.call_tool("update_device", {"device": "rekey", "clear_host_key": True})
    again = await client.call_tool("test_device_connection", {"device": "rekey"})
    assert again.structured_content["ok"] is True
    assert again.structured_content["host_key_fingerprint"] == host.host_key_fingerprint
    host.stop()


async def test_a_wrong_key_is_an_authentication_error_naming_the_device(
    client: Client[Any], sshd_fleet: Any
) -> None:
    host = sshd_fleet.hosts["alpha"]
    wrong = sshd_fleet.new_client_key("not-authorized")
    await client.call_tool(
        "add_device",
        {
            "name": "wrongkey",
            "hostname": host.hostname,
            "port": host.port,
            "username": sshd_fleet.username,
            "key_path": str(wrong),
        },
    )
    with pytest.raises(ToolError, match="Authentication failed for device 'wrongkey'"):
        await client.call_tool("get_disk_usage", {"device": "wrongkey"})


async def test_the_fast_input_schema_lookup_agrees_with_tools_list(
    client: Client[Any], state: AppState
) -> None:
    from mcp_server.server import build_server

    lookup = build_server(state.settings, state=state)._mcp_server.get_tool_input_schema
    assert lookup is not None
    for tool in await client.list_tools():
        schema = lookup(tool.name)
        assert schema is not None, tool.name
        assert set(schema.get("properties", {})) == set(tool.input_schema.get("properties", {})), tool.name
        assert set(schema.get("required", [])) == set(tool.input_schema.get("required", [])), tool.name
