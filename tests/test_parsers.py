"""Golden-file and error tests for the parsers, and hostile output each must refuse with a ParseError."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mcp_server.commands import CommandDefinition, NoParams, default_registry
from mcp_server.commands.admin import RunCommandParams, parse_run_command
from mcp_server.commands.storage import DiskUsageParams
from mcp_server.commands.system import TopProcessesParams
from mcp_server.config_monitoring import risk
from mcp_server.errors import ParseError
from mcp_server.parsers.config_compose import parse_compose_file
from mcp_server.parsers.config_files import parse_content
from mcp_server.parsers.config_nginx import parse_nginx
from mcp_server.parsers.storage import parse_disk_usage
from mcp_server.parsers.storage_zfs import parse_zpool_status
from mcp_server.parsers.system import os_release, parse_os_info, parse_top_processes
from tests.test_fuzz import alias_bomb

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


@pytest.mark.parametrize(
    "raw",
    [
        "debian",
        '"Debian GNU/Linux 12 (bookworm)"',
        "'single quoted'",
        '""',
        "''",
        "two  words",
        " padded ",
        '"it\'s"',
        "'say \"hi\"'",
        '"a"b',
        '"a" "b"',
        "a\\ b",
        '"esc \\" inside"',
        "$HOME `x`",
        '"',
    ],
)
def test_os_release_values_are_read_as_shlex_reads_them(raw: str) -> None:
    try:
        expected = " ".join(shlex.split(raw))
    except ValueError:
        expected = raw.strip("\"'")
    assert os_release([f"X={raw}"])["X"] == expected


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


# ---- hostile output: refused with a clear reason, never an escaped exception --------------------------------


def test_a_yaml_alias_bomb_in_a_compose_file_is_refused_before_it_expands() -> None:
    # 446 bytes that stand for a billion strings froze the server when anything walked them
    bomb = alias_bomb()
    assert len(bomb) < 1000
    started = time.perf_counter()
    parsed, error = parse_content("compose", bomb)
    assert time.perf_counter() - started < 1.0
    assert parsed == {}
    assert error == (
        "the YAML expands to more than 100000 nodes through aliases (or is far larger than a compose file)"
    )


def test_compose_anchors_and_merge_keys_still_parse() -> None:
    text = (
        "x-common: &default\n  restart: unless-stopped\n  environment: &env\n    TZ: UTC\n"
        "services:\n  web:\n    <<: *default\n    image: nginx\n  worker:\n    <<: *default\n"
        "    image: app\n    environment: *env\n"
    )
    services = {s.name: s for s in parse_compose_file(text).services}
    assert services["web"].restart == "unless-stopped"
    assert services["worker"].environment == ["TZ"]


def test_a_compose_alias_inside_its_own_anchor_is_refused_and_rated_high_risk() -> None:
    text = "services:\n  app:\n    image: nginx\n    labels: &l [*l]\n"
    assert parse_content("compose", text)[1] == "an alias at line 4 refers to a node that contains it"
    old = "services:\n  app:\n    image: nginx\n    labels: [a]\n"
    assessment = risk.classify("compose", "/srv/compose.yaml", "modified", old, text)
    assert assessment.risk == "high"
    assert "not a valid compose file (an alias at line 4" in assessment.reasons[0]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("services:\n  app:\n    labels: " + "[" * 65 + "]" * 65, "nests deeper than 64 levels"),
        (
            f"a: &a {'[' * 30}x{']' * 30}\nb: {'[' * 35}*a{']' * 35}\n",
            "nests deeper than 64 levels (counting through aliases)",
        ),
        ("services:\n" + "".join(f"  s{i}:\n    image: x\n" for i in range(1001)), "1001 services"),
        ("x: " + "a" * 1_048_577, "a compose file has at most 1048576"),
        (
            "a: &a " + "x" * 500_000 + "\nb: [" + ", ".join(["*a"] * 10) + "]\n",
            "more than 4194304 characters",
        ),
    ],
    ids=["deep", "deep through aliases", "1001 services", "over 1 MiB", "long scalar aliased"],
)
def test_compose_files_past_the_bounds_are_refused_with_the_bound_named(text: str, reason: str) -> None:
    parsed, error = parse_content("compose", text)
    assert parsed == {} and error is not None and reason in error, error


def test_nginx_blocks_nested_past_the_limit_are_a_syntax_error() -> None:
    deep = "http {" * 5_000 + "}" * 5_000
    assert parse_content("nginx", deep) == ({}, "blocks nest deeper than 32 levels on line 1")
    assert "nest deeper" in risk.classify("nginx", "/etc/nginx/nginx.conf", "modified", "", deep).reasons[0]


def test_nginx_variables_that_double_at_each_set_are_left_unresolved() -> None:
    # each `set` doubles the value: resolved, proxy_pass would be 2**40 characters long
    sets = "".join(f"set $v{i + 1} $v{i}$v{i};" for i in range(40))
    config = parse_nginx(f"location / {{ set $v0 ab; {sets} proxy_pass http://$v40; }}")
    location = config.locations[0]
    assert location.proxy_pass == "http://$v40"
    assert location.upstream is None


def test_nginx_variables_still_resolve_through_nested_scopes() -> None:
    config = parse_nginx(
        "server { set $app web; set $port 80; location / { set $port 8080; proxy_pass http://$app:$port; }"
        " location /b { location /b/c { proxy_pass http://$app:$port/c; } } }"
    )
    assert [loc.upstream for loc in config.servers[0].locations] == ["web:8080", None, "web:80"]


def test_zpool_status_config_without_its_header_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="NAME STATE header"):
        parse_zpool_status(
            "  pool: tank\n state: ONLINE\nconfig:\n\n        tank  ONLINE 0 0 0\n", NoParams()
        )


def test_a_run_command_exit_marker_that_is_not_a_plain_number_is_a_parse_error() -> None:
    params = RunCommandParams(argv=("true",))
    for status in ("²", "9" * 5000):
        with pytest.raises(ParseError, match="no exit marker"):
            parse_run_command(f"@@exit={status}\n", params)


@pytest.mark.parametrize(
    ("command", "stdout"),
    [
        ("network_interfaces", "[" * 100_000 + "]" * 100_000),
        ("container_inspect", '[{"a":' * 100_000),
        ("network_interfaces", '[{"ifname": "lo", "ifindex": 1, "stats64": [1]}]'),
        ("zfs_snapshots", f"tank@a\t0\t{10**20}\n"),
        (
            "container_stats",
            '{"ID":"a","MemUsage":"1e400MiB / 1GiB","NetIO":"0B / 0B","BlockIO":"0B / 0B","CPUPerc":"1%"}',
        ),
        ("journal_logs", '{"__REALTIME_TIMESTAMP": "1' + "0" * 30 + '", "MESSAGE": "x"}\n'),
        ("journal_logs", '{"__REALTIME_TIMESTAMP": "1", "MESSAGE": ' + "[" * 900 + '"x"' + "]" * 900 + "}\n"),
    ],
    ids=[
        "deep JSON array",
        "deep JSON object",
        "list for an object",
        "year 10**12",
        "infinite size",
        "far timestamp",
        "deeply nested field",
    ],
)
def test_output_of_the_wrong_shape_or_range_is_a_parse_error(command: str, stdout: str) -> None:
    definition = REGISTRY.get(command)
    params_file = next((GOLDEN / command).glob("*.params.json"), None)
    params = definition.validate(json.loads(params_file.read_text()) if params_file else {})
    with pytest.raises(ParseError, match=command):
        definition.parse(stdout, params)
