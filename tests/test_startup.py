"""Start-up cost, guarded without timing: which heavy packages each entry point loads.

Every check runs the real entry point (`mcp_server.cli.main`) in a fresh interpreter and reads its
`sys.modules` when it is done. bench/bench_startup.py measures what these imports cost.

`serve --stdio` answers `initialize` before it builds its tools and while it opens its state: the last tests
check that a client still gets the tools, and gets why the state could not be opened (on every tool call and
in the log).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from mcp import MCPError

from tests.test_transports import CLI, cli_env, run_cli

# runs main(argv) as the console script does, then records what it loaded
PROBE = """
import json, os, sys
from mcp_server.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
with open(os.environ["STARTUP_PROBE_OUT"], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""
SERVER_STACK = {"fastmcp", "mcp", "mcp_types", "alembic", "asyncssh", "asyncpg", "uvicorn", "starlette"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


def probe(tmp_path: Path, *argv: str, requests: Sequence[dict[str, Any]] = ()) -> tuple[Any, set[str], str]:
    """(exit code, top-level packages loaded, stdout) of `infrastructor <argv>` in a fresh interpreter.

    `requests` are written to its stdin one by one, each request waiting for its answer; then stdin closes."""
    out = tmp_path / "probe.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE, *argv],
        env=cli_env(tmp_path, STARTUP_PROBE_OUT=str(out)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers: list[str] = []
    try:
        for request in requests:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            if "id" in request:
                answers.append(proc.stdout.readline())
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.exists(), stderr
    report = json.loads(out.read_text())
    return report["code"], {name.split(".")[0] for name in report["modules"]}, "".join(answers) + stdout


def test_help_and_version_load_argparse_and_rich_only(tmp_path: Path) -> None:
    for argv in (["--version"], ["--help"], ["collect", "--help"], ["devices", "update", "--help"]):
        code, loaded, _ = probe(tmp_path, *argv)
        assert code == 0
        assert not loaded & (
            SERVER_STACK | {"pydantic", "pydantic_settings", "sqlalchemy", "cryptography"}
        ), argv


def test_collect_on_a_current_schema_loads_neither_fastmcp_nor_alembic_nor_asyncssh(tmp_path: Path) -> None:
    # the first command on a new data dir migrates: that one needs Alembic
    code, loaded, _ = probe(tmp_path, "collect", "os_info", "--json")
    assert code == 0 and "alembic" in loaded
    assert not loaded & {"fastmcp", "mcp", "asyncssh", "asyncpg", "uvicorn"}

    code, loaded, stdout = probe(tmp_path, "collect", "os_info", "--json")
    assert code == 0 and json.loads(stdout)[0]["ok"]
    assert not loaded & SERVER_STACK, sorted(loaded & SERVER_STACK)


def test_stdio_server_answers_without_the_http_stack_alembic_asyncssh_or_asyncpg(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "migrate").returncode == 0
    requests: list[dict[str, Any]] = [
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    code, loaded, stdout = probe(tmp_path, "serve", "--stdio", requests=requests)
    answers = {a.get("id"): a for a in map(json.loads, stdout.splitlines())}
    assert code == 0 and answers[1]["result"]["serverInfo"]["name"] == "infrastructor"
    assert any(t["name"] == "get_system_metrics" for t in answers[2]["result"]["tools"])
    assert not loaded & {"alembic", "asyncssh", "asyncpg"}, sorted(loaded)
    modules = set(json.loads((tmp_path / "probe.json").read_text())["modules"])
    assert not modules & {"mcp_server.http_app", "mcp_server.http_guard"}


def test_initialize_is_answered_before_sqlalchemy_the_state_or_the_tools_are_loaded(tmp_path: Path) -> None:
    """What answers `initialize` imports no SQLAlchemy, state, tool or parser module; the state opens once the
    client has its answer (its next message). A client that leaves right after the answer leaves nothing to
    open: the process ends without ever loading them."""
    assert run_cli(tmp_path, "migrate").returncode == 0
    code, loaded, stdout = probe(tmp_path, "serve", "--stdio", requests=[INITIALIZE])
    assert code == 0 and json.loads(stdout)["result"]["serverInfo"]["name"] == "infrastructor"
    modules = set(json.loads((tmp_path / "probe.json").read_text())["modules"])
    assert "sqlalchemy" not in loaded, sorted(m for m in modules if m.startswith("mcp_server"))
    assert not modules & {"mcp_server.state", "mcp_server.tools.system", "mcp_server.parsers.system"}


def test_the_head_revision_read_from_the_scripts_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from mcp_server.db.engine import alembic_config, schema_head

    assert schema_head() == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_stdio_lists_tools_to_a_client_that_skips_the_initialized_notification(tmp_path: Path) -> None:
    # the tools are built after `initialize` is answered, by whatever message comes next
    assert run_cli(tmp_path, "migrate").returncode == 0
    requests: list[dict[str, Any]] = [INITIALIZE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]
    code, _, stdout = probe(tmp_path, "serve", "--stdio", requests=requests)
    answers = {a.get("id"): a for a in map(json.loads, stdout.splitlines())}
    assert code == 0 and answers[1]["result"]["serverInfo"]["name"] == "infrastructor"
    assert {"list_devices", "get_system_metrics"} <= {t["name"] for t in answers[2]["result"]["tools"]}


def unknown_revision(tmp_path: Path) -> dict[str, str]:
    """A SQLite database stamped with a revision no migration knows: migrating it fails."""
    assert run_cli(tmp_path, "migrate").returncode == 0
    with sqlite3.connect(tmp_path / "data" / "infrastructor.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    return {}


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        (
            lambda _: {"INFRA_DATABASE_URL": "postgresql+asyncpg://bob:hunter2@127.0.0.1:1/nope"},
            "127.0.0.1:1",
        ),
        (unknown_revision, "f00dfeedbeef"),
    ],
    ids=["unreachable database", "failed migration"],
)
async def test_a_failed_start_is_each_tool_calls_answer_and_in_the_log(
    tmp_path: Path, setting: Callable[[Path], dict[str, str]], named: str
) -> None:
    # `initialize` is answered before the state is open: what stops it from opening must still reach the user
    stderr = tmp_path / "stderr.log"
    env = cli_env(tmp_path, **setting(tmp_path))
    transport = StdioTransport(CLI, ["serve", "--stdio"], env=env, keep_alive=False, log_file=stderr)
    async with Client(transport) as client:
        assert "list_devices" in {t.name for t in await client.list_tools()}  # listing needs no state
        for _ in range(2):
            result = await client.call_tool("list_devices", {}, raise_on_error=False)
            assert result.is_error
            text = result.content[0].text
            assert "could not open its state" in text and named in text and "hunter2" not in text, text
        with pytest.raises(MCPError, match="could not open its state"):
            await client.read_resource("infra://devices")
    log = stderr.read_text()
    assert "ERROR" in log and "could not open its state" in log and named in log and "hunter2" not in log
