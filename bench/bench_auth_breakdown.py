"""Where the auth-on server spends its extra time per tools/call: timers around the request and its auth steps.

Rounds alternate between a server with auth on and one with auth off, each run in this process with uvicorn on
loopback and built by `build_server` as `infrastructor serve` builds it; the MCP client runs in a child
process. Timers wrap the whole ASGI request (outermost, so bearer authentication is inside it) and three
library functions on the request path; no code of ours is replaced.
Run from the repository root: python bench/bench_auth_breakdown.py [--calls 300] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from fastmcp.server import server as fastmcp_server  # noqa: E402
from fastmcp.server.transforms import visibility  # noqa: E402
from mcp.server.auth.middleware import bearer_auth  # noqa: E402

from bench.harness import BENCH_JWT_SECRET, command_line, machine, publish  # noqa: E402
from mcp_server.auth import issue_token  # noqa: E402
from mcp_server.server import build_server, http_signing_key  # noqa: E402
from mcp_server.settings import load_settings  # noqa: E402
from tests.helpers import free_port  # noqa: E402

BEGIN = "<!-- bench_auth_breakdown:begin -->"
END = "<!-- bench_auth_breakdown:end -->"
READY_TIMEOUT = 30.0
WHOLE = "request"
TIMED = {
    "bearer": (bearer_auth.BearerAuthBackend, "authenticate"),
    "visibility": (visibility, "get_visibility_rules"),
    "get_tool": (fastmcp_server.FastMCP, "get_tool"),
}
LEGEND = {
    WHOLE: "the whole HTTP request inside the server (outermost ASGI wrapper, so auth is inside it)",
    "bearer": "`mcp.server.auth.middleware.bearer_auth.BearerAuthBackend.authenticate` (JWT verification)",
    "visibility": "`fastmcp.server.transforms.visibility.get_visibility_rules` (session-scoped rules)",
    "get_tool": "`fastmcp.server.server.FastMCP.get_tool` (includes the visibility lookup)",
}

CLIENT = r"""
import asyncio, json, sys, time
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

async def main() -> None:
    headers = {"Authorization": sys.argv[2]} if sys.argv[2] else {}
    async with Client(StreamableHttpTransport(sys.argv[1], headers=headers)) as client:
        for _ in range(30):
            await client.call_tool("get_cache_stats", {})
        print("READY", flush=True)
        sys.stdin.readline()
        samples = []
        for _ in range(int(sys.argv[3])):
            started = time.perf_counter()
            await client.call_tool("get_cache_stats", {})
            samples.append(time.perf_counter() - started)
        print(json.dumps(samples), flush=True)

asyncio.run(main())
"""


@dataclass
class Timers:
    """Durations in seconds of every run of each timed step, reset before each measured round."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def reset(self) -> None:
        self.samples.clear()


TIMERS = Timers()


def wrap(owner: Any, attribute: str, name: str) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(owner, attribute)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            TIMERS.add(name, time.perf_counter() - started)

    setattr(owner, attribute, timed)


def timed_app(app: Any) -> Any:
    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/mcp"):
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await app(scope, receive, send)
        finally:
            TIMERS.add(WHOLE, time.perf_counter() - started)

    return outer


async def one_round(auth: bool, data_dir: Path, calls: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """(client median ms, {step: (runs per call, median µs per run)}) for one server measured alone."""
    settings = load_settings(
        data_dir=data_dir,
        ssh_known_hosts=data_dir / "known_hosts",
        auth=auth,
        jwt_secret=BENCH_JWT_SECRET if auth else None,
        log_level="WARNING",
    )
    key = await http_signing_key(settings)
    mcp = build_server(settings, transport="http", signing_key=key)
    header = ""
    if key is not None:
        token, _ = issue_token(key, settings, subject="bench", scopes=["infra:admin"], ttl_seconds=3600)
        header = f"Bearer {token}"
    app = mcp.http_app(path="/mcp", host_origin_protection=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(timed_app(app), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    client = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not server.started:
            if serving.done() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{port}/mcp"
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            url,
            header,
            str(calls),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert client.stdin is not None and client.stdout is not None
        line = await asyncio.wait_for(client.stdout.readline(), READY_TIMEOUT)
        if line.strip() != b"READY":
            raise RuntimeError(f"client did not get ready: {line!r}")
        TIMERS.reset()
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        samples: list[float] = json.loads(await client.stdout.readline())
        await client.wait()
        steps = {n: (len(v) / calls, statistics.median(v) * 1e6) for n, v in TIMERS.samples.items()}
        return statistics.median(samples) * 1000, steps
    finally:
        if client is not None and client.returncode is None:
            client.kill()
            await client.wait()
        server.should_exit = True
        await serving


def render(rounds: list[tuple[bool, float, dict[str, tuple[float, float]]]], calls: int, command: str) -> str:
    lines = [BEGIN, "", f"Command: `{command}`", "", *machine(), ""]
    names = [WHOLE, *TIMED]
    lines += [
        "| round | server | client median ms | " + " | ".join(f"{n} µs" for n in names) + " |",
        "|---:|---|---:|" + "---:|" * len(names),
    ]
    for i, (auth, median, steps) in enumerate(rounds, 1):
        cells = [f"{steps[n][1]:.0f} (x{steps[n][0]:g})" if n in steps else "-" for n in names]
        server = "auth on" if auth else "auth off"
        lines.append(f"| {i} | {server} | {median:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{calls} `get_cache_stats` calls per round. A step's cell is the median duration of one run of it and "
        "(xN) how many times it ran per call; `-`: never ran.",
        "",
        *(f"- {name}: {text}" for name, text in LEGEND.items()),
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating on and off")
    parser.add_argument("--out", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 5000 or not 1 <= args.rounds <= 10:
        parser.error("--calls in 1..5000, --rounds in 1..10")
    for name, (owner, attribute) in TIMED.items():
        wrap(owner, attribute, name)
    rounds: list[tuple[bool, float, dict[str, tuple[float, float]]]] = []
    with tempfile.TemporaryDirectory(prefix="infra-bench-breakdown-") as tmp:
        for i in range(args.rounds * 2):
            auth = i % 2 == 0
            median, steps = asyncio.run(one_round(auth, Path(tmp) / f"round{i}", args.calls))
            rounds.append((auth, median, steps))
    command = command_line("bench_auth_breakdown.py", argv)
    block = render(rounds, args.calls, command)
    publish(block, args.out, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
