"""Benchmark against the tools people compare us with (issue 17 §3), side by side in one run on N sshd hosts.

Two network settings at once, each with its own sshd fleet, server and data directory:

- loopback: the sshd hosts listen on 127.0.0.1, as in the other benchmarks;
- delayed: the sshd hosts run inside a network namespace made by this script, joined to this one by a veth
  pair; a TCP relay inside the namespace (this script, `relay` mode) listens on the namespace's veth address
  and forwards to each sshd, holding every chunk of data DELAY ms in each direction (this kernel has no
  `netem`; the script checks that `tc qdisc add … netem` fails and says so). The relay's own cost is measured
  in the same run: TCP ping-pong through the veth directly, through the relay at 0 ms, and at DELAY ms.

Arms, one of each per round, each run on loopback and then at the delay before the next arm (so a noisy
machine slows both settings alike), medians over the rounds:

- Ansible ad-hoc (a pinned ansible-core in its own venv, created on first use, not a test dependency):
  `-m command` and `-m raw` with the `os_info` script, `-m setup` (default fact gathering), forks = N, over
  Ansible's own ControlPersist masters (kept warm), and `-m raw` without ControlMaster (new connections);
- one `ssh … &` per host then `wait` (OpenSSH), without and with a warm ControlMaster, same script;
- Infrastructor: a new `infrastructor collect os_info --all --force-refresh` process (the console script of
  this checkout installed with `pip install .`, as the README installs it, into a venv of its own); N
  concurrent `collect` calls (os_info, force_refresh) over one MCP session to a running `serve` (HTTP, auth
  on); one pooled call; `get_fleet_overview` warm (pooled, force_refresh), cold (every connection new), cached.

Everything created (namespace, veth, relay, sshd, ssh masters, server) is removed at the end, also on an
exception, Ctrl-C or SIGTERM (a signal during the measured rounds stops the run after the current step).

Run from the repository root as root:
    python bench/bench_peers.py [--repeat 5] [--hosts 20] [--delay-ms 20] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmcp import Client  # noqa: E402

from bench.harness import (  # noqa: E402
    Results,
    command_line,
    cpu_seconds,
    machine,
    publish,
    serve,
    server_env,
    ssh_client_options,
)
from mcp_server.commands.system import OS_INFO_SCRIPT  # noqa: E402
from tests.helpers import delayed_pipe  # noqa: E402
from tests.sshd import SSHD, SshdFleet, SshdHost  # noqa: E402

BEGIN = "<!-- bench_peers:begin -->"
END = "<!-- bench_peers:end -->"
ANSIBLE_CORE = "2.19.14"
ANSIBLE_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    f"infrastructor-bench/ansible-core-{ANSIBLE_CORE}"
)
PY = sys.executable
# The CLI arms run the `infrastructor` console script of this checkout installed as the README installs it
# (`pip install .`, not editable: an editable install's import hook costs every new process 15-20 ms), in a
# venv of its own, created on first use and reinstalled from the checkout at every run.
CLI_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infrastructor-bench/cli-venv"
CLI = [str(CLI_VENV / "bin" / "infrastructor")]
RUN_TIMEOUT = 300.0
STOP_TIMEOUT = 10.0
PINGS = 200
REMOTE = shlex.join(["sh", "-c", OS_INFO_SCRIPT])


# --- the relay (runs inside the namespace: `python bench/bench_peers.py relay …`) -----------------------


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _relay(listen: str, routes: list[tuple[int, int, float]], echo: int) -> None:
    async def echo_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    def forward(target: int, delay: float) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _nodelay(writer)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            _nodelay(up_writer)
            await asyncio.gather(
                delayed_pipe(reader, up_writer, delay), delayed_pipe(up_reader, writer, delay)
            )
            up_writer.close()
            writer.close()

        return handle

    # on every address of the namespace: reached directly over the veth and by the relay on its loopback
    servers = [await asyncio.start_server(echo_client, "0.0.0.0", echo)]
    for port, target, delay in routes:
        servers.append(await asyncio.start_server(forward(target, delay), listen, port, backlog=256))
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


def relay_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_peers.py relay")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--echo", type=int, required=True)
    parser.add_argument("--route", action="append", default=[], help="PORT:TARGET_PORT:DELAY_MS")
    args = parser.parse_args(argv)
    routes = [(int(p), int(t), float(d) / 1000) for p, t, d in (r.split(":") for r in args.route)]
    asyncio.run(_relay(args.listen, routes, args.echo))


# --- the network namespace ---------------------------------------------------------------------------


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, **kwargs)


def netem_missing() -> str:
    """What `tc qdisc add … netem` answers on a scratch veth (the reason this script relays instead)."""
    name = f"pnt{os.getpid() % 100000}"
    if run(["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b"]).returncode:
        return "could not create a scratch veth to try netem"
    try:
        done = run(["tc", "qdisc", "add", "dev", f"{name}a", "root", "netem", "delay", "20ms"])
        if done.returncode == 0:
            return "netem works here"
        return f"`tc qdisc add dev … root netem delay 20ms` exits {done.returncode}: {done.stderr.strip()}"
    finally:
        run(["ip", "link", "del", f"{name}a"])


@dataclass(frozen=True)
class Namespace:
    name: str
    veth: str
    outer: str  # this side's address on the veth
    inner: str  # the namespace's address: where the relay listens

    def exec(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


@contextlib.contextmanager
def namespace() -> Iterator[Namespace]:
    tag = os.getpid() % 100000
    subnet = 200 + os.getpid() % 50
    ns = Namespace(f"infra-peers-{tag}", f"ipr{tag}", f"10.217.{subnet}.1", f"10.217.{subnet}.2")
    try:
        for argv in (
            ["ip", "netns", "add", ns.name],
            ["ip", "-n", ns.name, "link", "set", "lo", "up"],
            ["ip", "link", "add", f"{ns.veth}a", "type", "veth", "peer", "name", f"{ns.veth}b"],
            ["ip", "link", "set", f"{ns.veth}b", "netns", ns.name],
            ["ip", "addr", "add", f"{ns.outer}/30", "dev", f"{ns.veth}a"],
            ["ip", "link", "set", f"{ns.veth}a", "up"],
            ["ip", "-n", ns.name, "addr", "add", f"{ns.inner}/30", "dev", f"{ns.veth}b"],
            ["ip", "-n", ns.name, "link", "set", f"{ns.veth}b", "up"],
        ):
            done = run(argv)
            if done.returncode:
                raise RuntimeError(f"{shlex.join(argv)}: {done.stderr.strip()}")
        yield ns
    finally:
        run(["ip", "link", "del", f"{ns.veth}a"])  # removes both ends
        run(["ip", "netns", "del", ns.name])


class NamespaceFleet(SshdFleet):
    """sshd hosts that run inside a network namespace (listening on its own loopback)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        super().__init__()

    def launch(self, host: SshdHost) -> None:
        host.log_offset = host.log_path.stat().st_size if host.log_path.exists() else 0
        with host.log_path.open("ab") as log:
            # `ip netns exec` execs sshd itself, so the pid is sshd's as the fleet expects
            host.process = subprocess.Popen(
                self.ns.exec([str(SSHD), "-f", str(host.config_path), "-D", "-e"]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )


@contextlib.contextmanager
def relay(ns: Namespace, routes: list[tuple[int, int, float]], echo: int) -> Iterator[None]:
    argv = [PY, str(Path(__file__).resolve()), "relay", "--listen", ns.inner, "--echo", str(echo)]
    for port, target, delay_ms in routes:
        argv += ["--route", f"{port}:{target}:{delay_ms:g}"]
    proc = subprocess.Popen(ns.exec(argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"relay did not start (exit {proc.wait(timeout=STOP_TIMEOUT)})")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ping_ms(address: str, port: int, n: int = PINGS) -> float:
    """Median TCP round trip (1 byte out, 1 byte back) on one connection, in ms."""
    with socket.create_connection((address, port), timeout=5.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("echo answered something else")
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


# --- the peers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    port: int
    host: SshdHost


def ssh_options(fleet: SshdFleet, known_hosts: Path) -> list[str]:
    return [
        "-F",
        "/dev/null",
        *ssh_client_options(fleet.client_key_path, known_hosts),
        "-o",
        "LogLevel=ERROR",
    ]


def ssh_argv(fleet: SshdFleet, target: Target, known_hosts: Path, control: Path | None) -> list[str]:
    argv = ["ssh", *ssh_options(fleet, known_hosts), "-p", str(target.port)]
    if control is not None:
        argv += ["-o", "ControlMaster=auto", "-o", "ControlPersist=600", "-o", f"ControlPath={control}/%C"]
    return [*argv, f"{fleet.username}@{target.address}", REMOTE]


def ssh_loop(argvs: list[list[str]]) -> list[str]:
    """One `ssh … &` per host, then `wait`: what a shell user writes."""
    lines = [f"{shlex.join(argv)} >/dev/null &" for argv in argvs]
    return [
        "bash",
        "-c",
        "\n".join([*lines, "fail=0", "for j in $(jobs -p); do wait $j || fail=1; done", "exit $fail"]),
    ]


def stop_masters(control_dirs: Sequence[Path]) -> None:
    """Ask every ControlMaster socket in these directories to exit (ssh -O exit)."""
    for directory in control_dirs:
        for sock in directory.glob("*") if directory.is_dir() else []:
            run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "peer"])


def install_cli() -> None:
    """This checkout, installed non-editable (`pip install .`) into CLI_VENV: the CLI arms' program."""
    if not (CLI_VENV / "bin" / "pip").exists():
        subprocess.run([PY, "-m", "venv", str(CLI_VENV)], check=True, timeout=RUN_TIMEOUT)
    pip = [str(CLI_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(pip)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def ansible_executable() -> Path:
    exe = ANSIBLE_VENV / "bin" / "ansible"
    if not exe.exists():
        subprocess.run([PY, "-m", "venv", str(ANSIBLE_VENV)], check=True, timeout=RUN_TIMEOUT)
        pip = [str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", f"ansible-core=={ANSIBLE_CORE}"]
        subprocess.run(pip, check=True, timeout=RUN_TIMEOUT)
    return exe


def ansible_setup(
    work: Path, fleet: SshdFleet, targets: list[Target], known_hosts: Path
) -> tuple[dict[str, str], Path]:
    """An inventory and config for the fleet; the environment that selects them; the control path dir."""
    control = work / "ansible-cp"
    control.mkdir()
    inventory = work / "inventory.ini"
    common = " ".join(ssh_options(fleet, known_hosts)[2:])  # not -F/-i: Ansible passes its own key
    lines = ["[fleet]"]
    for t in targets:
        lines.append(
            f"{t.name} ansible_host={t.address} ansible_port={t.port} ansible_user={fleet.username} "
            f"ansible_ssh_private_key_file={fleet.client_key_path}"
        )
    lines += ["", "[fleet:vars]", f"ansible_ssh_common_args='{common}'"]
    inventory.write_text("\n".join(lines) + "\n")
    config = work / "ansible.cfg"
    config.write_text(
        "\n".join(
            [
                "[defaults]",
                f"inventory = {inventory}",
                f"forks = {max(20, len(targets))}",
                "host_key_checking = True",
                # a pinned interpreter: no discovery round trip per host and run
                "interpreter_python = /usr/bin/python3",
                # the login user's home is not writable on these hosts
                "remote_tmp = /tmp/.ansible-bench",
                "[ssh_connection]",
                # Ansible's default ssh_args, persist lengthened so every timed run finds its masters warm
                "ssh_args = -C -o ControlMaster=auto -o ControlPersist=600s",
                f"control_path_dir = {control}",
                "",
            ]
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "INFRA_"))}
    env |= {
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "LC_ALL": "C.UTF-8",
        "PYTHONWARNINGS": "ignore",
    }
    return env, control


def ansible_argv(module: str, args: str | None, pattern: str = "fleet") -> list[str]:
    argv = [str(ansible_executable()), pattern, "-m", module]
    return [*argv, "-a", args] if args is not None else argv


_ANSIBLE_OK = re.compile(r"^\S+ \| (?:SUCCESS|CHANGED)", re.M)


def children_cpu() -> float:
    """CPU seconds (user + system) of every waited-for child process so far, their own children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_checked(argv: Sequence[str], env: dict[str, str], hosts: int | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (the process and its children) of one run that must succeed."""
    cpu = children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)[:200]} exited {done.returncode}:\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
        )
    if hosts is not None and len(_ANSIBLE_OK.findall(done.stdout)) != hosts:
        raise RuntimeError(f"ansible answered for fewer than {hosts} hosts:\n{done.stdout[-2000:]}")
    return elapsed, children_cpu() - cpu


