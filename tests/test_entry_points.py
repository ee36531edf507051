"""Every way of starting the HTTP server gets the same defences: `infrastructor serve` and
`fastmcp run fastmcp.json`, each a real process on a loopback port, put through the same cases."""

from __future__ import annotations

import fnmatch
import json
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from mcp_server.errors import ConfigurationError
from mcp_server.server import build_server
from tests.app_fixtures import make_settings
from tests.helpers import free_port, serving
from tests.test_transports import CLI, audit, cli_env

REPO = Path(__file__).resolve().parent.parent
FASTMCP = shutil.which("fastmcp", path=str(Path(sys.executable).parent)) or "fastmcp"
SECRET = "e" * 48

ENTRY_POINTS: dict[str, Callable[[str, int], list[str]]] = {
    "infrastructor serve": lambda host, port: [CLI, "serve", "--host", host, "--port", str(port)],
    "fastmcp run fastmcp.json": lambda host, port: [
        FASTMCP, "run", "fastmcp.json", "--host", host, "--port", str(port), "--no-banner",
    ],
}  # fmt: skip


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # COLUMNS: fastmcp logs through rich, which would wrap a refusal in the middle of its words
    return cli_env(tmp_path, COLUMNS="400", **extra)


def token(subject: str, **claims: object) -> str:
    now = int(time.time())
    base: dict[str, object] = {"sub": subject, "scope": "infra:read", "iat": now, "exp": now + 600}
    return jwt.encode({k: v for k, v in (base | claims).items() if v is not None}, SECRET, algorithm="HS256")


def status(
    url: str, *, method: str = "POST", body: bytes = b"{}", **headers: str
) -> tuple[int, dict[str, str]]:
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    sent |= {k.replace("_", "-"): v for k, v in headers.items()}
    request = urllib.request.Request(
        url, data=body if method == "POST" else None, headers=sent, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def ping(url: str, bearer: str | None, **headers: str) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    auth = {"authorization": f"Bearer {bearer}"} if bearer else {}
    return status(url, body=body, **auth, **headers)[0]


@pytest.fixture(params=list(ENTRY_POINTS))
def entry_point(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(entry_point: str, tmp_path: Path) -> Iterator[str]:
    """The entry point listening on 127.0.0.1 with auth on; yields the MCP URL."""
    port = free_port()
    log = tmp_path / "server.log"
    env = _env(
        tmp_path,
        INFRA_JWT_SECRET=SECRET,
        INFRA_HTTP_HEADER_TIMEOUT="1",
        INFRA_HTTP_RATE_LIMIT="1",
        INFRA_HTTP_RATE_BURST="8",
        INFRA_HTTP_MAX_BODY_BYTES="100000",
    )
    with serving(ENTRY_POINTS[entry_point]("127.0.0.1", port), port, env, log, cwd=REPO) as url:
        yield url


def test_every_entry_point_refuses_to_listen_publicly_without_auth(entry_point: str, tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        ENTRY_POINTS[entry_point]("0.0.0.0", port),
        cwd=REPO,
        env=_env(tmp_path, INFRA_AUTH="false"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    assert "refusing to listen on 0.0.0.0 with INFRA_AUTH=false" in output
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens


async def test_every_entry_point_serves_through_the_same_defences(server: str, tmp_path: Path) -> None:
    base = server.rsplit("/", 1)[0]
    # bearer auth: none, or one without exp -> 401
    assert ping(server, None) == 401
    assert ping(server, token("noexp", exp=None)) == 401
    # the resource metadata the 401 points to, without a token
    with urllib.request.urlopen(f"{base}/.well-known/oauth-protected-resource/mcp", timeout=10) as response:
        assert json.load(response)["resource"] == server
    # DNS rebinding: a foreign Host or Origin never reaches a tool
    assert ping(server, token("viewer"), host="attacker.example") == 421
    assert ping(server, token("viewer"), origin="http://attacker.example") == 403
    # the body cap (INFRA_HTTP_MAX_BODY_BYTES=100000)
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "a" * 200_000}})
    assert status(server, body=big.encode(), authorization=f"Bearer {token('big')}")[0] == 413
    # the request rate per subject (a burst of 8, then one a minute)
    assert [ping(server, token("hasty")) for _ in range(8)].count(429) == 0
    limited, headers = status(
        server,
        body=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode(),
        authorization=f"Bearer {token('hasty')}",
    )
    assert limited == 429 and int(headers["retry-after"]) >= 1
    # the audit records the socket peer, not a spoofed X-Forwarded-For
    transport = StreamableHttpTransport(
        server, headers={"Authorization": f"Bearer {token('auditee')}", "X-Forwarded-For": "203.0.113.7"}
    )
    async with Client(transport) as client:
        await client.call_tool("get_cache_stats", {})
        # an invalid argument is echoed by the validation error: in the answer, the audit and the log
        echoed = await client.call_tool(
            "get_system_metrics", {"device": "local", "interval": "token=tok-5e6f7a8b"}, raise_on_error=False
        )
        assert echoed.is_error and "token=***" in echoed.content[0].text
    (row,) = audit(tmp_path, kind="tool", subject="auditee", tool="get_cache_stats")
    assert row["client_ip"] == "127.0.0.1"
    (invalid,) = audit(tmp_path, kind="tool", subject="auditee", tool="get_system_metrics")
    assert "token=***" in invalid["error_message"] and "tok-5e6f7a8b" not in invalid["arguments"]
    assert "tok-5e6f7a8b" not in (tmp_path / "server.log").read_text()
    # a request whose headers never finish is cut off (INFRA_HTTP_HEADER_TIMEOUT=1)
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.settimeout(30)
        assert sock.recv(64).startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize(
    "options",
    [{"transport": "sse"}, {"stateless": True}, {"host_origin_protection": False}, {"uvicorn_config": {}}],
    ids=["sse", "stateless", "no host check", "own uvicorn settings"],
)
async def test_options_that_would_bypass_the_hardened_app_are_refused(
    tmp_path: Path, options: dict[str, object]
) -> None:
    server = build_server(make_settings(tmp_path), transport="http")
    with pytest.raises(ConfigurationError, match="Infrastructor builds its HTTP app itself"):
        await server.run_http_async(port=free_port(), **options)  # type: ignore[arg-type]
    if "transport" in options or "host_origin_protection" in options:
        with pytest.raises(ConfigurationError):
            server.http_app(**options)  # type: ignore[arg-type]


def test_every_package_of_the_server_is_installed_by_a_plain_pip_install() -> None:
    # `pip install .` (the README's serve command) installs only the packages pyproject.toml lists
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("mcp_server", *init.parent.relative_to(REPO / "mcp_server").parts))
        for init in (REPO / "mcp_server").rglob("__init__.py")
    }
    assert found <= listed, f"not installed by pip install .: {sorted(found - listed)}"


def test_every_asset_of_the_views_is_installed_by_a_plain_pip_install() -> None:
    # the ui:// views are read from package data at run time: each file must match a package-data pattern
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assets = [p.name for p in (REPO / "mcp_server" / "ui").iterdir() if p.is_file() and p.suffix != ".py"]
    assert {"views.js", "views.css", "fleet.html"} <= set(assets)
    missing = [a for a in assets if not any(fnmatch.fnmatch(a, g) for g in patterns.get("mcp_server.ui", []))]
    assert missing == [], f"not installed by pip install .: {missing}"
