"""The SSH pool and the os_info script against a baseline commit's, side by side in one process and one run.

N sshd hosts on loopback, and the same hosts behind the TCP relay of bench_peers.py (`relay` mode, run here on
127.0.0.2, DELAY ms held in each direction). Arms, interleaved round by round: the baseline's pool
(mcp_server/ssh.py of BASELINE, loaded from git) with the baseline's os_info script; this checkout's pool with
the baseline's script (what the pool alone changes); this checkout's pool with this checkout's script. Each
arm runs `sh -c <script>` on all N hosts at once (as collect_many does) and on one host, over connections
opened beforehand. No MCP, no parsing, no database: what the pool and the remote side cost.

Run from the repository root (as root, for the sshd test user):
    python bench/bench_pool_rtt.py [--baseline 890720e] [--hosts 20] [--rounds 15] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp_server.commands.system import OS_INFO_SCRIPT  # noqa: E402
from mcp_server.devices import Device  # noqa: E402
from mcp_server.ssh import SSHOptions, SSHPool  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.sshd import SshdFleet, SshdHost  # noqa: E402

FAR = "127.0.0.2"


def baseline_module(commit: str, path: str, name: str, tmp: Path) -> ModuleType:
    """`path` as it was at `commit`, imported as a module of its own (its imports are this checkout's)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    file = tmp / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def fan_out(pool: Any, devices: list[Device], script: str) -> float:
    argv = ["sh", "-c", script]
    started = time.perf_counter()
    results = await asyncio.gather(*(pool.run(d, argv, timeout=30, label="os_info") for d in devices))
    elapsed = (time.perf_counter() - started) * 1000
    bad = [r for r in results if r.exit_status != 0 or not r.stdout.endswith("@@end\n")]
    if bad:
        raise RuntimeError(f"os_info failed: {bad[0]}")
    return elapsed


async def measure(
    args: argparse.Namespace, fleet: SshdFleet, hosts: list[SshdHost], tmp: Path
) -> dict[tuple[str, str, int], list[float]]:
    old_ssh = baseline_module(args.baseline, "mcp_server/ssh.py", "baseline_ssh", tmp)
    old_system = baseline_module(args.baseline, "mcp_server/commands/system.py", "baseline_system", tmp)
    near = [fleet.device(h) for h in hosts]
    far = [fleet.device(h, name=f"{h.name}-far", hostname=FAR) for h in hosts]
    known_hosts = tmp / "known_hosts"

    def no_jump_hosts(name: str) -> Device:
        raise LookupError(name)

    pools: dict[str, Any] = {
        "baseline": old_ssh.SSHPool(old_ssh.SSHOptions(known_hosts=known_hosts), lookup=no_jump_hosts),
        "this": SSHPool(SSHOptions(known_hosts=known_hosts), lookup=no_jump_hosts),
    }
    arms = [
        ("baseline pool, baseline script", "baseline", old_system.OS_INFO_SCRIPT),
        ("this pool, baseline script", "this", old_system.OS_INFO_SCRIPT),
        ("this pool, this script", "this", OS_INFO_SCRIPT),
    ]
    for pool in pools.values():
        for device in near + far:
            await pool.connect(device)
    times: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for setting, devices in (("loopback", near), (f"{2 * args.delay_ms:g} ms RTT", far)):
            for label, pool_name, script in arms:
                for count in (len(devices), 1):
                    await asyncio.sleep(0.3)  # idle between calls, as between an agent's calls
                    elapsed = await fan_out(pools[pool_name], devices[:count], script)
                    times.setdefault((setting, label, count), []).append(elapsed)
    for pool in pools.values():
        await pool.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="890720e")
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="held in each direction")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pool-rtt-") as tmp, SshdFleet() as fleet:
        hosts = fleet.start_hosts([f"rtt{i:02d}" for i in range(args.hosts)])
        routes = [a for h in hosts for a in ("--route", f"{h.port}:{h.port}:{args.delay_ms}")]
        relay_argv = [sys.executable, str(ROOT / "bench/bench_peers.py"), "relay", "--listen", FAR]
        relay = subprocess.Popen([*relay_argv, "--echo", str(free_port()), *routes], stdout=subprocess.PIPE)
        try:
            assert relay.stdout is not None and relay.stdout.readline().strip() == b"ready"
            times = asyncio.run(measure(args, fleet, hosts, Path(tmp)))
        finally:
            relay.kill()
            relay.wait()
    print(
        f"`python bench/bench_pool_rtt.py --baseline {args.baseline} --hosts {args.hosts} --rounds {args.rounds}`"
    )
    print()
    print("| setting | hosts | arm | median ms | min ms |")
    print("|---|---:|---|---:|---:|")
    for (setting, label, count), values in sorted(times.items(), key=lambda kv: (kv[0][0], -kv[0][2])):
        print(f"| {setting} | {count} | {label} | {statistics.median(values):.1f} | {min(values):.1f} |")
    print()
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
