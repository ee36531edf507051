"""Shared pieces of the benchmarks: a real `infrastructor serve` process, timing series, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.helpers import free_port

HEALTH_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
TOKEN_TIMEOUT = 60.0
# fixed so that a run can be repeated with the same key; it protects nothing outside the run's temp dir
BENCH_JWT_SECRET = "infrastructor-bench-fixed-hs256-secret-0123456789"


@dataclass
class Series:
    """Wall times in seconds of one measured scenario."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.samples)
        # nearest rank: the smallest sample with at least 95% of samples at or below it
        rank = max(1, -(-95 * len(ordered) // 100))
        return ordered[rank - 1] * 1000


@dataclass
class Results:
    series: dict[str, Series] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.series.setdefault(name, Series(name)).samples.append(seconds)

    def median(self, name: str) -> float:
        return self.series[name].median_ms


@dataclass(frozen=True)
class Server:
    """A running `infrastructor serve`: where it listens and what a client must send."""

    url: str
    headers: dict[str, str]
    pid: int

    def client(self) -> Client[Any]:
        return Client(StreamableHttpTransport(self.url, headers=self.headers))


def _executable() -> str:
    exe = shutil.which("infrastructor", path=str(Path(sys.executable).parent)) or shutil.which(
        "infrastructor"
    )
    if exe is None:
        raise RuntimeError("the infrastructor console script is not installed (pip install -e .)")
    return exe


def server_env(data_dir: Path, *, auth: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one server: its own data dir and known_hosts; a fixed HS256 key, or auth off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    env |= {
        "INFRA_DATA_DIR": str(data_dir),
        "INFRA_SSH_KNOWN_HOSTS": str(data_dir / "known_hosts"),
        "INFRA_LOG_LEVEL": "WARNING",
        # the sshd fleet's client key lives in a temporary directory
        "INFRA_SSH_FILE_DIRS": tempfile.gettempdir(),
        # the benchmarks call far faster than an agent: the per-subject request rate limit would answer 429
        "INFRA_HTTP_RATE_LIMIT": "1000000",
        "INFRA_HTTP_RATE_BURST": "1000000",
        # background polls would compete with the measured calls
        "INFRA_POLL_ENABLED": "false",
    }
    env |= {"INFRA_JWT_SECRET": BENCH_JWT_SECRET} if auth else {"INFRA_AUTH": "false"}
    return env | (extra or {})


def mint_token(env: dict[str, str]) -> str:
    """An admin token from `infrastructor token create`, signed with the environment's key."""
    done = subprocess.run(
        [_executable(), "token", "create", "--subject", "bench", "--scopes", "infra:admin", "--ttl", "1h"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TOKEN_TIMEOUT,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def serve(
    data_dir: Path, *, auth: bool = True, extra: dict[str, str] | None = None, checkout: Path | None = None
) -> Iterator[Server]:
    """Run `infrastructor serve` on a free loopback port until the block exits.

    With auth (the default) the token comes from `token create` and the server is checked to refuse a
    request without it; with auth off the server runs with INFRA_AUTH=false. With `checkout`, the server
    runs that checkout's code (`python -m mcp_server` there: a baseline to compare with).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    env = server_env(data_dir, auth=auth, extra=extra)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    program = [_executable()] if checkout is None else [sys.executable, "-m", "mcp_server"]
    headers = {"Authorization": f"Bearer {mint_token(env)}"} if auth else {}
    port = free_port()
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*program, "serve", "--port", str(port)],
            env=env,
            cwd=checkout,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(f"{base}/health", proc, log_path)
        status = unauthenticated_status(f"{base}/mcp")
        if (status == 401) != auth:
            raise RuntimeError(f"auth={auth} but a request without a token got HTTP {status}")
        yield Server(f"{base}/mcp", headers, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SERVER_STOP_TIMEOUT)


def unauthenticated_status(url: str) -> int:
    """The HTTP status of an MCP initialize request sent without a bearer token."""
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        b'"capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}'
    )
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {HEALTH_TIMEOUT}s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a running process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed(call: Awaitable[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call
    return time.perf_counter() - started, result


def ssh_client_options(key_path: Path, known_hosts: Path) -> list[str]:
    """OpenSSH client options of the shell-loop arms: our key only, no prompts, host keys checked."""
    return [
        "-i",
        str(key_path),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
    ]


def machine(database: str = "SQLite (default)") -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    from importlib.metadata import version

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- nproc: {len(os.sched_getaffinity(0))}; CPU: {cpu}; load average at the end: {load}",
        f"- Python {platform.python_version()}, Linux {platform.release()}, {ssh}",
        f"- fastmcp {version('fastmcp')}, mcp {version('mcp')}, asyncssh {version('asyncssh')}, "
        f"PyJWT {version('pyjwt')}; database: {database}",
        f"- run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]


def write_block(path: Path, block: str, begin: str, end: str) -> None:
    """Replace the generated block between begin and end in path, keeping the hand-written text around it."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    path.write_text(text)


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How this run was started, as the report shows it: `python bench/<script> <its arguments>`."""
    return " ".join(["python", f"bench/{script}", *(argv if argv is not None else sys.argv[1:])])


def publish(block: str, out: Path | None, begin: str, end: str) -> None:
    """Print a report block and, with --out, replace the generated block of that markdown file with it."""
    print(block)
    if out is not None:
        write_block(out, block, begin, end)
