"""The pooled SSH executor against real OpenSSH servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from mcp_server.devices import Device
from mcp_server.errors import (
    AuthenticationFailed,
    CommandNotAvailable,
    CommandTimeout,
    DeviceNotFound,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
)
from mcp_server.executors import check_exit
from mcp_server.settings import Settings
from mcp_server.ssh import SSHOptions, SSHPool
from tests.helpers import free_port, until
from tests.sshd import SshdFleet, SshdHost

PASSWORD = "correct horse battery staple"
PoolFactory = Callable[..., SSHPool]


def fresh_host(fleet: SshdFleet, prefix: str, **kwargs: Any) -> SshdHost:
    """A host of its own for a test that kills, restarts or reconfigures it."""
    name = f"{prefix}-{len(fleet.hosts)}"
    return fleet.start_host(name, **kwargs)


@pytest.fixture
def options(tmp_path: Path) -> SSHOptions:
    return SSHOptions(
        connect_timeout=3.0, keepalive_interval=5.0, idle_timeout=60.0, known_hosts=tmp_path / "kh"
    )


@pytest.fixture
async def make_pool(options: SSHOptions) -> AsyncIterator[PoolFactory]:
    pools: list[SSHPool] = []

    def factory(
        devices: Iterable[Device] = (),
        on_pinned: Callable[[str, str], Awaitable[None]] | None = None,
        **changes: Any,
    ) -> SSHPool:
        known = {d.name: d for d in devices}

        def lookup(name: str) -> Device:
            if name not in known:
                raise DeviceNotFound(name, known)
            return known[name]

        pool = SSHPool(replace(options, **changes), lookup=lookup, on_host_key_pinned=on_pinned)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close()


async def test_sequential_commands_share_one_ssh_connection(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = fresh_host(sshd_fleet, "sequential")
    before = host.accepted_logins()
    pool = make_pool()
    device = sshd_fleet.device(host)
    outputs = [(await pool.run(device, ["echo", str(i)], timeout=5, label="echo")).stdout for i in range(10)]
    assert outputs == [f"{i}\n" for i in range(10)]
    stats = pool.stats()
    assert (stats.connections_opened, stats.commands_run, stats.open_connections) == (1, 10, 1)
    assert host.accepted_logins() - before == 1


async def test_concurrent_first_calls_open_one_connection_and_respect_max_sessions(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = fresh_host(sshd_fleet, "concurrent")
    before = host.accepted_logins()
    trace = sshd_fleet.scratch_dir() / "trace"
    script = f"echo start >> {trace}; sleep 0.1; echo end >> {trace}"
    pool = make_pool(max_sessions=4)
    device = sshd_fleet.device(host)
    results = await asyncio.gather(
        *(pool.run(device, ["sh", "-c", script], timeout=10, label="trace") for _ in range(20))
    )
    assert [r.exit_status for r in results] == [0] * 20
    assert pool.stats().connections_opened == 1
    assert host.accepted_logins() - before == 1
    running = peak = 0
    for event in trace.read_text().split():
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert 1 < peak <= 4


async def test_commands_on_three_hosts_run_concurrently(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    devices = [sshd_fleet.device(sshd_fleet.hosts[n]) for n in ("alpha", "beta", "gamma")]
    started = time.monotonic()
    results = await asyncio.gather(
        *(pool.run(d, ["sh", "-c", "sleep 0.5; echo $0", d.name], timeout=5, label="t") for d in devices)
    )
    assert time.monotonic() - started < 1.4
    assert [r.stdout for r in results] == ["alpha\n", "beta\n", "gamma\n"]
    assert pool.stats().connections_opened == 3


async def test_next_run_reconnects_after_the_server_kills_the_connection(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = fresh_host(sshd_fleet, "reconnect")
    pool = make_pool()
    device = sshd_fleet.device(host)
    assert (await pool.run(device, ["echo", "one"], timeout=5, label="echo")).stdout == "one\n"
    assert host.kill_sessions() == 1
    await until(lambda: not host.session_pids())
    assert (await pool.run(device, ["echo", "two"], timeout=5, label="echo")).stdout == "two\n"
    stats = pool.stats()
    assert (stats.reconnects, stats.connections_opened, stats.open_connections) == (1, 2, 1)
    assert host.accepted_logins() == 2


async def test_connection_lost_mid_command_is_host_unreachable_and_the_next_run_reconnects(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = fresh_host(sshd_fleet, "midcommand")
    pool = make_pool()
    device = sshd_fleet.device(host)
    running = asyncio.ensure_future(pool.run(device, ["sleep", "5"], timeout=10, label="sleeper"))
    await until(lambda: len(host.session_pids()) >= 3)  # monitor, session child, sleep
    host.kill_sessions()
    with pytest.raises(HostUnreachable, match="connection lost while running sleeper"):
        await running
    assert (await pool.run(device, ["echo", "back"], timeout=5, label="echo")).stdout == "back\n"
    assert pool.stats().reconnects == 1


async def test_idle_connection_is_closed_after_idle_timeout(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = sshd_fleet.hosts["gamma"]
    disconnects = host.disconnects()
    pool = make_pool(idle_timeout=0.3)
    await pool.run(sshd_fleet.device(host), ["true"], timeout=5, label="true")
    assert pool.stats().open_connections == 1
    await until(lambda: pool.stats().open_connections == 0)
    assert pool.stats().idle_closed == 1
    await until(lambda: host.disconnects() > disconnects)


async def test_unauthorized_key_fails_with_authentication_failed(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    wrong = sshd_fleet.new_client_key("unauthorized_key")
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"], key_path=str(wrong))
    with pytest.raises(AuthenticationFailed) as caught:
        await make_pool().run(device, ["true"], timeout=5, label="true")
    assert str(wrong) in str(caught.value)
    assert repr(sshd_fleet.username) in str(caught.value)


async def test_missing_key_file_fails_naming_the_file(sshd_fleet: SshdFleet, make_pool: PoolFactory) -> None:
    missing = sshd_fleet.root / "no_such_key"
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"], key_path=str(missing))
    with pytest.raises(AuthenticationFailed, match="does not exist") as caught:
        await make_pool().run(device, ["true"], timeout=5, label="true")
    assert str(missing) in str(caught.value)


@pytest.fixture(scope="module")
def password_host(sshd_fleet: SshdFleet) -> SshdHost:
    if not sshd_fleet.is_root:
        pytest.skip("setting a test password needs root")
    sshd_fleet.set_password(PASSWORD)
    return fresh_host(sshd_fleet, "password", password_auth=True)


async def test_password_authentication_works(
    sshd_fleet: SshdFleet, password_host: SshdHost, make_pool: PoolFactory
) -> None:
    device = sshd_fleet.device(password_host, key_path=None, password=PASSWORD)
    result = await make_pool().run(device, ["id", "-un"], timeout=5, label="id")
    assert result.stdout == f"{sshd_fleet.username}\n"
    assert "Accepted password" in password_host.log()


async def test_wrong_password_fails_without_revealing_it(
    sshd_fleet: SshdFleet, password_host: SshdHost, make_pool: PoolFactory
) -> None:
    wrong = "hunter2-not-it"
    device = sshd_fleet.device(password_host, key_path=None, password=wrong)
    with pytest.raises(AuthenticationFailed, match="password") as caught:
        await make_pool().run(device, ["true"], timeout=5, label="true")
    assert wrong not in str(caught.value)
    assert wrong not in repr(caught.value)


async def test_refused_port_fails_fast_with_host_unreachable(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    port = free_port()
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"], port=port)
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match=f"could not open an SSH session to 127.0.0.1:{port}"):
        await make_pool().run(device, ["true"], timeout=5, label="true")
    assert time.monotonic() - started < 1.0


@dataclass
class SilentServer:
    """A TCP server on loopback that accepts connections and never says a word (a dead SSH service)."""

    port: int
    held: list[asyncio.StreamWriter]


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentServer]:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_hold, "127.0.0.1", 0)
    try:
        yield SilentServer(server.sockets[0].getsockname()[1], held)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_server_that_never_speaks_ssh_fails_within_connect_timeout(
    sshd_fleet: SshdFleet, make_pool: PoolFactory, silent_server: SilentServer
) -> None:
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"], port=silent_server.port)
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match=r"could not open an SSH session .*no SSH server answered"):
        await make_pool(connect_timeout=0.5).run(device, ["true"], timeout=5, label="true")
    assert time.monotonic() - started < 2.5


async def test_callers_waiting_on_a_dead_host_share_one_connect_timeout(
    sshd_fleet: SshdFleet, make_pool: PoolFactory, silent_server: SilentServer
) -> None:
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"], port=silent_server.port)
    pool = make_pool(connect_timeout=0.5)
    # a fan-out asks for two commands at once: the second waits for the first connect, then fails with it
    results = await asyncio.gather(
        *(pool.run(device, ["true"], timeout=5, label="true") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, HostUnreachable) for r in results), results
    assert len(silent_server.held) == 1  # one connection attempt, not one per waiting caller
    # a later call tries again
    with pytest.raises(HostUnreachable):
        await pool.run(device, ["true"], timeout=5, label="true")
    assert len(silent_server.held) == 2


async def test_changed_host_key_after_pinning_is_refused(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = fresh_host(sshd_fleet, "rekeyed")
    old = sshd_fleet.device(host)
    old_fingerprint = host.host_key_fingerprint
    await make_pool().run(old, ["true"], timeout=5, label="true")
    host.restart_with_new_host_key()
    with pytest.raises(HostKeyMismatch) as caught:
        await make_pool().run(old, ["true"], timeout=5, label="true")
    message = str(caught.value)
    assert old_fingerprint in message and host.host_key_fingerprint in message
    assert "clear_host_key" in message


async def test_pinned_key_of_a_type_the_server_lacks_is_a_mismatch(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"], host_key=rsa.export_public_key("openssh").decode())
    with pytest.raises(HostKeyMismatch, match="no key of that type") as caught:
        await make_pool().run(device, ["true"], timeout=5, label="true")
    assert rsa.get_fingerprint("sha256") in str(caught.value)


async def test_first_use_pins_the_host_key_once_and_enforces_it(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = fresh_host(sshd_fleet, "tofu")
    pinned: list[tuple[str, str]] = []

    async def on_pinned(name: str, line: str) -> None:
        pinned.append((name, line))

    pool = make_pool(on_pinned=on_pinned)
    device = sshd_fleet.device(host, host_key=None)
    await pool.run(device, ["true"], timeout=5, label="true")
    await pool.run(device, ["true"], timeout=5, label="true")
    assert pinned == [(host.name, host.host_key_line)]
    host.restart_with_new_host_key()
    host.kill_sessions()
    await until(lambda: not host.session_pids())
    with pytest.raises(HostKeyMismatch, match="the pinned host key"):
        await pool.run(device, ["true"], timeout=5, label="true")
    assert len(pinned) == 1


async def test_first_use_probe_reports_the_key_as_pinned_now(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = sshd_fleet.hosts["beta"]
    pool = make_pool()
    device = sshd_fleet.device(host, host_key=None)
    first = await pool.probe(device)
    second = await pool.probe(device)
    assert (first.host_key_source, first.reused_connection) == ("pinned_now", False)
    assert (second.host_key_source, second.reused_connection) == ("pinned", True)


async def test_known_hosts_entry_with_another_key_is_refused(
    sshd_fleet: SshdFleet, make_pool: PoolFactory, tmp_path: Path
) -> None:
    host = sshd_fleet.hosts["alpha"]
    other = asyncssh.generate_private_key("ssh-ed25519")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{host.port} {other.export_public_key('openssh').decode()}")
    device = sshd_fleet.device(host, host_key=None)
    with pytest.raises(HostKeyMismatch) as caught:
        await make_pool(known_hosts=known_hosts).run(device, ["true"], timeout=5, label="true")
    message = str(caught.value)
    assert other.get_fingerprint("sha256") in message and host.host_key_fingerprint in message
    assert str(known_hosts) in message


async def test_known_hosts_entry_with_the_right_key_is_trusted(
    sshd_fleet: SshdFleet, make_pool: PoolFactory, tmp_path: Path
) -> None:
    host = sshd_fleet.hosts["alpha"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(host.known_hosts_line + "\n")
    device = sshd_fleet.device(host, host_key=None)
    probe = await make_pool(known_hosts=known_hosts, host_key_policy="strict").probe(device)
    assert probe.host_key_source == "known_hosts"


async def test_strict_policy_refuses_a_host_missing_from_known_hosts(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = sshd_fleet.hosts["alpha"]
    device = sshd_fleet.device(host, host_key=None)
    with pytest.raises(HostKeyUnknown) as caught:
        await make_pool(host_key_policy="strict").run(device, ["true"], timeout=5, label="true")
    assert host.host_key_fingerprint in str(caught.value)


def remote_processes(cmdline: bytes) -> list[Path]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == cmdline:
                found.append(proc)
    return found


async def test_command_timeout_stops_the_command_and_keeps_the_connection(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    device = sshd_fleet.device(sshd_fleet.hosts["gamma"])
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"'sleeper'.*0\.5s"):
        await pool.run(device, ["sleep", "30.4321"], timeout=0.5, label="sleeper")
    assert time.monotonic() - started < 2.0
    assert (await pool.run(device, ["echo", "still here"], timeout=5, label="echo")).stdout == "still here\n"
    assert pool.stats().connections_opened == 1
    await until(lambda: not remote_processes(b"sleep\x0030.4321\x00"))


async def test_missing_binary_exits_127_and_is_reported_as_not_available(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"])
    result = await make_pool().run(device, ["definitely-not-a-binary-xyz", "--x"], timeout=5, label="nope")
    assert result.exit_status == 127
    with pytest.raises(CommandNotAvailable) as caught:
        check_exit(result, device.name, "nope")
    assert caught.value.binary == "definitely-not-a-binary-xyz"


async def test_non_zero_exit_is_returned_with_stderr(sshd_fleet: SshdFleet, make_pool: PoolFactory) -> None:
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"])
    result = await make_pool().run(device, ["sh", "-c", "echo oops >&2; exit 3"], timeout=5, label="fail")
    assert (result.exit_status, result.stderr, result.command) == (
        3,
        "oops\n",
        "sh -c 'echo oops >&2; exit 3'",
    )


async def test_remote_stdin_is_closed(sshd_fleet: SshdFleet, make_pool: PoolFactory) -> None:
    device = sshd_fleet.device(sshd_fleet.hosts["alpha"])
    result = await make_pool().run(device, ["cat"], timeout=2, label="cat")
    assert (result.exit_status, result.stdout) == (0, "")


async def test_shell_metacharacters_in_argv_arrive_literally(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    scratch = sshd_fleet.scratch_dir()
    words = [f"; touch {scratch}/pwned", "$(id)", "`id`", "a  b", 'it\'s "quoted"', "*", "\\n", "x\ny"]
    pool = make_pool()
    device = sshd_fleet.device(sshd_fleet.hosts["beta"])
    for word in words:
        assert (await pool.run(device, ["printf", "%s", word], timeout=5, label="printf")).stdout == word
    assert not (scratch / "pwned").exists()


async def test_jump_host_tunnels_to_the_target(sshd_fleet: SshdFleet, make_pool: PoolFactory) -> None:
    jump_host = fresh_host(sshd_fleet, "jump", allow_tcp_forwarding=True)
    target_host = sshd_fleet.hosts["gamma"]
    jump = sshd_fleet.device(jump_host)
    target = sshd_fleet.device(target_host, jump_host=jump.name)
    jump_before, target_before = jump_host.accepted_logins(), target_host.accepted_logins()
    pool = make_pool(devices=[jump, target])
    for _ in range(3):
        assert (await pool.run(target, ["echo", "through"], timeout=5, label="echo")).stdout == "through\n"
    assert (jump_host.accepted_logins() - jump_before, target_host.accepted_logins() - target_before) == (
        1,
        1,
    )
    assert pool.stats().connections_opened == 2


async def test_target_behind_a_dropped_jump_host_reconnects_through_a_new_tunnel(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    jump_host = fresh_host(sshd_fleet, "jump", allow_tcp_forwarding=True)
    jump = sshd_fleet.device(jump_host)
    target = sshd_fleet.device(sshd_fleet.hosts["alpha"], jump_host=jump.name)
    pool = make_pool(devices=[jump, target])
    await pool.run(target, ["true"], timeout=5, label="true")
    jump_host.kill_sessions()
    await until(lambda: not jump_host.session_pids())
    assert (await pool.run(target, ["echo", "again"], timeout=5, label="echo")).stdout == "again\n"
    stats = pool.stats()
    assert (stats.connections_opened, stats.reconnects, stats.open_connections) == (4, 2, 2)


async def test_jump_host_without_forwarding_reports_the_tunnel_failure(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    jump = sshd_fleet.device(sshd_fleet.hosts["alpha"])
    target = sshd_fleet.device(sshd_fleet.hosts["beta"], jump_host=jump.name)
    with pytest.raises(HostUnreachable, match="the jump host refuses to open tunnels"):
        await make_pool(devices=[jump]).run(target, ["true"], timeout=5, label="true")


async def test_probe_reports_version_fingerprint_and_reuse(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = sshd_fleet.hosts["alpha"]
    pool = make_pool()
    device = sshd_fleet.device(host)
    first = await pool.probe(device)
    second = await pool.probe(device)
    assert first.server_version.startswith("SSH-2.0-OpenSSH_")
    assert first.host_key_fingerprint == host.host_key_fingerprint
    assert first.host_key_fingerprint.startswith("SHA256:")
    assert (first.host_key_source, first.reused_connection, second.reused_connection) == (
        "pinned",
        False,
        True,
    )
    assert first.latency_ms > 0 and second.latency_ms > 0


async def test_drop_closes_the_connection_and_the_next_run_opens_a_new_one(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    host = sshd_fleet.hosts["beta"]
    disconnects = host.disconnects()
    pool = make_pool()
    device = sshd_fleet.device(host)
    await pool.run(device, ["true"], timeout=5, label="true")
    await pool.drop(device.name)
    assert pool.stats().open_connections == 0
    await until(lambda: host.disconnects() > disconnects)
    await pool.run(device, ["true"], timeout=5, label="true")
    stats = pool.stats()
    assert (stats.connections_opened, stats.reconnects, stats.open_connections) == (2, 0, 1)


async def test_changed_connection_fields_replace_the_pooled_connection(
    sshd_fleet: SshdFleet, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    alpha = sshd_fleet.device(sshd_fleet.hosts["alpha"])
    await pool.run(alpha, ["true"], timeout=5, label="true")
    moved = sshd_fleet.device(sshd_fleet.hosts["gamma"], name="alpha")
    assert (await pool.run(moved, ["echo", "ok"], timeout=5, label="echo")).stdout == "ok\n"
    assert (pool.stats().connections_opened, pool.stats().open_connections) == (2, 1)


async def test_close_ends_every_connection(sshd_fleet: SshdFleet, make_pool: PoolFactory) -> None:
    hosts = [sshd_fleet.hosts[n] for n in ("alpha", "beta", "gamma")]
    before = [h.disconnects() for h in hosts]
    pool = make_pool()
    await asyncio.gather(*(pool.run(sshd_fleet.device(h), ["true"], timeout=5, label="t") for h in hosts))
    assert pool.stats().open_connections == 3
    await pool.close()
    assert pool.stats().open_connections == 0
    await until(lambda: all(h.disconnects() > b for h, b in zip(hosts, before, strict=True)))


def test_options_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        ssh_connect_timeout=4,
        ssh_keepalive_interval=7,
        ssh_idle_timeout=90,
        ssh_max_sessions=5,
        ssh_known_hosts=tmp_path / "kh",
        ssh_host_key_policy="strict",
    )
    assert SSHOptions.from_settings(settings) == SSHOptions(4, 7, 90, 5, tmp_path / "kh", "strict")


# ---- no port-scan oracle: every way to find no SSH server gives one answer ---------------------------------


@contextlib.asynccontextmanager
async def tcp_service(reply: bytes | None) -> AsyncIterator[int]:
    """A loopback TCP service that answers each connection with `reply` and closes it, or (None) resets it."""

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reply is None:
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            writer.transport.abort()
            return
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_reset_silent_and_non_ssh_ports_get_one_answer_and_the_log_keeps_the_detail(
    sshd_fleet: SshdFleet,
    make_pool: PoolFactory,
    silent_server: SilentServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    jump = sshd_fleet.device(fresh_host(sshd_fleet, "jump", allow_tcp_forwarding=True))
    pool = make_pool(devices=[jump], connect_timeout=1.0)
    answers: dict[str, str] = {}
    async with (
        tcp_service(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n") as http,
        tcp_service(None) as resetting,
    ):
        ports = {
            "refused": free_port(),
            "reset": resetting,
            "silent (filtered)": silent_server.port,
            "http": http,
            "refused behind a jump host": free_port(),
        }
        for case, port in ports.items():
            # a device as a caller with write scope would add it: no pinned key, any address
            device = sshd_fleet.device(
                sshd_fleet.hosts["alpha"], name="probe", port=port, host_key=None,
                jump_host=jump.name if "jump" in case else None,
            )  # fmt: skip
            with (
                caplog.at_level(logging.INFO, logger="mcp_server.ssh"),
                pytest.raises(HostUnreachable) as failed,
            ):
                await pool.run(device, ["true"], timeout=5, label="true")
            answers[case] = str(failed.value).replace(f":{port} ", ":PORT ")
            await pool.drop("probe")
    assert len(set(answers.values())) == 1, answers
    assert answers["refused"].startswith(
        "Cannot reach device 'probe': could not open an SSH session to 127.0.0.1:PORT (no SSH server answered there"
    )
    logged = caplog.text
    assert "ConnectionRefusedError" in logged and "within 1s" in logged and "ChannelOpenError" in logged
    # an SSH server that refuses our key has been found: saying so reveals nothing more
    with pytest.raises(AuthenticationFailed):
        await pool.run(
            sshd_fleet.device(sshd_fleet.hosts["alpha"], name="nokey", username="nobody-here"),
            ["true"], timeout=5, label="true",
        )  # fmt: skip
