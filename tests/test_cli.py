"""The `infrastructor` CLI as a newcomer meets it: whole results for humans, honest help, devices update/test.

Every command runs as a real process against real sshd hosts on loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from mcp_server.cli import _parser
from tests.sshd import SshdFleet, SshdHost
from tests.test_transports import run_cli

# wide enough that no value wraps: the test reads values back from the tables
WIDE = {"COLUMNS": "2000"}


def _add(tmp_path: Path, fleet: SshdFleet, host: SshdHost, *extra: str) -> None:
    added = run_cli(
        tmp_path,
        "devices",
        "add",
        host.name,
        host.hostname,
        "--port",
        str(host.port),
        "--username",
        fleet.username,
        "--key-path",
        str(fleet.client_key_path),
        *extra,
    )
    assert added.returncode == 0, added.stderr


def _scalars(data: dict[str, Any]) -> list[str]:
    """Every single value of a result, as the tables print it."""
    found: list[str] = []
    for value in data.values():
        if isinstance(value, dict):
            found += _scalars(value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool) and str(value):
            found.append(str(value))
    return found


def test_collect_prints_the_whole_result_as_tables_and_json_on_request(
    tmp_path: Path, sshd_fleet: SshdFleet
) -> None:
    for name in ("alpha", "beta"):
        _add(tmp_path, sshd_fleet, sshd_fleet.hosts[name])

    as_json = run_cli(tmp_path, "collect", "os_info", "--all", "--json")
    assert as_json.returncode == 0, as_json.stderr
    outcomes = {o["device"]: o for o in json.loads(as_json.stdout)}
    assert set(outcomes) == {"local", "alpha", "beta"}
    text = run_cli(tmp_path, "collect", "os_info", "--all", **WIDE)
    assert text.returncode == 0, text.stderr
    rows = {line.split("│")[1].strip(): line for line in text.stdout.splitlines() if line.count("│") > 2}
    for device, outcome in outcomes.items():
        for value in _scalars(outcome["result"]["data"]):
            assert value in rows[device], (device, value)  # every field, whole, on its device's row
    assert "…" not in text.stdout

    # a list in the result is a table of its own, one row per entry, with the device it came from
    disks = json.loads(run_cli(tmp_path, "collect", "disk_usage", "--all", "--json").stdout)
    table = run_cli(tmp_path, "collect", "disk_usage", "--all", **WIDE)
    assert table.returncode == 0, table.stderr
    lines = [line.rstrip() for line in table.stdout.splitlines()]
    start = lines.index("filesystems")
    header = [c.strip() for c in lines[start + 2].split("┃")[1:-1]]
    assert header[:4] == ["device", "source", "fstype", "mount_point"], header
    printed = {
        (cells[0], cells[3])
        for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in lines[start:])
        if len(cells) == len(header)
    }
    expected = {(o["device"], fs["mount_point"]) for o in disks for fs in o["result"]["data"]["filesystems"]}
    assert expected and printed == expected

    # one device: a title line with its freshness, then field | value
    one = run_cli(tmp_path, "collect", "os_info", "--device", "alpha", **WIDE)
    assert one.stdout.startswith("os_info on alpha, collected ")
    assert outcomes["alpha"]["result"]["data"]["kernel_release"] in one.stdout

    # a device that fails is listed with why, after the results, and the exit status says so
    run_cli(tmp_path, "devices", "add", "dead", "127.0.0.1", "--port", "1")
    partial = run_cli(tmp_path, "collect", "os_info", "--all", **WIDE)
    assert partial.returncode == 1
    failed = re.split(r"\nfailed *\n", partial.stdout, maxsplit=1)[1]
    assert "dead" in failed and "host_unreachable" in failed and "no SSH server answered" in failed


def test_collect_runs_on_a_list_of_devices_or_a_tag_selection(tmp_path: Path, sshd_fleet: SshdFleet) -> None:
    _add(tmp_path, sshd_fleet, sshd_fleet.hosts["alpha"], "--tag", "web")
    _add(tmp_path, sshd_fleet, sshd_fleet.hosts["beta"], "--tag", "web", "--tag", "eu")
    _add(tmp_path, sshd_fleet, sshd_fleet.hosts["gamma"])

    def devices(*args: str) -> list[str]:
        done = run_cli(tmp_path, "collect", "os_info", *args, "--json")
        assert done.returncode == 0, done.stderr
        return [o["device"] for o in json.loads(done.stdout) if o["ok"]]

    assert devices("--device", "gamma,alpha") == ["alpha", "gamma"]
    assert devices("--tag", "web") == ["alpha", "beta"]
    assert devices("--tag", "web", "--tag", "eu") == ["beta"]
    assert devices("--device", "alpha,gamma", "--tag", "web") == ["alpha"]
    unknown = run_cli(tmp_path, "collect", "os_info", "--device", "alpha,nope")
    assert unknown.returncode == 2
    assert "Unknown device 'nope'. Known devices: alpha, beta, gamma, local." in " ".join(
        unknown.stderr.split()
    )
    none = run_cli(tmp_path, "collect", "os_info", "--tag", "db")
    assert none.returncode == 2 and "No device carries all of the tags db" in none.stderr


def test_collect_help_names_only_options_that_exist_and_documents_json(tmp_path: Path) -> None:
    collect = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "collect"
    ]
    real = {s for action in collect._actions for s in action.option_strings}
    shown = run_cli(tmp_path, "collect", "--help", COLUMNS="100").stdout
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", shown))
    assert mentioned and mentioned <= real, mentioned - real
    assert '"ok": true' in shown and '"data"' in shown and "exit status" in shown

    listed = run_cli(tmp_path, "collect", "--list", **WIDE)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if "│" in line}
    assert "limit" in rows["top_processes"] and "os_info" in rows and "config_file" in rows
    assert "restart_service" not in rows and "config_hashes" not in rows  # not runnable by collect
    missing = run_cli(tmp_path, "collect")
    assert missing.returncode == 2 and "collect --list" in missing.stderr


def test_devices_update_and_test_fix_a_wrong_port_and_a_changed_host_key(
    tmp_path: Path, sshd_fleet: SshdFleet
) -> None:
    host = sshd_fleet.start_host("cli-update")
    wrong = dataclasses.replace(host, port=1)  # the same host registered with a port nothing listens on
    _add(tmp_path, sshd_fleet, wrong, "--tag", "old")

    tested = run_cli(tmp_path, "devices", "test", **WIDE)
    assert tested.returncode == 1
    rows = {line.split("│")[1].strip(): line for line in tested.stdout.splitlines() if "│" in line}
    assert "no SSH server answered" in rows["cli-update"] and " yes " in rows["local"]

    updated = run_cli(tmp_path, "devices", "update", "cli-update", "--port", str(host.port), "--tag", "new")
    assert updated.returncode == 0, updated.stderr
    assert "port" in updated.stderr and "tags" in updated.stderr
    tested = run_cli(tmp_path, "devices", "test", "cli-update", **WIDE)
    assert tested.returncode == 0, tested.stdout
    assert host.host_key_fingerprint in tested.stdout  # pinned on this first connection
    listed = run_cli(tmp_path, "devices", "list", **WIDE).stdout
    row = next([c.strip() for c in line.split("│")] for line in listed.splitlines() if "cli-update" in line)
    assert row[2] == f"{host.hostname}:{host.port}" and row[5] == "new", row

    # the host is reinstalled: its new key is refused until the pinned one is cleared
    new_key = host.restart_with_new_host_key()
    refused = run_cli(tmp_path, "devices", "test", "cli-update", **WIDE)
    assert refused.returncode == 1 and "update_device with clear_host_key" in refused.stdout
    cleared = run_cli(tmp_path, "devices", "update", "cli-update", "--clear-host-key")
    assert cleared.returncode == 0 and "host key cleared" in cleared.stderr
    tested = run_cli(tmp_path, "devices", "test", "cli-update", **WIDE)
    assert tested.returncode == 0, tested.stdout
    assert sshd_fleet.device(host).host_key == new_key and host.host_key_fingerprint in tested.stdout

    nothing = run_cli(tmp_path, "devices", "update", "cli-update")
    assert nothing.returncode == 2 and "at least one field" in nothing.stderr
    unknown = run_cli(tmp_path, "devices", "test", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    local = run_cli(tmp_path, "devices", "update", "local", "--port", "2222")
    assert local.returncode == 2 and "cannot be changed" in local.stderr


def test_the_cli_reaches_ssh_hosts_without_loading_fastmcp_or_alembic(
    tmp_path: Path, sshd_fleet: SshdFleet
) -> None:
    from tests.test_startup import probe

    _add(tmp_path, sshd_fleet, sshd_fleet.hosts["gamma"])
    code, loaded, stdout = probe(tmp_path, "collect", "os_info", "--all", "--json")
    assert code == 0 and all(o["ok"] for o in json.loads(stdout))
    assert "asyncssh" in loaded and not loaded & {"fastmcp", "mcp", "alembic", "uvicorn"}


def test_a_one_shot_command_logs_only_warnings_unless_a_log_level_is_set(tmp_path: Path) -> None:
    quiet = run_cli(tmp_path, "collect", "os_info", "--device", "local", "--no-server")
    assert quiet.returncode == 0, quiet.stderr
    assert " INFO " not in quiet.stderr, quiet.stderr  # the answer, not a server's start-up chatter
    chatty = run_cli(
        tmp_path, "collect", "os_info", "--device", "local", "--no-server", INFRA_LOG_LEVEL="INFO"
    )
    assert chatty.returncode == 0, chatty.stderr
    assert " INFO mcp_server." in chatty.stderr, chatty.stderr
