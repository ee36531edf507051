"""The poller over a fleet of hundreds of devices: CPU, poll lag, missed slots and memory per device (issue 17).

A real `infrastructor serve` (SQLite, auth off) polls system + network on every device every --interval
seconds. 500 sshd processes are too many for a 2-core machine, so --sshd real OpenSSH servers on 127.0.0.1
(tests/sshd.py) each stand behind --devices / --sshd device aliases: distinct device names, so each device
has a pooled SSH connection, its cache entries and its scheduler state of its own. The host keys are in the
server's known_hosts (nothing is pinned on first use). The fleet is registered before the server starts,
so the run begins with every device unconnected: the ramp.

Measured from outside the server: CPU from /proc/<pid>/stat (user + system seconds / wall seconds), RSS
from /proc/<pid>/status, and from the server's SQLite file after the run every poll lease: lag = completed
(stored) minus the (device, category)'s due time in its slot; a slot is missed when it ended before its
lease was completed. The ramp rule of the poller (mcp_server/polling/scheduler.py) is applied from the
leases: a new device is taken on once its first connection attempt has finished, and its first slot taken
on is claimed at that moment, so the slots of a (device, category) before its first lease were never taken
on (its first connection was still opening); they are counted apart, and only in the ramp: in the steady
state every slot is owed, leased or not. A first lease's poll is due when it was claimed (or early in its
slot, if claimed just before it: scheduler.first_due), the server's own definition: its lag is measured from
the connection finishing, not from a slot start that passed while the device was connecting. What a user
waits for is printed beside it: the time from the server ready until the device was taken on (its first
lease claimed: the connection ramp, p50/p95/max over devices), and until every device's first poll of
every category was stored (the fleet fully polled). The server's own get_service_health poller report is
read at the end as a cross-check (its not_taken_on, missed and lag).

Memory: separate servers with 0, 1, 100 and 500 devices, each polled for --memory-wait seconds; RSS per
device = (RSS(n) - RSS(0)) / n, and the marginal cost (RSS(n) - RSS(1)) / (n - 1), which leaves out what
the first SSH connection loads once (asyncssh, cryptography).

    python bench/bench_poller.py --out docs/benchmarks.md                  # 60 s interval, 300 s run
    python bench/bench_poller.py --configs default,8:0.2 --start-at 45     # start late in a minute
    python bench/bench_poller.py --interval 20 --duration 120 --memory-wait 45   # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Server, command_line, cpu_seconds, machine, publish, serve  # noqa: E402
from mcp_server.devices import DeviceSpec  # noqa: E402
from mcp_server.polling.report import percentile  # noqa: E402
from mcp_server.polling.scheduler import first_due, jitter_offset  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from mcp_server.state import open_state  # noqa: E402
from tests.sshd import SshdFleet  # noqa: E402

BEGIN, END = "<!-- bench_poller:begin -->", "<!-- bench_poller:end -->"
CATEGORIES = ("system", "network")


@dataclass(frozen=True)
class Config:
    """The poller settings a fleet run uses: INFRA_POLL_CONCURRENCY and INFRA_POLL_JITTER, or the defaults
    (None: the variable is not set)."""

    concurrency: int | None
    jitter: float | None

    @property
    def label(self) -> str:
        if self.concurrency is None and self.jitter is None:
            return f"defaults (concurrency {self.effective_concurrency}, jitter {self.effective_jitter:g})"
        return f"concurrency {self.effective_concurrency}, jitter {self.effective_jitter:g}"

    @property
    def effective_jitter(self) -> float:
        return self.jitter if self.jitter is not None else load_settings().poll_jitter

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency if self.concurrency is not None else load_settings().poll_concurrency

    @classmethod
    def parse(cls, text: str) -> Config:
        if text.strip() == "default":
            return cls(None, None)
        concurrency, jitter = text.split(":")
        return cls(int(concurrency), float(jitter))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def poll_env(interval: float, config: Config) -> dict[str, str]:
    env = {
        "INFRA_POLL_ENABLED": "true",
        "INFRA_LOCAL_DEVICE": "false",
        "INFRA_POLL_SYSTEM_INTERVAL": f"{interval:g}",
        "INFRA_POLL_NETWORK_INTERVAL": f"{interval:g}",
        "INFRA_POLL_DISK_INTERVAL": "0",
        "INFRA_POLL_CONTAINERS_INTERVAL": "0",
        "INFRA_POLL_DRIVES_INTERVAL": "0",
    }
    if config.jitter is not None:
        env["INFRA_POLL_JITTER"] = f"{config.jitter:g}"
    if config.concurrency is not None:
        env["INFRA_POLL_CONCURRENCY"] = str(config.concurrency)
    return env


async def register(data_dir: Path, fleet: SshdFleet, count: int) -> None:
    """`count` device aliases spread over the fleet's sshd, in the server's database, before it starts."""
    data_dir.mkdir(parents=True, exist_ok=True)
    hosts = list(fleet.hosts.values())
    (data_dir / "known_hosts").write_text("".join(h.known_hosts_line + "\n" for h in hosts))
    settings = load_settings(
        data_dir=data_dir,
        ssh_known_hosts=data_dir / "known_hosts",
        ssh_file_dirs=tempfile.gettempdir(),
        local_device=False,
        poll_enabled=False,
    )
    async with open_state(settings) as state:
        for i in range(count):
            host = hosts[i % len(hosts)]
            spec = DeviceSpec(
                hostname=host.hostname,
                port=host.port,
                username=fleet.username,
                key_path=str(fleet.client_key_path),
            )
            await state.devices.add(f"h{i:04d}", spec)


async def poller_report(server: Server) -> dict[str, Any]:
    async with server.client() as client:
        result = await client.call_tool("get_service_health", {})
    content = result.structured_content
    assert content is not None
    return dict(content["poller"])


Lease = tuple[str, str, int, float, float | None]  # device, category, slot, claimed_at, completed_at


def leases(data_dir: Path) -> list[Lease]:
    db = sqlite3.connect(f"file:{data_dir / 'infrastructor.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT device, category, slot, claimed_at, completed_at FROM poll_leases"
        ).fetchall()
    finally:
        db.close()

    def ts(value: str) -> float:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()

    return [
        (d, c, int(s), ts(claimed), ts(done) if done is not None else None)
        for d, c, s, claimed, done in rows
        if c in CATEGORIES
    ]


def judge(
    rows: list[Lease],
    devices: int,
    interval: float,
    jitter: float,
    started: float,
    ended: float,
    steady_from: float,
) -> dict[str, Any]:
    """Lag per stored poll and missed slots, over slots that ended inside [started, ended].

    The ramp rule: a (device, category)'s ramp slots before its first lease were never taken on (the poller
    claims a new device's first slot as soon as it takes it on); they are counted apart. Every later slot,
    and every steady-state slot whatever the leases, is owed: missed unless its lease completed before its
    end. A first lease's poll is due when it was claimed (the device taken on), or early in its slot
    (first_due)."""
    done = {(d, c, s): t for d, c, s, _, t in rows}
    claimed = {(d, c, s): t for d, c, s, t, _ in rows}
    first_lease: dict[tuple[str, str], int] = {}
    for d, c, s, _, _ in rows:
        first_lease[(d, c)] = min(s, first_lease.get((d, c), s))
    lags: dict[str, list[float]] = {"all": [], "ramp": [], "steady": []}
    missed = {"all": 0, "ramp": 0, "steady": 0}
    expected = {"ramp": 0, "steady": 0}
    not_taken_on = 0
    for i in range(devices):
        device = f"h{i:04d}"
        for category in CATEGORIES:
            offset = jitter_offset(device, category, interval, jitter)
            taken_on = first_lease.get((device, category))
            first = int(started // interval)  # the slot under way at start
            for slot in range(first, int(ended // interval)):
                due = slot * interval + offset
                if slot == taken_on:
                    due = first_due(device, category, interval, slot, claimed[(device, category, slot)])
                end = (slot + 1) * interval
                if end <= started or end > ended:
                    continue
                phase = "steady" if slot * interval >= steady_from else "ramp"
                if phase == "ramp" and slot < first_lease.get((device, category), slot + 1):
                    not_taken_on += 1
                    continue
                expected[phase] += 1
                stored = done.get((device, category, slot))
                if stored is None or stored >= end:
                    missed["all"] += 1
                    missed[phase] += 1
                if stored is not None:
                    lag = max(0.0, stored - due)
                    lags["all"].append(lag)
                    lags[phase].append(lag)
    out: dict[str, Any] = {"expected_ramp": expected["ramp"], "expected_steady": expected["steady"]}
    out["missed"] = missed
    out["not_taken_on"] = not_taken_on
    # what a user waits for: each device taken on (its first connection attempt finished), and stored
    connected: list[float] = []
    fully: float | None = 0.0
    for i in range(devices):
        device = f"h{i:04d}"
        firsts = [(device, c, first_lease[(device, c)]) for c in CATEGORIES if (device, c) in first_lease]
        if firsts:
            connected.append(min(claimed[k] for k in firsts) - started)
        stored_at = [done.get(k) for k in firsts]
        if len(firsts) < len(CATEGORIES) or None in stored_at:
            fully = None
        elif fully is not None:
            fully = max(fully, *(t - started for t in stored_at if t is not None))
    out["fully_polled"] = fully
    out["connection_ramp"] = {
        "n": len(connected),
        "p50": percentile(connected, 0.5),
        "p95": percentile(connected, 0.95),
        "max": max(connected) if connected else None,
    }
    for phase, values in lags.items():
        out[phase] = {
            "n": len(values),
            "p50": percentile(values, 0.5),
            "p95": percentile(values, 0.95),
            "max": max(values) if values else None,
        }
    return out


def wait_for_start(interval: float, start_at: float | None) -> None:
    """With --start-at, sleep until that many seconds into an interval (where the server is started)."""
    if start_at is None:
        return
    time.sleep((start_at - time.time() % interval) % interval)


def fleet_run(fleet: SshdFleet, root: Path, args: argparse.Namespace, config: Config) -> dict[str, Any]:
    devices, interval, duration, memory_wait = args.devices, args.interval, args.duration, args.memory_wait
    data_dir = root / f"fleet-{devices}-{config.concurrency}-{config.jitter}"
    asyncio.run(register(data_dir, fleet, devices))
    wait_for_start(interval, args.start_at)
    launched, load0 = time.time(), os.getloadavg()[0]
    with serve(data_dir, auth=False, extra=poll_env(interval, config)) as server:
        started, cpu0 = time.time(), cpu_seconds(server.pid)
        # the ramp: the first full slot after start; steady state from the slot after it
        steady_from = (int(started // interval) + 2) * interval
        rss: list[int] = []
        cpu_at_steady: tuple[float, float] | None = None
        while time.time() < started + duration:
            time.sleep(1.0)
            if started + memory_wait - 10 <= time.time() <= started + memory_wait:
                rss.append(rss_kb(server.pid))  # sampled when the memory runs sample theirs
            if cpu_at_steady is None and time.time() >= steady_from:
                cpu_at_steady = (time.time(), cpu_seconds(server.pid))
        ended, cpu1 = time.time(), cpu_seconds(server.pid)
        rss_kb_end = rss_kb(server.pid)
        report = asyncio.run(poller_report(server))
    result = judge(leases(data_dir), devices, interval, config.effective_jitter, started, ended, steady_from)
    result |= {
        "launched_into_interval": launched % interval,
        "started_into_interval": started % interval,
        "load": (load0, os.getloadavg()[0]),
        "wall": ended - started,
        "cpu_share": (cpu1 - cpu0) / (ended - started),
        "rss_kb": sorted(rss)[len(rss) // 2] if rss else rss_kb_end,
        "report": report,
    }
    if cpu_at_steady is not None and ended > cpu_at_steady[0]:
        result["steady_cpu_share"] = (cpu1 - cpu_at_steady[1]) / (ended - cpu_at_steady[0])
        result["steady_wall"] = ended - cpu_at_steady[0]
    return result


def memory_run(
    fleet: SshdFleet, root: Path, devices: int, interval: float, wait: float, config: Config
) -> int:
    """RSS (KB) of a server polling `devices` devices, median of the last ten seconds of `wait`."""
    data_dir = root / f"memory-{devices}"
    asyncio.run(register(data_dir, fleet, devices))
    with serve(data_dir, auth=False, extra=poll_env(interval, config)) as server:
        started = time.time()
        samples: list[int] = []
        while time.time() < started + wait:
            time.sleep(1.0)
            if time.time() >= started + wait - 10:
                samples.append(rss_kb(server.pid))
    return sorted(samples)[len(samples) // 2]


def fmt(value: float | None, unit: str = " s") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def render(args: argparse.Namespace, runs: dict[Config, dict[str, Any]], memory: dict[int, int]) -> str:
    lines = [
        BEGIN,
        "",
        "### Results",
        "",
        *machine(),
        "",
        f"**{args.devices} devices on {args.sshd} real sshd (127.0.0.1, {args.devices // args.sshd} device "
        f"aliases each, each alias its own pooled connection), system + network every {args.interval:g} s; "
        f"each configuration a fresh server run for {args.duration:g} s from its start** (the fleet starts "
        "unconnected), one after another in this run. Lag in seconds from the due time to stored (a new "
        "device's first poll is due when the device was taken on: its first connection attempt finished, its "
        "first lease claimed; every later poll at its offset in its slot); the ramp "
        "is every slot before the second full slot after start, steady the rest. Slots owed: every slot "
        "that ended during the run, less the ramp slots a device's first connection left no chance of "
        "(not taken on: before its first lease).",
        "",
        "| poller settings | server started | phase | polls stored | lag p50 | lag p95 | lag max | missed "
        "of slots owed | not taken on |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for config, r in runs.items():
        for phase in ("ramp", "steady"):
            p = r[phase]
            start = (
                f"{r['launched_into_interval']:.0f} s into a slot (ready at {r['started_into_interval']:.0f} s); "
                f"load {r['load'][0]:.1f} → {r['load'][1]:.1f}"
                if phase == "ramp"
                else ""
            )
            not_taken = f"{r['not_taken_on']:,}" if phase == "ramp" else "-"
            lines.append(
                f"| {config.label} | {start} | {phase} | {p['n']:,} | {fmt(p['p50'])} | {fmt(p['p95'])} | "
                f"{fmt(p['max'])} | {r['missed'][phase]:,} of {r['expected_' + phase]:,} | {not_taken} |"
            )
    lines += [
        "",
        "What a user waits for, from the server ready (its /health answering): each device taken on (its first "
        "connection attempt finished: the connection ramp, over devices), and every device's first poll of "
        "every category stored (the fleet fully polled).",
        "",
        "| poller settings | connection ramp p50 | p95 | max | fleet fully polled after |",
        "|---|---:|---:|---:|---:|",
    ]
    for config, r in runs.items():
        ramp = r["connection_ramp"]
        fully = fmt(r["fully_polled"]) if r["fully_polled"] is not None else "not within the run"
        lines.append(
            f"| {config.label} | {fmt(ramp['p50'])} | {fmt(ramp['p95'])} | {fmt(ramp['max'])} | {fully} |"
        )
    lines += [
        "",
        "| poller settings | server CPU, whole run | steady state | the server's own report at the end |",
    ]
    lines += ["|---|---:|---:|---|"]
    for config, r in runs.items():
        rep = r["report"]
        steady = (
            f"{r['steady_cpu_share'] * 100:.1f}% ({r['steady_wall']:.0f} s)"
            if "steady_cpu_share" in r
            else "-"
        )
        lines.append(
            f"| {config.label} | {r['cpu_share'] * 100:.1f}% of a core | {steady} | completed "
            f"{rep['completed']:,}, failed {rep['failed']:,}, missed {rep['missed']:,}, not taken on "
            f"{rep.get('not_taken_on', 0):,}, waited for a connection "
            f"{rep['waited_for_connection']:,}; lag p50/p95/max {fmt(rep['lag_p50_seconds'])} / "
            f"{fmt(rep['lag_p95_seconds'])} / {fmt(rep['lag_max_seconds'])} (last 1,000 polls) |"
        )
    last = list(runs)[-1]
    lines += [
        "",
        f"**Memory** (RSS of the server process after {args.memory_wait:g} s of polling with {last.label}, "
        f"median of the last 10 s; the {args.devices}-device row is from that configuration's run above):",
        "",
        "| devices | RSS | per device over the empty fleet | per device over 1 device |",
        "|---:|---:|---:|---:|",
    ]
    base, one = memory.get(0), memory.get(1)
    for n, kb in sorted(memory.items()):
        over_empty = f"{(kb - base) / n:,.0f} KB" if base is not None and n else "-"
        over_one = f"{(kb - one) / (n - 1):,.0f} KB" if one is not None and n > 1 else "-"
        lines.append(f"| {n} | {kb / 1024:,.1f} MB | {over_empty} | {over_one} |")
    lines += ["", f"Reproduce: `{command_line('bench_poller.py')}`", "", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--sshd", type=int, default=20, help="real sshd processes behind the devices")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between polls per category")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of the fleet run")
    parser.add_argument("--memory-sizes", default="0,1,100", help="other fleet sizes whose RSS is measured")
    parser.add_argument("--memory-wait", type=float, default=130.0, help="seconds each memory server polls")
    parser.add_argument(
        "--configs",
        default="default,8:0.2",
        help="poller settings to run one after another: 'default' (nothing set) or CONCURRENCY:JITTER each "
        "(8:0.2 were the defaults before issue 17)",
    )
    parser.add_argument(
        "--start-at",
        type=float,
        help="start each fleet run's server this many seconds into an interval (late: the hardest ramp)",
    )
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args()
    configs = [Config.parse(c) for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory(prefix="infra-bench-poller-") as tmp, SshdFleet() as fleet:
        fleet.start_hosts([f"s{i:02d}" for i in range(args.sshd)])
        root = Path(tmp)
        memory: dict[int, int] = {}
        for n in (int(x) for x in args.memory_sizes.split(",") if x.strip()):
            memory[n] = memory_run(fleet, root, n, args.interval, args.memory_wait, configs[-1])
            print(f"memory: {n} devices {memory[n]:,} KB", flush=True)
        runs: dict[Config, dict[str, Any]] = {}
        for config in configs:
            runs[config] = r = fleet_run(fleet, root, args, config)
            ramp, lag = r["connection_ramp"], r["ramp"]
            print(
                f"fleet run {config.label}: ready {r['started_into_interval']:.0f} s into a slot; connection "
                f"ramp p50 {fmt(ramp['p50'])}, p95 {fmt(ramp['p95'])}; fleet fully polled after "
                f"{fmt(r['fully_polled'])}; ramp lag p95 {fmt(lag['p95'])}, missed {r['missed']['ramp']} of "
                f"{r['expected_ramp']}; steady lag p95 {fmt(r['steady']['p95'])}, missed "
                f"{r['missed']['steady']} of {r['expected_steady']}; load {r['load'][0]:.1f} -> "
                f"{r['load'][1]:.1f}",
                flush=True,
            )
        memory[args.devices] = runs[configs[-1]]["rss_kb"]
    publish(render(args, runs, memory), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
