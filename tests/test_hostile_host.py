"""A hostile host against a real server: an sshd host whose watched files and command outputs are
pathological (an alias bomb, 10k-line diffs, megabyte lines, NUL and invalid UTF-8, deep nesting, file names
with newlines) while another client measures /health and a cached tool call. Nothing stalls, nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.helpers import fixture_bin, free_port, path_without, serving
from tests.sshd import SshdFleet, SshdHost
from tests.test_config_watch import require_inotifywait
from tests.test_transports import CLI, cli_env

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
SECRET = "h" * 48
CONTROL_FACTOR = 3  # the hostile server may be this many times slower than the control at p99
# seconds: a stalled event loop costs seconds (9.2 s before the workers); on 2 shared cores at load ~20 a
# responsive server's /health still reached 0.37 s at p99 while its workers parsed the hostile output
P99_BOUND = 1.0

ALIAS_BOMB = "\n".join(
    [
        "services:",
        "  web:",
        "    image: nginx:1.25",
        "x-lol:",
        '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"  {n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "",
    ]
)


def periodic(lines: int, step: int) -> str:
    """Text that drives difflib's matching towards its worst case (10k lines: about 10 s)."""
    return "".join(f"v{(i * step) % 300}\n" for i in range(lines))


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def hostile_outputs() -> dict[str, bytes]:
    """What the host's programs print (see tests/fixture_bin/hostile/emit)."""
    entry = {"__REALTIME_TIMESTAMP": "1733300000000000", "PRIORITY": "6", "_SYSTEMD_UNIT": "app.service"}
    journal = [
        json.dumps(entry | {"MESSAGE": "an ordinary line"}).encode(),
        json.dumps(entry | {"MESSAGE": "x" * 1_000_000}).encode(),  # one megabyte on one line
        json.dumps(entry | {"MESSAGE": "nul"}).encode().replace(b"nul", b"a\\u0000b\xff\xfe"),
        deep_json(200_000).encode(),
    ]
    return {
        "journalctl": b"\n".join(journal) + b"\n",
        # dnf check-update: a version of 1,000 digits and 2,000 dashes (the old version pattern took 66 s)
        "dnf": b"\nbash.x86_64    " + b"1" * 1000 + b"-" * 2000 + b"    updates\n",
        "docker": b'{"ID":"' + b"a" * 1_000_000 + b'"}\n' + deep_json(30_000).encode() + b"\n\xff\x00\n",
        "smartctl": deep_json(100_000).encode(),
    }


@dataclass
class Hostile:
    host: SshdHost
    files: Path
    confd: Path


@pytest.fixture
def hostile(sshd_fleet: SshdFleet, tmp_path: Path) -> Iterator[Hostile]:
    require_inotifywait()
    scratch = sshd_fleet.scratch_dir()
    bin_dir = fixture_bin(scratch / "fx", "hostile", ("journalctl", "dnf", "docker", "smartctl"))
    data = bin_dir.parent / "data"
    for name, output in hostile_outputs().items():
        (data / f"{name}.out").write_bytes(output)
    (data / "dnf.status").write_text("100")
    files = scratch / "files"
    files.mkdir(mode=0o777)
    (files / "compose.yaml").write_text("services:\n  web:\n    image: nginx:1.25\n")
    (files / "big.conf").write_text(periodic(10_000, 1))
    (files / "oneline.conf").write_text("short\n")
    (files / "binary.conf").write_text("plain\n")
    confd = files / "conf.d"
    confd.mkdir(mode=0o777)
    (confd / "site.conf").write_text("server { listen 80; }\n")
    # apt hidden, so the host answers for dnf; sshd applies only the first SetEnv line: PATH
    without_apt = path_without(scratch, "apt")
    host = sshd_fleet.start_host("hostile", env={"PATH": f"{bin_dir}:{without_apt}"})
    try:
        yield Hostile(host, files, confd)
    finally:
        host.stop()


def token(subject: str, scope: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "scope": scope, "iat": now, "exp": now + 900}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class Probe:
    """Latencies a well-behaved client sees while the hostile host is being read."""

    health: list[float] = field(default_factory=list)
    cached_call: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def measure(urls: dict[str, str], probes: dict[str, Probe], stop: asyncio.Event) -> None:
    """Probe each server in turn, the same calls side by side: the one reading the hostile host and a
    control that reads nothing, so what the machine's own load costs shows up in both."""
    auth = {"Authorization": f"Bearer {token('observer', 'infra:read')}"}

    def health(url: str) -> int:
        with urllib.request.urlopen(f"{url.rsplit('/', 1)[0]}/health", timeout=30) as response:
            return int(response.status)

    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                Client(StreamableHttpTransport(url, headers=auth), timeout=60)
            )
            for name, url in urls.items()
        }
        for client in clients.values():  # cached for an hour
            await client.call_tool("collect", {"device": "local", "command": "os_info"})
        while not stop.is_set():
            for name, client in clients.items():
                probe = probes[name]
                started = time.perf_counter()
                code = await asyncio.to_thread(health, urls[name])
                probe.health.append(time.perf_counter() - started)
                if code != 200:
                    probe.failures.append(f"/health {code}")
                started = time.perf_counter()
                result = await client.call_tool(
                    "collect", {"device": "local", "command": "os_info"}, raise_on_error=False
                )
                probe.cached_call.append(time.perf_counter() - started)
                if result.is_error or not (result.structured_content or {}).get("from_cache"):
                    probe.failures.append(f"collect: {result.content}")
            await asyncio.sleep(0.05)


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