# --- Infrastructor -----------------------------------------------------------------------------------


async def register(client: Client[Any], fleet: SshdFleet, targets: list[Target]) -> None:
    for t in targets:
        await client.call_tool(
            "add_device",
            {
                "name": t.name,
                "hostname": t.address,
                "port": t.port,
                "username": fleet.username,
                "key_path": str(fleet.client_key_path),
                "tags": ["bench"],
            },
        )


async def collect_all(client: Client[Any], targets: list[Target]) -> float:
    started = time.perf_counter()
    calls = (
        client.call_tool("collect", {"device": t.name, "command": "os_info", "force_refresh": True})
        for t in targets
    )
    for result in await asyncio.gather(*calls):
        assert result.structured_content is not None and result.structured_content["from_cache"] is False
    return time.perf_counter() - started


async def collect_many(client: Client[Any], targets: list[Target]) -> float:
    """The same collections as collect_all, asked in one call."""
    started = time.perf_counter()
    result = await client.call_tool(
        "collect_many",
        {"devices": [t.name for t in targets], "command": "os_info", "force_refresh": True},
    )
    elapsed = time.perf_counter() - started
    data = result.structured_content
    assert data is not None and len(data["devices"]) == len(targets), data
    assert all(d["result"] and d["result"]["from_cache"] is False for d in data["devices"]), data
    return elapsed


