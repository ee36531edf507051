"""The REST API under /api/v1 over real HTTP (uvicorn on a loopback port), on SQLite and PostgreSQL, against
the sshd fleet: the same operations, results, errors, scopes and audit as the MCP tools."""

from __future__ import annotations

import asyncio
import json
import re
import time
import typing
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from fastmcp import Client
from fastmcp.exceptions import ToolError
from pydantic import TypeAdapter

from mcp_server.api import ROUTES, arguments_of
from mcp_server.audit import CallContext, calling
from mcp_server.auth import ADMIN, READ, WRITE, SigningKey, issue_token
from mcp_server.errors import InfrastructorError
from mcp_server.server import areas, build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import audit_rows, make_settings
from tests.helpers import free_port, structured, until

SECRET = "a" * 48
KEY = SigningKey("HS256", SECRET, None, None)


class Api:
    """A running server's API: its base URL, tokens, and the AppState it shares with an MCP client."""

    def __init__(self, base: str, state: AppState, server: Any) -> None:
        self.base = base
        self.state = state
        self.server = server
        self.http = httpx2.AsyncClient(base_url=base, timeout=60)

    def token(self, *scopes: str, subject: str = "alice") -> str:
        return issue_token(KEY, self.state.settings, subject=subject, scopes=scopes, ttl_seconds=600)[0]

    async def call(self, method: str, path: str, *scopes: str, **kwargs: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.token(*(scopes or (ADMIN,)))}", "User-Agent": "api-test/1"}
        return await self.http.request(method, path, headers=headers | kwargs.pop("headers", {}), **kwargs)

    async def ok(self, method: str, path: str, *scopes: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, *scopes, **kwargs)
        assert response.status_code == 200, (method, path, response.status_code, response.text)
        return response.json()


async def serve_api(settings: Settings) -> AsyncIterator[Api]:
    async with open_state(settings) as state:
        server = build_server(settings, transport="http", state=state, signing_key=KEY)
        app = server.http_app(path="/mcp")
        port = free_port()
        uv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(uv.serve())
        deadline = time.monotonic() + 15
        while not uv.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        api = Api(f"http://127.0.0.1:{port}/api/v1", state, server)
        try:
            yield api
        finally:
            await api.http.aclose()
            uv.should_exit = True
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def api(settings: Settings, tmp_path: Path) -> AsyncIterator[Api]:
    """The API on SQLite and on PostgreSQL (the `settings` fixture runs each test on both)."""
    async for served in serve_api(
        make_settings(tmp_path, database_url=settings.database_url, jwt_secret=SECRET)
    ):
        yield served


@pytest.fixture
async def sqlite_api(tmp_path: Path) -> AsyncIterator[Api]:
    async for served in serve_api(make_settings(tmp_path, jwt_secret=SECRET)):
        yield served


def fleet_device(sshd_fleet: Any, name: str = "alpha") -> dict[str, Any]:
    host = sshd_fleet.hosts[name]
    return {
        "name": f"api-{name}",
        "hostname": host.hostname,
        "port": host.port,
        "username": sshd_fleet.username,
        "key_path": str(sshd_fleet.client_key_path),
        "tags": ["api"],
    }


# ---- the surface ------------------------------------------------------------------------------------------


def test_every_tool_has_exactly_one_route_with_the_tools_parameters() -> None:
    tools = {fn.__name__ for area in areas() for fn in area.TOOLS}
    routed = [route.name for route in ROUTES if "__fastmcp__" in route.tool.__dict__]
    assert sorted(routed) == sorted(tools), "add a route in mcp_server/api.py ROUTES for each new tool"
    for route in ROUTES:
        assert set(route.path_names) <= set(arguments_of(route.tool)), route


