"""The configuration tools, resource and notifications through real MCP clients, and the prompts checked
against the tools they name."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import mcp_types as mt
import pytest
from fastmcp import Client
from fastmcp.client.messages import MessageHandler
from fastmcp.exceptions import ToolError
from mcp import MCPError
from mcp.client.subscriptions import listen

from mcp_server.events import ConfigChanged
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import make_settings

DEADLINE = 20.0
PROXY = (
    "server {\n    listen 443 ssl;\n    server_name grafana.*;\n    include /config/nginx/ssl.conf;\n"
    "    location / {\n        include /config/nginx/authelia-location.conf;\n"
    "        set $upstream_app grafana;\n        set $upstream_port 3000;\n"
    "        proxy_pass http://$upstream_app:$upstream_port;\n    }\n}\n"
)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[AppState]:
    """An AppState whose watchers run (a server's lifespan starts them the same way)."""
    async with open_state(make_settings(tmp_path, config_debounce=0.05)) as state:
        await state.config.start()
        yield state


async def wait_for_change(state: AppState, count: int) -> None:
    end = time.monotonic() + DEADLINE
    while True:
        changes = await state.config.changes(device=None, since=None, min_risk=None, limit=1, offset=0)
        if changes.total >= count:
            return
        assert time.monotonic() < end, f"no {count} change(s) within {DEADLINE}s"
        await asyncio.sleep(0.02)


async def test_watch_edit_history_diff_and_changes_through_the_tools(
    running: AppState, tmp_path: Path
) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  app:\n    image: app:1\n    environment:\n      API_TOKEN: abc123\n")
    async with Client(build_server(running.settings, state=running)) as client:
        watched = await client.call_tool("watch_config_file", {"device": "local", "path": str(compose)})
        assert watched.structured_content["created"] is True
        assert watched.structured_content["watched"]["kind"] == "compose"

        compose.write_text(
            "services:\n  app:\n    image: app:2\n    privileged: true\n    environment:\n      API_TOKEN: zzz999\n"
        )
        await wait_for_change(running, 1)

        listed = (await client.call_tool("list_watched_files", {"device": "local"})).structured_content
        assert [f["path"] for f in listed["files"]] == [str(compose)]
        assert listed["status"][0]["mode"] == "inotify"
        history = (
            await client.call_tool("get_config_history", {"device": "local", "path": str(compose)})
        ).structured_content
        assert history["total"] == 2 and history["versions"][0]["change_type"] == "modified"
        diff = (
            await client.call_tool("get_config_diff", {"device": "local", "path": str(compose)})
        ).structured_content
        assert "-    image: app:1" in diff["diff"] and "+    privileged: true" in diff["diff"]
        assert "abc123" not in diff["diff"] and "zzz999" not in diff["diff"]
        assert diff["risk"] == "high" and diff["affected_services"] == ["app"]
        older, newer = history["versions"][1]["id"], history["versions"][0]["id"]
        same = (
            await client.call_tool(
                "get_config_diff", {"device": "local", "path": str(compose), "from": newer, "to": older}
            )
        ).structured_content
        assert (same["from_version"], same["to_version"]) == (older, newer)

        high = (
            await client.call_tool(
                "list_config_changes", {"min_risk": "high", "since": "1h", "include_diff": True}
            )
        ).structured_content
        assert high["total"] == 1
        reasons = " ".join(high["changes"][0]["reasons"])
        assert "image changed (app:1 -> app:2)" in reasons and "privileged mode" in reasons
        assert "zzz999" not in json.dumps(high)
        future = (
            await client.call_tool("list_config_changes", {"since": "2999-01-01T00:00:00Z"})
        ).structured_content
        assert future["total"] == 0

        content = await client.read_resource(f"infra://config/local{compose}")
        body = json.loads(content[0].text)
        assert body["compose"]["services"][0]["environment"] == ["API_TOKEN"]
        assert "zzz999" not in content[0].text

        removed = await client.call_tool("unwatch_config_file", {"device": "local", "path": str(compose)})
        assert removed.structured_content["removed"] is True
        history = (
            await client.call_tool("get_config_history", {"device": "local", "path": str(compose)})
        ).structured_content
        assert history["total"] == 2, "versions outlive the watch"


async def test_config_tools_say_when_nothing_is_watched_and_how_to_start(
    running: AppState, tmp_path: Path
) -> None:
    async with Client(build_server(running.settings, state=running)) as client:
        watched = (await client.call_tool("list_watched_files", {"device": "local"})).structured_content
        assert watched["total"] == 0
        assert watched["note"].startswith("Nothing is watched on 'local'")
        assert '`watch_config_file` {"device": "local", "path": ' in watched["note"]
        assert '"discover": true' in watched["note"]
        changes = (await client.call_tool("list_config_changes", {"device": "local"})).structured_content
        assert changes["total"] == 0 and changes["note"] == watched["note"]
        anywhere = (await client.call_tool("list_config_changes", {})).structured_content
        assert "Nothing is watched on any device" in anywhere["note"]
        compose = tmp_path / "compose.yaml"
        compose.write_text("services:\n  app:\n    image: app:1\n")
        await client.call_tool("watch_config_file", {"device": "local", "path": str(compose)})
        watched = (await client.call_tool("list_watched_files", {"device": "local"})).structured_content
        changes = (await client.call_tool("list_config_changes", {"device": "local"})).structured_content
        assert watched.get("note") is None and changes["total"] == 0 and changes.get("note") is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"path": "etc/nginx/nginx.conf"}, "absolute path"),
        ({"path": "/etc/nginx/../shadow"}, "normalised"),
        ({"path": "/etc/nginx/a\nb"}, "control characters"),
        ({"path": "/etc/shadow"}, "credential store"),
        ({"path": "/root/.ssh/id_ed25519"}, "credential store"),
        ({"path": "/opt/x.conf", "device": "nas99"}, "Unknown device 'nas99'"),
    ],
)
async def test_bad_watch_arguments_are_refused_with_what_is_valid(
    client: Client[Any], arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError, match=re.escape(message)):
        await client.call_tool("watch_config_file", {"device": "local", **arguments})


