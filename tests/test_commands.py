"""The system, storage and network commands: safe argv rendering, and real runs checked against ground truth."""

from __future__ import annotations

import itertools
import os
import platform
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mcp_server.commands import Arg, CommandDefinition, NoParams, default_registry
from mcp_server.commands.system import OS_INFO_SCRIPT
from mcp_server.devices import Device
from mcp_server.errors import InvalidParameter
from mcp_server.executors import LocalExecutor, check_exit
from mcp_server.parsers.network import NetworkInterfaces
from mcp_server.parsers.storage import DiskUsage
from mcp_server.parsers.system import OsInfo, SystemMetrics, TopProcesses

LOCAL_DEVICE = Device(name="local", hostname="local")

REGISTRY = default_registry()
NAMES = ("system_metrics", "top_processes", "os_info", "disk_usage", "network_interfaces")
COMMANDS = [REGISTRY.get(name) for name in NAMES]

# two valid parameter sets per command, to show the script text never depends on them
VALID_PARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "system_metrics": ({}, {"interval": 2.5}),
    "top_processes": ({}, {"sort_by": "memory", "limit": 200, "interval": 0.1}),
    "disk_usage": ({}, {"include_pseudo": True}),
    "network_interfaces": ({}, {}),
    "os_info": ({}, {}),
}

INJECTIONS: list[Any] = ["5; touch /tmp/x", "$(id)", "`id`", "1\nid", "0.5 && id", "'; id; '"]
BAD_PARAMS: dict[str, list[dict[str, Any]]] = {
    "system_metrics": [
        *({"interval": value} for value in INJECTIONS),
        {"interval": -1},
        {"interval": 0},
        {"interval": 5.01},
        {"interval": float("nan")},
        {"interval": float("inf")},
        {"interval": 0.5, "extra": "x"},
    ],
    "top_processes": [
        *({"sort_by": value} for value in [*INJECTIONS, "pid", "CPU"]),
        *({"limit": value} for value in [*INJECTIONS, 0, -5, 201, 1.5]),
        *({"interval": value} for value in [*INJECTIONS, 0.05, 6]),
        {"order": "cpu"},
    ],
    "disk_usage": [
        *({"include_pseudo": value} for value in [*INJECTIONS, "maybe", 2]),
        {"include_pseudo": False, "path": "/"},
    ],
    "network_interfaces": [{"interface": "eth0"}, {"x": "$(id)"}],
    "os_info": [{"verbose": True}, {"x": "`id`"}],
}


def test_the_registry_holds_the_host_commands_with_their_categories_and_ttls() -> None:
    expected = {
        "system_metrics": ("system", 10),
        "top_processes": ("system", 10),
        "os_info": ("system", 3600),
        "disk_usage": ("storage", 60),
        "network_interfaces": ("network", 30),
    }
    assert {c.name: (c.category, c.ttl) for c in COMMANDS} == expected


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_parameters_only_reach_argv_as_separate_words_after_a_constant_script(
    command: CommandDefinition[Any],
) -> None:
    first, second = (command.validate(p) for p in VALID_PARAMS[command.name])
    argv_first, argv_second = command.render(first), command.render(second)
    assert argv_first[:2] == ["sh", "-c"]
    assert argv_first[2] == argv_second[2], "script text changed with the parameters"
    script_words = [part for part in command.argv if not isinstance(part, Arg)]
    assert argv_first[: len(script_words)] == script_words
    # every Arg comes after the script and `sh` ($0), so it can only be "$1", "$2", ...
    for index, part in enumerate(command.argv):
        if isinstance(part, Arg):
            assert index >= 4 and command.argv[3] == "sh"
    for params in (first, second):
        assert shlex.split(command.shell_command(params)) == command.render(params)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_scripts_are_one_line_so_any_login_shell_passes_them_through(command: CommandDefinition[Any]) -> None:
    script = command.argv[2]
    assert isinstance(script, str) and "\n" not in script and "!" not in script


@pytest.mark.parametrize(
    ("name", "params"),
    [(name, params) for name, cases in BAD_PARAMS.items() for params in cases],
    ids=lambda v: repr(v)[:40],
)
def test_injection_attempts_and_out_of_range_parameters_are_rejected(
    name: str, params: dict[str, Any]
) -> None:
    with pytest.raises(InvalidParameter):
        REGISTRY.get(name).validate(params)


def test_every_parameter_has_a_description_and_every_result_field_too() -> None:
    def undocumented(model: type[BaseModel]) -> list[str]:
        missing = [f"{model.__name__}.{n}" for n, f in model.model_fields.items() if not f.description]
        for field in model.model_fields.values():
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                inner = getattr(arg, "__args__", (arg,))
                missing += [
                    m
                    for t in inner
                    if isinstance(t, type) and issubclass(t, BaseModel)
                    for m in undocumented(t)
                ]
        return missing

    for command in COMMANDS:
        assert undocumented(command.params) == []
        assert undocumented(command.model) == []