async def test_openapi_document_is_exact_and_the_docs_page_is_offline(sqlite_api: Api) -> None:
    document = (await sqlite_api.http.get("/openapi.json")).json()  # no token needed
    assert document["openapi"].startswith("3.1")
    operations = {op["operationId"]: op for ops in document["paths"].values() for op in ops.values()}
    assert set(operations) == {route.name for route in ROUTES} - {"run_command"} | {
        "events"
    }  # run_command: off
    schemas = document["components"]["schemas"]
    # the response model is the tool's result model: same properties, same required ones
    for route in ROUTES:
        if route.name not in operations:
            continue
        ref = operations[route.name]["responses"]["200"]["content"]["application/json"]["schema"]
        listed = schemas[ref["$ref"].rsplit("/", 1)[1]] if "$ref" in ref else ref
        model = TypeAdapter(typing.get_type_hints(route.tool)["return"]).json_schema(mode="serialization")
        assert set(listed.get("properties", {})) == set(model.get("properties", {})), route.name
        assert set(listed.get("required", [])) == set(model.get("required", [])), route.name
        # and so are the models nested in it: a component of the same name documents the same fields (two
        # models named alike, the problem details and find_problems' items, once shared one component)
        for name, nested in model.get("$defs", {}).items():
            component = schemas.get(name.split("__")[-1], {})
            assert set(component.get("properties", {})) == set(nested.get("properties", {})), (
                route.name,
                name,
            )
        assert operations[route.name]["responses"]["422"]["content"]["application/problem+json"]
    interval = next(p for p in operations["get_system_metrics"]["parameters"] if p["name"] == "interval")
    assert interval["schema"]["maximum"] == 5.0 and interval["in"] == "query"
    page = await sqlite_api.http.get("/docs")
    assert page.status_code == 200 and "openapi.json" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the docs page loads nothing remote"


# ---- devices, metrics, the same pipeline as the tools -----------------------------------------------------


async def test_device_lifecycle_and_collected_results(api: Api, sshd_fleet: Any) -> None:
    spec = fleet_device(sshd_fleet)
    added = await api.ok("POST", "/devices", WRITE, json=spec)
    assert added["name"] == "api-alpha" and added["auth"] == "key"
    again = await api.call("POST", "/devices", WRITE, json=spec)
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert [d["name"] for d in (await api.ok("GET", "/devices", params={"tags": "api"}))["devices"]] == [
        "api-alpha"
    ]
    test = await api.ok("POST", "/devices/api-alpha/connection-test")
    assert test["ok"] is True
    first = await api.ok("GET", "/devices/api-alpha/system", READ)
    assert {"collected_at", "from_cache", "age_seconds"} <= set(first) and first["from_cache"] is False
    cached = await api.ok("GET", "/devices/api-alpha/system", READ)
    assert cached["from_cache"] is True and cached["collected_at"] == first["collected_at"]
    fresh = await api.ok("GET", "/devices/api-alpha/system", READ, params={"force_refresh": "true"})
    assert fresh["from_cache"] is False
    disks = await api.ok("GET", "/devices/api-alpha/disks", READ)
    assert disks["data"]["filesystems"]
    processes = await api.ok("GET", "/devices/api-alpha/processes", READ, params={"limit": 3})
    assert len(processes["data"]["processes"]) <= 3
    assert (await api.ok("GET", "/devices/api-alpha/network", READ))["data"]["interfaces"]
    fleet = await api.ok("GET", "/fleet", READ, params={"tags": "api"})
    assert [d["device"] for d in fleet["devices"]] == ["api-alpha"]
    changed = await api.ok("PATCH", "/devices/api-alpha", WRITE, json={"description": "via the API"})
    assert changed["description"] == "via the API"
    removed = await api.ok("DELETE", "/devices/api-alpha", WRITE)
    assert removed["removed"] == "api-alpha"
    gone = await api.call("GET", "/devices/api-alpha")
    assert gone.status_code == 404
    assert gone.json()["detail"] == "Unknown device 'api-alpha'. Known devices: local."


