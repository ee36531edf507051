"""Secrets never reach storage, results or logs: every text column of every table, table-driven.

Callers and devices put credentials in front of the server in many ways (tool arguments, a user agent,
an unknown tool's name, a process's command line, a failing command's output, a token's claims). One
run over real HTTP feeds them all in, on SQLite and PostgreSQL; then every row of every table is read back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from mcp import MCPError
from mcp.types import TextResourceContents
from sqlalchemy import JSON, String, select

from mcp_server.audit import IDENTITY_COLUMNS
from mcp_server.auth import ADMIN
from mcp_server.db.tables import Base
from mcp_server.events import ConfigChanged
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, make_settings
from tests.helpers import fixture_bin, until
from tests.podman import engine_fixture  # noqa: F401  (the container_engine session fixture)
from tests.secret_corpus import CONTROL, NEAR_MISSES, SHAPES, leaks
from tests.test_security import SECRET, ping, serve

# the values that must never be stored or returned in clear, and how they are presented
CLEAR = ("sk-live-4f9a8b7c6d5e", "Tr0ub4dor-77", "hunter2-x9", "tok-0a1b2c3d4e")
BEARER = "Bearer sk-live-4f9a8b7c6d5e"
URL = "https://backup:Tr0ub4dor-77@nas.example/share"
OPTION = "--password=hunter2-x9"
ASSIGNMENT = "token=tok-0a1b2c3d4e"

# Every column that holds caller- or device-provided text, and what puts a secret there in this test.
COVERED = {
    ("data_collection_audit", "arguments"): "add_device's description, run_command's argv",
    ("data_collection_audit", "ssh_commands"): "run_command's argv, as it ran",
    ("data_collection_audit", "params"): "the collection's parameters (run_command's argv)",
    ("data_collection_audit", "error_message"): "a validation error echoing its input",
    ("data_collection_audit", "user_agent"): "the User-Agent header",
    ("data_collection_audit", "tool"): "an unknown tool's name, a resource URI",
    ("collection_snapshots", "data"): "a process's command line, a command's output",
    ("collection_snapshots", "params"): "run_command's argv",
    ("devices", "description"): "add_device's description",
}
# Text columns that cannot carry such text, and why.
NOT_CALLER_TEXT = {
    ("devices", "hostname"): "validated: letters, digits and . _ : % [ ] - only",
    ("devices", "username"): "validated: a user name pattern",
    ("devices", "key_path"): "confined to INFRA_SSH_FILE_DIRS and checked to be a private key",
    ("devices", "password_secret"): "the name of a row in secrets",
    ("devices", "jump_host"): "validated: a device name",
    ("devices", "tags"): "validated: a tag pattern",
    ("devices", "host_key"): "the public key the device presented",
    ("secrets", "ciphertext"): "encrypted",
    ("data_collection_audit", "request_path"): "the MCP endpoint's path (only requests routed there are "
    "audited); redacted all the same by audit.storable",
    ("config_watch_targets", "path"): "configuration monitoring: paths validated there",
    ("configuration_snapshots", "content"): "configuration monitoring redacts content as it stores it",
    ("configuration_change_events", "reasons"): "configuration monitoring: risk rules' own text",
    ("configuration_change_events", "affected_services"): "configuration monitoring: unit names",
    ("configuration_change_events", "summary"): "configuration monitoring: its own text",
    ("configuration_change_events", "diff"): "configuration monitoring redacts diffs as it stores them",
    ("cache_metadata", "replica"): "INFRA_REPLICA_NAME, the operator's setting",
    ("service_performance_metrics", "replica"): "INFRA_REPLICA_NAME, the operator's setting",
    ("poll_leases", "owner"): "INFRA_REPLICA_NAME, the operator's setting",
    ("poll_leases", "category"): "one of the poller's fixed categories",
    ("device_health", "updated_by"): "INFRA_REPLICA_NAME, the operator's setting",
    ("device_health", "breaker"): "closed, open or half_open",
    ("device_health", "last_error_type"): "an error type of errors.py",
    ("device_health", "last_error"): "redacted as it is written (polling/breaker.py)",
    ("container_stats", "container"): "from the collected result, redacted before it is stored; docker names "
    "hold only letters, digits, _ . -",
    ("container_stats", "container_id"): "from the collected result, redacted before it is stored (hex ids)",
    ("container_restart_counts", "container"): "from the collected result, redacted before it is stored; "
    "docker names hold only letters, digits, _ . -",
    ("container_restart_counts", "container_id"): "from the collected result, redacted before it is stored "
    "(hex ids)",
    ("disk_metrics", "mount"): "from the collected result, redacted before it is stored",
    ("disk_metrics", "fstype"): "from the collected result, redacted before it is stored",
    ("network_metrics", "interface"): "from the collected result, redacted before it is stored",
    ("drive_metrics", "drive"): "drive_smart's drive parameter, validated as a /dev/ path",
    ("storage_layout", "mode"): "timescale, partitioned or plain",
    ("storage_layout", "detail"): "the server's own description of the storage set-up",
    ("storage_layout", "policies"): "the server's own retention and compression settings",
    ("registry_changes", "origin"): "the writing process's own id (a random uuid)",
    ("alert_rules", "min_risk"): "low, medium or high",
    ("alert_rules", "channel"): "ntfy, gotify or webhook",
    ("alert_rules", "created_by"): "the admin's token subject (validated at the edge) or local:<user>",
    ("alert_firing", "rule"): "an alert rule's name, validated as a slug",
    ("event_log", "data"): "events' own fields (paths, risk, summaries, error types and messages); strings "
    "redacted by audit.storable, as in every journaled row",
}


def text_columns() -> list[tuple[str, str]]:
    return [
        (table.name, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, String | JSON)
    ]


def test_every_text_column_is_covered_by_the_redaction_table() -> None:
    unknown = [
        column
        for column in text_columns()
        if column[1] not in IDENTITY_COLUMNS and column not in COVERED and column not in NOT_CALLER_TEXT
    ]
    assert unknown == [], (
        "text columns nobody has classified: add each to COVERED (with a case in the test below that puts "
        "a secret there) or to NOT_CALLER_TEXT (with the reason it cannot hold one)"
    )


async def _every_row(state: AppState) -> dict[tuple[str, str], list[str]]:
    """Every stored value of every text column, as JSON text."""
    await state.writer.flush()
    values: dict[tuple[str, str], list[str]] = {}
    async with state.db.read_session() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).mappings():
                for column in table.columns:
                    if isinstance(column.type, String | JSON) and row[column.name] is not None:
                        values.setdefault((table.name, column.name), []).append(
                            json.dumps(row[column.name], ensure_ascii=False)
                        )
    return values


def _clean(text: str) -> bool:
    return not any(secret in text for secret in CLEAR)


async def test_secrets_from_callers_and_devices_are_masked_in_every_stored_and_returned_field(
    tmp_path: Path, database_url: str
) -> None:
    # a busy process with credentials on its command line, so it tops the CPU list
    worker = subprocess.Popen(["sh", "-c", "while :; do :; done", "worker", OPTION, URL, ASSIGNMENT])
    try:
        async with serve(
            tmp_path, database_url=database_url, allow_run_command=True, run_command_allowlist="ls"
        ) as served:
            returned: list[str] = []
            token = served.token(ADMIN, subject="redactor")
            async with served.client(token, user_agent=f"agent/1.0 ({BEARER})") as client:
                description = f"backup to {URL}, {ASSIGNMENT}"
                added = await client.call_tool(
                    "add_device", {"name": "vault", "hostname": "h", "description": description}
                )
                ran = await client.call_tool(
                    "run_command", {"device": "local", "argv": ["ls", f"/nonexistent/{OPTION}", URL]}
                )
                processes = await client.call_tool("list_processes", {"device": "local", "limit": 200})
                assert "worker" in json.dumps(processes.structured_content)
                for tool, arguments in (
                    ("get_system_metrics", {"device": "local", "interval": ASSIGNMENT}),
                    ("get_device", {"device": f"nul\x00{ASSIGNMENT}"}),
                ):
                    failed = await client.call_tool(tool, arguments, raise_on_error=False)
                    assert failed.is_error
                    returned.append(failed.content[0].text)
                with pytest.raises(MCPError) as unknown:  # a tool name is echoed back as invalid params
                    await client.call_tool(ASSIGNMENT, {})
                returned.append(f"{unknown.value} {unknown.value.error.data}")
                with pytest.raises(Exception) as unreadable:
                    await client.read_resource(f"infra://devices/{ASSIGNMENT}")
                returned.append(str(unreadable.value))
                audit_page = await client.call_tool("query_audit_log", {"limit": 200})
                for result in (added, ran, processes, audit_page):
                    returned.append(json.dumps(result.structured_content))
            forged = jwt.encode({"sub": f"mallory {OPTION}", "exp": int(time.time()) + 60}, "x" * 48)
            assert (await asyncio.to_thread(ping, served.url, forged)).status == 401
            for text in returned:
                assert _clean(text), text
            assert "***" in json.dumps(ran.structured_content)
            stored = await _every_row(served.state)
    finally:
        worker.kill()
        worker.wait()
    leaks = {column: v for column, values in stored.items() for v in values if not _clean(v)}
    assert leaks == {}
    for column, how in COVERED.items():
        assert any("***" in value for value in stored.get(column, [])), f"{column}: nothing masked ({how})"
    assert any("\\ufffd" in v or "\ufffd" in v for v in stored[("data_collection_audit", "arguments")])
    assert all(SECRET not in value for values in stored.values() for value in values)


# ---- the secret corpus, through every path -------------------------------------------------------------------

# Each process's command line stays under ps's cut (parsers/system.py keeps 300 characters).
PROCESS_ARGS_CHARS = 240


def _batches(items: list[list[str]], limit: int) -> list[list[str]]:
    """`items` (each a list of words) packed in order into batches whose joined length stays under `limit`."""
    batches: list[list[str]] = [[]]
    for item in items:
        if batches[-1] and len(" ".join([*batches[-1], *item])) > limit:
            batches.append([])
        batches[-1] += item
    return batches


def _journal_line(index: int, message: str) -> str:
    return json.dumps(
        {
            "__REALTIME_TIMESTAMP": str(1763770000000000 + index * 1000000),
            "MESSAGE": message,
            "PRIORITY": "6",
            "_SYSTEMD_UNIT": "app.service",
            "SYSLOG_IDENTIFIER": "app",
            "_PID": "4242",
        }
    )


@pytest.fixture(scope="module")
def journal_host(sshd_fleet: Any) -> Any:
    """An sshd host whose journalctl (a fixture) prints every text of the corpus, one entry each, and CONTROL."""
    root = sshd_fleet.scratch_dir()
    bin_dir = fixture_bin(root / "logs", "services", ("journalctl",))
    messages = [CONTROL, *(shape.text for shape in SHAPES)]
    (root / "logs" / "data" / "journal.json").write_text(
        "".join(_journal_line(i, m) + "\n" for i, m in enumerate(messages))
    )
    return sshd_fleet.start_host("redact-journal", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def _busy_processes(commands: list[list[str]]) -> list[subprocess.Popen[bytes]]:
    """Processes whose command lines carry `commands` and CONTROL: niced busy loops, so they rank among the
    top processes by CPU whatever else runs on the machine."""
    return [
        subprocess.Popen(["nice", "-n", "19", "sh", "-c", "while :; do :; done", "worker", CONTROL, *batch])
        for batch in _batches(commands, PROCESS_ARGS_CHARS)
    ]


async def test_every_shape_of_the_secret_corpus_is_masked_wherever_it_can_reach_and_the_control_is_found(
    tmp_path: Path, database_url: str, sshd_fleet: Any, journal_host: Any
) -> None:
    """Arguments (audit rows, device descriptions), run_command's argv and output, error messages, process
    command lines, journal lines, a watched file's content, history and diffs, and every stored column."""
    # a command line's words as its argv, any other text as one argument; ";" between them
    commands = [
        [*(shlex.split(s.text) if s.argv else [s.text]), ";"]
        for s in SHAPES
        if not s.own_line and not s.spaced_value
    ]
    argvs: list[list[str]] = [["echo", CONTROL]]
    for command in commands:  # run_command takes 64 words
        if len(argvs[-1]) + len(command) > 64:
            argvs.append(["echo", CONTROL])
        argvs[-1] += command
    workers = _busy_processes(commands)
    watched = tmp_path / "app.conf"
    watched.write_text(f"mode={CONTROL}\n" + "\n".join(NEAR_MISSES) + "\n")
    overrides = {
        "allow_run_command": True,
        "run_command_allowlist": "echo",
        "config_debounce": 0.2,
        "http_rate_limit": 100_000,
        "max_result_chars": 400_000,  # a listing of 200 processes, none cut for its size
    }
    try:
        async with serve(tmp_path, database_url=database_url, **overrides) as served:
            state = served.state
            await add_fleet_host(state, sshd_fleet, journal_host, name="journal")
            changes = state.events.subscribe_queue(types=(ConfigChanged,))
            await state.config.start()
            returned: list[str] = []
            async with served.client(
                served.token(ADMIN),
                user_agent=f"agent/1.0 {CONTROL} ({SHAPES[0].text.splitlines()[0]} {BEARER})",
            ) as client:

                async def call(tool: str, **arguments: Any) -> str:
                    try:
                        result = await client.call_tool(tool, arguments, raise_on_error=False)
                    except MCPError as exc:  # an unknown tool (its name echoed back)
                        returned.append(f"{exc} {exc.error.data}")
                        return str(exc)
                    text = (
                        json.dumps(result.structured_content)
                        if not result.is_error
                        else result.content[0].text
                    )
                    returned.append(text)
                    return text

                for n, batch in enumerate(_batches([[CONTROL], *([s.text] for s in SHAPES)], 900)):
                    added = await call(
                        "add_device", name=f"dev{n}", hostname="h", description="\n".join(batch)
                    )
                    assert n or CONTROL in added
                for argv in argvs:
                    assert CONTROL in await call("run_command", device="local", argv=argv)
                for shape in SHAPES:
                    assert "Unknown device" in await call("get_device", device=shape.text)
                await call("get_device", device=CONTROL)
                for name in [CONTROL, *(s.text for s in SHAPES if not s.multiline)]:
                    await call(name)  # an unknown tool's name
                # on a loaded machine the niced loops can rank below the listing's cut: look again, with a new
                # sample each time (a cached listing would repeat itself), until every one has been seen (each
                # listing's text is checked for secrets below)
                seen: dict[int, str] = {}
                for _ in range(20):
                    processes = await call(
                        "list_processes", device="local", sort_by="cpu", limit=200, force_refresh=True
                    )
                    for p in json.loads(processes)["data"]["processes"]:
                        if f"worker {CONTROL}" in (p["args"] or ""):
                            seen[p["pid"]] = p["args"]
                    if len(seen) == len(workers):
                        break
                listed = list(seen.values())
                assert len(listed) == len(workers), "a test process is not listed"
                assert all(args.endswith(" ;") for args in listed), "a command line was cut short"
                journal = await call("get_journal_logs", device="journal", lines=500)
                assert CONTROL in journal and "app.service" in journal
                await call("watch_config_file", device="local", path=str(watched))
                lines = [f"mode={CONTROL}", *NEAR_MISSES, *(s.text for s in SHAPES), f"added={CONTROL}"]
                watched.write_text("\n".join(lines) + "\n")
                change = await asyncio.wait_for(changes.get(), 20)
                assert isinstance(change, ConfigChanged) and change.path == str(watched)
                diff = await call("get_config_diff", device="local", path=str(watched))
                assert f"+{SHAPES[0].text.splitlines()[0]}" in diff  # the diff shows what changed
                await call("get_config_history", device="local", path=str(watched))
                await call("list_config_changes", device="local", include_diff=True)
                (resource,) = await client.read_resource(f"infra://config/local{watched}")
                assert isinstance(resource, TextResourceContents)
                returned.append(resource.text)
                content = json.loads(resource.text)["content"]  # useful still: the near-misses are all there
                assert CONTROL in content and all(near in content for near in NEAR_MISSES)
                assert CONTROL in await call("query_audit_log", limit=500)
            stored = await _every_row(state)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    for text in returned:
        assert leaks(text) == {}, text[:2000]
    stored_leaks = {column: leaks(v) for column, values in stored.items() for v in values if leaks(v)}
    assert stored_leaks == {}
    for column, how in {**COVERED, **CORPUS_COLUMNS}.items():
        assert any(CONTROL in value for value in stored.get(column, [])), (
            f"{column}: control not found ({how})"
        )
        assert any("***" in value for value in stored.get(column, [])), f"{column}: nothing masked ({how})"


