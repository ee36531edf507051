"""Benchmark start-up, side by side in one run: what a user waits for each time a process starts.

- `infrastructor --help` / `--version` against bare Python;
- a cold `infrastructor collect os_info --all` (a new process each run) over N real sshd hosts on loopback,
  against a plain `ssh … &` loop running the same script on the same hosts;
- `infrastructor serve --stdio` until `initialize` and `tools/list` are answered, against a one-tool FastMCP
  server started the same way;
- with `python -X importtime`: what each entry point imports, and whether FastMCP, Alembic and asyncssh are
  among it;
- with `--before DIR` (another checkout, e.g. `git worktree add --detach /tmp/before main`): that code's
  `serve --stdio` in the same rounds, on the same database.

Scenarios are interleaved (one of each per round) so a noisy machine slows them alike; medians are reported.

Run from the repository root:
python bench/bench_startup.py [--repeat 7] [--hosts 20] [--before DIR] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Results, command_line, machine, publish, ssh_client_options  # noqa: E402
from mcp_server.commands.system import OS_INFO_SCRIPT  # noqa: E402
from tests.sshd import SshdFleet, SshdHost  # noqa: E402

BEGIN = "<!-- bench_startup:begin -->"
END = "<!-- bench_startup:end -->"
PY = sys.executable
CLI = [PY, "-m", "mcp_server"]  # the console script runs the same main(); -m needs no PATH lookup
RUN_TIMEOUT = 120.0
ONE_TOOL_SERVER = """\
from fastmcp import FastMCP

mcp = FastMCP("one-tool")


@mcp.tool
def ping() -> str:
    return "pong"


