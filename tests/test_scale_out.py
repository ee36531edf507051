"""Two `infrastructor serve` replicas on one PostgreSQL database share the polling of an sshd fleet:
no (device, category, slot) is collected twice, none is missed, and when one replica is killed the other
carries on alone."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from mcp_server.polling.scheduler import jitter_offset
from tests.app_fixtures import create_pg_database, drop_pg_database
from tests.helpers import free_port
from tests.sshd import SshdFleet

CLI = str(Path(sys.executable).parent / "infrastructor")
INTERVAL = 4.0
JITTER = 0.5
HEALTH_TIMEOUT = 60.0
PHASE_ONE = 22.0  # both replicas
PHASE_TWO = 14.0  # one replica left


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False


def _env(tmp_path: Path, name: str, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    return env | {
        "INFRA_DATA_DIR": str(tmp_path / name),
        "INFRA_SSH_KNOWN_HOSTS": str(tmp_path / name / "known_hosts"),
        "INFRA_DATABASE_URL": url,
        "INFRA_AUTH": "false",
        "INFRA_LOCAL_DEVICE": "false",  # "local" would be a different machine per replica
        "INFRA_REPLICA_NAME": name,
        "INFRA_LOG_LEVEL": "WARNING",
        "INFRA_SSH_FILE_DIRS": tempfile.gettempdir(),  # the sshd fleet's client key lives there
        "INFRA_SSH_CONNECT_TIMEOUT": "5",
        "INFRA_POLL_SYSTEM_INTERVAL": str(INTERVAL),
        "INFRA_POLL_NETWORK_INTERVAL": "0",
        "INFRA_POLL_DISK_INTERVAL": "0",
        "INFRA_POLL_CONTAINERS_INTERVAL": "0",
        "INFRA_POLL_DRIVES_INTERVAL": "0",
        "INFRA_POLL_JITTER": str(JITTER),
        "INFRA_POLL_REPORT_INTERVAL": "2",
    }


@contextlib.contextmanager
def replicas(tmp_path: Path, url: str, names: list[str]) -> Iterator[dict[str, Replica]]:
    started: dict[str, Replica] = {}
    try:
        for name in names:
            port = free_port()
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [CLI, "serve", "--port", str(port)],
                    env=_env(tmp_path, name, url),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            started[name] = Replica(name, port, process, log)
        yield started
    finally:
        for replica in started.values():
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(timeout=30)


async def _wait_healthy(group: dict[str, Replica]) -> None:
    end = time.monotonic() + HEALTH_TIMEOUT
    while not all([await asyncio.to_thread(r.healthy) for r in group.values()]):
        if time.monotonic() > end:
            pytest.fail(f"replicas not healthy after {HEALTH_TIMEOUT:g}s")
        await asyncio.sleep(0.1)


def _register(tmp_path: Path, url: str, fleet: SshdFleet) -> list[str]:
    names = []
    for host in fleet.hosts.values():
        if host.name not in ("alpha", "beta", "gamma"):
            continue
        address = [host.name, host.hostname, "--port", str(host.port), "--username", fleet.username]
        done = subprocess.run(
            [CLI, "devices", "add", *address, "--key-path", str(fleet.client_key_path)],
            env=_env(tmp_path, "setup", url),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        names.append(host.name)
    return sorted(names)


async def _sleep_until(moment: float) -> None:
    # the test's own pacing (how long the replicas run), not a wait for an outcome
    await asyncio.sleep(max(0.0, moment - time.time()))


async def test_two_replicas_share_the_polling_without_collecting_a_slot_twice_or_missing_one(
    sshd_fleet: SshdFleet, tmp_path: Path
) -> None:
    url = await create_pg_database()
    try:
        devices = _register(tmp_path, url, sshd_fleet)
        with replicas(tmp_path, url, ["replica-a", "replica-b"]) as group:
            await _wait_healthy(group)
            ready = time.time()
            await _sleep_until(ready + PHASE_ONE)
            killed = time.time()
            group["replica-a"].process.send_signal(signal.SIGKILL)  # no shutdown: its claims just stop
            group["replica-a"].process.wait(timeout=30)
            await _sleep_until(killed + PHASE_TWO)
            stopped = time.time()
            group["replica-b"].process.send_signal(signal.SIGTERM)
            group["replica-b"].process.wait(timeout=60)
        await _check(url, devices, ready, killed, stopped)
    finally:
        await drop_pg_database(url)


async def _check(url: str, devices: list[str], ready: float, killed: float, stopped: float) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10)
    try:
        leases = await conn.fetch(
            "SELECT device, slot, owner, request_id, completed_at, outcome FROM poll_leases "
            "WHERE category = 'system'"
        )
        polls = await conn.fetch(
            "SELECT request_id, device, subject, outcome FROM data_collection_audit "
            "WHERE transport = 'poller' AND command = 'system_metrics' AND NOT cache_hit"
        )
        reporters = await conn.fetch(
            "SELECT DISTINCT replica FROM service_performance_metrics WHERE kind = 'replica'"
        )
    finally:
        await conn.close()
    by_request = {r["request_id"]: r for r in leases}
    # every executed poll belongs to the lease that finally held its slot, and no slot ran twice
    assert polls, "no polls were audited"
    assert all(p["request_id"] in by_request for p in polls), "a poll ran without holding its slot"
    runs = Counter(
        (by_request[p["request_id"]]["device"], by_request[p["request_id"]]["slot"]) for p in polls
    )
    assert max(runs.values()) == 1, [k for k, n in runs.items() if n > 1]
    assert all(p["subject"] == f"poller:{by_request[p['request_id']]['owner']}" for p in polls)
    held = {(r["device"], r["slot"]): r for r in leases}
    phase_one = range(math.ceil(ready / INTERVAL), math.floor(killed / INTERVAL))
    phase_two = range(math.ceil(killed / INTERVAL), math.floor(stopped / INTERVAL))
    owners_one: set[str] = set()
    for device in devices:
        offset = jitter_offset(device, "system", INTERVAL, JITTER)
        for slot in phase_one:
            lease = held.get((device, slot))
            assert lease is not None and lease["completed_at"] is not None, f"{device} slot {slot} missed"
            assert lease["outcome"] == "ok", (device, slot, lease["outcome"])
            owners_one.add(lease["owner"])
        for slot in phase_two:
            if slot * INTERVAL + offset < killed + 1.0:
                continue  # due around the kill: replica-a may have claimed it and died holding it
            lease = held.get((device, slot))
            assert lease is not None and lease["completed_at"] is not None, f"{device} slot {slot} missed"
            assert lease["owner"] == "replica-b", (device, slot, lease["owner"])
    assert len(phase_one) >= 4 and len(phase_two) >= 2
    assert owners_one == {"replica-a", "replica-b"}, "the replicas did not share the work"
    assert {r["replica"] for r in reporters} == {"replica-a", "replica-b"}
