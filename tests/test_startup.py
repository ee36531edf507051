"""Start-up cost, guarded without timing: which heavy packages each entry point loads.

Every check runs the real entry point (`mcp_server.cli.main`) in a fresh interpreter and reads its
`sys.modules` when it is done. bench/bench_startup.py measures what these imports cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.test_transports import cli_env, run_cli

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


def test_the_head_revision_read_from_the_scripts_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from mcp_server.db.engine import alembic_config, schema_head

    assert schema_head() == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