async def test_history_config_cache_health_and_audit_routes(api: Api) -> None:
    await api.ok("GET", "/devices/local/system", READ)
    health = await api.ok("GET", "/service/health", READ)
    assert "storage" in health
    stats = await api.ok("GET", "/cache/stats", READ)
    assert stats["misses"] >= 1
    history = await api.ok(
        "GET", "/metrics/history", READ, params={"device": "local", "metric": "cpu_percent", "since": "1h"}
    )
    assert history["device"] == "local"
    assert (await api.ok("GET", "/config/changes", READ))["total"] == 0
    assert (await api.ok("GET", "/config/watched", READ))["total"] == 0
    assert (await api.ok("GET", "/commands", READ))["commands"]
    collected = await api.ok("POST", "/devices/local/collect", READ, json={"command": "disk_usage"})
    assert collected["command"] == "disk_usage"
    audit = await api.ok("GET", "/audit", ADMIN, params={"tool": "get_system_metrics", "kind": "tool"})
    row = audit["entries"][0]
    assert row["transport"] == "api" and row["subject"] == "alice" and row["outcome"] == "ok"
    assert row["request_path"] == "/api/v1/devices/local/system" and row["user_agent"] == "api-test/1"
    assert datetime.fromisoformat(row["occurred_at"]).tzinfo is not None  # on SQLite too


async def test_api_and_mcp_are_one_implementation_sharing_the_cache(api: Api) -> None:
    via_api = await api.ok("GET", "/devices/local/system", READ, params={"interval": 0.2})
    async with Client(build_server(api.state.settings, state=api.state)) as client:
        via_mcp = structured(
            await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.2})
        )
        assert via_mcp["from_cache"] is True and via_mcp["collected_at"] == via_api["collected_at"]
        assert via_mcp["data"] == via_api["data"]
        for bad, path in (({"device": "nope"}, "/devices/nope/system"),):
            with pytest.raises(ToolError) as raised:
                await client.call_tool("get_system_metrics", bad)
            problem = (await api.call("GET", path, READ)).json()
            assert problem["detail"] == str(raised.value)
        with pytest.raises(ToolError) as raised:
            await client.call_tool("list_processes", {"device": "local", "sort_by": "disk"})
    problem = (await api.call("GET", "/devices/local/processes", READ, params={"sort_by": "disk"})).json()
    assert problem["status"] == 422 and problem["error_type"] == "invalid_arguments"
    # the same text but for how the value was sent (a query string is a string)
    assert problem["detail"].replace("'disk'", "disk") == str(raised.value).replace("'disk'", "disk")


# ---- errors, scopes, auth, limits -------------------------------------------------------------------------