# ---- real runs ---------------------------------------------------------------------------------------------


async def _run(name: str, params: dict[str, Any] | None = None, prefix: tuple[str, ...] = ()) -> Any:
    command = REGISTRY.get(name)
    validated = command.validate(params or {})
    argv = [*prefix, *command.render(validated)]
    result = await LocalExecutor().run(LOCAL_DEVICE, argv, timeout=command.timeout, label=name)
    check_exit(result, "local", name, command.ok_exit_statuses)
    return command.parse(result.stdout, validated)


def _uptime() -> float:
    with open("/proc/uptime") as handle:
        return float(handle.read().split()[0])


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise AssertionError(f"{key} missing from /proc/meminfo")


async def test_system_metrics_match_proc_meminfo_and_the_cpu_count() -> None:
    metrics: SystemMetrics = await _run("system_metrics", {"interval": 0.2})
    assert metrics.memory.total_bytes == _meminfo_kib("MemTotal") * 1024
    assert metrics.swap.total_bytes == _meminfo_kib("SwapTotal") * 1024
    assert metrics.cpu_count == os.cpu_count()
    assert 0.15 <= metrics.interval_seconds <= 1.0
    cpu = metrics.cpu
    parts = cpu.user_percent + cpu.system_percent + cpu.iowait_percent + cpu.steal_percent + cpu.idle_percent
    assert parts == pytest.approx(100, abs=0.05)
    assert metrics.memory.used_bytes == metrics.memory.total_bytes - metrics.memory.available_bytes
    assert metrics.uptime_seconds == pytest.approx(_uptime(), abs=5)


async def test_disk_usage_of_the_root_mount_matches_statvfs() -> None:
    usage: DiskUsage = await _run("disk_usage")
    root = next(fs for fs in usage.filesystems if fs.mount_point == "/")
    truth = shutil.disk_usage("/")
    assert root.size_bytes == truth.total
    assert abs(root.used_bytes - truth.used) < 64 * 1024 * 1024
    assert root.inodes_total == os.statvfs("/").f_files
    assert not any(fs.pseudo for fs in usage.filesystems)


async def test_disk_usage_with_pseudo_filesystems_lists_at_least_as_many_mounts() -> None:
    plain: DiskUsage = await _run("disk_usage")
    everything: DiskUsage = await _run("disk_usage", {"include_pseudo": True})
    assert {fs.mount_point for fs in plain.filesystems} <= {fs.mount_point for fs in everything.filesystems}


async def test_network_interfaces_match_the_kernel_and_include_loopback() -> None:
    result: NetworkInterfaces = await _run("network_interfaces")
    assert {(i.index, i.name) for i in result.interfaces} == set(socket.if_nameindex())
    lo = next(i for i in result.interfaces if i.name == "lo")
    assert any(a.address == "127.0.0.1" and a.prefix_length == 8 for a in lo.addresses)
    assert lo.rx_bytes is not None and lo.rx_bytes >= 0


async def test_os_info_matches_what_python_reads_locally() -> None:
    info: OsInfo = await _run("os_info")
    assert info.hostname == socket.gethostname()
    assert info.architecture == platform.machine()
    assert info.kernel_release == platform.release()
    assert info.cpu_count == os.cpu_count()
    release = platform.freedesktop_os_release()
    assert (info.distro.id, info.distro.version_id) == (release.get("ID"), release.get("VERSION_ID"))
    assert info.boot_time is not None
    assert abs(info.boot_time.timestamp() - (time.time() - _uptime())) < 60


def _os_info_with(script: str, path: str | None = None) -> OsInfo:
    env = {**os.environ, "PATH": path} if path else None
    done = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=10, check=True
    )
    parsed: OsInfo = REGISTRY.get("os_info").parse(done.stdout, NoParams())
    return parsed


SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_os_info_runs_no_program_but_grep(shell: str, tmp_path: Path) -> None:
    """uname and cat are not needed where the kernel's files are: with only grep on PATH the answer is the
    same (on every host the script runs one program, where it ran six)."""
    (tmp_path / "grep").symlink_to(shutil.which("grep") or "/bin/grep")
    argv = [shutil.which(shell) or shell, *(["sh"] if shell == "busybox" else [])]
    script = OS_INFO_SCRIPT
    wrapped = f"exec {shlex.join(argv)} -c {shlex.quote(script)}"
    assert _os_info_with(wrapped, path=str(tmp_path)) == _os_info_with(script)