async def test_bad_history_diff_and_change_queries_say_how_to_ask(
    client: Client[Any], tmp_path: Path
) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text("x=1\n")
    with pytest.raises(ToolError, match="watch it first with watch_config_file"):
        await client.call_tool("get_config_history", {"device": "local", "path": str(conf)})
    await client.call_tool("watch_config_file", {"device": "local", "path": str(conf)})
    with pytest.raises(ToolError, match="get_config_history lists them"):
        await client.call_tool("get_config_diff", {"device": "local", "path": str(conf), "from": 999999})
    with pytest.raises(ToolError, match="neither a duration"):
        await client.call_tool("list_config_changes", {"since": "yesterday"})
    with pytest.raises(ToolError, match="is not watched"):
        await client.call_tool("unwatch_config_file", {"device": "local", "path": "/opt/never.conf"})
    with pytest.raises(ToolError, match="run only by the server itself"):
        await client.call_tool(
            "collect", {"device": "local", "command": "config_file", "params": {"path": "/etc/hosts"}}
        )


async def test_the_config_resource_serves_watched_files_only(client: Client[Any], tmp_path: Path) -> None:
    with pytest.raises(MCPError, match="only watched files can be read"):
        await client.read_resource("infra://config/local/etc/hostname")
    conf = tmp_path / "watched.conf"
    conf.write_text("DB_PASSWORD=hunter2\nmode=fast\n")
    await client.call_tool("watch_config_file", {"device": "local", "path": str(conf)})
    [content] = await client.read_resource(f"infra://config/local{conf}")
    assert isinstance(content, mt.TextResourceContents)
    assert json.loads(content.text)["content"] == "DB_PASSWORD=***\nmode=fast\n"


async def test_proxy_configs_list_routes_and_one_conf_from_a_watched_swag_directory(
    client: Client[Any], tmp_path: Path
) -> None:
    confs = tmp_path / "swag" / "nginx" / "proxy-confs"
    confs.mkdir(parents=True)
    (confs / "grafana.subdomain.conf").write_text(PROXY)
    (confs / "grafana.subdomain.conf.sample").write_text(PROXY)
    await client.call_tool("watch_config_file", {"device": "local", "path": str(confs)})

    listed = (await client.call_tool("list_proxy_configs", {"device": "local"})).structured_content
    assert listed is not None
    routes = [r for r in listed["data"]["routes"] if r["file"].startswith(str(confs))]
    assert routes == [
        {
            "domain": "grafana.*",
            "location": "/",
            "upstream": "grafana:3000",
            "ssl": True,
            "auth": ["authelia"],
            "file": str(confs / "grafana.subdomain.conf"),
        }
    ]
    one = (
        await client.call_tool("get_proxy_config", {"device": "local", "name": "grafana.*"})
    ).structured_content
    assert one is not None
    assert one["name"] == "grafana.subdomain.conf" and one["config"]["servers"][0]["ssl"] is True
    with pytest.raises(ToolError, match="Known: "):
        await client.call_tool("get_proxy_config", {"device": "local", "name": "nothing.conf"})


class Updates(MessageHandler):
    def __init__(self) -> None:
        super().__init__()
        self.uris: list[str] = []

    async def on_resource_updated(self, message: mt.ResourceUpdatedNotification) -> None:
        self.uris.append(str(message.params.uri))


async def test_a_listening_client_is_told_when_a_watched_file_changes(
    running: AppState, tmp_path: Path
) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("a=1\n")
    await running.config.watch("local", str(conf))
    uri = f"infra://config/local{conf}"
    server = build_server(running.settings, state=running)
    async with Client(server) as client, listen(client.session, resource_subscriptions=[uri]) as subscription:
        conf.write_text("a=2\n")
        event = await asyncio.wait_for(anext(aiter(subscription)), DEADLINE)
        assert getattr(event, "uri", None) == uri
        body = json.loads((await client.read_resource(uri))[0].text)
        assert body["content"] == "a=2\n"