mcp.run(show_banner=False)
"""
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "b", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
WATCHED = ("fastmcp", "mcp", "alembic", "asyncssh", "asyncpg", "uvicorn", "sqlalchemy", "pydantic")


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFRA_")}
    return env | {
        "INFRA_DATA_DIR": str(data_dir),
        "INFRA_SSH_KNOWN_HOSTS": str(data_dir / "known_hosts"),
        "INFRA_SSH_FILE_DIRS": tempfile.gettempdir(),
        "INFRA_LOG_LEVEL": "WARNING",
        "INFRA_POLL_ENABLED": "false",
    }


def children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child process so far, their own children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(
    argv: Sequence[str], env: dict[str, str], results: Results | None = None, name: str = ""
) -> float:
    """Wall seconds of one run; with `results`, its wall and CPU times are recorded under `name`."""
    cpu = children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
    if results is not None:
        results.add(name, elapsed)
        results.add(f"{name} cpu", children_cpu() - cpu)
    return elapsed


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stdio_times(
    argv: Sequence[str], env: dict[str, str], results: Results, name: str, cwd: Path | None = None
) -> None:
    """Seconds from start until `initialize` is answered, and until `tools/list` is; CPU of the whole life
    (start, both answers, exit after stdin closes). `cwd` picks the checkout `python -m mcp_server` runs."""
    cpu = children_cpu()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
        proc.stdin.flush()
        if b'"result"' not in proc.stdout.readline():
            raise RuntimeError(f"{shlex.join(argv)}: no answer to initialize")
        initialized = time.perf_counter() - started
        results.add(f"{name} initialize cpu", process_cpu(proc.pid))
        proc.stdin.write((json.dumps(INITIALIZED) + "\n" + json.dumps(TOOLS_LIST) + "\n").encode())
        proc.stdin.flush()
        if b'"tools"' not in proc.stdout.readline():
            raise RuntimeError(f"{shlex.join(argv)}: no answer to tools/list")
        listed = time.perf_counter() - started
        proc.stdin.close()
        proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    results.add(f"{name} initialize", initialized)
    results.add(f"{name} tools/list", listed)
    results.add(f"{name} life cpu", children_cpu() - cpu)


def ssh_loop(fleet: SshdFleet, hosts: list[SshdHost], known_hosts: Path) -> list[str]:
    """A shell loop starting one `ssh` per host in the background, then waiting for all of them."""
    remote = shlex.join(["sh", "-c", OS_INFO_SCRIPT])
    lines = []
    for host in hosts:
        ssh = [
            "ssh",
            "-p",
            str(host.port),
            *ssh_client_options(fleet.client_key_path, known_hosts),
            f"{fleet.username}@{host.hostname}",
            remote,
        ]
        lines.append(f"{shlex.join(ssh)} >/dev/null &")
    return ["bash", "-c", "\n".join([*lines, "wait"])]


def import_profile(
    argv: Sequence[str], env: dict[str, str], requests: bool = False
) -> tuple[float, list[str]]:
    """(sum of the self times `python -X importtime` reports, in ms; the watched packages it imported)."""
    full = [PY, "-X", "importtime", *argv[1:]]
    if requests:
        proc = subprocess.run(
            full,
            env=env,
            input=(json.dumps(INITIALIZE) + "\n").encode(),
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    else:
        proc = subprocess.run(full, env=env, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    total = 0
    tops: set[str] = set()
    for line in proc.stderr.decode().splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line[len("import time:") :].split("|")
        total += int(own)
        tops.add(name.strip().split(".")[0])
    return total / 1000, [w for w in WATCHED if w in tops]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--before", type=Path, help="another checkout whose `serve --stdio` runs alongside")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = Results()
    # An installed package has its bytecode compiled by pip; a checkout run with PYTHONDONTWRITEBYTECODE
    # (set on some machines) would compile every module at every start instead. Compile both checkouts once.
    for checkout in (ROOT, args.before):
        if checkout is not None:
            subprocess.run([PY, "-m", "compileall", "-q", str(checkout / "mcp_server")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, SshdFleet() as fleet:
        data_dir = Path(tmp) / "data"
        env = env_for(data_dir)
        one_tool = Path(tmp) / "one_tool.py"
        one_tool.write_text(ONE_TOOL_SERVER)
        hosts = fleet.start_hosts([f"h{i:02d}" for i in range(args.hosts)])
        known_hosts = Path(tmp) / "known_hosts"
        known_hosts.write_text("".join(host.known_hosts_line + "\n" for host in hosts))
        timed_run([*CLI, "migrate"], env)
        for host in hosts:
            add = [*CLI, "devices", "add", host.name, host.hostname, "--port", str(host.port)]
            add += ["--username", fleet.username, "--key-path", str(fleet.client_key_path)]
            timed_run(add, env, results, "devices add")
        timed_run([*CLI, "collect", "os_info", "--all"], env)  # pins every host key (first use)
        loop = ssh_loop(fleet, hosts, known_hosts)
        for _ in range(args.repeat):
            timed_run([PY, "-c", "pass"], env, results, "python -c pass")
            timed_run([*CLI, "--help"], env, results, "--help")
            timed_run([*CLI, "--version"], env, results, "--version")
            timed_run([*CLI, "collect", "os_info"], env, results, "collect local")
            timed_run([*CLI, "collect", "os_info", "--all"], env, results, "collect all")
            timed_run(loop, env, results, "ssh loop")
            stdio_times([*CLI, "serve", "--stdio"], env, results, "ours", cwd=ROOT)
            if args.before is not None:
                stdio_times([*CLI, "serve", "--stdio"], env, results, "before", cwd=args.before)
            stdio_times([PY, str(one_tool)], env, results, "one")
        profiles = {
            "`infrastructor --version`": import_profile([*CLI, "--version"], env),
            "`infrastructor collect os_info --all`": import_profile(
                [*CLI, "collect", "os_info", "--all"], env
            ),
            "`infrastructor serve --stdio` (to `initialize`)": import_profile(
                [*CLI, "serve", "--stdio"], env, requests=True
            ),
            "one-tool FastMCP server (to `initialize`)": import_profile(
                [PY, str(one_tool)], env, requests=True
            ),
        }
    publish(report(results, profiles, args, time.monotonic() - started), args.out, BEGIN, END)


def report(
    results: Results,
    profiles: dict[str, tuple[float, list[str]]],
    args: argparse.Namespace,
    seconds: float,
) -> str:
    def ms(name: str) -> str:
        """Median wall time, and median CPU time where it was recorded."""
        wall = f"{results.median(name):,.0f} ms"
        if f"{name} cpu" in results.series:
            return f"{wall} (CPU {results.median(f'{name} cpu'):,.0f} ms)"
        return wall

    def ratio(a: str, b: str) -> str:
        """Wall-time ratio, and the CPU-time ratio where both were recorded."""
        wall = f"{results.median(a) / results.median(b):.2f}x"
        if f"{a} cpu" in results.series and f"{b} cpu" in results.series:
            return f"{wall} (CPU {results.median(f'{a} cpu') / results.median(f'{b} cpu'):.2f}x)"
        return wall

    n = args.hosts
    lines = [
        "### Start-up (issue 20)",
        "",
        f"`{command_line('bench_startup.py')}`",
        "",
        "| What the user waits for | Infrastructor | Compared with | Ratio |",
        "|---|---|---|---|",
        f"| `infrastructor --help` | {ms('--help')} | bare `python -c pass`: {ms('python -c pass')} | "
        f"{ratio('--help', 'python -c pass')} |",
        f"| `infrastructor --version` | {ms('--version')} | bare `python -c pass`: {ms('python -c pass')} | "
        f"{ratio('--version', 'python -c pass')} |",
        f"| `collect os_info --all`, {n} sshd hosts + local, a new process | {ms('collect all')} | "
        f"one `ssh … &` per host, then `wait`: {ms('ssh loop')} | {ratio('collect all', 'ssh loop')} |",
        f"| `collect os_info` (local only), a new process | {ms('collect local')} | | |",
        f"| `serve --stdio` until `initialize` is answered | {ms('ours initialize')} | one-tool FastMCP "
        f"server: {ms('one initialize')} | {ratio('ours initialize', 'one initialize')} |",
        f"| `serve --stdio` until `tools/list` is answered | {ms('ours tools/list')} | one-tool FastMCP "
        f"server: {ms('one tools/list')} | {ratio('ours tools/list', 'one tools/list')} |",
        f"| `serve --stdio`, CPU of its whole life (start, both answers, exit) | {ms('ours life cpu')} | "
        f"one-tool FastMCP server: {ms('one life cpu')} | {ratio('ours life cpu', 'one life cpu')} |",
        f"| `devices add` (a new process, each of {n}) | {ms('devices add')} | | |",
    ]
    if args.before is not None:
        commit = subprocess.run(
            ["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        lines += [
            "",
            f"The code before (`--before`, at {commit}) in the same rounds, same database:",
            "",
            "| `serve --stdio` | Before | Now | One-tool FastMCP server | Before / one-tool | Now / one-tool |",
            "|---|---|---|---|---|---|",
        ]
        for what, key in (
            ("until `initialize` is answered", "initialize"),
            ("until `tools/list`", "tools/list"),
        ):
            lines.append(
                f"| {what} | {ms(f'before {key}')} | {ms(f'ours {key}')} | {ms(f'one {key}')} | "
                f"{ratio(f'before {key}', f'one {key}')} | {ratio(f'ours {key}', f'one {key}')} |"
            )
        lines.append(
            f"| CPU of its whole life | {ms('before life cpu')} | {ms('ours life cpu')} | {ms('one life cpu')} | "
            f"{ratio('before life cpu', 'one life cpu')} | {ratio('ours life cpu', 'one life cpu')} |"
        )
    lines += [
        "",
        "What each entry point imports (`python -X importtime`, sum of the self times; importtime's own "
        "overhead included, so compare rows rather than with the wall times above):",
        "",
        "| Process | Import time | Of fastmcp, mcp, alembic, asyncssh, asyncpg, uvicorn, sqlalchemy, pydantic |",
        "|---|---|---|",
    ]
    for name, (total, loaded) in profiles.items():
        lines.append(f"| {name} | {total:,.0f} ms | {', '.join(loaded) or 'none'} |")
    lines += [
        "",
        "- CPU is user + system time of the process and its children (for the loop: bash and every ssh), "
        "what a busy machine cannot inflate the way it does wall time; the sshd side is in neither.",
        f"- Medians of {args.repeat} interleaved rounds (one of each scenario per round); the database is "
        "SQLite at the latest schema, as on every start after the first; every host key pinned beforehand.",
        "- Processes are started as `python -m mcp_server …` (what the `infrastructor` console script runs).",
        f"- The ssh loop runs the same `os_info` script with OpenSSH, keys in a known_hosts file; total run "
        f"time {seconds:.0f} s.",
        *machine(),
        END,
    ]
    return BEGIN + "\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
