"""Parsers for system_metrics, top_processes and os_info."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as, percent, split_sections
from mcp_server.redact import redact_text

if TYPE_CHECKING:
    from mcp_server.commands.system import SystemMetricsParams, TopProcessesParams

_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times(lines: Iterable[str]) -> list[int]:
    """The aggregate `cpu` jiffies of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal."""
    for line in lines:
        name, *values = line.split()
        if name == "cpu":
            # kernels before 2.6.11 have fewer columns; guest columns are already inside user/nice
            return ([int(v) for v in values] + [0] * len(_CPU_FIELDS))[: len(_CPU_FIELDS)]
    raise ValueError("no aggregate cpu line in /proc/stat")


def online_cpus(lines: Iterable[str]) -> int:
    """The number of `cpuN` lines in /proc/stat (online logical CPUs)."""
    count = sum(1 for line in lines if re.match(r"cpu\d+\s", line))
    if count == 0:
        raise ValueError("no per-CPU lines in /proc/stat")
    return count


def meminfo_bytes(lines: Iterable[str]) -> dict[str, int]:
    """/proc/meminfo as bytes by key (values there are in kB = KiB)."""
    values: dict[str, int] = {}
    for line in lines:
        key, _, rest = line.partition(":")
        words = rest.split()
        if words:
            values[key.strip()] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    return values


class CpuUsage(BaseModel):
    busy_percent: float = Field(
        description="Share of all CPU time that was not idle or iowait over the interval."
    )
    user_percent: float = Field(description="Share of CPU time in user space (user + nice).")
    system_percent: float = Field(description="Share of CPU time in the kernel (system + irq + softirq).")
    iowait_percent: float = Field(description="Share of CPU time idle while waiting for disk or network I/O.")
    steal_percent: float = Field(
        description="Share of CPU time a hypervisor gave to other guests; high values mean an oversold host."
    )
    idle_percent: float = Field(description="Share of CPU time idle. user+system+iowait+steal+idle = 100.")


class LoadAverage(BaseModel):
    load_1m: float = Field(description="Run-queue load average over 1 minute; compare with cpu_count.")
    load_5m: float = Field(description="Run-queue load average over 5 minutes.")
    load_15m: float = Field(description="Run-queue load average over 15 minutes.")
    runnable_tasks: int = Field(description="Threads runnable right now (from /proc/loadavg).")
    total_tasks: int = Field(
        description="All threads that exist (kernel scheduling entities, not processes)."
    )


class MemoryUsage(BaseModel):
    total_bytes: int = Field(description="Usable RAM.")
    available_bytes: int = Field(
        description="RAM available for new work without swapping (MemAvailable: free + reclaimable cache)."
    )
    used_bytes: int = Field(description="total_bytes - available_bytes: memory that cannot be reclaimed.")
    free_bytes: int = Field(description="Completely unused RAM (usually small; cache is not counted).")
    buffers_bytes: int = Field(description="Block-device buffers.")
    cached_bytes: int = Field(description="Page cache (file contents kept in RAM; reclaimable).")
    used_percent: float = Field(description="used_bytes / total_bytes * 100.")


class SwapUsage(BaseModel):
    total_bytes: int = Field(description="Configured swap; 0 when the device has no swap.")
    free_bytes: int = Field(description="Unused swap.")
    used_bytes: int = Field(description="Swap in use (total - free); sustained growth means memory pressure.")
    used_percent: float = Field(description="used_bytes / total_bytes * 100; 0 when there is no swap.")


class SystemMetrics(BaseModel):
    cpu_count: int = Field(description="Online logical CPUs.")
    cpu: CpuUsage = Field(description="CPU utilisation measured between two samples interval_seconds apart.")
    load: LoadAverage = Field(description="Load averages and task counts.")
    memory: MemoryUsage = Field(description="RAM usage in bytes.")
    swap: SwapUsage = Field(description="Swap usage in bytes.")
    uptime_seconds: float = Field(description="Seconds since the device booted.")
    interval_seconds: float = Field(description="Measured time between the two CPU samples.")


def _cpu_usage(first: list[int], second: list[int]) -> CpuUsage:
    delta = dict(zip(_CPU_FIELDS, (max(b - a, 0) for a, b in zip(first, second, strict=True)), strict=True))
    total = sum(delta.values())
    if total <= 0:
        raise ValueError("no CPU time elapsed between the two samples")
    return CpuUsage(
        busy_percent=percent(total - delta["idle"] - delta["iowait"], total),
        user_percent=percent(delta["user"] + delta["nice"], total),
        system_percent=percent(delta["system"] + delta["irq"] + delta["softirq"], total),
        iowait_percent=percent(delta["iowait"], total),
        steal_percent=percent(delta["steal"], total),
        idle_percent=percent(delta["idle"], total),
    )


@parse_errors_as("system_metrics")
def parse_system_metrics(stdout: str, params: SystemMetricsParams) -> SystemMetrics:
    """Two /proc/stat + /proc/uptime samples, /proc/loadavg and /proc/meminfo -> SystemMetrics."""
    s = split_sections(stdout, ("stat1", "uptime1", "stat2", "uptime2", "loadavg", "meminfo"))
    first = cpu_times(s["stat1"])
    second = cpu_times(s["stat2"])
    uptime1 = float(s["uptime1"][0].split()[0])
    uptime2 = float(s["uptime2"][0].split()[0])
    load = s["loadavg"][0].split()
    runnable, total_tasks = load[3].split("/")
    mem = meminfo_bytes(s["meminfo"])
    total = mem["MemTotal"]
    # MemAvailable exists since Linux 3.14; before that free + buffers + cache is the usual estimate
    available = mem.get("MemAvailable", mem["MemFree"] + mem.get("Buffers", 0) + mem.get("Cached", 0))
    swap_total, swap_free = mem.get("SwapTotal", 0), mem.get("SwapFree", 0)
    return SystemMetrics(
        cpu_count=online_cpus(s["stat2"]),
        cpu=_cpu_usage(first, second),
        load=LoadAverage(
            load_1m=float(load[0]),
            load_5m=float(load[1]),
            load_15m=float(load[2]),
            runnable_tasks=int(runnable),
            total_tasks=int(total_tasks),
        ),
        memory=MemoryUsage(
            total_bytes=total,
            available_bytes=available,
            used_bytes=total - available,
            free_bytes=mem["MemFree"],
            buffers_bytes=mem.get("Buffers", 0),
            cached_bytes=mem.get("Cached", 0),
            used_percent=percent(total - available, total),
        ),
        swap=SwapUsage(
            total_bytes=swap_total,
            free_bytes=swap_free,
            used_bytes=swap_total - swap_free,
            used_percent=percent(swap_total - swap_free, swap_total),
        ),
        uptime_seconds=uptime2,
        interval_seconds=round(uptime2 - uptime1, 2),
    )


class Distro(BaseModel):
    id: str | None = Field(
        description="Machine-readable distribution id from /etc/os-release (debian, ubuntu, arch)."
    )
    name: str | None = Field(description="Distribution name.")
    version_id: str | None = Field(description="Version number; absent on rolling releases such as Arch.")
    pretty_name: str | None = Field(description="Human-readable name and version.")


class OsInfo(BaseModel):
    hostname: str = Field(description="The kernel's host name (uname -n).")
    distro: Distro = Field(
        description="Distribution from /etc/os-release; fields are null where it is silent."
    )
    kernel_release: str = Field(description="Kernel release (uname -r).")
    architecture: str = Field(description="Machine hardware name (uname -m), e.g. x86_64, aarch64, armv7l.")
    cpu_model: str | None = Field(
        description="CPU model from /proc/cpuinfo; null when the kernel names none."
    )
    cpu_count: int = Field(description="Online logical CPUs.")
    boot_time: datetime | None = Field(description="When the device booted (UTC), from /proc/stat btime.")


# lower-case "processor" is only the CPU index; the capitalised key is ARM's model name
_CPU_MODEL_KEYS = ("model name", "Processor", "cpu model", "Hardware", "cpu")


# shlex reads a character at a time (~15 µs each); a real os-release value is a short line
_SHLEX_MAX_CHARS = 4096


def os_release(lines: Iterable[str]) -> dict[str, str]:
    """KEY=value pairs of an os-release file, with shell quoting removed."""
    values: dict[str, str] = {}
    for line in lines:
        key, sep, raw = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        try:
            values[key] = _unquoted(raw) if len(raw) <= _SHLEX_MAX_CHARS else raw.strip("\"'")
        except ValueError:
            values[key] = raw.strip("\"'")
    return values


def _unquoted(raw: str) -> str:
    """ " ".join(shlex.split(raw)): a bare word or a simple quoted string (what os-release files hold) read
    directly, the rest by shlex."""
    if raw.isascii() and raw.isprintable():  # no shell whitespace but " "
        if not any(c in raw for c in "\\'\""):
            return " ".join(raw.split())
        if (
            len(raw) >= 2
            and raw[0] == raw[-1]
            and raw[0] in "'\""
            and not any(c in raw[1:-1] for c in "\\'\"")
        ):
            return raw[1:-1]
    return " ".join(shlex.split(raw))


def _cpu_model(lines: Iterable[str]) -> str | None:
    found: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and value.strip():
            found.setdefault(key.strip(), value.strip())
    return next((found[key] for key in _CPU_MODEL_KEYS if key in found), None)


@parse_errors_as("os_info")
def parse_os_info(stdout: str, params: BaseModel) -> OsInfo:
    """uname, /etc/os-release, /proc/cpuinfo and /proc/stat -> OsInfo."""
    s = split_sections(stdout, ("hostname", "release", "machine", "os-release", "cpuinfo", "stat"))
    release = os_release(s["os-release"])
    btime = next((int(line.split()[1]) for line in s["stat"] if line.startswith("btime ")), None)
    return OsInfo(
        hostname=s["hostname"][0].strip(),
        distro=Distro(
            id=release.get("ID"),
            name=release.get("NAME"),
            version_id=release.get("VERSION_ID"),
            pretty_name=release.get("PRETTY_NAME"),
        ),
        kernel_release=s["release"][0].strip(),
        architecture=s["machine"][0].strip(),
        cpu_model=_cpu_model(s["cpuinfo"]),
        cpu_count=online_cpus(s["stat"]),
        boot_time=datetime.fromtimestamp(btime, UTC) if btime is not None else None,
    )


ARGS_MAX_CHARS = 300


class ProcessInfo(BaseModel):
    pid: int = Field(description="Process id.")
    ppid: int = Field(description="Parent process id.")
    user: str = Field(description="Effective user name (the numeric uid when it is not in /etc/passwd).")
    state: str = Field(
        description="R running, S sleeping, D uninterruptible (usually I/O), Z zombie, T stopped, I idle kernel thread."
    )
    name: str = Field(description="Command name as the kernel knows it (at most 15 characters).")
    args: str | None = Field(
        description=f"Full command line from ps, cut to {ARGS_MAX_CHARS} characters; kernel threads show "
        "[name] and busybox ps prefixes {name} when it differs from the program; null when ps is "
        "unavailable or the process exited before it was listed."
    )
    cpu_percent: float = Field(
        description="CPU used during the interval as a percentage of ONE CPU (like top), so a process "
        "with several busy threads can exceed 100."
    )
    memory_percent: float = Field(description="rss_bytes as a percentage of total RAM.")
    rss_bytes: int = Field(description="Resident memory (VmRSS); 0 for kernel threads.")
    threads: int = Field(description="Number of threads.")


class TopProcesses(BaseModel):
    sort_by: Literal["cpu", "memory"] = Field(description="The order of `processes`.")
    cpu_count: int = Field(
        description="Online logical CPUs; the sum of cpu_percent can reach cpu_count * 100."
    )
    interval_seconds: float = Field(description="Measured time between the two samples.")
    total: int = Field(description="Processes running at the second sample.")
    truncated: bool = Field(description="True when more processes exist than `processes` lists (see limit).")
    processes: list[ProcessInfo] = Field(description="The top processes, highest first.")


_STAT_LINE = re.compile(r"^/proc/(\d+)/stat:(.*)$")
_STATUS_LINE = re.compile(r"^/proc/(\d+)/status:(Uid|VmRSS):\s*(.*)$")
_PS_LINE = re.compile(r"^\s*(\d+)(?: (.*))?$")


class _Sample(NamedTuple):
    comm: str
    state: str
    ppid: int
    ticks: int
    threads: int
    start: int


def _proc_samples(lines: Iterable[str]) -> dict[int, _Sample]:
    """/proc/[pid]/stat records by pid from `grep -H ''` (a comm holding a newline spans two lines)."""
    records: dict[int, list[str]] = {}
    for line in lines:
        match = _STAT_LINE.match(line)
        if not match:
            raise ValueError(f"not a /proc/[pid]/stat line: {line[:80]!r}")
        records.setdefault(int(match.group(1)), []).append(match.group(2))
    samples: dict[int, _Sample] = {}
    for pid, parts in records.items():
        text = "\n".join(parts)
        close = text.rfind(")")  # comm may itself contain ") "
        rest = text[close + 1 :].split()
        if not text.startswith(f"{pid} (") or len(rest) < 20:
            raise ValueError(f"malformed /proc/{pid}/stat: {text[:80]!r}")
        samples[pid] = _Sample(
            comm=text[len(f"{pid} (") : close],
            state=rest[0],
            ppid=int(rest[1]),
            ticks=int(rest[11]) + int(rest[12]),
            threads=int(rest[17]),
            start=int(rest[19]),
        )
    return samples


def _status_fields(lines: Iterable[str]) -> tuple[dict[int, int], dict[int, int]]:
    """Effective uid and VmRSS bytes by pid, from `grep -H` over /proc/[pid]/status."""
    uids: dict[int, int] = {}
    rss: dict[int, int] = {}
    for line in lines:
        match = _STATUS_LINE.match(line)
        if not match:
            raise ValueError(f"not a /proc/[pid]/status line: {line[:80]!r}")
        pid, key, value = int(match.group(1)), match.group(2), match.group(3).split()
        if key == "Uid":
            uids[pid] = int(value[1])
        else:
            rss[pid] = int(value[0]) * 1024
    return uids, rss


def _user_names(lines: Iterable[str]) -> dict[int, str]:
    names: dict[int, str] = {}
    for line in lines:
        name, _, uid = line.rpartition(":")
        if name and uid.isdigit():
            names.setdefault(int(uid), name)
    return names


def _command_lines(lines: Iterable[str]) -> dict[int, str]:
    """Command lines by pid, redacted (ps joins argv with spaces) before they are cut, so a secret that
    straddles the cut is not left half shown."""
    args: dict[int, str] = {}
    for line in lines:
        match = _PS_LINE.match(line)
        if match:
            text = redact_text((match.group(2) or "").strip())
            args[int(match.group(1))] = (
                text if len(text) <= ARGS_MAX_CHARS else text[: ARGS_MAX_CHARS - 3] + "..."
            )
    return args


@parse_errors_as("top_processes")
def parse_top_processes(stdout: str, params: TopProcessesParams) -> TopProcesses:
    """Two samples of /proc/stat and /proc/[pid]/stat, then status, passwd and ps -> TopProcesses."""
    s = split_sections(
        stdout,
        ("cpu1", "uptime1", "procs1", "cpu2", "uptime2", "procs2", "meminfo", "status", "passwd", "ps"),
    )
    elapsed = sum(cpu_times(s["cpu2"])) - sum(cpu_times(s["cpu1"]))
    if elapsed <= 0:
        raise ValueError("no CPU time elapsed between the two samples")
    cpu_count = online_cpus(s["cpu2"])
    mem_total = meminfo_bytes(s["meminfo"])["MemTotal"]
    before, after = _proc_samples(s["procs1"]), _proc_samples(s["procs2"])
    uids, rss = _status_fields(s["status"])
    if after and not uids:
        raise ValueError("no /proc/[pid]/status readable")
    names, args = _user_names(s["passwd"]), _command_lines(s["ps"])
    processes: list[ProcessInfo] = []
    for pid, now in after.items():
        if pid not in uids:
            continue  # exited before its status was read
        old = before.get(pid)
        # a process started during the interval (or a reused pid) used all its CPU time inside it
        ticks = now.ticks - old.ticks if old is not None and old.start == now.start else now.ticks
        processes.append(
            ProcessInfo(
                pid=pid,
                ppid=now.ppid,
                user=names.get(uids[pid], str(uids[pid])),
                state=now.state,
                name=now.comm,
                args=args.get(pid),
                cpu_percent=percent(max(ticks, 0) * cpu_count, elapsed),
                memory_percent=percent(rss.get(pid, 0), mem_total),
                rss_bytes=rss.get(pid, 0),
                threads=now.threads,
            )
        )
    if params.sort_by == "cpu":
        processes.sort(key=lambda p: (-p.cpu_percent, -p.rss_bytes, p.pid))
    else:
        processes.sort(key=lambda p: (-p.rss_bytes, -p.cpu_percent, p.pid))
    uptime1, uptime2 = (float(s[name][0].split()[0]) for name in ("uptime1", "uptime2"))
    return TopProcesses(
        sort_by=params.sort_by,
        cpu_count=cpu_count,
        interval_seconds=round(uptime2 - uptime1, 2),
        total=len(processes),
        truncated=len(processes) > params.limit,
        processes=processes[: params.limit],
    )