def test_os_info_falls_back_to_uname_and_reads_an_os_release_without_a_final_newline(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('NAME="Test Linux"\nID=testos\nVERSION_ID="7"')  # no newline at the end
    script = OS_INFO_SCRIPT.replace("/proc/sys/kernel/", f"{tmp_path}/missing/").replace(
        "/etc/os-release", str(release)
    )
    assert "/proc/sys/kernel" not in script and str(release) in script
    info = _os_info_with(script)
    assert info.hostname == socket.gethostname()
    assert info.architecture == platform.machine()
    assert info.kernel_release == platform.release()
    assert (info.distro.id, info.distro.name, info.distro.version_id) == ("testos", "Test Linux", "7")
    assert info.cpu_model == _os_info_with(OS_INFO_SCRIPT).cpu_model


def _is_sorted(values: list[float]) -> bool:
    return all(a >= b for a, b in itertools.pairwise(values))


async def test_top_processes_respects_the_limit_and_the_sort_order() -> None:
    by_cpu: TopProcesses = await _run("top_processes", {"limit": 5, "interval": 0.1})
    assert 0 < len(by_cpu.processes) <= 5 and by_cpu.total >= len(by_cpu.processes)
    assert _is_sorted([p.cpu_percent for p in by_cpu.processes])
    by_memory: TopProcesses = await _run(
        "top_processes", {"sort_by": "memory", "limit": 200, "interval": 0.1}
    )
    assert _is_sorted([p.rss_bytes for p in by_memory.processes])
    me = next(p for p in by_memory.processes if p.pid == os.getpid())
    assert me.user == pwd.getpwuid(os.geteuid()).pw_name
    assert me.ppid == os.getppid()
    assert me.args is not None and "pytest" in me.args


@pytest.fixture
def busy_child() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until it is really spinning, not still starting the interpreter
            with open(f"/proc/{child.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[11]) > 5 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def idle_children() -> Iterator[list[int]]:
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        yield [child.pid for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()


async def test_a_busy_loop_shows_up_with_high_current_cpu(
    busy_child: subprocess.Popen[bytes], idle_children: list[int]
) -> None:
    """What holds on a loaded machine too: the spinning process is running and is measured above every
    idle process the test started (its absolute share depends on how many others want the two cores)."""
    result: TopProcesses = await _run("top_processes", {"limit": 200, "interval": 1.0})
    by_pid = {p.pid: p for p in result.processes}
    assert busy_child.pid in by_pid, [(p.pid, p.name, p.cpu_percent) for p in result.processes[:20]]
    mine = by_pid[busy_child.pid]
    idle = [by_pid[pid].cpu_percent for pid in idle_children if pid in by_pid]
    assert mine.cpu_percent > 1 and all(mine.cpu_percent > share for share in idle), (mine, idle)
    assert mine.state == "R"


@pytest.fixture
def process_churn() -> Iterator[None]:
    churn = subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"])
    try:
        yield
    finally:
        churn.kill()
        churn.wait()


@pytest.mark.usefixtures("process_churn")
async def test_top_processes_exits_cleanly_while_processes_come_and_go() -> None:
    for _ in range(5):
        result: TopProcesses = await _run("top_processes", {"limit": 200, "interval": 0.1})
        assert result.total > 0


# ---- the same scripts under busybox sh and as an unprivileged user ----------------------------------------

BUSYBOX = shutil.which("busybox")
# Debian's busybox sh prefers its own applets, and busybox `ip` has no JSON output
BUSYBOX_COMMANDS = [c for c in COMMANDS if c.name != "network_interfaces"]


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (apt-get install busybox-static)")
@pytest.mark.parametrize("command", BUSYBOX_COMMANDS, ids=lambda c: c.name)
async def test_scripts_run_and_parse_under_busybox(command: CommandDefinition[Any]) -> None:
    params = {"interval": 0.1} if "interval" in command.params.model_fields else {}
    result = await _run(command.name, params, prefix=("busybox",))
    if isinstance(result, DiskUsage):
        root = next(fs for fs in result.filesystems if fs.mount_point == "/")
        assert root.size_bytes == shutil.disk_usage("/").total
        assert root.inodes_total is None  # busybox df -P reports no inodes
    elif isinstance(result, SystemMetrics):
        assert result.memory.total_bytes == _meminfo_kib("MemTotal") * 1024
    elif isinstance(result, TopProcesses):
        assert result.processes and result.cpu_count == os.cpu_count()
    elif isinstance(result, OsInfo):
        assert result.hostname == socket.gethostname()


def _unprivileged_prefix() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root")
    nobody = pwd.getpwnam("nobody")
    return (setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
async def test_every_command_works_for_an_unprivileged_user(command: CommandDefinition[Any]) -> None:
    params = {"interval": 0.1} if "interval" in command.params.model_fields else {}
    result = await _run(command.name, params, prefix=_unprivileged_prefix())
    assert isinstance(result, command.model)
