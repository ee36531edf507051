"""systemd services and the journal end to end: MCP tool -> validation -> quoting -> real sshd -> fixture systemctl /
journalctl printing captured real outputs -> parse -> store -> cache -> invalidation; plus the parsers' rules."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.budget import fit
from mcp_server.commands import default_registry
from mcp_server.commands.services import JournalParams, ServiceStatusParams
from mcp_server.errors import CommandNotAvailable, InvalidParameter, ParseError
from mcp_server.parsers.services import journal_entry, parse_units, select_units
from mcp_server.server import build_server
from mcp_server.settings import Settings
from mcp_server.state import AppState, open_state
from tests.app_fixtures import add_fleet_host, audit_rows
from tests.helpers import call_tool, fixture_bin, hints
from tests.sshd import SshdHost

GOLDEN = Path(__file__).parent / "golden"
REGISTRY = default_registry()
SERVICE_COMMANDS = ("services", "service_status", "journal_logs")


@dataclass
class ServiceHosts:
    fixtures: SshdHost  # systemctl and journalctl fixtures first on PATH
    bare: SshdHost  # PATH holds only sh: no systemctl, no journalctl
    data: Path

    def calls(self, program: str) -> list[list[str]]:
        """Arguments of every call of `program` the fixtures logged, oldest first."""
        lines = (self.data / "calls.log").read_text().splitlines()
        return [line.split("|")[1:-1] for line in lines if line.startswith(program + "|")]


@pytest.fixture(scope="module")
def service_hosts(sshd_fleet: Any) -> ServiceHosts:
    root = sshd_fleet.scratch_dir()
    bin_dir = fixture_bin(root / "svc", "services", ("systemctl", "journalctl"))
    # the bare host has a shell (the commands are sh scripts) and nothing else
    bare_bin = fixture_bin(root / "bare", "services", (), shell=True)
    data = root / "svc" / "data"
    return ServiceHosts(
        # sshd applies only the first SetEnv line, so PATH is the one variable the hosts differ in
        fixtures=sshd_fleet.start_host("svc-fixtures", env={"PATH": f"{bin_dir}:/usr/bin:/bin"}),
        bare=sshd_fleet.start_host("svc-bare", env={"PATH": str(bare_bin)}),
        data=data,
    )


# ---- through MCP, against the fixture host ----------------------------------------------------------------------


async def test_list_services_puts_failed_units_first_and_filters_and_pages(
    client: Client[Any], state: AppState, sshd_fleet: Any, service_hosts: ServiceHosts
) -> None:
    await add_fleet_host(state, sshd_fleet, service_hosts.fixtures, name="nas")
    first = await call_tool(client, "list_services", device="nas")
    assert first["command"] == "services" and first["from_cache"] is False
    units = first["data"]["units"]
    assert [u["unit"] for u in units][:2] == ["zfs-import-cache.service", "boot.automount"]
    assert (first["data"]["total"], first["data"]["failed_total"], first["data"]["truncated"]) == (
        5,
        1,
        False,
    )

    failed = await call_tool(client, "list_services", device="nas", state="failed")
    assert [u["unit"] for u in failed["data"]["units"]] == ["zfs-import-cache.service"]
    assert failed["from_cache"] is True  # filters and pages are cut from one cached listing

    services = await call_tool(client, "list_services", device="nas", pattern="*.service", limit=1, offset=1)
    assert [u["unit"] for u in services["data"]["units"]] == ["sshd.service"]
    assert (services["data"]["total"], services["data"]["truncated"]) == (2, False)
    page = await call_tool(client, "list_services", device="nas", limit=2)
    assert (len(page["data"]["units"]), page["data"]["total"], page["data"]["truncated"]) == (2, 5, True)

    (row,) = [r for r in await audit_rows(state, kind="collection", command="services") if not r.cache_hit]
    assert row.ssh_commands[0].startswith("sh -c 'export LC_ALL=C SYSTEMD_COLORS=0; command -v systemctl")


async def test_restart_invalidates_the_services_cache_and_the_argv_reaching_systemctl_is_audited(
    sqlite_settings: Settings, sshd_fleet: Any, service_hosts: ServiceHosts
) -> None:
    async with (
        open_state(sqlite_settings) as state,
        Client(build_server(state.settings, state=state)) as client,
    ):
        await add_fleet_host(state, sshd_fleet, service_hosts.fixtures, name="nas")
        assert (await call_tool(client, "list_services", device="nas"))["from_cache"] is False
        assert (await call_tool(client, "list_services", device="nas"))["from_cache"] is True
        status = await call_tool(client, "get_service_status", device="nas", unit="zfs-import-cache.service")
        assert status["from_cache"] is False

        restarted = await call_tool(client, "restart_service", device="nas", unit="zfs-import-cache.service")
        assert restarted["data"] == {"unit": "zfs-import-cache.service", "restarted": True}

        assert (await call_tool(client, "list_services", device="nas"))["from_cache"] is False
        status = await call_tool(client, "get_service_status", device="nas", unit="zfs-import-cache.service")
        assert status["from_cache"] is False  # service_status is in the same cache category
        (row,) = await audit_rows(state, kind="collection", command="restart_service")
        assert row.ssh_commands == ["systemctl restart -- zfs-import-cache.service"]
        assert ["restart", "--", "zfs-import-cache.service"] in service_hosts.calls("systemctl")


async def test_a_failed_restart_is_a_clear_error_with_systemctls_message(
    sqlite_settings: Settings, sshd_fleet: Any, service_hosts: ServiceHosts
) -> None:
    async with (
        open_state(sqlite_settings) as state,
        Client(build_server(state.settings, state=state)) as client,
    ):
        await add_fleet_host(state, sshd_fleet, service_hosts.fixtures, name="nas")
        with pytest.raises(ToolError, match="exited with status 1: Job for broken.service failed"):
            await client.call_tool("restart_service", {"device": "nas", "unit": "broken.service"})
        (row,) = await audit_rows(state, kind="collection", command="restart_service")
        assert (row.outcome, row.error_type) == ("error", "command_failed")


async def test_service_status_reports_state_pid_memory_and_decoded_journal_entries(
    sqlite_settings: Settings, sshd_fleet: Any, service_hosts: ServiceHosts
) -> None:
    async with open_state(sqlite_settings) as state:
        await add_fleet_host(state, sshd_fleet, service_hosts.fixtures, name="nas")
        result = await state.service.collect("nas", "service_status", {"unit": "labapp.service", "lines": 5})
    status = result.data
    assert (status.active_state, status.sub_state, status.main_pid) == ("active", "running", 903396)
    assert (status.memory_bytes, status.restarts, status.result) == (193536000, 0, "success")
    assert status.since_text == "Fri 2026-07-24 06:27:29 CEST" and status.unit == "labapp.service"
    messages = [e.message for e in status.journal]
    assert messages[1] == "\x1b[31mred error\x1b[0m from labapp"  # a byte array in journalctl's JSON
    assert messages[3] == "first line\nsecond line"
    assert [e.priority_name for e in status.journal][:3] == ["info", "err", "warning"]
    show, journal = service_hosts.calls("systemctl")[-1], service_hosts.calls("journalctl")[-1]
    assert show[:3] == ["show", "--no-pager", "--timestamp=unix"] and show[-2:] == ["--", "labapp.service"]
    assert journal[-3:] == ["-n", "5", "--unit=labapp.service"]


async def test_journal_filters_reach_journalctl_as_single_quoted_arguments(
    client: Client[Any], state: AppState, sshd_fleet: Any, service_hosts: ServiceHosts
) -> None:
    await add_fleet_host(state, sshd_fleet, service_hosts.fixtures, name="nas")
    logs = await call_tool(
        client,
        "get_journal_logs",
        device="nas",
        unit="labapp.service",
        since="2025-11-22 00:06",
        until="2 hours ago",
        priority=4,
        grep="from labapp",
        lines=1,
    )
    data = logs["data"]
    assert [e["message"] for e in data["entries"]] == ["\x1b[31mred error\x1b[0m from labapp"]
    assert (data["total"], data["truncated"]) == (2, True)
    (row,) = await audit_rows(state, kind="collection", command="journal_logs")
    assert row.ssh_commands == [
        "journalctl --no-pager --output=json --all --output-fields=MESSAGE,PRIORITY,_SYSTEMD_UNIT,UNIT,"
        "_SYSTEMD_USER_UNIT,USER_UNIT,SYSLOG_IDENTIFIER,_COMM,_PID,SYSLOG_PID --lines 10000 --unit=labapp.service "
        "'--since=2025-11-22 00:06' '--until=2 hours ago' --priority=4"
    ]
    received = service_hosts.calls("journalctl")[-1]
    assert received[-4:] == [
        "--unit=labapp.service",
        "--since=2025-11-22 00:06",
        "--until=2 hours ago",
        "--priority=4",
    ]


async def test_missing_systemctl_and_journalctl_are_command_not_available_naming_binary_and_device(
    sqlite_settings: Settings, sshd_fleet: Any, service_hosts: ServiceHosts
) -> None:
    async with open_state(sqlite_settings) as state:
        await add_fleet_host(state, sshd_fleet, service_hosts.bare, name="pi")
        cases = [
            ("services", {}, "systemctl"),
            ("service_status", {"unit": "ssh.service"}, "systemctl"),
            ("restart_service", {"unit": "ssh.service"}, "systemctl"),
            ("journal_logs", {}, "journalctl"),
        ]
        for command, params, binary in cases:
            with pytest.raises(CommandNotAvailable) as raised:
                await state.service.collect("pi", command, params)
            assert (raised.value.binary, raised.value.device) == (binary, "pi")
            assert f"needs '{binary}'" in str(raised.value) and "'pi'" in str(raised.value)


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs on this machine")
async def test_a_device_with_systemctl_but_no_running_systemd_says_systemd_is_not_available(
    sqlite_settings: Settings,
) -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl is not installed here")
    async with open_state(sqlite_settings) as state:
        with pytest.raises(CommandNotAvailable, match="needs 'systemd'.*'local'"):
            await state.service.collect("local", "services")


# ---- injection corpus: rejected before anything runs ------------------------------------------------------------

MARKER = Path(f"/tmp/infra-injection-{uuid.uuid4().hex}")
CORPUS = [
    f"x; touch {MARKER}",
    "$(id)",
    f"`touch {MARKER}`",
    "a\nb",
    "--output=/etc/passwd",
    "../../etc/passwd",
    "",
    "a" * 300,
]
# grep is a literal the parser looks for and never reaches the device, so shell syntax in it is harmless text
GREP_ACCEPTED = {f"x; touch {MARKER}", "$(id)", f"`touch {MARKER}`", "../../etc/passwd"}
NAMED_ARGUMENTS = [
    ("get_service_status", "unit"),
    ("restart_service", "unit"),
    ("get_journal_logs", "unit"),
    ("get_journal_logs", "since"),
    ("get_journal_logs", "until"),
    ("get_journal_logs", "priority"),
    ("get_journal_logs", "grep"),
    ("list_services", "pattern"),
]


@pytest.mark.parametrize(("tool", "argument"), NAMED_ARGUMENTS)
async def test_injection_attempts_are_rejected_and_nothing_runs(
    sqlite_settings: Settings, sshd_fleet: Any, service_hosts: ServiceHosts, tool: str, argument: str
) -> None:
    async with (
        open_state(sqlite_settings) as state,
        Client(build_server(state.settings, state=state)) as client,
    ):
        await add_fleet_host(state, sshd_fleet, service_hosts.fixtures, name="nas")
        base = {"device": "nas"} | (
            {"unit": "ssh.service"} if tool in ("get_service_status", "restart_service") else {}
        )
        before = (service_hosts.data / "calls.log").read_text()
        for value in CORPUS:
            arguments = base | {argument: value}
            if argument == "grep" and value in GREP_ACCEPTED:
                data = await call_tool(client, tool, **arguments)
                assert data["data"]["entries"] == []
                continue
            with pytest.raises(ToolError):
                await client.call_tool(tool, arguments)
        assert not MARKER.exists()
        executed = [row for row in await audit_rows(state, kind="collection") if row.ssh_commands]
        if argument == "grep":
            assert all("touch" not in " ".join(row.ssh_commands) for row in executed)
        else:
            assert executed == []
            assert (service_hosts.data / "calls.log").read_text() == before


@pytest.mark.parametrize(
    "value", ["x; touch /tmp/p", "$(id)", "`id`", "a\nb", "--output=/etc/passwd", "", "a" * 300]
)
def test_the_command_parameters_refuse_hostile_values_even_without_the_tool_layer(value: str) -> None:
    for command, field in (
        ("service_status", "unit"),
        ("restart_service", "unit"),
        ("journal_logs", "since"),
    ):
        with pytest.raises(InvalidParameter):
            REGISTRY.get(command).validate({field: value})


# ---- parameters and parsers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit",
    [
        "nginx.service",
        "getty@tty1.service",
        "dev-disk-by\\x2dlabel-data.device",
        "backup.timer",
        "a.automount",
    ],
)
def test_unit_names_with_a_known_suffix_and_systemd_escapes_are_accepted(unit: str) -> None:
    assert ServiceStatusParams(unit=unit).unit == unit


@pytest.mark.parametrize(
    "unit", ["nginx", "nginx.conf", "-x.service", "a b.service", "a/b.service", "x.service\n"]
)
def test_unit_names_without_a_known_suffix_or_with_other_characters_are_refused(unit: str) -> None:
    with pytest.raises(ValueError):
        ServiceStatusParams(unit=unit)


@pytest.mark.parametrize(
    "spec", ["2024-05-01", "2024-05-01 13:00", "2024-05-01 13:00:59", "-30min", "-2h", "-3d", "1 hour ago",
             "5min ago", "today", "yesterday", "now"],
)  # fmt: skip
def test_the_allowed_systemd_time_specs_pass(spec: str) -> None:
    assert JournalParams(since=spec, until=spec).since == spec


@pytest.mark.parametrize(
    "spec", ["tomorrow", "2024-05-01T13:00", "@1700000000", "-2 h", "1 hour", "last week"]
)
def test_other_time_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        JournalParams(since=spec)


def test_priority_takes_a_name_or_a_digit_and_an_integer_becomes_its_digit() -> None:
    priorities: tuple[Any, ...] = ("err", "warning", "3", 7)
    assert [JournalParams(priority=p).priority for p in priorities] == [
        "err",
        "warning",
        "3",
        "7",
    ]
    bad_priorities: tuple[Any, ...] = ("error", "8", 8, -1, True)
    for bad in bad_priorities:
        with pytest.raises(ValueError):
            JournalParams(priority=bad)


def test_grep_widens_the_window_journalctl_reads_and_never_reaches_its_arguments() -> None:
    params = JournalParams(grep="a b(c)", lines=50)
    argv = REGISTRY.get("journal_logs").render(params)
    assert params.scan_lines == 10_000 and "10000" in argv
    assert not any("a b" in word for word in argv)
    assert JournalParams(lines=50).scan_lines == 50


def _golden_units() -> Any:
    return parse_units((GOLDEN / "services/centos7_table_failed_bullet.txt").read_text(), None).units


def test_unit_selection_filters_by_state_and_shell_pattern() -> None:
    units = _golden_units()
    assert [u.unit for u in select_units(units, "failed", None)] == ["sidekiq.service"]
    assert [u.unit for u in select_units(units, "all", "systemd-journal*")] == [
        "systemd-journal-flush.service",
        "systemd-journald.service",
    ]
    assert select_units(units, "inactive", None) == []
    assert len(select_units(units, "active", "*.service")) == 49


def test_a_repeated_journal_field_is_joined_and_an_oversized_one_is_named_not_dropped() -> None:
    base = {"__REALTIME_TIMESTAMP": "1763770000000000", "PRIORITY": "6"}
    assert journal_entry(base | {"MESSAGE": ["one", "two"]}).message == "one\ntwo"
    assert "larger than journalctl prints" in journal_entry(base | {"MESSAGE": None}).message
    long = journal_entry(base | {"MESSAGE": "x" * 5000})
    assert (len(long.message), long.message_truncated) == (2000, True)


def test_the_result_budget_keeps_the_newest_journal_entries() -> None:
    base = {"__REALTIME_TIMESTAMP": "1763770000000000", "PRIORITY": "6"}
    entries = [journal_entry(base | {"MESSAGE": f"line {i} " + "x" * 100}) for i in range(50)]
    payload = {"data": {"entries": [e.model_dump(mode="json") for e in entries], "truncated": False}}
    kept = fit(payload, 2_000, keep="newest")["data"]
    assert kept["entries"] and kept["entries"][-1]["message"].startswith("line 49")
    assert len(kept["entries"]) < 50 and kept["truncated"] is True


GARBAGE = ["garbage\n", "@@nothing\n1 2 3\n", "{}", "[1, 2]", "\x00\x01\x02", "@@end\n"]


@pytest.mark.parametrize("text", GARBAGE, ids=repr)
@pytest.mark.parametrize("command", SERVICE_COMMANDS)
def test_garbage_output_raises_parse_error_naming_the_command(command: str, text: str) -> None:
    definition = REGISTRY.get(command)
    params = definition.validate({"unit": "ssh.service"} if command == "service_status" else {})
    with pytest.raises(ParseError, match=command):
        definition.parse(text, params)


@pytest.mark.parametrize("case", sorted((GOLDEN / "services").glob("*.txt")) + sorted((GOLDEN / "service_status").glob("*.txt")), ids=lambda p: p.stem)  # fmt: skip
def test_a_listing_or_status_cut_short_is_refused_rather_than_returned_partially(case: Path) -> None:
    definition = REGISTRY.get(case.parent.name)
    params_file = case.with_name(case.stem + ".params.json")
    params = definition.validate(json.loads(params_file.read_text()) if params_file.exists() else {})
    text = case.read_text()
    with pytest.raises(ParseError):
        definition.parse(text[: len(text) // 2], params)


async def test_service_tools_are_annotated_read_only_except_restart_which_is_a_destructive_write(
    client: Client[Any],
) -> None:
    tools = {t.name: t for t in await client.list_tools()}
    for name in ("list_services", "get_service_status", "get_journal_logs"):
        annotations = hints(tools[name])
        assert annotations.read_only_hint is True, name
        assert (annotations.destructive_hint, annotations.idempotent_hint) == (False, True), name
    restart = tools["restart_service"]
    assert (hints(restart).read_only_hint, hints(restart).destructive_hint) == (False, True)
    assert restart.meta is not None and "scope:infra:write" in restart.meta["fastmcp"]["tags"]
