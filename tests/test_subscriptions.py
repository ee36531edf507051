"""Resource subscriptions through real MCP clients: `resources/subscribe` and `resources/unsubscribe` on the
2025 protocol (in memory, as over stdio, and over HTTP sessions) and `subscriptions/listen` on 2026-07-28,
with their scope, URI rules, caps, audit, and their release when a session ends; and the memory of a real
`infrastructor serve` process under a flood of huge subscription URIs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import mcp_types as mt
import pytest
from fastmcp import Client
from mcp import MCPError
from mcp.client.subscriptions import listen

from mcp_server.auth import ADMIN, READ, WRITE
from mcp_server.server import InfrastructorServer, build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import audit_rows, make_settings
from tests.helpers import free_port, until
from tests.test_config_tools import Updates
from tests.test_security import LEGACY, SECRET, initialize, open_session, request, rpc, serve
from tests.test_transports import CLI, cli_env

DEADLINE = 20.0


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[AppState]:
    """An AppState whose watchers run, with a cap of 3 subscriptions per session."""
    settings = make_settings(tmp_path, config_debounce=0.05, max_subscriptions_per_session=3)
    async with open_state(settings) as state:
        await state.config.start()
        yield state


async def watched(state: AppState, tmp_path: Path, *names: str) -> list[str]:
    """Files created and watched on `local`; returns their subscription URIs."""
    uris = []
    for name in names:
        path = tmp_path / name
        path.write_text("a=1\n")
        await state.config.watch("local", str(path))
        uris.append(f"infra://config/local{path}")
    return uris


@contextlib.asynccontextmanager
async def legacy(server: InfrastructorServer, updates: Updates | None = None) -> AsyncIterator[Client[Any]]:
    """A 2025-protocol client in memory (the stdio code path), its resources/subscribe warning silenced."""
    async with Client(server, mode="legacy", message_handler=updates) as client:
        with pytest.warns(Warning, match=r"resources/(un)?subscribe is removed"):
            yield client


async def refused(request: Any) -> mt.ErrorData:
    with pytest.raises(MCPError) as raised:
        await request
    return raised.value.error


# ---- the 2025 protocol: resources/subscribe and resources/unsubscribe ---------------------------------------


async def test_subscribing_twice_notifies_once_and_unsubscribing_stops_the_notifications(
    running: AppState, tmp_path: Path
) -> None:
    conf, sentinel = await watched(running, tmp_path, "app.conf", "sentinel.conf")
    updates = Updates()
    server = build_server(running.settings, state=running)
    async with legacy(server, updates) as client:
        await client.session.subscribe_resource(conf)
        await client.session.subscribe_resource(conf)  # the same connection: nothing changes
        await client.session.subscribe_resource(sentinel)
        (tmp_path / "app.conf").write_text("a=2\n")
        await until(lambda: conf in updates.uris, DEADLINE)
        (tmp_path / "sentinel.conf").write_text("a=2\n")  # delivered after any second copy of the first
        await until(lambda: sentinel in updates.uris, DEADLINE)
        assert updates.uris == [conf, sentinel]

        await client.session.unsubscribe_resource(conf)
        (tmp_path / "app.conf").write_text("a=3\n")
        (tmp_path / "sentinel.conf").write_text("a=3\n")
        await until(lambda: updates.uris.count(sentinel) == 2, DEADLINE)
        assert updates.uris.count(conf) == 1
        assert server.notifier.held() == 1


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("infra://devices/local", "Only watched configuration files can be subscribed to"),
        ("https://example.com/x", "infra://config/<device></absolute/path>"),
        ("infra://config/nas9/etc/hosts", "Unknown device 'nas9'. Known devices: local."),
        ("infra://config/local/etc/hosts", "/etc/hosts is not a watched file on 'local'"),
        ("infra://config/local/" + "a/" * 600, "at most 1,024 characters; this one is 1,221"),
    ],
)
async def test_only_a_watched_file_of_a_known_device_can_be_subscribed_to(
    running: AppState, uri: str, says: str
) -> None:
    server = build_server(running.settings, state=running)
    async with legacy(server) as client:
        error = await refused(client.session.subscribe_resource(uri))
        assert error.code == mt.INVALID_PARAMS and says in error.message
        assert error.data == ({"uri": uri} if len(uri) <= 1024 else None)
        assert server.notifier.held() == 0
    (row,) = await audit_rows(running, kind="subscription")
    assert (row.tool, row.outcome) == ("resources/subscribe", "denied" if len(uri) > 1024 else "error")
    assert len(json.dumps(row.arguments)) < 2000


async def test_a_session_holds_at_most_its_cap_of_subscriptions(running: AppState, tmp_path: Path) -> None:
    a, b, c, d = await watched(running, tmp_path, "a.conf", "b.conf", "c.conf", "d.conf")
    server = build_server(running.settings, state=running)
    async with legacy(server) as client:
        for uri in (a, b, c, a):  # the cap is 3; a second subscription to a held URI is not another one
            await client.session.subscribe_resource(uri)
        error = await refused(client.session.subscribe_resource(d))
        assert error.code == mt.INVALID_REQUEST
        assert error.message == (
            "This session already holds 3 subscriptions, the most allowed (INFRA_MAX_SUBSCRIPTIONS_PER_SESSION); "
            "unsubscribe from one (resources/unsubscribe) first."
        )
        await client.session.unsubscribe_resource(a)
        await client.session.subscribe_resource(d)
        assert server.notifier.held() == 3
        async with legacy(server) as other:  # the cap is per session
            await other.session.subscribe_resource(a)
            assert server.notifier.held() == 4
    await until(lambda: server.notifier.held() == 0)  # both connections have ended
    rows = await audit_rows(running, kind="subscription")
    assert [(r.tool, r.outcome) for r in rows] == [
        *[("resources/subscribe", "ok")] * 4,
        ("resources/subscribe", "denied"),
        ("resources/unsubscribe", "ok"),
        ("resources/subscribe", "ok"),
        ("resources/subscribe", "ok"),
    ]
    assert rows[4].error_type == "subscription_limit" and rows[0].device == "local"


# ---- over HTTP: scope, audit, and the end of a session ------------------------------------------------------


async def test_over_http_subscribing_needs_infra_read_and_every_request_is_audited(tmp_path: Path) -> None:
    async with serve(tmp_path) as served:
        (uri,) = await watched(served.state, tmp_path, "http.conf")
        stranger = served.token("profile", subject="stranger")
        session = await asyncio.to_thread(open_session, served.url, stranger)
        for method in ("resources/subscribe", "resources/unsubscribe"):
            answer = await asyncio.to_thread(rpc, served.url, stranger, session, method, {"uri": uri})
            assert answer["error"] == {
                "code": mt.INVALID_REQUEST,
                "message": f"missing scope infra:read: {method} needs infra:read; this token has profile.",
            }
        reader = served.token(READ, subject="reader")
        session = await asyncio.to_thread(open_session, served.url, reader)
        for method, target in [
            ("resources/subscribe", uri),
            ("resources/subscribe", uri + ".missing"),
            ("resources/unsubscribe", uri),
        ]:
            await asyncio.to_thread(rpc, served.url, reader, session, method, {"uri": target})
        rows = await audit_rows(served.state, kind="subscription")
        assert [(r.subject, r.tool, r.outcome, r.error_type) for r in rows] == [
            ("stranger", "resources/subscribe", "denied", "missing_scope"),
            ("stranger", "resources/unsubscribe", "denied", "missing_scope"),
            ("reader", "resources/subscribe", "ok", None),
            ("reader", "resources/subscribe", "error", "invalid_parameter"),
            ("reader", "resources/unsubscribe", "ok", None),
        ]
        assert all(r.client_ip == "127.0.0.1" and r.transport == "http" for r in rows)
        assert rows[2].arguments == {"uri": uri} and rows[2].device == "local"
        async with served.client(served.token(ADMIN, subject="auditor")) as admin:
            page = await admin.call_tool("query_audit_log", {"kind": "subscription"})
            assert page.structured_content is not None and page.structured_content["total"] == 5


async def test_a_sessions_subscriptions_are_freed_when_it_is_deleted_or_expires(tmp_path: Path) -> None:
    async with serve(tmp_path, http_session_idle_timeout=2.0) as served:
        (uri,) = await watched(served.state, tmp_path, "ends.conf")
        token = served.token(READ)
        notifier = served.server.notifier
        deleted = await asyncio.to_thread(open_session, served.url, token)
        idle = await asyncio.to_thread(open_session, served.url, token)
        for session in (deleted, deleted, idle):  # a session's second subscription to a URI is not another
            answer = await asyncio.to_thread(
                rpc, served.url, token, session, "resources/subscribe", {"uri": uri}
            )
            assert answer["result"] == {}
        assert notifier.held() == 2
        reply = await asyncio.to_thread(
            request, "DELETE", served.url, token=token, mcp_session_id=deleted, mcp_protocol_version=LEGACY
        )
        assert reply.status in (200, 204)
        await until(lambda: notifier.held() == 1, DEADLINE)
        await until(lambda: notifier.held() == 0, DEADLINE)  # the idle session expires


# ---- the 2026-07-28 protocol: subscriptions/listen ----------------------------------------------------------


async def test_a_listen_stream_follows_the_same_rules_and_one_subject_keeps_few_open(tmp_path: Path) -> None:
    async with serve(tmp_path, max_subscriptions_per_session=2, http_max_sessions_per_subject=2) as served:
        a, b, c = await watched(served.state, tmp_path, "a.conf", "b.conf", "c.conf")
        subscriptions = served.server.subscriptions
        async with served.client(served.token("profile", subject="stranger")) as stranger:
            error = await refused(listen(stranger.session, resource_subscriptions=[a]).__aenter__())
            assert error.message == (
                "missing scope infra:read: subscriptions/listen needs infra:read; this token has profile."
            )
        async with served.client(served.token(READ, subject="lister")) as client:
            for uris, code, says in [
                ([a, b, c], mt.INVALID_REQUEST, "names 3 resources; a stream may name at most 2"),
                ([a, "infra://config/local/etc/hosts"], mt.INVALID_PARAMS, "not a watched file"),
                (["infra://config/local/" + "x" * 5000], mt.INVALID_PARAMS, "at most 1,024 characters"),
            ]:
                error = await refused(listen(client.session, resource_subscriptions=uris).__aenter__())
                assert (error.code, says in error.message) == (code, True), error
            async with (
                listen(client.session, resource_subscriptions=[a, a, b]),
                listen(client.session, resource_subscriptions=[c]),
            ):
                assert subscriptions.listening() == 2
                error = await refused(listen(client.session, resource_subscriptions=[c]).__aenter__())
                assert (
                    error.code == mt.INVALID_REQUEST
                    and "lister already has 2 listen streams" in error.message
                )
            await until(lambda: subscriptions.listening() == 0, DEADLINE)
            async with listen(client.session, resource_subscriptions=[c]):
                assert subscriptions.listening() == 1
        rows = await audit_rows(served.state, kind="subscription")
        assert [(r.subject, r.outcome) for r in rows] == [
            ("stranger", "denied"),
            *[("lister", "denied"), ("lister", "error"), ("lister", "denied")],
            *[("lister", "ok")] * 2,
            ("lister", "denied"),
            ("lister", "ok"),
        ]
        assert rows[4].arguments == {"uris": [a, b], "count": 3}


# ---- a flood of huge subscriptions against a real server process --------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def server_process(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`infrastructor serve` on a free loopback port; yields the process and its MCP URL."""
    port = free_port()
    log = tmp_path / "server.log"
    command = [CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=cli_env(tmp_path, **env), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield proc, f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def listen_request(url: str, token: str, uris: list[str]) -> int:
    """A raw 2026-07-28 subscriptions/listen request; returns the JSON-RPC error code it was refused with."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "flood", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "subscriptions/listen",
        "params": {"notifications": {"resourceSubscriptions": uris}, "_meta": meta},
    }
    reply = request(
        "POST",
        url,
        token=token,
        body=json.dumps(body).encode(),
        mcp_protocol_version="2026-07-28",
        mcp_method="subscriptions/listen",
    )
    text = reply.body.decode()
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
    return int(json.loads(text)["error"]["code"])


def test_a_flood_of_huge_subscription_uris_leaves_the_server_memory_bounded(tmp_path: Path) -> None:
    huge = "infra://config/local/" + "a" * 1_900_000
    env = {"INFRA_JWT_SECRET": SECRET, "INFRA_HTTP_RATE_LIMIT": "100000", "INFRA_HTTP_RATE_BURST": "100000"}
    with server_process(tmp_path, **env) as (proc, url):
        now = int(time.time())
        claims = {"sub": "flood", "scope": f"{READ} {WRITE}", "iat": now, "exp": now + 600}
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        session = open_session(url, token)

        def subscribe(uri: str) -> dict[str, Any]:
            return rpc(url, token, session, "resources/subscribe", {"uri": uri})

        for _ in range(5):  # warm up: what the first requests allocate once is not growth
            subscribe(huge)
        before = rss_bytes(proc.pid)
        answers = [subscribe(huge[:-n] if n else huge) for n in range(100)]  # each one different
        grown = rss_bytes(proc.pid) - before
        # Before the fix these 100 subscriptions added 358 MiB that stayed (300 took a server from 196 MB to
        # 1.3 GB). A generous bound: allocator noise on a loaded machine, not the URIs.
        assert grown < 100 * 2**20, f"RSS grew {grown / 2**20:.0f} MiB"
        assert {answer["error"]["code"] for answer in answers} == {mt.INVALID_PARAMS}
        for _ in range(10):  # a listen request may carry up to the body limit (2 MiB) of URIs
            assert listen_request(url, token, [huge[:1_000]] * 1_900) == mt.INVALID_PARAMS
            assert listen_request(url, token, [huge]) == mt.INVALID_PARAMS
        grown = rss_bytes(proc.pid) - before
        assert grown < 100 * 2**20, f"RSS grew {grown / 2**20:.0f} MiB"
        assert initialize(url, token).status == 200  # and it still serves
