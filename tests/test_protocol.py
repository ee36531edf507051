"""The protocol as the official MCP SDK client sees it (`mcp.ClientSession`, in memory and over streamable
HTTP against a real uvicorn server): error codes and data, readable argument errors, the result budget on
resources, the 401 challenge and the protected-resource metadata, and completions."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import jwt
import mcp_types as mt
import pytest
from mcp import ClientSession, MCPError
from mcp.client._memory import InMemoryTransport
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    handle_protected_resource_response,
)
from mcp.client.streamable_http import streamable_http_client

from mcp_server.audit import AuditRecord
from mcp_server.auth import ADMIN, READ, SigningKey
from mcp_server.devices import DeviceSpec
from mcp_server.fastmcp_internals import low_level
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import audit_rows
from tests.test_auth import AUDIENCE, ISSUER, SECRET, Served, _serve

TEMPLATE = "infra://devices/{device}/{command}"


@pytest.fixture
async def state(sqlite_settings: Settings) -> AsyncIterator[AppState]:
    async with open_state(sqlite_settings) as running:
        yield running


@contextlib.asynccontextmanager
async def memory_session(state: AppState) -> AsyncIterator[ClientSession]:
    """The SDK's ClientSession over its in-memory transport, on a server sharing the test's AppState (not a
    fixture: the transport's task group must close in the task that opened it)."""
    server = build_server(state.settings, state=state)
    async with (
        InMemoryTransport(low_level(server)) as (read, write),
        ClientSession(read, write) as connected,
    ):
        await connected.initialize()
        yield connected


@contextlib.asynccontextmanager
async def http_session(url: str, token: str | None) -> AsyncIterator[ClientSession]:
    """The SDK's ClientSession over streamable HTTP, sending `token` as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as connected,
    ):
        await connected.initialize()
        yield connected


async def mcp_error(request: Any) -> mt.ErrorData:
    with pytest.raises(MCPError) as raised:
        await request
    return raised.value.error


# ---- errors -----------------------------------------------------------------------------------------------


async def test_a_prompt_without_its_required_argument_is_invalid_params_naming_it(
    state: AppState,
) -> None:
    async with memory_session(state) as session:
        error = await mcp_error(session.get_prompt("triage_container", {"device": "local"}))
        assert error.code == mt.INVALID_PARAMS
        assert error.message.splitlines() == [
            "Invalid arguments for prompt triage_container:",
            "container: required",
            "accepted arguments: device, container",
        ]
        assert error.data == {"prompt": "triage_container", "problems": ["container: required"]}
        unknown = await mcp_error(
            session.get_prompt("diagnose_device", {"device": "local", "severity": "high"})
        )
        assert unknown.code == mt.INVALID_PARAMS and "severity: unknown argument" in unknown.message


async def test_an_invalid_prompt_argument_value_is_invalid_params_and_valid_ones_render(
    state: AppState,
) -> None:
    async with memory_session(state) as session:
        error = await mcp_error(session.get_prompt("review_config_changes", {"min_risk": "extreme"}))
        assert error.code == mt.INVALID_PARAMS
        assert "min_risk: must be 'low', 'medium' or 'high' (got 'extreme')" in error.message.splitlines()
        rendered = await session.get_prompt("review_config_changes", {"min_risk": "high", "since": "7d"})
        content = rendered.messages[0].content
        assert isinstance(content, mt.TextContent) and "min_risk" in content.text


@pytest.mark.parametrize(
    ("prompt", "arguments", "problem"),
    [
        ("diagnose_device", {"device": "nope"}, "device: Unknown device 'nope'. Known devices: local."),
        ("review_config_changes", {"since": "bogus"}, "since 'bogus' is neither a duration"),
        ("review_config_changes", {"device": "nope"}, "device: Unknown device 'nope'"),
        (
            "triage_container",
            {"device": "local", "container": "-v /:/host"},
            "container: must be a container",
        ),
    ],
)
async def test_prompt_argument_values_the_tools_would_refuse_are_invalid_params_naming_the_argument(
    state: AppState, prompt: str, arguments: dict[str, str], problem: str
) -> None:
    async with memory_session(state) as session:
        error = await mcp_error(session.get_prompt(prompt, arguments))
        assert error.code == mt.INVALID_PARAMS
        assert any(line.startswith(problem) for line in error.message.splitlines()[1:]), error.message
        assert isinstance(error.data, dict) and error.data["prompt"] == prompt


async def test_a_ping_is_answered_in_memory_and_over_http(state: AppState, served: Served) -> None:
    # (the 2026-07-28 protocol has no ping: the SDK answers it there as an unknown method, as the spec says)
    async with memory_session(state) as session:
        assert isinstance(await session.send_ping(), mt.EmptyResult)
    async with http_session(served.url, served.token(READ)) as reader:
        assert isinstance(await reader.send_ping(), mt.EmptyResult)


async def test_an_unknown_tool_is_invalid_params_and_audited(state: AppState) -> None:
    async with memory_session(state) as session:
        error = await mcp_error(session.call_tool("get_everything", {"device": "local"}))
        assert error.code == mt.INVALID_PARAMS
        assert error.message.startswith("Unknown tool: 'get_everything'")
        assert error.data == {"tool": "get_everything"}
    (row,) = await audit_rows(state, kind="tool", tool="get_everything")
    assert (row.outcome, row.error_type) == ("error", "invalid_params")


async def test_results_leave_null_fields_out_carry_utc_timestamps_and_still_match_their_schemas(
    state: AppState,
) -> None:
    async with memory_session(state) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        await session.call_tool("get_disk_usage", {"device": "local"})
        for name, arguments in (("get_device", {"device": "local"}), ("query_audit_log", {})):
            result = await session.call_tool(name, arguments)
            assert result.structured_content is not None and not result.is_error
            text = result.content[0].text  # type: ignore[union-attr]
            assert ":null" not in text and json.loads(text) == result.structured_content
            jsonschema.validate(result.structured_content, tools[name].output_schema or {})
        entries = result.structured_content["entries"]
        assert entries and all(e["occurred_at"].endswith("Z") for e in entries)
        assert (
            "username" not in (await session.call_tool("get_device", {"device": "local"})).structured_content
        )


async def test_tools_without_tags_list_no_meta_and_tagged_ones_keep_their_scope(state: AppState) -> None:
    async with memory_session(state) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert tools["get_system_metrics"].meta is None
    assert tools["add_device"].meta == {"fastmcp": {"tags": ["scope:infra:write"]}}


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("infra://devices/nas9", "Unknown device 'nas9'. Known devices: local."),
        ("infra://devices/nas9/os_info", "Unknown device 'nas9'"),
        ("infra://devices/local/no_such_command", "Unknown command 'no_such_command'"),
        ("infra://devices/local/restart_service", "changes things on the device"),
        ("infra://config/nas9/etc/hosts", "Unknown device 'nas9'"),
        ("infra://config/local/etc/hosts", "not a watched file"),
    ],
)
async def test_resource_templates_naming_what_does_not_exist_are_invalid_params_with_the_uri(
    state: AppState, uri: str, says: str
) -> None:
    async with memory_session(state) as session:
        static = await mcp_error(session.read_resource("infra://nothing/here"))
        assert static.code == mt.INVALID_PARAMS and static.data == {"uri": "infra://nothing/here"}
        error = await mcp_error(session.read_resource(uri))
        assert (error.code, error.data) == (static.code, {"uri": uri})
        assert says in error.message


async def test_bad_tool_arguments_read_as_one_line_per_field_and_are_audited_as_such(state: AppState) -> None:
    async with memory_session(state) as session:
        result = await session.call_tool("get_journal_logs", {"lines": 20000, "colour": "red"})
        assert result.is_error
        content = result.content[0]
        assert isinstance(content, mt.TextContent)
        assert content.text.splitlines() == [
            "Invalid arguments for get_journal_logs:",
            "device: required",
            "lines: must be ≤ 2000 (got 20000)",
            "colour: unknown argument",
            "accepted arguments: device, unit, since, until, priority, grep, lines, force_refresh",
        ]
        assert "pydantic" not in content.text and "call[" not in content.text
        (row,) = await audit_rows(state, kind="tool", tool="get_journal_logs")
        assert (row.outcome, row.error_type, row.error_message) == (
            "error",
            "invalid_arguments",
            content.text,
        )


# ---- the result budget on resources ----------------------------------------------------------------------


async def test_a_resource_read_is_cut_to_the_result_budget_keeping_the_newest_audit_rows(
    state: AppState,
) -> None:
    async with memory_session(state) as session:
        limit = state.settings.max_result_chars
        for n in range(60):  # 50 are read; each about 1,500 characters of JSON
            state.writer.audit(
                AuditRecord(
                    occurred_at=datetime.now(UTC),
                    kind="tool",
                    request_id=None,
                    transport="memory",
                    tool="list_devices",
                    subject=f"filler-{n}",
                    client_id=None,
                    client_ip=None,
                    user_agent=None,
                    request_path=None,
                    arguments={"note": f"row {n} " + "x" * 600},
                    device=None,
                    command=None,
                    params=None,
                    cache_hit=False,
                    ssh_commands=(),
                    duration_ms=1.0,
                    outcome="error",
                    error_type="internal",
                    error_message="y" * 700,
                )
            )
        newest = (await audit_rows(state))[-1].id
        read = await session.read_resource("infra://audit/recent")
        content = read.contents[0]
        assert isinstance(content, mt.TextResourceContents)
        assert len(content.text) <= limit
        page = json.loads(content.text)
        assert page["truncated"] is True and "entries: kept" in page["result_truncated"]
        ids = [entry["id"] for entry in page["entries"]]
        assert ids[0] == newest and ids == sorted(ids, reverse=True) and 10 < len(ids) < 50


# ---- completions ------------------------------------------------------------------------------------------


async def test_completions_offer_devices_readable_commands_and_watched_paths_by_prefix(
    state: AppState, tmp_path: Path
) -> None:
    async with memory_session(state) as session:
        for n in range(120):
            await state.devices.add(f"node{n:03d}", DeviceSpec(hostname=f"10.0.0.{n % 250}"))
        template = mt.ResourceTemplateReference(type="ref/resource", uri=TEMPLATE)
        nodes = (await session.complete(template, {"name": "device", "value": "node"})).completion
        assert (len(nodes.values), nodes.total, nodes.has_more) == (100, 120, True)
        assert nodes.values[:2] == ["node000", "node001"]
        prompt = mt.PromptReference(type="ref/prompt", name="diagnose_device")
        few = (await session.complete(prompt, {"name": "device", "value": "node11"})).completion
        assert (few.values, few.total, few.has_more) == ([f"node11{n}" for n in range(10)], 10, False)

        commands = (
            await session.complete(template, {"name": "command", "value": ""}, {"device": "local"})
        ).completion
        assert {"os_info", "system_metrics", "disk_usage"} <= set(commands.values)
        assert not {"restart_service", "run_command", "container_stop"} & set(commands.values)
        for name in commands.values:  # each one reads through the template
            state.registry.get_read(name)
        only = (await session.complete(template, {"name": "command", "value": "os_"})).completion
        assert only.values == ["os_info"]

        watched = tmp_path / "app.conf"
        watched.write_text("listen 80\n")
        await session.call_tool("watch_config_file", {"device": "local", "path": str(watched)})
        config = mt.ResourceTemplateReference(type="ref/resource", uri="infra://config/{device}/{path*}")
        paths = (
            await session.complete(config, {"name": "path", "value": ""}, {"device": "local"})
        ).completion
        assert paths.values == [str(watched).lstrip("/")]
        read = await session.read_resource(f"infra://config/local/{paths.values[0]}")
        assert isinstance(read.contents[0], mt.TextResourceContents) and "listen 80" in read.contents[0].text


# ---- HTTP: the 401 challenge and the protected-resource metadata ------------------------------------------


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path):
        yield s


def _signed(**claims: Any) -> str:
    now = int(time.time())
    base = {"sub": "dave", "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(base | claims, SECRET, algorithm="HS256")


async def test_a_401_points_to_the_resource_metadata_which_the_sdk_discovery_finds(
    served: Served,
) -> None:
    origin = served.url.removesuffix("/mcp")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.post(served.url, json=body, headers=accept)
        assert missing.status_code == 401
        challenge = missing.headers["www-authenticate"]
        assert challenge == (
            f'Bearer scope="{READ}", resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp"'
        )
        text = missing.json()["error_description"]
        assert "Authorization: Bearer <token>" in text and "infrastructor token create" in text
        assert "OAuth" not in text and "register" not in text

        expired = await http.post(
            served.url,
            json=body,
            headers=accept | {"Authorization": f"Bearer {_signed(exp=int(time.time()) - 60, iat=1)}"},
        )
        assert expired.status_code == 401
        assert expired.headers["www-authenticate"].startswith(
            'Bearer error="invalid_token", error_description="the bearer token was refused (expired)"'
        )
        assert "infrastructor token create" in expired.json()["error_description"]

        # what the SDK's OAuth client does on a 401: the header's URL first, then the well-known ones
        urls = build_protected_resource_metadata_discovery_urls(
            extract_resource_metadata_from_www_auth(missing), served.url
        )
        assert urls == [
            f"{origin}/.well-known/oauth-protected-resource/mcp",
            f"{origin}/.well-known/oauth-protected-resource/mcp",
            f"{origin}/.well-known/oauth-protected-resource",
        ]
        for url in urls:
            found = await http.get(url)  # no token needed
            assert found.status_code == 200
            assert found.json() == {
                "resource": served.url,
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["infra:read", "infra:write", "infra:admin"],
                "resource_name": "Infrastructor",
            }
            # no authorization server is named (tokens come from `infrastructor token create`), so the SDK's
            # OAuth client does not take this document for one and cannot start an OAuth flow against us
            assert await handle_protected_resource_response(found) is None

        foreign = await http.get(urls[0], headers={"Host": "evil.example"})
        assert foreign.status_code in (400, 403, 421)
    (refused,) = await audit_rows(served.state, kind="auth")
    assert (refused.outcome, refused.error_message) == ("denied", "token refused: expired")


async def test_behind_a_trusted_tls_proxy_the_metadata_and_the_challenge_say_https(tmp_path: Path) -> None:
    https = {"X-Forwarded-Proto": "https", "Accept": "application/json"}
    async with httpx2.AsyncClient(timeout=10) as http:
        async for served in _serve(tmp_path / "trusted", trusted_proxies="127.0.0.1/32"):
            origin = served.url.removesuffix("/mcp").replace("http://", "https://")
            missing = await http.post(served.url, json={}, headers=https)
            assert (
                f'resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp"'
                in (missing.headers["www-authenticate"])
            )
            found = await http.get(
                f"{served.url.removesuffix('/mcp')}/.well-known/oauth-protected-resource", headers=https
            )
            assert found.json()["resource"] == f"{origin}/mcp"
        # from a peer that is not a trusted proxy the header is not believed
        async for served in _serve(tmp_path / "untrusted"):
            found = await http.get(
                f"{served.url.removesuffix('/mcp')}/.well-known/oauth-protected-resource", headers=https
            )
            assert found.json()["resource"] == served.url


async def test_the_metadata_names_the_identity_provider_when_one_issues_the_tokens(
    tmp_path: Path,
) -> None:
    from fastmcp.server.auth.providers.jwt import RSAKeyPair

    pair = RSAKeyPair.generate()
    async for served in _serve(tmp_path, SigningKey("RS256", None, pair.public_key, None)):
        async with httpx2.AsyncClient(timeout=10) as http:
            missing = await http.post(served.url, json={}, headers={"Accept": "application/json"})
            assert f"identity provider that issues them ({ISSUER})" in missing.json()["error_description"]
            url = extract_resource_metadata_from_www_auth(missing)
            assert url is not None
            found = await http.get(url)
            assert found.json()["authorization_servers"] == [ISSUER]
            metadata = await handle_protected_resource_response(found)
            assert metadata is not None and str(metadata.resource) == served.url


async def test_completions_over_http_need_a_token_with_infra_read(served: Served) -> None:
    template = mt.ResourceTemplateReference(type="ref/resource", uri=TEMPLATE)
    async with http_session(served.url, served.token(READ)) as reader:
        found = (await reader.complete(template, {"name": "device", "value": "lo"})).completion
        assert found.values == ["local"]
        error = await mcp_error(reader.read_resource("infra://devices/nas9"))
        assert (error.code, error.data) == (mt.INVALID_PARAMS, {"uri": "infra://devices/nas9"})
    async with http_session(served.url, _signed(scope="profile")) as stranger:
        error = await mcp_error(stranger.complete(template, {"name": "device", "value": ""}))
        assert (
            error.message == "missing scope infra:read: completions need infra:read; this token has profile."
        )
    async with http_session(served.url, served.token(ADMIN)) as admin:
        assert (await admin.complete(template, {"name": "device", "value": ""})).completion.values == [
            "local"
        ]
    # the same on the 2026-07-28 protocol (no session), which FastMCP's client negotiates by default
    async with served.client(served.token(READ)) as modern:
        assert (await modern.complete(template, {"name": "device", "value": "l"})).values == ["local"]
    async with served.client(_signed(scope="profile")) as modern_stranger:
        with pytest.raises(MCPError, match="missing scope infra:read"):
            await modern_stranger.complete(template, {"name": "device", "value": ""})
