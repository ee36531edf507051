"""Bearer-token auth and the audit trail over real HTTP (uvicorn on a loopback port)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import uvicorn
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from fastmcp.exceptions import ToolError
from mcp import MCPError

from mcp_server.auth import ADMIN, READ, WRITE, SigningKey, issue_token
from mcp_server.db.tables import SecretRow
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import audit_rows, make_settings
from tests.helpers import free_port, structured
from tests.test_transports import CLI, cli_env

SECRET = "s" * 48
ISSUER, AUDIENCE = "https://issuer.test", "infrastructor-test"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/list",
    "params": {},
}


class Served:
    def __init__(self, url: str, state: AppState) -> None:
        self.url = url
        self.state = state

    def token(self, *scopes: str, subject: str = "alice", ttl: int = 600) -> str:
        key = SigningKey("HS256", SECRET, None, None)
        return issue_token(key, self.state.settings, subject=subject, scopes=scopes, ttl_seconds=ttl)[0]

    def client(self, token: str | None, user_agent: str = "auth-test/1.0", **headers: str) -> Client[Any]:
        all_headers = {"User-Agent": user_agent, **headers}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        return Client(StreamableHttpTransport(self.url, headers=all_headers))


async def _serve(tmp_path: Path, key: SigningKey | None = None, **overrides: Any) -> AsyncIterator[Served]:
    auth = (
        {"jwt_secret": SECRET}
        if key is None
        else {"jwt_public_key": key.public_key, "jwks_url": key.jwks_url}
    )
    settings = make_settings(tmp_path, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, **(auth | overrides))
    async with open_state(settings) as state:
        key = key or SigningKey("HS256", SECRET, None, None)
        app = build_server(settings, transport="http", state=state, signing_key=key).http_app(
            path="/mcp", host_origin_protection=True
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, proxy_headers=False, log_level="warning", lifespan="on"
            )
        )
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.02)
        try:
            yield Served(f"http://127.0.0.1:{port}/mcp", state)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path):
        yield s


def raw_post(url: str, token: str | None, *, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=json.dumps(INIT).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        method="POST",
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _signed(claims: dict[str, Any], secret: str = SECRET) -> str:
    now = int(time.time())
    base = {"sub": "mallory", "scope": ADMIN, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(base | claims, secret, algorithm="HS256")


@pytest.mark.parametrize(
    ("case", "token"),
    [
        ("no token", None),
        ("malformed", "not-a-jwt"),
        ("expired", _signed({"exp": int(time.time()) - 60, "iat": int(time.time()) - 700})),
        ("wrong signature", _signed({}, secret="x" * 48)),
        ("wrong issuer", _signed({"iss": "https://evil.test"})),
        ("wrong audience", _signed({"aud": "someone-else"})),
    ],
)
async def test_requests_without_a_valid_token_get_401_with_www_authenticate(
    served: Served, case: str, token: str | None
) -> None:
    status, headers, _ = await asyncio.to_thread(raw_post, served.url, token)
    assert status == 401, case
    assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer"), case


def _without_sub(**claims: Any) -> str:
    now = int(time.time())
    base = {"scope": ADMIN, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(base | claims, SECRET, algorithm="HS256")


async def test_a_token_must_name_its_subject_or_it_gets_401_saying_so(served: Served) -> None:
    refused = {
        _without_sub(): "no sub claim (tokens must name their subject, who the audit log records)",
        _without_sub(client_id="svc", azp="svc"): "no sub claim",
        _without_sub(sub=""): "malformed sub claim (not a non-empty string of at most 255 characters)",
        _without_sub(sub="   "): "malformed sub claim (not a non-empty string",
        _without_sub(sub="x" * 256): "malformed sub claim (not a non-empty string of at most 255",
        _without_sub(sub="alice\nadmin"): "malformed sub claim (it holds control characters)",
    }
    for token, reason in refused.items():
        status, _, body = await asyncio.to_thread(raw_post, served.url, token)
        assert status == 401 and reason in json.loads(body)["error_description"], body
    rows = await audit_rows(served.state, kind="auth")
    assert len(rows) == len(refused) and all(r.subject is None for r in rows)
    assert "token refused: no sub claim" in (rows[0].error_message or "")
    async with served.client(_without_sub(sub="x" * 255)) as client:
        await client.call_tool("get_cache_stats", {})
    assert len(await audit_rows(served.state, kind="tool", subject="x" * 255)) == 1
    assert await audit_rows(served.state, subject="unknown") == []


async def test_a_valid_token_is_accepted_and_health_needs_none(served: Served) -> None:
    async with served.client(served.token(READ)) as client:
        assert "get_system_metrics" in {t.name for t in await client.list_tools()}
    health_url = served.url.replace("/mcp", "/health")

    def get_health() -> dict[str, Any]:
        with urllib.request.urlopen(health_url, timeout=5) as response:
            return dict(json.load(response))

    body = await asyncio.to_thread(get_health)
    assert body == {"status": "ok", "database": True, "version": body["version"]}


async def test_a_foreign_host_header_is_refused(served: Served) -> None:
    status, _, _ = await asyncio.to_thread(raw_post, served.url, served.token(READ), host="evil.example:80")
    assert status == 421


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ((READ,), {"get_cache_stats"}),
        ((WRITE,), {"get_cache_stats", "add_device"}),
        ((ADMIN,), {"get_cache_stats", "add_device", "query_audit_log"}),
    ],
)
async def test_each_scope_level_allows_its_tools_and_denies_the_rest_visibly(
    served: Served, scopes: tuple[str, ...], allowed: set[str]
) -> None:
    calls = {
        "get_cache_stats": {},
        "add_device": {"name": f"dev-{scopes[0].split(':')[1]}", "hostname": "127.0.0.1", "port": 1},
        "query_audit_log": {"limit": 5},
    }
    needed = {"get_cache_stats": READ, "add_device": WRITE, "query_audit_log": ADMIN}
    async with served.client(served.token(*scopes, subject=f"user-{scopes[0]}")) as client:
        listed = {t.name for t in await client.list_tools()}
        assert set(calls) <= listed  # every tool stays listed, whatever the scope
        for tool, arguments in calls.items():
            if tool in allowed:
                await client.call_tool(tool, arguments)
            else:
                with pytest.raises(ToolError, match=f"missing scope {needed[tool]}"):
                    await client.call_tool(tool, arguments)
    rows = await audit_rows(served.state, kind="tool", subject=f"user-{scopes[0]}")
    assert {r.tool: r.outcome for r in rows} == {t: ("ok" if t in allowed else "denied") for t in calls}
    for row in rows:
        if row.outcome == "denied":
            assert row.error_type == "missing_scope" and row.ssh_commands == []


async def test_admin_resources_need_the_admin_scope(served: Served) -> None:
    async with served.client(served.token(WRITE)) as client:
        with pytest.raises(MCPError, match="missing scope infra:admin"):
            await client.read_resource("infra://audit/recent")
        devices = json.loads((await client.read_resource("infra://devices"))[0].text)
        assert [d["name"] for d in devices] == ["local"]
    async with served.client(served.token(ADMIN)) as client:
        recent = json.loads((await client.read_resource("infra://audit/recent"))[0].text)
        assert recent["total"] >= 2


async def test_every_call_is_audited_once_with_who_and_from_where(served: Served) -> None:
    token = served.token(WRITE, subject="bob")
    async with served.client(token, user_agent="claude-code/9.9") as client:
        await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
        await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
        for bad in ({"device": "ghost"}, {"device": "local", "interval": 99}):
            with pytest.raises(ToolError):
                await client.call_tool("get_system_metrics", bad)
        with pytest.raises(ToolError, match="missing scope infra:admin"):
            await client.call_tool("query_audit_log", {})
        await client.call_tool(
            "add_device", {"name": "pw", "hostname": "127.0.0.1", "port": 1, "password": "hunter2-secret"}
        )
    rows = await audit_rows(served.state, kind="tool", subject="bob")
    assert [(r.tool, r.outcome) for r in rows] == [
        ("get_system_metrics", "ok"),
        ("get_system_metrics", "ok"),
        ("get_system_metrics", "error"),
        ("get_system_metrics", "error"),
        ("query_audit_log", "denied"),
        ("add_device", "ok"),
    ]
    assert [r.cache_hit for r in rows[:2]] == [False, True]
    assert rows[2].error_type == "device_not_found" and rows[3].error_type == "invalid_arguments"
    for row in rows:
        assert row.client_ip == "127.0.0.1" and row.user_agent == "claude-code/9.9"
        assert row.transport == "http" and row.request_path == "/mcp" and row.client_id == "bob"
    assert rows[5].arguments is not None and rows[5].arguments["password"] == "***"
    everything = json.dumps([[r.arguments, r.error_message] for r in await audit_rows(served.state)])
    assert "hunter2-secret" not in everything


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    spoofed = {"X-Forwarded-For": "203.0.113.7"}
    async for untrusted in _serve(tmp_path / "a"):
        async with untrusted.client(untrusted.token(READ, subject="u1"), **spoofed) as client:
            await client.call_tool("get_cache_stats", {})
        (row,) = await audit_rows(untrusted.state, kind="tool", subject="u1")
        assert row.client_ip == "127.0.0.1"
    async for trusted in _serve(tmp_path / "b", trusted_proxies="127.0.0.1/32"):
        async with trusted.client(trusted.token(READ, subject="u2"), **spoofed) as client:
            await client.call_tool("get_cache_stats", {})
        (row,) = await audit_rows(trusted.state, kind="tool", subject="u2")
        assert row.client_ip == "203.0.113.7"


async def test_rs256_tokens_from_an_identity_provider_are_verified_with_its_public_key(
    tmp_path: Path,
) -> None:
    from fastmcp.server.auth.providers.jwt import RSAKeyPair

    pair, other = RSAKeyPair.generate(), RSAKeyPair.generate()
    async for served in _serve(tmp_path, SigningKey("RS256", None, pair.public_key, None)):
        good = pair.create_token(subject="carol", issuer=ISSUER, audience=AUDIENCE, scopes=[READ])
        async with served.client(good) as client:
            await client.call_tool("get_cache_stats", {})
        forged = other.create_token(subject="carol", issuer=ISSUER, audience=AUDIENCE, scopes=[ADMIN])
        for token in (forged, served.token(ADMIN)):  # another key pair, or an HS256 token
            status, _, _ = await asyncio.to_thread(raw_post, served.url, token)
            assert status == 401
        (row,) = await audit_rows(served.state, kind="tool", subject="carol")
        assert row.outcome == "ok"


# ---- the real `infrastructor serve` process: generated key, dev token, `token create` ---------------------


def _start(tmp_path: Path, port: int, **env: str) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / f"serve-{port}.log"
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env=cli_env(tmp_path, **env),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc, log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(log.read_text()) from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=15)


async def test_first_start_generates_a_key_and_prints_one_dev_token(tmp_path: Path) -> None:
    port = free_port()
    proc, log = _start(tmp_path, port)
    try:
        text = log.read_text()
        assert "Development token with scope infra:admin, valid until" in text
        token = next(line.strip() for line in text.splitlines() if line.strip().startswith("eyJ"))
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(
            StreamableHttpTransport(url, headers={"Authorization": f"Bearer {token}"})
        ) as client:
            page = await client.call_tool("query_audit_log", {})
            assert structured(page)["total"] >= 0
        status, _, _ = await asyncio.to_thread(raw_post, url, None)
        assert status == 401
        status, _, _ = await asyncio.to_thread(raw_post, url, token, host="attacker.example")
        assert status == 421  # DNS-rebinding protection: a foreign Host header never reaches a tool
    finally:
        _stop(proc)
    created = subprocess.run(
        [CLI, "token", "create", "--subject", "ci-bot", "--scopes", "infra:read", "--ttl", "15m"],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "expires" in created.stderr and "ci-bot" in created.stderr
    minted = created.stdout.strip()
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert claims["sub"] == "ci-bot" and claims["scope"] == "infra:read"
    assert 800 < claims["exp"] - claims["iat"] <= 900
    proc, log = _start(tmp_path, port)
    try:
        assert "Development token" not in log.read_text()  # the key exists now; no new token is printed
        url = f"http://127.0.0.1:{port}/mcp"
        async with Client(
            StreamableHttpTransport(url, headers={"Authorization": f"Bearer {minted}"})
        ) as client:
            await client.call_tool("get_cache_stats", {})
            with pytest.raises(ToolError, match="missing scope infra:write"):
                await client.call_tool("add_device", {"name": "x", "hostname": "h"})
    finally:
        _stop(proc)
    state_settings = make_settings(tmp_path)
    async with open_state(state_settings) as state:
        key = await state.secrets.get("jwt:hs256")
        async with state.db.read_session() as session:
            row = await session.get(SecretRow, "jwt:hs256")
        assert key is not None and row is not None and key not in row.ciphertext


def test_token_create_rejects_unknown_scopes_and_bad_ttls(tmp_path: Path) -> None:
    for args, message in (
        (["--scopes", "infra:root"], "choose from infra:read, infra:write, infra:admin"),
        (["--ttl", "forever"], "--ttl 'forever'"),
        (["--ttl", "400d"], "longer than INFRA_JWT_MAX_TTL"),  # the server would refuse such a token
        (["--subject", " "], "--subject ' ': not a non-empty string"),  # nor a token without a subject
    ):
        result = subprocess.run(
            [CLI, "token", "create", "--subject", "x", *args],
            env=cli_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def test_auth_can_be_turned_off_only_on_loopback(tmp_path: Path) -> None:
    refused = subprocess.run(
        [CLI, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=cli_env(tmp_path, INFRA_AUTH="false"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "INFRA_AUTH=false" in refused.stderr


async def test_an_accepted_token_is_remembered_only_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastmcp.server.auth.providers.jwt import JWTVerifier

    settings = make_settings(
        Path("/nonexistent"), jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    key = SigningKey("HS256", SECRET, None, None)
    verifier = key.verifier(settings)
    token, expires = issue_token(key, settings, subject="dave", scopes=[READ], ttl_seconds=300)
    calls = 0
    real = JWTVerifier.verify_token

    async def counting(self: JWTVerifier, value: str) -> Any:
        nonlocal calls
        calls += 1
        return await real(self, value)

    monkeypatch.setattr(JWTVerifier, "verify_token", counting)
    first = await verifier.verify_token(token)
    assert first is not None and first.client_id == "dave"
    assert await verifier.verify_token(token) == first and calls == 1
    assert (
        await verifier.verify_token(token + "x") is None and calls == 2
    )  # a rejected token is checked each time
    assert await verifier.verify_token(token + "x") is None and calls == 3
    monkeypatch.setattr("mcp_server.auth.time.time", lambda: expires + 1)
    await verifier.verify_token(token)
    assert calls == 4  # past its expiry the remembered token is verified again
