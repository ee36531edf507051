"""Golden-file and error tests for the system, storage and network parsers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mcp_server.commands import CommandDefinition, NoParams, default_registry
from mcp_server.commands.storage import DiskUsageParams
from mcp_server.commands.system import TopProcessesParams
from mcp_server.errors import ParseError
from mcp_server.parsers.storage import parse_disk_usage
from mcp_server.parsers.system import os_release, parse_os_info, parse_top_processes

GOLDEN = Path(__file__).parent / "golden"
REGISTRY = default_registry()
CASES = sorted(GOLDEN.glob("*/*.txt"))
HOST_COMMANDS = [
    REGISTRY.get(name)
    for name in ("system_metrics", "top_processes", "os_info", "disk_usage", "network_interfaces")
]


def _case_params(path: Path) -> BaseModel:
    """The validated parameters a golden case was captured with (<case>.params.json, or the defaults)."""
    params_file = path.with_name(path.stem + ".params.json")
    return REGISTRY.get(path.parent.name).validate(
        json.loads(params_file.read_text()) if params_file.exists() else {}
    )


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_golden_output_parses_to_the_expected_model(case: Path) -> None:
    expected = json.loads(case.with_suffix(".json").read_text())
    parsed = REGISTRY.get(case.parent.name).parse(case.read_text(), _case_params(case))
    assert parsed.model_dump(mode="json") == expected


@pytest.mark.parametrize("command", list(REGISTRY), ids=lambda c: c.name)
def test_every_registered_command_has_a_golden_case(command: CommandDefinition[Any]) -> None:
    folder = GOLDEN / command.name
    cases = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    assert cases, f"no golden case in {folder}"
    for case in cases:
        assert case.with_suffix(".json").exists(), f"{case} has no expected .json beside it"


GARBAGE = ["", "\n", "garbage\n", "@@nothing\n1 2 3\n", "{}", "[1, 2]", "\x00\x01\x02", "@@end\n"]


@pytest.mark.parametrize("text", GARBAGE, ids=repr)
@pytest.mark.parametrize("command", HOST_COMMANDS, ids=lambda c: c.name)
def test_garbage_or_empty_output_raises_parse_error(command: CommandDefinition[Any], text: str) -> None:
    with pytest.raises(ParseError) as info:
        command.parse(text, command.validate({}))
    assert command.name in str(info.value)


# these scripts end with @@end, so a truncated capture is detectable and must be refused
HOST_CASES = [case for case in CASES if case.parent.name in {c.name for c in HOST_COMMANDS}]


@pytest.mark.parametrize("case", HOST_CASES, ids=[f"{p.parent.name}/{p.stem}" for p in HOST_CASES])
def test_golden_output_cut_in_half_never_yields_a_partial_result(case: Path) -> None:
    text = case.read_text()
    half = text[: len(text) // 2]
    command, params = REGISTRY.get(case.parent.name), _case_params(case)
    try:
        result = command.parse(half, params)
    except ParseError:
        return
    # the only acceptable success is one that lost nothing the full output reported
    assert result == command.parse(text, params)


def test_parse_error_carries_the_beginning_of_the_output() -> None:
    with pytest.raises(ParseError) as info:
        parse_disk_usage("@@df-gnu\nDateisystem Typ\n@@mounts\n", DiskUsageParams())
    assert "Dateisystem" in info.value.excerpt


def test_old_arm_cpuinfo_processor_key_names_the_cpu_but_lowercase_processor_does_not() -> None:
    base = "@@hostname\nnas\n@@release\n3.2.0-4-kirkwood\n@@machine\narmv5tel\n@@os-release\n@@stat\ncpu0 1 0 1 1\n"
    old_arm = (
        base + "@@cpuinfo\nProcessor\t: Feroceon 88FR131 rev 1 (v5l)\nHardware\t: Marvell SheevaPlug\n@@end\n"
    )
    index_only = base + "@@cpuinfo\nprocessor\t: 0\n@@end\n"
    assert parse_os_info(old_arm, NoParams()).cpu_model == "Feroceon 88FR131 rev 1 (v5l)"
    assert parse_os_info(index_only, NoParams()).cpu_model is None
    assert parse_os_info(old_arm, NoParams()).distro.id is None


def test_os_release_values_lose_their_shell_quoting() -> None:
    values = os_release(
        ['NAME="Fedora Linux"', "ID=fedora", "VERSION_ID=40", "PRETTY_NAME='It\\'s odd'", "# x=y"]
    )
    assert values["NAME"] == "Fedora Linux"
    assert values["VERSION_ID"] == "40"
    assert "# x" not in values


def test_df_rows_without_inode_counts_report_null_inodes_and_sizeless_rows_are_left_out() -> None:
    stdout = (
        "@@df-gnu\n"
        "Filesystem Type 1B-blocks Used Avail Use% Inodes IUsed IFree IUse% Mounted on\n"
        "/dev/sdb1 vfat 536608768 6324224 530284544 2% - - - - /boot/efi\n"
        "/dev/sda2 btrfs 1000000000 250000000 740000000 26% 0 0 0 - /srv/my data\n"
        "remote:/x fuse.sshfs - - - - - - - - /mnt/remote\n"
        "@@mounts\n@@end\n"
    )
    found = {fs.mount_point: fs for fs in parse_disk_usage(stdout, DiskUsageParams()).filesystems}
    assert set(found) == {"/boot/efi", "/srv/my data"}
    assert found["/boot/efi"].inodes_total is None
    assert found["/srv/my data"].inodes_use_percent is None
    assert found["/srv/my data"].use_percent == 25.25


def _top(stat_lines: str, later_lines: str, ps: str = "") -> str:
    return (
        "@@cpu1\ncpu 100 0 0 100 0 0 0 0\ncpu0 50 0 0 50\ncpu1 50 0 0 50\n@@uptime1\n10.00 5.00\n"
        f"@@procs1\n{stat_lines}@@cpu2\ncpu 200 0 0 200 0 0 0 0\ncpu0 100 0 0 100\ncpu1 100 0 0 100\n"
        f"@@uptime2\n11.00 6.00\n@@procs2\n{later_lines}@@meminfo\nMemTotal: 1000 kB\n@@status\n"
        "/proc/7/status:Uid:\t1000\t1001\t1000\t1000\n/proc/7/status:VmRSS:\t 100 kB\n"
        "/proc/9/status:Uid:\t0\t0\t0\t0\n"
        f"@@passwd\nroot:0\nalice:1001\n@@ps\n{ps}@@end\n"
    )


def _stat(pid: int, comm: str, utime: int, start: int) -> str:
    """A /proc/[pid]/stat record as `grep -H ''` prints it (every line prefixed with the file name)."""
    record = f"{pid} ({comm}) R 1 0 0 0 -1 0 0 0 0 0 {utime} 0 0 0 20 0 3 0 {start} 0 0"
    return "".join(f"/proc/{pid}/stat:{line}\n" for line in record.split("\n"))


def test_process_cpu_is_measured_over_the_interval_as_a_share_of_one_cpu() -> None:
    # 200 jiffies passed over 2 CPUs = 100 per CPU; pid 7 used 50 of them
    result = parse_top_processes(
        _top(_stat(7, "a) b (c", 10, 5), _stat(7, "a) b (c", 60, 5) + _stat(9, "new", 20, 150)),
        TopProcessesParams(),
    )
    by_pid = {p.pid: p for p in result.processes}
    assert by_pid[7].cpu_percent == 50.0
    assert by_pid[7].name == "a) b (c"
    assert by_pid[7].user == "alice"
    assert by_pid[7].rss_bytes == 102400
    assert by_pid[7].memory_percent == 10.0
    assert by_pid[7].threads == 3
    # started during the interval: all of its CPU time counts
    assert by_pid[9].cpu_percent == 20.0
    assert by_pid[9].args is None


def test_a_reused_pid_is_not_measured_against_the_old_process() -> None:
    result = parse_top_processes(
        _top(_stat(7, "old", 500, 5), _stat(7, "new", 30, 150)), TopProcessesParams()
    )
    assert result.processes[0].cpu_percent == 30.0


def test_processes_that_exit_before_their_status_is_read_are_left_out_and_limit_cuts_the_list() -> None:
    later = _stat(7, "x", 10, 5) + _stat(8, "gone", 90, 5) + _stat(9, "y", 40, 5)
    result = parse_top_processes(_top("", later), TopProcessesParams(limit=1))
    assert [p.pid for p in result.processes] == [9]
    assert (result.total, result.truncated) == (2, True)


def test_sorting_by_memory_puts_the_largest_resident_set_first() -> None:
    later = _stat(7, "x", 10, 5) + _stat(9, "y", 40, 5)
    result = parse_top_processes(_top("", later), TopProcessesParams(sort_by="memory"))
    assert [p.pid for p in result.processes] == [7, 9]


def test_long_command_lines_are_cut_to_300_characters() -> None:
    result = parse_top_processes(
        _top("", _stat(7, "x", 1, 5), ps=f"    7 {'a' * 1000}\n"), TopProcessesParams()
    )
    args = result.processes[0].args
    assert args is not None and len(args) == 300 and args.endswith("...")


def test_a_stat_record_that_never_completes_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_top_processes(_top("", "/proc/7/stat:7 (broken) R 1 2 3\n"), TopProcessesParams())


def test_output_without_the_end_marker_is_a_parse_error_not_a_partial_result() -> None:
    complete = _top("", _stat(7, "x", 1, 5))
    assert parse_top_processes(complete, TopProcessesParams()).total == 1
    with pytest.raises(ParseError, match="incomplete"):
        parse_top_processes(complete.removesuffix("@@end\n"), TopProcessesParams())


def test_a_command_line_that_looks_like_a_section_marker_cannot_hijack_a_section() -> None:
    # busybox ps prints a process name holding newlines raw, so "@@status" can start a line
    ps = "    7 {x\n@@status\n/proc/9/status:Uid:\t0\t0\t0\t0\n} python\n    9 y\n@@end\n    9 z\n"
    result = parse_top_processes(_top("", _stat(7, "x\n@@status", 1, 5), ps=ps), TopProcessesParams())
    assert [(p.pid, p.name, p.args) for p in result.processes] == [(7, "x\n@@status", "{x")]
