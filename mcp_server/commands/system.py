"""System commands: system_metrics, top_processes and os_info."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mcp_server.commands.base import Arg, CommandDefinition, NoParams
from mcp_server.parsers.system import (
    OsInfo,
    SystemMetrics,
    TopProcesses,
    parse_os_info,
    parse_system_metrics,
    parse_top_processes,
)


class SystemMetricsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    interval: float = Field(
        default=0.5,
        ge=0.1,
        le=5.0,
        description="Seconds between the two CPU samples that utilisation is measured over.",
    )


class TopProcessesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sort_by: Literal["cpu", "memory"] = Field(
        default="cpu",
        description="Order by current CPU use ('cpu') or by resident memory ('memory'), highest first.",
    )
    limit: int = Field(default=15, ge=1, le=200, description="How many processes to return.")
    interval: float = Field(
        default=0.5,
        ge=0.1,
        le=5.0,
        description="Seconds between the two samples that CPU use is measured over.",
    )


# Scripts are single lines of POSIX sh (dash, busybox ash) so they survive any login shell's quoting;
# parameters arrive only as "$1". `sleep` may lack fractions on old busybox, hence the fallback; the
# parsers measure the real interval from /proc/uptime rather than trusting it.
SYSTEM_METRICS_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        "set -e",
        "echo '@@stat1'",
        "grep '^cpu' /proc/stat",
        "echo '@@uptime1'",
        "cat /proc/uptime",
        'sleep "$1" 2>/dev/null || sleep 1',
        "echo '@@stat2'",
        "grep '^cpu' /proc/stat",
        "echo '@@uptime2'",
        "cat /proc/uptime",
        "echo '@@loadavg'",
        "cat /proc/loadavg",
        "echo '@@meminfo'",
        "cat /proc/meminfo",
        "echo '@@end'",
    )
)

# Processes come and go between samples: a vanished /proc/[pid] makes grep fail, which is expected, so
# errors are discarded and the script always exits 0. `grep -H` prefixes every line with its file, so a
# process name holding a newline (or a fake "@@" marker) cannot split or forge a record.
TOP_PROCESSES_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        "echo '@@cpu1'",
        "grep '^cpu' /proc/stat",
        "echo '@@uptime1'",
        "cat /proc/uptime",
        "echo '@@procs1'",
        "grep -H '' /proc/[0-9]*/stat 2>/dev/null",
        'sleep "$1" 2>/dev/null || sleep 1',
        "echo '@@cpu2'",
        "grep '^cpu' /proc/stat",
        "echo '@@uptime2'",
        "cat /proc/uptime",
        "echo '@@procs2'",
        "grep -H '' /proc/[0-9]*/stat 2>/dev/null",
        "echo '@@meminfo'",
        "grep '^MemTotal:' /proc/meminfo",
        "echo '@@status'",
        "grep -H -e '^Uid:' -e '^VmRSS:' /proc/[0-9]*/status 2>/dev/null",
        "echo '@@passwd'",
        "cut -d: -f1,3 /etc/passwd 2>/dev/null",
        "echo '@@ps'",
        # procps cuts args to a terminal's width (80 without one, under some callers) unless told -ww;
        # busybox ps knows no -w and prints whole lines
        "{ ps -ww -eo pid=,args= 2>/dev/null || ps -eo pid=,args= 2>/dev/null; }",
        "echo '@@end'",
        "exit 0",
    )
)

# Every program the script runs costs the host a fork and exec (and a fleet sharing cores, all of them): what
# the shell can do itself it does, so grep is the only program it runs (the printf feeding it a marker is a
# fork of the shell). uname -n/-r/-m print what the kernel's hostname, osrelease and arch files hold (uname
# runs where one is missing: older kernels have no /proc/sys/kernel/arch); os-release is copied line by
# line, a last line without a newline included.
OS_INFO_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        "h= r= m=",
        "read -r h 2>/dev/null </proc/sys/kernel/hostname",
        "read -r r 2>/dev/null </proc/sys/kernel/osrelease",
        "read -r m 2>/dev/null </proc/sys/kernel/arch",
        '[ -n "$h" ] || h=$(uname -n)',
        '[ -n "$r" ] || r=$(uname -r)',
        '[ -n "$m" ] || m=$(uname -m)',
        'printf \'@@hostname\\n%s\\n@@release\\n%s\\n@@machine\\n%s\\n@@os-release\\n\' "$h" "$r" "$m"',
        "f=/etc/os-release",
        "[ -r $f ] || f=/usr/lib/os-release",
        '[ -r $f ] && while IFS= read -r l || [ -n "$l" ]; do printf \'%s\\n\' "$l"; done <$f',
        "echo '@@cpuinfo'",
        # one grep reads both files, and between them the @@stat line from its stdin
        "printf '@@stat\\n' | grep -h -E "
        "'^(model name|Processor|cpu model|Hardware|cpu)[[:space:]]*:|^@@stat$|^(btime|cpu[0-9]+) ' "
        "/proc/cpuinfo - /proc/stat",
        "echo '@@end'",
    )
)

SYSTEM_METRICS: CommandDefinition[SystemMetrics] = CommandDefinition(
    name="system_metrics",
    category="system",
    summary="CPU utilisation measured over a short interval, load averages, memory and swap in bytes, uptime.",
    argv=("sh", "-c", SYSTEM_METRICS_SCRIPT, "sh", Arg("interval")),
    model=SystemMetrics,
    parse=parse_system_metrics,
    params=SystemMetricsParams,
    ttl=10.0,
    timeout=15.0,
)

TOP_PROCESSES: CommandDefinition[TopProcesses] = CommandDefinition(
    name="top_processes",
    category="system",
    summary="The processes using the most CPU right now (measured like top) or the most memory.",
    argv=("sh", "-c", TOP_PROCESSES_SCRIPT, "sh", Arg("interval")),
    model=TopProcesses,
    parse=parse_top_processes,
    params=TopProcessesParams,
    ttl=10.0,
    timeout=20.0,
)

OS_INFO: CommandDefinition[OsInfo] = CommandDefinition(
    name="os_info",
    category="system",
    summary="Host name, distribution, kernel, architecture, CPU model and count, boot time.",
    argv=("sh", "-c", OS_INFO_SCRIPT),
    model=OsInfo,
    parse=parse_os_info,
    params=NoParams,
    ttl=3600.0,
    timeout=15.0,
)

COMMANDS: tuple[CommandDefinition[Any], ...] = (SYSTEM_METRICS, TOP_PROCESSES, OS_INFO)
