"""Benchmark configuration change detection: from a write to the stored, published change event.

Three watchers, each over `--edits` edits of a real file: inotify on the `local` device (inotify_simple in
process), inotifywait streamed over SSH from a real sshd on loopback, and polling (a host whose PATH has no
inotifywait) at `--poll-interval`. Every edit goes through the whole path: the event, the debounce, reading
the file through the collection pipeline, hashing, diff, risk, the database commit and the bus.

Run from the repository root: python bench/bench_config.py [--edits 100] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Results, command_line, machine, publish  # noqa: E402
from mcp_server.devices import DeviceSpec  # noqa: E402
from mcp_server.events import ConfigChanged  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from mcp_server.state import AppState, open_state  # noqa: E402
from tests.helpers import path_without  # noqa: E402
from tests.sshd import SshdFleet, SshdHost  # noqa: E402

BEGIN = "<!-- bench_config:begin -->"
END = "<!-- bench_config:end -->"
EVENT_TIMEOUT = 30.0
MODE_TIMEOUT = 30.0


async def add_host(state: AppState, fleet: SshdFleet, host: SshdHost) -> str:
    spec = DeviceSpec(
        hostname=host.hostname, port=host.port, username=fleet.username, key_path=str(fleet.client_key_path)
    )
    return (await state.devices.add(host.name, spec)).name


async def wait_mode(state: AppState, device: str, mode: str) -> None:
    deadline = time.monotonic() + MODE_TIMEOUT
    while state.config.status(device).mode != mode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{device} not in {mode} mode: {state.config.status(device)}")
        await asyncio.sleep(0.01)


async def measure(
    state: AppState, results: Results, label: str, device: str, path: Path, edits: int, jitter: float
) -> None:
    """Edit `path` `edits` times; each sample is the time from the write to its ConfigChanged event."""
    queue = state.events.subscribe_queue(types=(ConfigChanged,))
    try:
        for i in range(edits):
            if jitter:
                # edits land anywhere in the poll cycle, as real ones do
                await asyncio.sleep(random.uniform(0, jitter))
            started = time.perf_counter()
            path.write_text(f"services:\n  web:\n    image: nginx:1.{i}\n")
            while True:
                event = await asyncio.wait_for(queue.get(), EVENT_TIMEOUT)
                if isinstance(event, ConfigChanged) and event.path == str(path):
                    break
            results.add(label, time.perf_counter() - started)
    finally:
        queue.close()


async def run(edits: int, poll_interval: float) -> tuple[Results, dict[str, str]]:
    results = Results()
    labels = {
        "local": "inotify on local (inotify_simple)",
        "ssh": "inotify over SSH (inotifywait -m stream)",
        "poll": f"polling over SSH every {poll_interval:g} s (one sha256 batch per poll)",
    }
    with SshdFleet() as fleet, tempfile.TemporaryDirectory(prefix="bench-config-") as tmp:
        scratch = fleet.scratch_dir()
        watched = fleet.start_host("watched")
        polled = fleet.start_host("polled", env={"PATH": str(path_without(scratch, "inotifywait"))})
        settings = load_settings(
            data_dir=Path(tmp) / "data",
            ssh_known_hosts=Path(tmp) / "known_hosts",
            config_poll_interval=poll_interval,
            log_level="WARNING",
            ssh_file_dirs=str(fleet.client_key_path.parent),  # the fleet's client key lives there
            config_watch_allow=f"{tempfile.gettempdir()}/*",  # the watched files are temporary too
        )
        async with open_state(settings) as state:
            await state.config.start()
            local_file = Path(tmp) / "local-compose.yaml"
            ssh_file = scratch / "ssh-compose.yaml"
            poll_file = scratch / "poll-compose.yaml"
            for f in (local_file, ssh_file, poll_file):
                f.write_text("services: {}\n")
            ssh_device = await add_host(state, fleet, watched)
            poll_device = await add_host(state, fleet, polled)
            await state.config.watch("local", str(local_file))
            await state.config.watch(ssh_device, str(ssh_file))
            await state.config.watch(poll_device, str(poll_file))
            await wait_mode(state, "local", "inotify")
            await wait_mode(state, ssh_device, "inotify")
            await wait_mode(state, poll_device, "polling")
            await measure(state, results, labels["local"], "local", local_file, edits, 0.0)
            await measure(state, results, labels["ssh"], ssh_device, ssh_file, edits, 0.0)
            await measure(state, results, labels["poll"], poll_device, poll_file, edits, poll_interval)
            debounce = settings.config_debounce
    return results, {"debounce": f"{debounce:g}", "interval": f"{poll_interval:g}"}


def report(results: Results, facts: dict[str, str], edits: int, command: str) -> str:
    rows = [
        f"| {s.name} | {len(s.samples)} | {s.median_ms:.1f} | {s.p95_ms:.1f} | {max(s.samples) * 1000:.1f} |"
        for s in results.series.values()
    ]
    return "\n".join(
        [
            BEGIN,
            "",
            f"Command: `{command}`",
            "",
            f"Detection latency, from writing a watched compose file to its change event (stored and published), "
            f"over {edits} edits each; debounce {facts['debounce']} s (the default).",
            "",
            "| Watcher | Edits | Median ms | p95 ms | Max ms |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            *machine(),
            "",
            END,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results, facts = asyncio.run(run(args.edits, args.poll_interval))
    command = command_line("bench_config.py")
    block = report(results, facts, args.edits, command)
    publish(block, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
