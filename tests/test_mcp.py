"""The MCP surface through an in-memory client: tools, annotations, results, errors, resources, prompt."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from mcp import MCPError
from sqlalchemy import select

from mcp_server.db.tables import DeviceRow, SecretRow
from mcp_server.devices import Device, DeviceSpec
from mcp_server.errors import DeviceLimit
from mcp_server.fastmcp_internals import low_level
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import audit_rows, make_settings
from tests.helpers import free_port, hints, read_text, structured
from tests.test_collection import meminfo_bytes
from tests.test_ssh import tcp_service

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
            assert hints(tool).read_only_hint is False, name
            assert "scope:infra:write" in tags, name
        elif "scope:infra:admin" not in tags:
            assert hints(tool).read_only_hint is True, name
    for name in READ_TOOLS:
        assert hints(tools[name]).read_only_hint is True, name
    assert hints(tools["remove_device"]).destructive_hint is True
    assert hints(tools["add_device"]).destructive_hint is False
    schema = tools["get_system_metrics"].output_schema
    assert schema is not None
    assert FRESHNESS <= set(schema["properties"])
    assert "memory" in json.dumps(schema)


async def test_get_system_metrics_returns_structured_fresh_data(client: Client[Any]) -> None:
    first = await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
    data = first.structured_content
    assert data is not None and FRESHNESS <= set(data)
    assert data["from_cache"] is False and data["device"] == "local"
    assert data["data"]["memory"]["total_bytes"] == meminfo_bytes("MemTotal")
    second = await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
    assert structured(second)["from_cache"] is True
    assert structured(second)["collected_at"] == data["collected_at"]


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
    assert FRESHNESS <= set(structured(result))
    assert key in structured(result)["data"]


async def test_list_processes_honours_limit_and_order(client: Client[Any]) -> None:
    result = await client.call_tool("list_processes", {"device": "local", "limit": 4, "sort_by": "memory"})
    processes = structured(result)["data"]["processes"]
    assert 1 <= len(processes) <= 4
    rss = [p["rss_bytes"] for p in processes]
    assert rss == sorted(rss, reverse=True)


async def test_list_commands_describes_parameters(client: Client[Any]) -> None:
    result = await client.call_tool("list_commands", {})
    commands = {c["name"]: c for c in structured(result)["commands"]}
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
    with pytest.raises(ToolError, match="Invalid arguments for list_processes:\n(limit|sort_by): must be"):
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
    assert structured(added)["auth"] == "key" and "host_key_fingerprint" not in structured(added)

    test = await client.call_tool("test_device_connection", {"device": "alpha"})
    assert structured(test)["ok"] is True
    assert structured(test)["host_key_source"] == "pinned_now"
    assert structured(test)["host_key_fingerprint"] == host.host_key_fingerprint

    info = await client.call_tool("get_device", {"device": "alpha"})
    assert structured(info)["host_key_fingerprint"] == host.host_key_fingerprint

    listed = await client.call_tool("list_devices", {"tags": ["lab"]})
    assert [d["name"] for d in structured(listed)["devices"]] == ["alpha"]

    metrics = await client.call_tool("get_system_metrics", {"device": "alpha", "interval": 0.1})
    assert structured(metrics)["data"]["memory"]["total_bytes"] == meminfo_bytes("MemTotal")

    updated = await client.call_tool(
        "update_device", {"device": "alpha", "description": "rack 1", "tags": ["x"]}
    )
    assert structured(updated)["description"] == "rack 1"
    assert structured(updated)["tags"] == ["x"]
    again = await client.call_tool("get_system_metrics", {"device": "alpha", "interval": 0.1})
    assert structured(again)["from_cache"] is False  # an update drops the device's cache

    removed = await client.call_tool("remove_device", {"device": "alpha"})
    assert structured(removed)["removed"] == "alpha"
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
    assert structured(result)["auth"] == "password"
    async with state.db.read_session() as session:
        secrets = (await session.scalars(select(SecretRow))).all()
        rows = (await session.scalars(select(DeviceRow))).all()
    assert len(secrets) == 1 and password not in secrets[0].ciphertext
    assert all(password not in repr(vars(r)) for r in rows)
    assert state.devices.get("pw-host").password == password
    failed = await client.call_tool("test_device_connection", {"device": "pw-host"})
    assert structured(failed)["ok"] is False
    assert structured(failed)["error_type"] == "host_unreachable"
    assert password not in json.dumps(failed.structured_content)
    for row in await audit_rows(state):
        assert password not in json.dumps([row.arguments, row.error_message])


async def test_add_device_rejects_bad_input_with_actionable_messages(client: Client[Any]) -> None:
    with pytest.raises(ToolError, match="key_path '/nonexistent/key' is outside the directories"):
        await client.call_tool("add_device", {"name": "x1", "hostname": "h", "key_path": "/nonexistent/key"})
    with pytest.raises(ToolError, match="name: must match"):
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
    assert structured(result)["added"] == 2
    beta_info = await client.call_tool("get_device", {"device": "lab-beta"})
    assert structured(beta_info)["jump_host"] == "lab-alpha"
    assert structured(beta_info)["username"] == sshd_fleet.username
    assert structured(beta_info)["key_path"] == str(sshd_fleet.client_key_path)
    again = await client.call_tool("import_ssh_config", {"path": str(config)})
    assert structured(again)["added"] == 0 and structured(again)["skipped"] == 2
    with pytest.raises(ToolError, match="Cannot use SSH config .*: it must be an existing, readable file"):
        await client.call_tool("import_ssh_config", {"path": str(tmp_path / "missing")})


async def test_devices_beyond_infra_max_devices_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_devices=2)
    async with open_state(settings) as state, Client(build_server(settings, state=state)) as client:
        for name in ("one", "two"):  # the built-in 'local' does not count
            await client.call_tool("add_device", {"name": name, "hostname": "127.0.0.1"})
        with pytest.raises(
            ToolError,
            match=r"Cannot add device 'three': the limit of 2 registered devices \(INFRA_MAX_DEVICES\) is reached",
        ):
            await client.call_tool("add_device", {"name": "three", "hostname": "127.0.0.1"})
        await client.call_tool("remove_device", {"device": "one"})
        await client.call_tool("add_device", {"name": "three", "hostname": "127.0.0.1"})
        # concurrent adds cannot slip past the limit together
        await client.call_tool("remove_device", {"device": "three"})
        spec = DeviceSpec(hostname="127.0.0.1")
        outcomes = await asyncio.gather(
            *(state.devices.add(f"racer{i}", spec) for i in range(5)), return_exceptions=True
        )
        assert sum(isinstance(o, Device) for o in outcomes) == 1
        assert all(isinstance(o, DeviceLimit) for o in outcomes if not isinstance(o, Device))
        assert state.devices.count() == 2


async def test_import_ssh_config_says_how_many_hosts_the_device_limit_let_it_add(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_devices=3)
    config = tmp_path / "ssh_config"
    config.write_text("".join(f"Host h{i}\n  HostName 127.0.0.{i + 1}\n" for i in range(5)))
    async with open_state(settings) as state, Client(build_server(settings, state=state)) as client:
        await client.call_tool("add_device", {"name": "existing", "hostname": "127.0.0.1"})
        result = structured(await client.call_tool("import_ssh_config", {"path": str(config)}))
        assert (result["added"], result["skipped"]) == (2, 3)
        assert [h["status"] for h in result["hosts"]] == ["added"] * 2 + ["skipped"] * 3
        assert {h["reason"] for h in result["hosts"][2:]} == {
            "not added: the limit of 3 registered devices (INFRA_MAX_DEVICES) is reached"
        }
        assert result["warnings"][0].startswith("Device limit reached: added 2 host(s); 3 more not added")
        listed = structured(await client.call_tool("list_devices", {}))["devices"]
        assert sorted(d["name"] for d in listed) == ["existing", "h0", "h1", "local"]


async def test_connection_tests_do_not_tell_a_closed_port_from_a_service_that_is_not_ssh(
    client: Client[Any],
) -> None:
    errors = {}
    async with tcp_service(b"220 smtp.example ESMTP ready\r\n") as smtp:
        for name, port in (("closed", free_port()), ("smtp", smtp)):
            await client.call_tool("add_device", {"name": name, "hostname": "127.0.0.1", "port": port})
            tested = structured(await client.call_tool("test_device_connection", {"device": name}))
            assert (tested["ok"], tested["error_type"]) == (False, "host_unreachable")
            errors[name] = tested["error"].replace(name, "NAME").replace(str(port), "PORT")
    assert errors["closed"] == errors["smtp"]
    assert "no SSH server answered there" in errors["closed"]


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
    overview = structured(result)
    assert overview["total"] == 4 and overview["ok"] == 3 and overview["failed"] == 1
    rows = {d["device"]: d for d in overview["devices"]}
    assert rows["gone"]["error_type"] == "host_unreachable"
    for name in ("alpha", "beta", "local"):
        assert rows[name]["ok"] and rows[name]["fullest_mount"] and rows[name]["cpu_count"] >= 1


async def test_cache_stats_count_hits_and_misses(client: Client[Any]) -> None:
    await client.call_tool("get_network_interfaces", {"device": "local"})
    await client.call_tool("get_network_interfaces", {"device": "local"})
    stats = structured(await client.call_tool("get_cache_stats", {}))
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["entries"] == 1


async def test_resources_serve_devices_commands_and_results(client: Client[Any]) -> None:
    templates = {t.uri_template for t in await client.list_resource_templates()}
    assert {"infra://devices/{device}", "infra://devices/{device}/{command}"} <= templates
    devices = json.loads(await read_text(client, "infra://devices"))
    assert [d["name"] for d in devices] == ["local"]
    commands = json.loads(await read_text(client, "infra://commands"))
    assert commands["total"] >= 5
    result = json.loads(await read_text(client, "infra://devices/local/os_info"))
    assert result["data"]["hostname"] and FRESHNESS <= set(result)
    stats = json.loads(await read_text(client, "infra://cache/stats"))
    assert stats["misses"] >= 1
    with pytest.raises(MCPError, match="Unknown device 'nas9'"):
        await client.read_resource("infra://devices/nas9/os_info")


async def test_diagnose_device_prompt_walks_through_the_tools(client: Client[Any]) -> None:
    prompt = await client.get_prompt("diagnose_device", {"device": "local", "symptom": "slow"})
    content = prompt.messages[0].content
    assert isinstance(content, mt.TextContent)
    text = content.text
    assert '"device": "local"' in text and "get_system_metrics" in text and "list_processes" in text


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
    assert structured(first)["host_key_source"] == "pinned_now"
    host.restart_with_new_host_key()
    # a no-op update drops the pooled connection, so the next call reconnects and meets the new key
    await client.call_tool("update_device", {"device": "rekey", "description": "rebuilt"})
    with pytest.raises(ToolError, match="Host key verification FAILED for device 'rekey'") as refused:
        await client.call_tool("get_system_metrics", {"device": "rekey", "interval": 0.1})
    assert "clear_host_key" in str(refused.value)
    await client.call_tool("update_device", {"device": "rekey", "clear_host_key": True})
    again = await client.call_tool("test_device_connection", {"device": "rekey"})
    assert structured(again)["ok"] is True
    assert structured(again)["host_key_fingerprint"] == host.host_key_fingerprint
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

    lookup = low_level(build_server(state.settings, state=state)).get_tool_input_schema
    assert lookup is not None
    for tool in await client.list_tools():
        schema = lookup(tool.name)
        assert schema is not None, tool.name
        assert set(schema.get("properties", {})) == set(tool.input_schema.get("properties", {})), tool.name
        assert set(schema.get("required", [])) == set(tool.input_schema.get("required", [])), tool.name