async def test_errors_are_problem_details(sqlite_api: Api) -> None:
    bad = await sqlite_api.call("GET", "/devices/local/processes", params={"limit": 5000, "colour": "red"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    body = bad.json()
    assert body["type"] == "about:blank" and body["title"] == "Unprocessable Entity"
    assert body["detail"].splitlines() == [
        "Invalid arguments for list_processes:",
        "colour: unknown argument",
        "accepted arguments: force_refresh, limit, sort_by",
    ]
    too_big = await sqlite_api.call("GET", "/devices/local/processes", params={"limit": 5000})
    assert too_big.json()["detail"].splitlines()[1] == "limit: must be ≤ 200 (got '5000')"
    broken = await sqlite_api.call(
        "POST", "/devices", WRITE, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422 and broken.json()["detail"].startswith(
        "Invalid arguments for add_device:"
    )
    missing = await sqlite_api.call("POST", "/devices", WRITE, json={"name": "x"})
    assert "hostname: required" in missing.json()["detail"]
    rows = await audit_rows(sqlite_api.state, transport="api", error_type="invalid_arguments")
    assert len(rows) == 4 and {r.tool for r in rows} == {"list_processes", "add_device"}


async def test_scope_denials_and_refused_tokens_are_audited(api: Api) -> None:
    denied = await api.call("POST", "/devices", READ, json={"name": "x", "hostname": "h"})
    assert denied.status_code == 403
    assert denied.json()["detail"] == (
        "missing scope infra:write: tool 'add_device' needs infra:write; this token has infra:read."
    )
    assert (await api.call("GET", "/audit", WRITE)).status_code == 403
    # a denied call with bad arguments is denied, not validated
    assert (await api.call("POST", "/devices", READ, json={"port": "x"})).status_code == 403
    anonymous = await api.http.get("/devices")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert (
        "send Authorization: Bearer <token>; create one with `infrastructor token create"
        in (anonymous.json()["detail"])
    )
    forged = await api.http.get("/devices", headers={"Authorization": "Bearer not-a-jwt"})
    assert forged.status_code == 401 and "refused" in forged.json()["detail"]
    rows = await audit_rows(api.state, transport="api", outcome="denied")
    assert [(r.tool, r.subject, r.error_type) for r in rows] == [
        ("add_device", "alice", "missing_scope"),
        ("query_audit_log", "alice", "missing_scope"),
        ("add_device", "alice", "missing_scope"),
    ]
    assert rows[0].client_ip == "127.0.0.1" and rows[0].arguments == {"name": "x", "hostname": "h"}
    await until(lambda: True)
    refused = await audit_rows(api.state, kind="auth")
    assert [r.request_path for r in refused] == ["/api/v1/devices"]


async def test_secrets_in_arguments_and_errors_are_masked(sqlite_api: Api) -> None:
    spec = {"name": "pw", "hostname": "127.0.0.1", "port": 1, "password": "hunter2-very-secret"}
    added = await sqlite_api.ok("POST", "/devices", WRITE, json=spec)
    assert "hunter2" not in str(added)
    rows = await audit_rows(sqlite_api.state, transport="api", tool="add_device")
    assert rows and "hunter2" not in str(rows[0].arguments)


async def test_rate_limit_budget_and_body_limit_apply(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, jwt_secret=SECRET, http_rate_limit=60, http_rate_burst=3, max_result_chars=2000
    )
    async for api in serve_api(settings):
        statuses = [(await api.call("GET", "/commands", READ)).status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
        limited = await api.call("GET", "/commands", READ)
        assert limited.headers.get("retry-after")
    settings = make_settings(tmp_path / "b", jwt_secret=SECRET, max_result_chars=2000)
    async for api in serve_api(settings):
        commands = await api.ok("GET", "/commands", READ)
        assert "result_truncated" in commands and len(str(commands)) < 4000
    settings = make_settings(
        tmp_path / "c", jwt_secret=SECRET, http_max_body_bytes=65536, max_argument_chars=200_000
    )
    async for api in serve_api(settings):
        huge = await api.call("POST", "/devices", WRITE, json={"name": "x", "hostname": "h" * 70_000})
        assert huge.status_code == 413


async def test_read_only_server_offers_no_write_routes(tmp_path: Path) -> None:
    async for api in serve_api(make_settings(tmp_path, jwt_secret=SECRET, read_only=True)):
        assert (await api.call("POST", "/devices", json={"name": "x", "hostname": "h"})).status_code == 405
        assert (await api.call("GET", "/devices")).status_code == 200


# ---- events ---------------------------------------------------------------------------------------------


async def read_events(api: Api, count: int, **headers: str) -> list[dict[str, Any]]:
    """The first `count` events of a stream opened with `headers` (its id, kind and data)."""
    events: list[dict[str, Any]] = []
    token = api.token(READ, subject="watcher")
    async with api.http.stream(
        "GET", "/events", headers={"Authorization": f"Bearer {token}", **headers}
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        current: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                events.append(current)
                current = {}
                if len(events) == count:
                    break
    return events


async def test_event_stream_carries_changes_health_and_poll_failures_and_resumes(
    api: Api, tmp_path: Path
) -> None:
    state = api.state
    await state.config.start()
    conf = tmp_path / "site.conf"
    conf.write_text("server { listen 80; }\n")
    watched = await api.ok("POST", "/config/watched", WRITE, json={"device": "local", "path": str(conf)})
    assert watched["watched"]["path"] == str(conf) and watched["created"] is True
    first = asyncio.create_task(read_events(api, 3, **{"Last-Event-ID": "0"}))
    conf.write_text("server { listen 8080; }\n")
    # a device that stops answering background polls: its failed poll and its health change
    dead = await api.ok(
        "POST", "/devices", WRITE, json={"name": "dead", "hostname": "127.0.0.1", "port": free_port()}
    )
    with calling(CallContext(transport="poller", subject="poller:test")), pytest.raises(InfrastructorError):
        await state.service.collect(dead["name"], "system_metrics")
    await state.health.record_failure("dead", "host_unreachable", "no answer", datetime.now(UTC))
    events = await asyncio.wait_for(first, 60)
    kinds = {e["event"]: e for e in events}
    assert set(kinds) == {"config_change", "poll_failure", "device_health"}
    change = kinds["config_change"]["data"]
    assert change["device"] == "local" and change["data"]["path"] == str(conf)
    assert change["data"]["change_type"] == "modified"
    # the same change, with the same risk, as list_config_changes gives it
    listed = (await api.ok("GET", "/config/changes", READ, params={"device": "local"}))["changes"]
    assert [(c["id"], c["risk"]) for c in listed] == [(change["data"]["change_id"], change["data"]["risk"])]
    assert kinds["poll_failure"]["data"]["data"]["command"] == "system_metrics"
    health = kinds["device_health"]["data"]["data"]
    assert (health["previous"], health["status"]) == ("unknown", "degraded")
    # resume: after the first event, the other two again (from the database), nothing twice
    ids = [e["id"] for e in events]
    resumed = await asyncio.wait_for(read_events(api, 2, **{"Last-Event-ID": str(ids[0])}), 30)
    assert [e["id"] for e in resumed] == ids[1:]
    rows = await audit_rows(state, kind="subscription", tool="events")
    assert [(r.transport, r.subject, r.outcome) for r in rows] == [("api", "watcher", "ok")] * 2


async def test_event_stream_needs_a_token_and_a_valid_last_event_id(sqlite_api: Api) -> None:
    assert (await sqlite_api.http.get("/events")).status_code == 401
    bad = await sqlite_api.call("GET", "/events", READ, headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]


async def test_an_offset_beyond_what_a_database_counts_is_a_bad_argument(sqlite_api: Api) -> None:
    """Found by the fuzzer: an offset past 64 bits failed inside the database (an internal error)."""
    huge = 2**65
    response = await sqlite_api.call("GET", "/config/changes", READ, params={"offset": huge})
    assert response.status_code == 422 and "offset: must be ≤" in response.json()["detail"]
    async with Client(build_server(sqlite_api.state.settings, state=sqlite_api.state)) as client:
        with pytest.raises(ToolError, match="offset: must be ≤"):
            await client.call_tool("query_audit_log", {"offset": huge})


async def test_toolsets_narrow_what_agents_see_not_the_api(tmp_path: Path) -> None:
    async for api in serve_api(make_settings(tmp_path, jwt_secret=SECRET, toolsets="storage")):
        assert (await api.call("GET", "/devices/local/processes", params={"limit": 1})).status_code == 200


async def test_with_auth_off_the_api_answers_without_a_token_and_still_audits(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth=False)
    async with open_state(settings) as state:
        app = build_server(settings, transport="http", state=state).http_app(path="/mcp")
        port = free_port()
        uv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(uv.serve())
        while not uv.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        try:
            async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30) as http:
                assert (await http.get("/devices")).status_code == 200
                assert (await http.get("/audit")).status_code == 200
        finally:
            uv.should_exit = True
            await asyncio.wait_for(task, 15)
        rows = await audit_rows(state, transport="api")
        assert [(r.tool, r.outcome, r.client_ip) for r in rows] == [
            ("list_devices", "ok", "127.0.0.1"),
            ("query_audit_log", "ok", "127.0.0.1"),
        ]


REQUIRED_QUERY: dict[str, dict[str, Any]] = {
    "/config/history": {"path": "/etc/hosts"},
    "/config/diff": {"path": "/etc/hosts"},
    "/metrics/history": {"metric": "cpu_percent"},
    "/devices/{device}/directory-usage": {"path": "/etc", "depth": 1},
}
PATH_VALUES = {"container": "web", "unit": "ssh.service", "name": "default.conf"}


async def test_every_read_route_answers_for_a_fleet_host_with_its_model_or_a_problem(
    api: Api, sshd_fleet: Any
) -> None:
    """Each GET route against a real sshd host (no docker, no ZFS, no libvirt there): its result model, or a
    problem that says why (the tool's own text)."""
    await api.ok("POST", "/devices", WRITE, json=fleet_device(sshd_fleet, "beta"))
    answered: dict[str, int] = {}
    for route in ROUTES:
        if route.method != "GET":
            continue
        path = route.path.replace("{device}", "api-beta")
        for name, value in PATH_VALUES.items():
            path = path.replace(f"{{{name}}}", value)
        params: dict[str, Any] = dict(REQUIRED_QUERY.get(route.path, {}))
        if "device" in arguments_of(route.tool) and "device" not in route.path_names:
            params["device"] = "api-beta"
        response = await api.call("GET", path, ADMIN, params=params)
        answered[route.name] = response.status_code
        if response.status_code == 200:
            TypeAdapter(typing.get_type_hints(route.tool)["return"]).validate_python(response.json())
        else:
            assert response.headers["content-type"] == "application/problem+json", route.name
            problem = response.json()
            assert problem["status"] in (404, 422, 502, 504) and problem["detail"], (route.name, problem)
    assert answered["get_system_metrics"] == answered["get_disk_usage"] == 200
    assert answered["find_problems"] == answered["get_directory_usage"] == 200
    assert answered["list_containers"] == 502  # no docker on the host: said so, by name


async def test_every_route_that_changes_something_refuses_a_read_token_audited_and_a_bad_target_as_a_problem(
    api: Api,
) -> None:
    """Each POST/PUT/PATCH/DELETE route over real HTTP: a read token gets 403 (a `denied` audit row naming the
    tool), and a call with enough scope against a device that does not exist (or an empty body) is a
    problem+json 4xx with the tool's text, never a 5xx; nothing is changed by either."""
    off = api.server.disabled_tools  # run_command without INFRA_ALLOW_RUN_COMMAND has no route (tested above)
    changing = [r for r in ROUTES if r.method != "GET" and r.name not in off]
    assert len(changing) >= 15
    for route in changing:
        path = route.path.replace("{device}", "nope")
        for name, value in PATH_VALUES.items():
            path = path.replace(f"{{{name}}}", value)
        body = {"device": "nope"} if "device" in route.arguments and "device" not in route.path_names else {}
        denied = await api.call(route.method, path, READ, json=body)
        if route.scope == READ:  # e.g. POST /devices/{device}/collect reads; it is refused for its target
            assert denied.status_code in (404, 422), (route.name, denied.status_code, denied.text)
        else:
            assert denied.status_code == 403, (route.name, denied.status_code, denied.text)
            assert denied.headers["content-type"] == "application/problem+json"
        wrong = await api.call(route.method, path, ADMIN, json=body)
        assert 400 <= wrong.status_code < 500, (route.name, wrong.status_code, wrong.text)
        assert wrong.headers["content-type"] == "application/problem+json", route.name
        assert wrong.json()["detail"], route.name
    denials = await audit_rows(api.state, transport="api", outcome="denied")
    assert {r.tool for r in denials} >= {r.name for r in changing if r.scope != READ}
    assert [d.name for d in api.state.devices.list()] == ["local"]  # nothing was added
