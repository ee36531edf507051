"""The real server process: `infrastructor serve` over HTTP (uvicorn) and over stdio, and the CLI around it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport

from tests.helpers import free_port, structured
from tests.test_collection import meminfo_bytes

CLI = shutil.which("infrastructor", path=str(Path(sys.executable).parent)) or "infrastructor"


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    env |= {
        "INFRA_DATA_DIR": str(tmp_path / "data"),
        "INFRA_SSH_FILE_DIRS": tempfile.gettempdir(),
        "INFRA_SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "INFRA_SSH_CONNECT_TIMEOUT": "3",
        "INFRA_AUDIT_FLUSH_INTERVAL": "0.05",
        # background polls would add audit rows these tests do not expect
        "INFRA_POLL_ENABLED": "false",
    }
    return env | extra


def run_cli(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=cli_env(tmp_path, **extra), capture_output=True, text=True, timeout=120, check=False
    )


def audit(tmp_path: Path, **where: Any) -> list[dict[str, Any]]:
    """Audit rows matching `where` from the server's SQLite file, waiting (bounded) for the batched writer."""
    db = tmp_path / "data" / "infrastructor.db"
    end = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < end:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            everything = [dict(r) for r in conn.execute("SELECT * FROM data_collection_audit ORDER BY id")]
        rows = [r for r in everything if all(r[k] == v for k, v in where.items())]
        if rows:
            return rows
        time.sleep(0.05)
    return rows


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`infrastructor serve` on a free loopback port, with a device that can never be reached."""
    added = run_cli(tmp_path, "devices", "add", "unreachable", "127.0.0.1", "--port", "1", "--tag", "dead")
    assert added.returncode == 0, added.stderr
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        env=cli_env(
            tmp_path, INFRA_AUTH="false"
        ),  # auth has its own tests (test_auth.py); loopback allows this
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                    assert json.load(response)["status"] == "ok"
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "server.log").read_text()) from None
                time.sleep(0.05)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


async def test_http_server_serves_tools_and_audits_the_client(
    http_server: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    base, _ = http_server
    transport = StreamableHttpTransport(f"{base}/mcp", headers={"User-Agent": "infra-test-agent/1.0"})
    async with Client(transport) as client:
        result = await client.call_tool("get_system_metrics", {"device": "local", "interval": 0.1})
        assert structured(result)["data"]["memory"]["total_bytes"] == meminfo_bytes("MemTotal")
        overview = await client.call_tool("get_fleet_overview", {})
    rows = {d["device"]: d for d in structured(overview)["devices"]}
    assert rows["local"]["ok"] is True
    assert rows["unreachable"]["ok"] is False and rows["unreachable"]["error_type"] == "host_unreachable"
    (row,) = audit(tmp_path, kind="tool", command="system_metrics")
    assert row["transport"] == "http" and row["client_ip"] == "127.0.0.1"
    assert row["user_agent"] == "infra-test-agent/1.0" and row["request_path"] == "/mcp"
    assert row["tool"] == "get_system_metrics" and row["outcome"] == "ok"


def test_server_output_says_where_it_listens_and_what_to_do_next(
    http_server: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    base, _ = http_server
    text = (tmp_path / "server.log").read_text()
    assert f"{base}/mcp" in text and "claude mcp add" in text


async def test_stdio_server_keeps_stdout_for_the_protocol(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr.log"
    transport = StdioTransport(
        CLI,
        ["serve", "--stdio"],
        env=cli_env(tmp_path, INFRA_LOG_LEVEL="INFO"),
        keep_alive=False,
        log_file=stderr,
    )
    async with Client(transport) as client:
        result = await client.call_tool("collect", {"device": "local", "command": "os_info"})
        assert structured(result)["data"]["hostname"] == socket.gethostname()
    assert (
        "INFO" in stderr.read_text()
    )  # logs went to stderr; a stray stdout line would have broken the session
    rows = audit(tmp_path, kind="tool", command="os_info")
    assert len(rows) == 1, rows
    (row,) = rows
    assert row["transport"] == "stdio" and row["subject"] == f"local:{os.environ.get('USER') or 'root'}"


def test_a_bad_setting_fails_at_start_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "migrate", INFRA_HTTP_PORT="eighty")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "INFRA_HTTP_PORT" in lines[0] and "eighty" in lines[0]
    bad_url = run_cli(tmp_path, "migrate", INFRA_DATABASE_URL="mysql://x")
    assert bad_url.returncode == 2 and "INFRA_DATABASE_URL" in bad_url.stderr


def test_cli_devices_and_collect(tmp_path: Path, sshd_fleet: Any) -> None:
    host = sshd_fleet.hosts["gamma"]
    assert run_cli(tmp_path, "migrate").returncode == 0
    added = run_cli(
        tmp_path,
        "devices",
        "add",
        "gamma",
        host.hostname,
        "--port",
        str(host.port),
        "--username",
        sshd_fleet.username,
        "--key-path",
        str(sshd_fleet.client_key_path),
    )
    assert added.returncode == 0, added.stderr
    hostile = run_cli(tmp_path, "devices", "add", "evil", "host; touch /tmp/p", "--port", "70000")
    assert hostile.returncode == 2 and "hostname:" in hostile.stderr and "port:" in hostile.stderr
    listed = run_cli(tmp_path, "devices", "list")
    assert "gamma" in listed.stdout and "local" in listed.stdout
    collected = run_cli(tmp_path, "collect", "os_info", "--all", "--json")
    assert collected.returncode == 0, collected.stderr
    outcomes = {o["device"]: o for o in json.loads(collected.stdout)}
    assert outcomes["gamma"]["ok"] and outcomes["local"]["ok"]
    assert outcomes["gamma"]["result"]["data"]["hostname"] == socket.gethostname()
    bad = run_cli(tmp_path, "collect", "top_processes", "--param", "limit=0")
    assert bad.returncode == 1 and "limit" in bad.stdout
    unknown = run_cli(tmp_path, "collect", "nope")
    assert unknown.returncode == 2 and "Unknown command 'nope'" in unknown.stderr
    assert run_cli(tmp_path, "devices", "remove", "gamma").returncode == 0
    assert "gamma" not in run_cli(tmp_path, "devices", "list").stdout
