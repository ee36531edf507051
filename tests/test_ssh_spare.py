"""The spare session channel of a pooled connection (mcp_server/ssh_channel.py), against real OpenSSH servers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from mcp_server.devices import Device
from mcp_server.errors import DeviceNotFound
from mcp_server.ssh import SSHOptions, SSHPool
from tests.helpers import delaying_relay, until
from tests.sshd import SshdFleet, SshdHost

DELAY = 0.1  # held in each direction by the relay: a 200 ms round trip


def fresh_host(fleet: SshdFleet, prefix: str, *config: str) -> SshdHost:
    return fleet.start_host(f"{prefix}-{len(fleet.hosts)}", config=config)


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[list[SSHPool]]:
    made: list[SSHPool] = []
    yield made
    for pool in made:
        await pool.close()


def new_pool(made: list[SSHPool], tmp_path: Path, devices: Iterable[Device] = (), **changes: Any) -> SSHPool:
    known = {d.name: d for d in devices}

    def lookup(name: str) -> Device:
        if name not in known:
            raise DeviceNotFound(name, known)
        return known[name]

    options = SSHOptions(
        connect_timeout=5.0, keepalive_interval=5.0, idle_timeout=60.0, known_hosts=tmp_path / "kh"
    )
    pool = SSHPool(replace(options, **changes), lookup=lookup)
    made.append(pool)
    return pool


def test_the_asyncssh_internals_the_spare_relies_on_are_unchanged() -> None:
    """ssh_channel.py builds and opens an SSHClientChannel itself and lets create() carry on from an open
    channel: if asyncssh renames or reorders any of it, this fails before a pooled command does."""
    from asyncssh.channel import SSHClientChannel

    init = list(inspect.signature(SSHClientChannel.__init__).parameters)
    assert init == [
        "self",
        "conn",
        "loop",
        "utf8_decode_errors",
        "encoding",
        "errors",
        "window",
        "max_pktsize",
    ]
    create = list(inspect.signature(SSHClientChannel.create).parameters)
    assert create == [
        "self",
        "session_factory",
        "command",
        "subsystem",
        "env",
        "request_pty",
        "term_type",
        "term_size",
        "term_modes",
        "x11_forwarding",
        "x11_display",
        "x11_auth_path",
        "x11_single_connection",
        "agent_forwarding",
    ]
    body = inspect.getsource(SSHClientChannel.create)
    assert "packet = await self._open(b'session')" in body
    assert body.index("self._open(b'session')") < body.index("session_factory()")
    assert list(inspect.signature(SSHClientChannel._open).parameters) == ["self", "chantype", "args"]
    source = inspect.getsource(asyncssh.SSHClientConnection.create_session)
    assert "SSHClientChannel(self, self._loop, self._utf8_decode_errors," in source
    assert "self._update_recv_pktlen(max_pktsize)" in source
    assert "self._options.window" in source and "self._options.max_pktsize" in source
    assert "await process.redirect(" in inspect.getsource(asyncssh.SSHClientConnection.create_process)


async def test_a_command_on_a_warm_connection_costs_one_round_trip(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    """Through a 200 ms round-trip relay: a channel opened then exec'd takes two (>= 400 ms); the spare
    leaves one."""
    host = sshd_fleet.hosts["alpha"]
    async with delaying_relay(host.port, DELAY) as port:
        device = sshd_fleet.device(host, port=port)
        pool = new_pool(pools, tmp_path)
        await pool.connect(device)
        times = []
        for i in range(5):
            await asyncio.sleep(2 * DELAY + 0.05)  # the next spare is open
            started = time.perf_counter()
            result = await pool.run(device, ["echo", str(i)], timeout=10, label="echo")
            times.append(time.perf_counter() - started)
            assert result.stdout == f"{i}\n"
    rtt = 2 * DELAY
    assert rtt <= statistics.median(times) < 1.5 * rtt, times
    assert pool.stats().connections_opened == 1


async def test_many_commands_in_a_row_and_at_once_share_one_connection(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    host = fresh_host(sshd_fleet, "spare-many")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path)
    for i in range(40):
        assert (await pool.run(device, ["echo", str(i)], timeout=5, label="echo")).stdout == f"{i}\n"
    for _ in range(3):
        results = await asyncio.gather(
            *(pool.run(device, ["sh", "-c", "echo $0", str(i)], timeout=10, label="e") for i in range(30))
        )
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(30)]
    assert (await pool.run(device, ["cat"], timeout=2, label="cat")).stdout == ""  # stdin at EOF
    assert pool.stats().connections_opened == 1
    assert host.accepted_logins() == 1


@pytest.mark.parametrize("sessions", [1, 3])
async def test_the_spare_never_takes_a_session_sshd_would_refuse_a_command(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path, sessions: int
) -> None:
    """sshd MaxSessions counts the spare: with the pool's max_sessions at sshd's, commands one after
    another and as many at once as sshd allows all run (the spare is taken first, refilled after)."""
    host = fresh_host(sshd_fleet, "spare-max", f"MaxSessions {sessions}")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path, max_sessions=sessions)
    for i in range(10):
        assert (await pool.run(device, ["echo", str(i)], timeout=5, label="echo")).stdout == f"{i}\n"
    for _ in range(5):
        results = await asyncio.gather(
            *(
                pool.run(device, ["sh", "-c", "sleep 0.05; echo $0", str(i)], timeout=10, label="e")
                for i in range(12)
            )
        )
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]
    assert pool.stats().connections_opened == 1


async def test_a_pool_allowing_more_sessions_than_sshd_still_runs_commands_one_by_one(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    host = fresh_host(sshd_fleet, "spare-one", "MaxSessions 1")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path)  # max_sessions 8
    for i in range(10):
        assert (await pool.run(device, ["echo", str(i)], timeout=5, label="echo")).stdout == f"{i}\n"
    assert pool.stats().connections_opened == 1


class IdleClosingSession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """A session channel the server closes when no request came within IDLE seconds (what sshd's
    ChannelTimeout does to commands, and other servers to idle channels); runs `echo` itself."""

    IDLE = 0.3

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[type-arg]
        self._chan, self._command = chan, ""
        self._timer = asyncio.get_running_loop().call_later(self.IDLE, chan.close)

    def exec_requested(self, command: str) -> bool:
        self._timer.cancel()
        self._command = command
        return True

    def session_started(self) -> None:
        self._chan.write(self._command.removeprefix("echo ") + "\n")

    def eof_received(self) -> bool:
        self._chan.exit(0)
        return False


class IdleClosingServer(asyncssh.SSHServer):
    def session_requested(self) -> IdleClosingSession:
        return IdleClosingSession()


@contextlib.asynccontextmanager
async def idle_closing_server(fleet: SshdFleet) -> AsyncIterator[Device]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.read_private_key(str(fleet.client_key_path))
    server = await asyncssh.create_server(
        IdleClosingServer,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
    )
    try:
        port = server.sockets[0].getsockname()[1]
        yield Device(
            name="idle-closing",
            hostname="127.0.0.1",
            port=port,
            username="anyone",
            key_path=str(fleet.client_key_path),
            host_key=host_key.export_public_key().decode().strip(),
        )
    finally:
        server.close()
        await server.wait_closed()


async def test_a_spare_the_server_closed_is_replaced_by_a_new_channel(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with idle_closing_server(sshd_fleet) as device:
        pool = new_pool(pools, tmp_path)
        await pool.connect(device)
        with caplog.at_level(logging.DEBUG, logger="mcp_server.ssh"):
            for i in range(3):
                await asyncio.sleep(IdleClosingSession.IDLE * 2)  # the server has closed the spare
                result = await pool.run(device, ["echo", str(i)], timeout=5, label="echo")
                assert (result.exit_status, result.stdout) == (0, f"{i}\n")
        assert caplog.text.count("spare channel to idle-closing was closed; opening another") == 3
        assert pool.stats().connections_opened == 1


async def test_sshd_keepalives_on_an_idle_spare_keep_the_connection(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    """sshd sends its ClientAlive probe as a request on an open session channel when there is one: the
    idle spare answers it, and the connection stays."""
    host = fresh_host(sshd_fleet, "spare-alive", "ClientAliveInterval 1", "ClientAliveCountMax 1")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path, keepalive_interval=0.0)
    assert (await pool.run(device, ["echo", "one"], timeout=5, label="echo")).stdout == "one\n"
    await asyncio.sleep(3.5)
    assert (await pool.run(device, ["echo", "two"], timeout=5, label="echo")).stdout == "two\n"
    assert (pool.stats().connections_opened, host.accepted_logins(), host.disconnects()) == (1, 1, 0)


async def test_a_dropped_connection_with_a_spare_reconnects(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    host = fresh_host(sshd_fleet, "spare-drop")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path)
    for round_ in range(3):
        assert (await pool.run(device, ["echo", "x"], timeout=5, label="echo")).stdout == "x\n"
        if round_:
            await asyncio.sleep(0.2)  # the spare is open, not only being opened
        assert host.kill_sessions() == 1
        await until(lambda: not host.session_pids())
        assert (await pool.run(device, ["echo", "back"], timeout=5, label="echo")).stdout == "back\n"
    stats = pool.stats()
    assert (stats.reconnects, stats.connections_opened, stats.open_connections) == (3, 4, 1)


async def test_callers_cancelled_while_taking_the_spare_leave_no_session_open(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    """A cancelled call must not leave its channel open on the server: with MaxSessions 2, leaked channels
    would soon have every later command refused."""
    host = fresh_host(sshd_fleet, "spare-cancel", "MaxSessions 2")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path, max_sessions=2)
    await pool.connect(device)
    for i in range(8):
        # a command that ends by itself: one still running would hold its session until it exits
        call = asyncio.ensure_future(pool.run(device, ["true"], timeout=20, label="true"))
        for _ in range(i % 4):
            await asyncio.sleep(0)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        results = await asyncio.gather(
            *(pool.run(device, ["echo", "ok"], timeout=5, label="echo") for _ in range(2))
        )
        assert [r.stdout for r in results] == ["ok\n", "ok\n"]
    assert pool.stats().connections_opened == 1


async def test_a_stream_on_the_spare_reads_lines_and_ends_on_stdin_eof(
    sshd_fleet: SshdFleet, pools: list[SSHPool], tmp_path: Path
) -> None:
    host = fresh_host(sshd_fleet, "spare-stream")
    device = sshd_fleet.device(host)
    pool = new_pool(pools, tmp_path)
    await pool.connect(device)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    async with pool.stream(
        device, ["sh", "-c", "echo ready; cat >/dev/null; echo never"], label="s"
    ) as stream:
        lines = aiter(stream.lines)
        assert await anext(lines) == "ready"
    assert time.monotonic() - started < 2.0
    assert (await pool.run(device, ["echo", "after"], timeout=5, label="echo")).stdout == "after\n"