async def changes_of(client: Client[Any], path: str) -> list[dict[str, Any]]:
    result = await client.call_tool(
        "list_config_changes", {"device": "hostile", "limit": 100}, raise_on_error=False
    )
    return [c for c in (result.structured_content or {}).get("changes", []) if c["path"] == path]


async def eventually_changed(client: Client[Any], path: str, within: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await changes_of(client, path)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no change recorded for {path} within {within}s")


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[str]:
    """A server on the same machine that reads no hostile host: the baseline the probes compare with."""
    port, data = free_port(), tmp_path / "control"
    data.mkdir()
    env = cli_env(data, INFRA_JWT_SECRET=SECRET, INFRA_HTTP_PORT=str(port), INFRA_HTTP_RATE_LIMIT="100000")
    with serving([CLI, "serve"], port, env, data / "server.log", cwd=REPO) as url:
        yield url


@pytest.fixture
async def server(hostile: Hostile, tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    env = cli_env(
        tmp_path,
        INFRA_JWT_SECRET=SECRET,
        INFRA_HTTP_PORT=str(port),
        INFRA_HTTP_RATE_LIMIT="100000",
        INFRA_HTTP_RATE_BURST="1000",
        INFRA_CONFIG_DEBOUNCE="0.05",
        INFRA_CONFIG_WATCH_ALLOW=f"{hostile.files},{hostile.files}/*",
    )
    with serving([CLI, "serve"], port, env, tmp_path / "server.log", cwd=REPO) as url:
        yield url


async def test_a_hostile_host_neither_stalls_the_server_nor_loses_anything(
    hostile: Hostile, server: str, control: str, sshd_fleet: SshdFleet
) -> None:
    auth = {"Authorization": f"Bearer {token('operator', 'infra:admin')}"}
    files, confd = hostile.files, hostile.confd
    async with Client(StreamableHttpTransport(server, headers=auth), timeout=120) as client:
        added = await client.call_tool(
            "add_device",
            {
                "name": "hostile",
                "hostname": hostile.host.hostname,
                "port": hostile.host.port,
                "username": sshd_fleet.username,
                "key_path": str(sshd_fleet.client_key_path),
            },
        )
        assert not added.is_error, added.content
        for path in ("compose.yaml", "big.conf", "oneline.conf", "binary.conf", "conf.d"):
            watched = await client.call_tool(
                "watch_config_file", {"device": "hostile", "path": str(files / path)}, raise_on_error=False
            )
            assert not watched.is_error, watched.content

        probes, stop = {"hostile": Probe(), "control": Probe()}, asyncio.Event()
        observer = asyncio.create_task(measure({"hostile": server, "control": control}, probes, stop))
        await asyncio.sleep(1.0)  # a baseline before the host turns hostile
        try:
            # what the host's files become
            (files / "compose.yaml").write_text(ALIAS_BOMB)
            (files / "big.conf").write_text(periodic(10_000, 7))
            (files / "oneline.conf").write_text("k=" + "v" * 1_000_000 + "\n")
            (files / "binary.conf").write_bytes(b"plain\x00\xff\xfe\n" * 1000)
            (confd / "evil.conf\nsite.conf").write_text("server { listen 81; }\n")
            (confd / "site.conf").write_text("server { listen 8080; }\n")
            # what its programs print
            answers = {}
            for tool, arguments in (
                ("get_journal_logs", {"device": "hostile", "lines": 2000}),
                ("check_updates", {"device": "hostile"}),
                ("list_containers", {"device": "hostile"}),
                ("get_drive_health", {"device": "hostile", "drive": "/dev/sda"}),
            ):
                answers[tool] = await client.call_tool(tool, arguments, raise_on_error=False)
            for name in ("compose.yaml", "big.conf", "oneline.conf", "binary.conf"):
                await eventually_changed(client, str(files / name))
            await eventually_changed(client, str(confd / "site.conf"))
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await observer

        # every call was answered: a result, or an error that says what was wrong
        for tool, answer in answers.items():
            text = str(answer.content)
            assert "Error calling tool" not in text and "internal error" not in text.lower(), (tool, text)
        updates = answers["check_updates"]
        assert updates.is_error or updates.structured_content is not None
        # a name with a newline is never taken for two files (nor read as one it does not name)
        for spoofed in ("evil.conf", "site.conf"):
            found = await changes_of(client, str(confd / spoofed))
            assert all(c["change_type"] == "modified" for c in found), found
        bomb = await changes_of(client, str(files / "compose.yaml"))
        assert bomb[0]["risk"] == "high" and "expands to more than" in " ".join(bomb[0]["reasons"])
        big = await client.call_tool(
            "get_config_diff", {"device": "hostile", "path": str(files / "big.conf")}, raise_on_error=False
        )
        assert not big.is_error, big.content
        # and audited: every hostile call has its row
        audit = await client.call_tool("query_audit_log", {"device": "hostile", "kind": "tool", "limit": 200})
        audited = {entry["tool"] for entry in (audit.structured_content or {})["entries"]}
        assert set(answers) <= audited, audited

    probe, baseline = probes["hostile"], probes["control"]
    assert not probe.failures and not baseline.failures, (probe.failures + baseline.failures)[:5]
    assert len(probe.health) >= 20 and len(probe.cached_call) >= 20
    # under P99_BOUND, or, on a machine so loaded that the idle control is slow too, within a small
    # multiple of the control's p99 (a stalled event loop costs seconds: 9.2 s before the workers)
    for what, mine, theirs in (
        ("/health", probe.health, baseline.health),
        ("cached call", probe.cached_call, baseline.cached_call),
    ):
        bound = max(P99_BOUND, CONTROL_FACTOR * p99(theirs))
        assert p99(mine) < bound, f"{what} p99 {p99(mine):.3f}s (control {p99(theirs):.3f}s)"