async def overview(client: Client[Any], n: int, force: bool) -> float:
    started = time.perf_counter()
    result = await client.call_tool("get_fleet_overview", {"tags": ["bench"], "force_refresh": force})
    elapsed = time.perf_counter() - started
    data = result.structured_content
    assert data is not None and data["total"] == n and data["ok"] == n, data
    assert all(d["from_cache"] is not force for d in data["devices"]), "cache use not as asked"
    return elapsed


async def drop_connections(client: Client[Any], targets: list[Target], i: int) -> None:
    """Changing a device closes its pooled connection: the next call opens a new one."""
    for t in targets:
        await client.call_tool("update_device", {"device": t.name, "description": f"cold {i}"})


# --- one network setting -----------------------------------------------------------------------------


Arm = tuple[str, Callable[[int], Awaitable[None]]]


@contextlib.asynccontextmanager
async def setting(
    label: str, fleet: SshdFleet, targets: list[Target], work: Path, results: Results
) -> AsyncIterator[list[Arm]]:
    """One network setting ready to measure (server, MCP session, warm pools and masters): its arms in order,
    each measured once per call with the round's number."""
    n = len(targets)
    known_hosts = work / "known_hosts"
    known_hosts.write_text("".join(f"[{t.address}]:{t.port} {t.host.host_key_line}\n" for t in targets))
    cm_dir = work / "cm"
    cm_dir.mkdir()
    ansible_env, ansible_cp = ansible_setup(work, fleet, targets, known_hosts)
    cold_ansible_env = ansible_env | {"ANSIBLE_SSH_ARGS": "-C -o ControlMaster=no"}
    plain = ssh_loop([ssh_argv(fleet, t, known_hosts, None) for t in targets])
    master = ssh_loop([ssh_argv(fleet, t, known_hosts, cm_dir) for t in targets])
    one_plain = ssh_argv(fleet, targets[0], known_hosts, None)
    one_master = ssh_argv(fleet, targets[0], known_hosts, cm_dir)
    module_args = {"command": REMOTE, "raw": REMOTE, "setup": None}
    data_dir = work / "data"
    # with the server running on its data dir, the CLI hands the collection to it (control socket);
    # --no-server collects in the CLI process itself, over new connections
    cli = [*CLI, "collect", "os_info", "--all", "--force-refresh"]
    cli_alone = [*cli, "--no-server"]
    cli_local = [*CLI, "collect", "os_info", "--force-refresh", "--no-server"]  # the process, no SSH at all
    one = targets[0].name
    cli_one = [*CLI, "collect", "os_info", "--device", one, "--force-refresh"]
    cli_one_alone = [*cli_one, "--no-server"]
    env = os.environ.copy()

    def add(arm: str, seconds: float) -> None:
        results.add(f"{label}|{arm}", seconds)

    def process(arm: str, argv: list[str], env: dict[str, str], hosts: int | None = None) -> Arm:
        async def measure(_round: int) -> None:
            wall, cpu = await asyncio.to_thread(run_checked, argv, env, hosts)
            add(arm, wall)
            add(f"{arm} cpu", cpu)

        return arm, measure

    def cli_arm(arm: str, argv: list[str], hosts: list[Target], opens: bool) -> Arm:
        """A CLI process, checked in the sshd logs: handed to the server, it opens no connection (the server's
        pooled ones answer); with `opens` (in-process), one per host."""

        async def measure(_round: int) -> None:
            logins = sum(t.host.accepted_logins() for t in hosts)
            wall, cpu = await asyncio.to_thread(run_checked, argv, cli_env)
            opened = sum(t.host.accepted_logins() for t in hosts) - logins
            expected = len(hosts) if opens else 0
            assert opened == expected, f"{arm}: {opened} new SSH connections, not {expected}"
            add(arm, wall)
            add(f"{arm} cpu", cpu)

        return arm, measure

    def mcp(arm: str, call: Callable[[int], Awaitable[float]]) -> Arm:
        """Wall time; CPU of the server and of this process (the MCP client) during the call."""

        async def measure(i: int) -> None:
            server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
            add(arm, await call(i))
            add(f"{arm} cpu", cpu_seconds(server.pid) - server_cpu + time.process_time() - client_cpu)
            add(f"{arm} server cpu", cpu_seconds(server.pid) - server_cpu)

        return arm, measure

    async def cold_overview(i: int) -> float:
        await drop_connections(client, targets, i)
        logins = sum(t.host.accepted_logins() for t in targets)
        seconds = await overview(client, n, True)
        opened = sum(t.host.accepted_logins() for t in targets) - logins
        assert opened == n, f"cold overview opened {opened} connections, not {n}"
        return seconds

    try:
        with serve(data_dir) as server:
            cli_env = server_env(data_dir, auth=True)
            async with server.client() as client:
                await register(client, fleet, targets)
                # untimed warm-up: host keys pinned, pools, ssh and Ansible masters open
                await collect_all(client, targets)
                await overview(client, n, True)
                await asyncio.to_thread(run_checked, master, env)
                for module, args in module_args.items():
                    await asyncio.to_thread(run_checked, ansible_argv(module, args), ansible_env, n)
                await asyncio.to_thread(run_checked, cli, cli_env)
                yield [
                    *(
                        process(f"ansible -m {module}", ansible_argv(module, args), ansible_env, n)
                        for module, args in module_args.items()
                    ),
                    process(
                        "ansible -m raw, no ControlMaster", ansible_argv("raw", REMOTE), cold_ansible_env, n
                    ),
                    process("ssh &", plain, env),
                    process("ssh & ControlMaster", master, env),
                    cli_arm("cli cold", cli, targets, False),
                    cli_arm("cli cold no server", cli_alone, targets, True),
                    cli_arm("cli cold local", cli_local, targets, False),
                    mcp("mcp collect all", lambda _i: collect_all(client, targets)),
                    mcp("mcp collect_many", lambda _i: collect_many(client, targets)),
                    mcp("overview warm", lambda _i: overview(client, n, True)),
                    mcp("overview cached", lambda _i: overview(client, n, False)),
                    mcp("overview cold", cold_overview),
                    # one host: the round trips of each kind of call, without a fan-out's CPU contention
                    process("1 ansible -m command", ansible_argv("command", REMOTE, one), ansible_env, 1),
                    process("1 ansible -m raw", ansible_argv("raw", REMOTE, one), ansible_env, 1),
                    process("1 ssh", one_plain, env),
                    process("1 ssh ControlMaster", one_master, env),
                    cli_arm("1 cli cold", cli_one, targets[:1], False),
                    cli_arm("1 cli cold no server", cli_one_alone, targets[:1], True),
                    mcp("1 mcp collect", lambda _i: collect_all(client, targets[:1])),
                ]
    finally:
        stop_masters([cm_dir, ansible_cp])