async def test_a_process_command_line_is_redacted_before_it_is_cut_so_no_secret_is_left_half_shown(
    tmp_path: Path,
) -> None:
    # ps shows 300 characters of a command line (parsers/system.py): this URL password straddles the cut
    secret = "Cut7secretQ" * 4
    argv = ["sh", "-c", "while :; do :; done", "worker", "p" * 240, f"postgres://app:{secret}@db/app"]
    worker = subprocess.Popen(["nice", "-n", "19", *argv])
    try:
        async with open_state(make_settings(tmp_path)) as state:
            result = await state.service.collect("local", "top_processes", {"limit": 200, "sort_by": "cpu"})
    finally:
        worker.kill()
        worker.wait()
    (listed,) = [p.args for p in result.data.processes if p.args and p.args.startswith("sh -c while")]
    assert listed.endswith(" postgres://app:***@db/app") and secret[:4] not in listed


def _env_entry(index: int, shape: Any) -> str:
    """A container's environment entry carrying `shape`: itself when it is NAME=VALUE, else a neutral name's value."""
    name, sep, _ = shape.text.partition("=")
    return (
        shape.text
        if sep and name.isidentifier() and "\n" not in shape.text
        else f"CORPUS_{index}={shape.text}"
    )


async def test_a_containers_environment_command_and_log_lines_mask_every_shape_of_the_corpus(
    tmp_path: Path, sshd_fleet: Any, container_engine: Any
) -> None:
    """Through real docker (podman) and sshd: env by name and by shape, the command as argv, and log lines,
    among them private keys printed over several lines."""
    env = [arg for i, shape in enumerate(SHAPES) for arg in ("-e", _env_entry(i, shape))]
    printed = "\n".join([CONTROL, *(shape.text for shape in SHAPES), f"end {CONTROL}"])
    words = [
        w
        for shape in SHAPES
        if shape.argv and not shape.spaced_value
        for w in (*shlex.split(shape.text), ";")
    ]
    # a write per line: podman's log driver splits a write at its buffer's edge and joins the parts wrongly
    script = (
        'printf "%s\\n" "$LOG_TEXT" | while IFS= read -r l; do printf "%s\\n" "$l"; done; exec sleep 100000'
    )
    container_engine.docker(
        "run", "-d", "--network", "host", "--name", "corpus", *env, "-e", f"PLAIN={CONTROL}",
        "-e", f"LOG_TEXT={printed}", "localhost/bb:test", "sh", "-c", script, "corpus", CONTROL, *words,
    )  # fmt: skip
    try:
        container_engine.wait_state("corpus", "running")
        host = sshd_fleet.start_host("redact-docker", env=container_engine.client_env)
        async with open_state(make_settings(tmp_path)) as state:
            device = await add_fleet_host(state, sshd_fleet, host, name="docker")
            await until(lambda: f"end {CONTROL}" in container_engine.docker("logs", "corpus").stdout, 20)
            details = await state.service.collect(device, "container_inspect", {"container": "corpus"})
            logs = await state.service.collect(
                device, "container_logs", {"container": "corpus", "tail": 1000}
            )
            stored = await _every_row(state)
    finally:
        container_engine.docker("rm", "--force", "corpus", check=False)
    env_shown = {e.name: e.value for e in details.data.env}
    assert env_shown["PLAIN"] == CONTROL and CONTROL in details.data.command
    assert CONTROL in [line.text for line in logs.data.lines]
    returned = [details.data.model_dump_json(), logs.data.model_dump_json()]
    assert [leaks(text) for text in returned] == [{}, {}]
    assert {column: leaks(v) for column, values in stored.items() for v in values if leaks(v)} == {}