async def test_a_legacy_client_subscribed_to_a_file_gets_resources_updated(
    running: AppState, tmp_path: Path
) -> None:
    conf = tmp_path / "legacy.conf"
    conf.write_text("a=1\n")
    other = tmp_path / "other.conf"
    other.write_text("b=1\n")
    await running.config.watch("local", str(conf))
    await running.config.watch("local", str(other))
    uri = f"infra://config/local{conf}"
    updates = Updates()
    server = build_server(running.settings, state=running)
    async with Client(server, mode="legacy", message_handler=updates) as client:
        # the 2025 protocol's way, deprecated on 2026-07-28 (where listen replaces it) but what such clients send
        with pytest.warns(Warning, match="resources/subscribe is removed"):
            await client.session.subscribe_resource(uri)
        queue = running.events.subscribe_queue(types=(ConfigChanged,))
        other.write_text("b=2\n")  # not subscribed: no notification
        conf.write_text("a=2\n")
        end = time.monotonic() + DEADLINE
        while not updates.uris:
            assert time.monotonic() < end, "no notifications/resources/updated"
            await asyncio.sleep(0.02)
        while queue.qsize() < 2:
            assert time.monotonic() < end
            await asyncio.sleep(0.02)
        assert updates.uris == [uri]


# ---- prompts: every tool a prompt names exists and the arguments it gives are valid -----------------------

_CALL = re.compile(r"`([a-z_]+)`(?: (\{[^\n]*?\}))?(?=[:;,.\s]|$)")


async def test_every_tool_a_prompt_names_exists_and_its_arguments_validate(client: Client[Any]) -> None:
    tools = {t.name: t for t in await client.list_tools()}
    prompts = await client.list_prompts()
    assert {"diagnose_device", "triage_container", "review_config_changes"} <= {p.name for p in prompts}
    samples = {"device": "local", "container": "jellyfin"}  # a device the server knows
    for prompt in prompts:
        arguments = {a.name: samples.get(a.name, "local") for a in prompt.arguments or [] if a.required}
        result = await client.get_prompt(prompt.name, arguments)
        text = "\n".join(m.content.text for m in result.messages if isinstance(m.content, mt.TextContent))
        calls = _CALL.findall(text)
        assert calls, f"{prompt.name} names no tool"
        for name, args in calls:
            assert name in tools, f"{prompt.name} names {name!r}, which is not a tool"
            if args:
                jsonschema.validate(json.loads(args), tools[name].input_schema)


async def test_an_http_client_listening_on_a_watched_file_is_told_of_its_change(
    running: AppState, tmp_path: Path
) -> None:
    from fastmcp.utilities.tests import run_server_async

    conf = tmp_path / "http.conf"
    conf.write_text("a=1\n")
    await running.config.watch("local", str(conf))
    uri = f"infra://config/local{conf}"
    server = build_server(running.settings, transport="http", state=running)
    async with run_server_async(server) as url, Client(url) as client:
        async with listen(client.session, resource_subscriptions=[uri]) as subscription:
            conf.write_text("a=2\n")
            event = await asyncio.wait_for(anext(aiter(subscription)), DEADLINE)
            assert getattr(event, "uri", None) == uri


async def test_a_legacy_http_client_subscribed_to_a_file_gets_it_on_its_get_stream(
    running: AppState, tmp_path: Path
) -> None:
    from fastmcp.utilities.tests import run_server_async

    conf = tmp_path / "legacy-http.conf"
    conf.write_text("a=1\n")
    await running.config.watch("local", str(conf))
    uri = f"infra://config/local{conf}"
    updates = Updates()
    server = build_server(running.settings, transport="http", state=running)
    async with run_server_async(server) as url, Client(url, mode="legacy", message_handler=updates) as client:
        with pytest.warns(Warning, match="resources/subscribe is removed"):
            await client.session.subscribe_resource(uri)
        conf.write_text("a=2\n")
        end = time.monotonic() + DEADLINE
        while not updates.uris:
            assert time.monotonic() < end, "no notifications/resources/updated on the GET stream"
            await asyncio.sleep(0.02)
        assert updates.uris == [uri]


async def test_the_server_lifespan_runs_the_watchers_and_resumes_them_on_the_next_start(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, config_debounce=0.05)
    conf = tmp_path / "lifespan.conf"
    conf.write_text("a=1\n")
    async with Client(build_server(settings)) as client:  # the server opens and closes its own state
        await client.call_tool("watch_config_file", {"device": "local", "path": str(conf)})
        conf.write_text("a=2\n")
        end = time.monotonic() + DEADLINE
        while not (await client.call_tool("list_config_changes", {})).structured_content["total"]:
            assert time.monotonic() < end, "the lifespan's watcher saw no change"
            await asyncio.sleep(0.05)
    conf.write_text("a=3\n")  # while no server runs
    async with Client(build_server(settings)) as client:
        end = time.monotonic() + DEADLINE
        while (await client.call_tool("list_config_changes", {})).structured_content["total"] < 2:
            assert time.monotonic() < end, "the change made while stopped was not found at start-up"
            await asyncio.sleep(0.05)
        listed = await client.call_tool("list_watched_files", {})
        assert listed.structured_content is not None
        assert listed.structured_content["status"][0]["mode"] == "inotify"