async def interleaved(settings: list[tuple[str, SshdFleet, list[Target], Path]], repeat: int) -> Results:
    """Both settings at once; each arm runs in one setting, then in the other, before the next arm.

    SIGINT/SIGTERM stop it between two steps: a cancelled task can be swallowed by the MCP client's task
    groups, and the run would go on instead of cleaning up.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def check() -> None:
        if stop.is_set():
            raise KeyboardInterrupt("stopped by a signal")

    results = Results()
    try:
        async with contextlib.AsyncExitStack() as stack:
            arms = []
            for s in settings:
                arms.append(await stack.enter_async_context(setting(*s, results)))
                check()
            for i in range(repeat):
                for same_arm in zip(*arms, strict=True):
                    for _name, measure in same_arm:
                        await measure(i)
                        check()
                print(f"round {i + 1}/{repeat} done", file=sys.stderr, flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return results


# --- report ------------------------------------------------------------------------------------------

ARMS = [
    ("ansible -m command", "Ansible `-m command` (sh -c os_info script), warm ControlPersist masters"),
    ("ansible -m raw", "Ansible `-m raw` (same script), warm ControlPersist masters"),
    ("ansible -m setup", "Ansible `-m setup` (default fact gathering), warm ControlPersist masters"),
    ("ansible -m raw, no ControlMaster", "Ansible `-m raw`, ControlMaster=no (new connections)"),
    ("ssh &", "`ssh … &` per host + `wait`, new connections"),
    ("ssh & ControlMaster", "`ssh … &` per host + `wait`, warm ControlMaster"),
    (
        "cli cold",
        "`infrastructor collect os_info --all --force-refresh`, a new process, server running (delegated)",
    ),
    ("cli cold no server", "the same with `--no-server`: a new process, no server (new connections)"),
    (
        "cli cold local",
        "`infrastructor collect os_info --force-refresh --no-server` (local device only, no SSH)",
    ),
    ("mcp collect all", "MCP: N concurrent `collect` os_info (force_refresh), pooled"),
    ("mcp collect_many", "MCP: one `collect_many` os_info call for the N hosts (force_refresh), pooled"),
    ("overview warm", "MCP: `get_fleet_overview` force_refresh, pooled"),
    ("overview cold", "MCP: `get_fleet_overview` force_refresh, every connection new"),
    ("overview cached", "MCP: `get_fleet_overview` from the cache"),
    ("1 ansible -m command", "1 host: Ansible `-m command`, warm master"),
    ("1 ansible -m raw", "1 host: Ansible `-m raw`, warm master"),
    ("1 ssh", "1 host: `ssh`, new connection"),
    ("1 ssh ControlMaster", "1 host: `ssh` over a warm ControlMaster"),
    ("1 cli cold", "1 host: `infrastructor collect os_info --device h00 --force-refresh`, server running"),
    ("1 cli cold no server", "1 host: the same with `--no-server`"),
    ("1 mcp collect", "1 host: MCP `collect` os_info (force_refresh), pooled"),
]
PEERS = ["ansible -m command", "ansible -m raw", "ansible -m raw, no ControlMaster", "ansible -m setup"]
PEERS += ["ssh &", "ssh & ControlMaster"]


def far_label(args: argparse.Namespace) -> str:
    return f"{2 * args.delay_ms:g} ms RTT"


def render(
    results: Results, args: argparse.Namespace, rtt: dict[str, float], netem: str, seconds: float
) -> str:
    loop, far = "loopback", far_label(args)

    def med(setting: str, arm: str) -> float:
        return results.median(f"{setting}|{arm}")

    round_trip = rtt["relay delayed"] - rtt["veth direct"]
    lines = [
        BEGIN,
        "### Results",
        "",
        f"`{command_line('bench_peers.py')}` (as root: it makes a network namespace and a veth pair)",
        "",
        f"{args.hosts} sshd hosts per setting; medians of {args.repeat} rounds; both settings run at once "
        "and every arm runs on loopback, then at the delay, before the next arm.",
        "",
        f"| Arm | {loop} ms | {far} ms | added ms | added / RTT | our side's CPU ms, {loop} / {far} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm, text in ARMS:
        a, b = med(loop, arm), med(far, arm)
        cpu = f"{med(loop, arm + ' cpu'):,.0f} / {med(far, arm + ' cpu'):,.0f}"
        lines.append(f"| {text} | {a:,.0f} | {b:,.0f} | {b - a:,.0f} | {(b - a) / round_trip:.1f} | {cpu} |")
    lines += [
        "",
        "| Ratio (of medians) | loopback | " + far + " | goal |",
        "|---|---:|---:|---|",
    ]

    def ratio(a: str, b: str, goal: str) -> None:
        lines.append(
            f"| {a} / {b} | {med(loop, a) / med(loop, b):.2f}x | {med(far, a) / med(far, b):.2f}x | {goal} |"
        )

    ratio("ansible -m command", "mcp collect all", ">= 40x")
    ratio("ansible -m command", "mcp collect_many", ">= 40x")
    ratio("mcp collect all", "ssh & ControlMaster", "<= 1.1x")
    ratio("mcp collect_many", "ssh & ControlMaster", "<= 1.1x")
    ratio("1 mcp collect", "1 ssh ControlMaster", "context")
    ratio("1 ansible -m command", "1 mcp collect", "context")
    for peer in PEERS:
        ratio("cli cold", peer, "< 1 (faster than every peer)")
    for peer in PEERS:
        ratio("cli cold no server", peer, "context")
    ratio("1 cli cold", "1 ssh ControlMaster", "context")
    lines += [
        "",
        f"Relay cost (TCP ping-pong, 1 byte, median of {PINGS}, into the namespace): veth direct "
        f"{rtt['veth direct']:.3f} ms, through the relay at 0 ms {rtt['relay 0 ms']:.3f} ms, through the "
        f"relay at {args.delay_ms:g} ms each way {rtt['relay delayed']:.3f} ms. So the relay itself adds "
        f"{rtt['relay 0 ms'] - rtt['veth direct']:.3f} ms per round trip; 'added / RTT' divides by the "
        f"measured {round_trip:.2f} ms.",
        f"Why a relay: {netem.rstrip('.')}.",
        "",
        "- 'our side's CPU': user + system CPU of the client processes (ansible and its forks and ssh "
        "processes; bash and ssh; the CLI process) or, for the MCP arms, of the server process plus this "
        "process (the MCP client); the sshd side is in none of them. MCP server CPU alone, loopback: "
        + ", ".join(
            f"{arm} {med(loop, arm + ' server cpu'):,.0f} ms"
            for arm in (
                "mcp collect all",
                "mcp collect_many",
                "overview warm",
                "overview cold",
                "overview cached",
                "1 mcp collect",
            )
        )
        + ".",
        "- 'added / RTT' = (delayed - loopback) / RTT: the round trips on the critical path of one host "
        "(for the fan-outs, of the slowest host); the delayed setting also crosses a veth and the relay.",
        f"- Remote command of the os_info arms: `sh -c '<the os_info script>'` ({len(OS_INFO_SCRIPT)} characters: "
        "host name, kernel release and machine from /proc/sys/kernel, /etc/os-release, CPU lines of "
        "/proc/cpuinfo and /proc/stat, with grep the one program it runs; "
        "mcp_server/commands/system.py); `ssh` runs it through the login shell, Ansible `-m command` "
        "executes `sh -c …` with its Python module, `-m raw` through the login shell.",
        "- The CLI arms collect from the N hosts and the local device (`--all`), as a user runs it, with the "
        "running server's data directory (its SQLite database and pinned host keys). By default the CLI hands "
        "the collection to that server over its control socket (`<data dir>/control.sock`) and the server "
        "answers over its pooled connections (checked: no new SSH login in the sshd logs); `--no-server` "
        "collects in the CLI process over new connections (checked: one login per host). The CLI is the "
        f"`infrastructor` console script of this checkout installed with `pip install .` (as the README "
        f"installs it; not editable) into {CLI_VENV}; the server runs from the bench's own environment.",
        "- `get_fleet_overview` runs `system_metrics` (CPU sampled over 0.5 s) and `disk_usage` per host: "
        "not the os_info script; cold = every device changed beforehand, so every connection is new (checked "
        "against the sshd logs).",
        f"- Ansible: ansible-core {ANSIBLE_CORE} (PyPI, in {ANSIBLE_VENV}), forks {max(20, args.hosts)}, "
        "host key checking on against a known_hosts file of the fleet, interpreter pinned to "
        "/usr/bin/python3, pipelining off (default), `ssh_args` its default but ControlPersist=600s so every "
        "timed run finds its masters warm; the 'no ControlMaster' arm sets ControlMaster=no.",
        "- OpenSSH: `ssh -F /dev/null`, BatchMode, StrictHostKeyChecking=yes with the same known_hosts; the "
        "ControlMaster arms reuse masters opened (ControlPersist=600) before the timed rounds.",
        "- Infrastructor: `serve` over HTTP with bearer-token auth and audit on, polling off, SQLite; MCP "
        "client = the FastMCP client, one session.",
        f"- Total run time {seconds:.0f} s.",
        *machine(),
        END,
    ]
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["relay"]:
        relay_main(argv[1:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="held in each direction")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the delayed setting makes a network namespace")
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    # An installed package has its bytecode compiled by pip; a checkout run with PYTHONDONTWRITEBYTECODE
    # (set on some machines) would compile every module at every start of the CLI arms instead.
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "mcp_server")], check=True)
    install_cli()
    ansible_executable()
    netem = netem_missing()
    rtt: dict[str, float] = {}
    names = [f"h{i:02d}" for i in range(args.hosts)]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-")))
        near = stack.enter_context(SshdFleet())
        near_hosts = near.start_hosts(names)
        ns = stack.enter_context(namespace())
        far = stack.enter_context(NamespaceFleet(ns))
        far_hosts = far.start_hosts(names)
        # the relay listens on the namespace's veth address with each sshd's port number
        echo_port, zero_port = 7, 9
        routes = [(h.port, h.port, args.delay_ms) for h in far_hosts]
        routes += [(zero_port, echo_port, 0.0), (echo_port + 1, echo_port, args.delay_ms)]
        stack.enter_context(relay(ns, routes, echo_port))
        for _ in range(3):  # interleaved; the mean of three medians
            for key, port, pings in (
                ("veth direct", echo_port, PINGS),
                ("relay 0 ms", zero_port, PINGS),
                ("relay delayed", echo_port + 1, 20),
            ):
                rtt[key] = rtt.get(key, 0.0) + ping_ms(ns.inner, port, pings) / 3
        for name in ("loopback", "delayed"):
            (tmp / name).mkdir()
        settings = [
            ("loopback", near, [Target(h.name, h.hostname, h.port, h) for h in near_hosts], tmp / "loopback"),
            (far_label(args), far, [Target(h.name, ns.inner, h.port, h) for h in far_hosts], tmp / "delayed"),
        ]
        results = asyncio.run(interleaved(settings, args.repeat))
    publish(render(results, args, rtt, netem, time.monotonic() - started), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