# Columns the corpus reaches beyond COVERED's list (configuration monitoring's own redaction).
CORPUS_COLUMNS = {
    ("configuration_snapshots", "content"): "a watched file's content",
    ("configuration_change_events", "diff"): "a watched file's change",
}


# ---- 10. what asyncssh logs --------------------------------------------------------------------------------


async def test_remote_commands_are_logged_only_at_debug_and_redacted(
    tmp_path: Path, sshd_fleet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    async with open_state(settings) as state:
        device = await add_fleet_host(state, sshd_fleet, sshd_fleet.hosts["alpha"])
        caplog.set_level(logging.INFO)
        await state.service.collect(device, "run_command", {"argv": ["echo", OPTION]})
        asyncssh_info = [
            r for r in caplog.records if r.name.startswith("asyncssh") and r.levelno >= logging.INFO
        ]
        assert not any("Command" in r.getMessage() for r in asyncssh_info)
        assert all("hunter2" not in r.getMessage() for r in caplog.records)
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        await state.service.collect(device, "run_command", {"argv": ["echo", OPTION]}, force_refresh=True)
        commands = [
            r for r in caplog.records if r.name.startswith("asyncssh") and "Command:" in r.getMessage()
        ]
        assert commands and all(r.levelno == logging.DEBUG for r in commands)
        assert all("hunter2" not in r.getMessage() for r in caplog.records)
        assert any("--password=***" in r.getMessage() for r in commands)
