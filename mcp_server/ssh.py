"""Pooled asyncssh connections: one per device, one channel per command; SSH errors translated here.

Each pooled connection keeps one session channel open ahead of the next command (a spare, ssh_channel.py):
a command on a warm connection then costs one round trip (the exec request) instead of two.

asyncssh is imported by the functions that connect, not with this module: a process that never reaches an
SSH host (a CLI command on the local device, a server before its first SSH call) does not load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import logging
import shlex
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mcp_server.devices import Device
from mcp_server.errors import (
    AuthenticationFailed,
    CommandTimeout,
    ConnectionError_,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
    OutputTooLarge,
    SessionLimit,
)
from mcp_server.executors import (
    MAX_OUTPUT,
    STOP_GRACE,
    ExecResult,
    LineStream,
    read_capped,
    read_head,
    records,
)
from mcp_server.redact import redact_text
from mcp_server.settings import Settings
from mcp_server.ssh_channel import SpareChannel, close_unclaimed, open_spare

if TYPE_CHECKING:
    import asyncssh

    from mcp_server.ssh_client import Client

_log = logging.getLogger(__name__)


class _AsyncsshLogFilter(logging.Filter):
    """asyncssh logs every command it runs (and every channel) at INFO, arguments and all. Its INFO records
    become DEBUG (kept only when this module logs at DEBUG) and every record it emits is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO:
            if not _log.isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        record.msg, record.args = redact_text(record.getMessage()), None
        return True


def quiet_asyncssh_logs() -> None:
    """Install _AsyncsshLogFilter on asyncssh's loggers (once)."""
    for name in ("asyncssh", "asyncssh.sftp"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _AsyncsshLogFilter) for f in logger.filters):
            logger.addFilter(_AsyncsshLogFilter())


HostKeySource = Literal["known_hosts", "pinned", "pinned_now", "local"]

# asyncssh's own order, AES-GCM moved ahead of ChaCha20-Poly1305: asyncssh builds a new ChaCha20 cipher
# context per packet, and a pooled command is a handful of small packets. AES-GCM costs a third less server
# CPU per command (bench/bench_fleet.py); every OpenSSH since 6.2 offers it, the rest stay as fallbacks.
CIPHERS = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


# sshd frees a closed channel's session slot on its next pass, after reading what arrived with the close:
# a channel opened right after another closed can be refused though the pool stays within MaxSessions.
# A refused open is asked again after these pauses (a real limit still fails, a few round trips later).
REFUSED_OPEN_RETRIES = (0.0, 0.02, 0.1)


@functools.cache
def _channel_errors() -> tuple[type[BaseException], ...]:
    """What a dead pooled connection raises when a new channel is asked of it."""
    import asyncssh

    return (asyncssh.Error, OSError, EOFError)


@dataclass(frozen=True)
class SSHOptions:
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    idle_timeout: float = 300.0
    max_sessions: int = 8
    known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    host_key_policy: Literal["tofu", "strict"] = "tofu"
    max_output: int = MAX_OUTPUT

    @classmethod
    def from_settings(cls, s: Settings) -> SSHOptions:
        return cls(
            connect_timeout=s.ssh_connect_timeout,
            keepalive_interval=s.ssh_keepalive_interval,
            idle_timeout=s.ssh_idle_timeout,
            max_sessions=s.ssh_max_sessions,
            known_hosts=s.ssh_known_hosts,
            host_key_policy=s.ssh_host_key_policy,
            max_output=s.max_output_bytes,
        )


@dataclass(frozen=True)
class ProbeResult:
    device: str
    server_version: str
    host_key_fingerprint: str
    host_key_source: HostKeySource
    latency_ms: float
    reused_connection: bool


@dataclass(frozen=True)
class PoolStats:
    connections_opened: int
    reconnects: int
    open_connections: int
    commands_run: int
    idle_closed: int


def fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def key_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode().strip()


@dataclass(frozen=True)
class _HostKeyPlan:
    source: HostKeySource
    trusted: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]
    where: str  # names what the key is checked against, for error messages
    fix: str  # how to accept a legitimately changed key
    accept_unknown: bool


@dataclass
class _Entry:
    lock: asyncio.Lock
    sem: asyncio.Semaphore
    conn: asyncssh.SSHClientConnection | None = None
    client: Client | None = None
    fields: tuple[object, ...] = ()
    source: HostKeySource = "pinned"
    jump: str | None = None
    last_used: float = 0.0
    active: int = 0
    streams: int = 0  # long-lived channels (watchers), each holding one of the session slots
    tunnel_users: int = 0
    lost_before: bool = False
    # the last failed connect (when it ended, why): callers that were already waiting for it share its
    # outcome instead of each spending another connect timeout on a dead host
    failure: tuple[float, ConnectionError_] | None = None
    # a session channel being opened, or open, on `conn` for the next command to take (None when the
    # server refused it); counted with the channels in use against max_sessions
    spare: tuple[asyncssh.SSHClientConnection, asyncio.Task[SpareChannel | None]] | None = None

    @property
    def alive(self) -> bool:
        return (
            self.conn is not None
            and self.client is not None
            and not self.client.lost
            and not self.conn.is_closed()
        )


class SSHPool:
    """One lazily opened, reused asyncssh connection per device; commands run as channels on it."""

    def __init__(
        self,
        options: SSHOptions,
        *,
        lookup: Callable[[str], Device],
        on_host_key_pinned: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        quiet_asyncssh_logs()
        self._options = options
        self._lookup = lookup
        self._on_pinned = on_host_key_pinned
        self._entries: dict[str, _Entry] = {}
        self._pins: dict[str, str] = {}  # keys pinned on first use, enforced until drop()
        self._reaper: asyncio.Task[None] | None = None
        self._opened = self._reconnects = self._commands = self._idle_closed = 0

    def is_connected(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.alive

    def stats(self) -> PoolStats:
        return PoolStats(
            connections_opened=self._opened,
            reconnects=self._reconnects,
            open_connections=sum(1 for e in self._entries.values() if e.alive),
            commands_run=self._commands,
            idle_closed=self._idle_closed,
        )

    async def run(self, device: Device, argv: list[str], *, timeout: float, label: str) -> ExecResult:
        """Run argv (shlex-joined, so every word arrives literally) and return whatever it exited with."""
        command = shlex.join(argv)
        entry = self._entry(device.name)
        async with entry.sem:
            entry.active += 1
            try:
                return await self._run(device, entry, command, timeout, label)
            finally:
                entry.active -= 1
                entry.last_used = time.monotonic()
                self._refill(entry)

    @contextlib.asynccontextmanager
    async def stream(
        self, device: Device, argv: list[str], *, label: str, separator: bytes = b"\n"
    ) -> AsyncIterator[LineStream]:
        """A channel of its own on the pooled connection, read line by line until it closes.

        It holds one of the device's session slots for its whole life, and at most max_sessions - 1 streams
        run at once, so commands always keep a slot. The pooled connection is not reaped while it is open.
        """
        command = shlex.join(argv)
        entry = self._entry(device.name)
        if entry.streams >= self._options.max_sessions - 1:
            raise SessionLimit(device.name, label, self._options.max_sessions)
        entry.streams += 1
        try:
            async with entry.sem:
                entry.active += 1
                try:
                    conn, proc = await self._session(device, entry, command, keep_stdin=True)
                    self._commands += 1
                    try:
                        yield LineStream(
                            command,
                            self._lines(device, entry, conn, proc, label, separator),
                            lambda: proc.exit_status,
                        )
                    finally:
                        await _close_stream(proc)
                finally:
                    entry.active -= 1
                    entry.last_used = time.monotonic()
                    self._refill(entry)
        finally:
            entry.streams -= 1

    async def _lines(
        self,
        device: Device,
        entry: _Entry,
        conn: asyncssh.SSHClientConnection,
        proc: asyncssh.SSHClientProcess[bytes],
        label: str,
        separator: bytes,
    ) -> AsyncIterator[str]:
        try:
            async for record in records(proc.stdout.read, separator):
                yield record
        except _channel_errors() as exc:
            await self._discard(entry, conn, lost=True)
            raise HostUnreachable(
                device.name, f"connection lost while running {label}: {_reason(exc)}"
            ) from None
        if not entry.alive:
            await self._discard(entry, conn, lost=True)
            raise HostUnreachable(device.name, f"connection lost while running {label}")

    async def probe(self, device: Device) -> ProbeResult:
        started = time.perf_counter()
        entry = self._entry(device.name)
        reused = entry.alive and entry.fields == _fields(device, self._pins.get(device.name))
        conn = await self._connection(device, ())
        await self.run(device, ["true"], timeout=self._options.connect_timeout, label="connection test")
        latency = (time.perf_counter() - started) * 1000
        key = conn.get_server_host_key()
        source = "pinned" if reused and entry.source == "pinned_now" else entry.source
        return ProbeResult(
            device=device.name,
            server_version=str(conn.get_extra_info("server_version", "")),
            host_key_fingerprint=fingerprint(key) if key else "",
            host_key_source=source,
            latency_ms=round(latency, 2),
            reused_connection=reused,
        )

    async def connect(self, device: Device) -> None:
        """Open the device's pooled connection now, ahead of its first command (a live one is kept)."""
        await self._connection(device, ())

    async def drop(self, name: str) -> None:
        """Forget a device's connection and first-use pin (it was edited or removed)."""
        self._pins.pop(name, None)
        entry = self._entries.get(name)
        if entry is not None and entry.conn is not None:
            await self._discard(entry, entry.conn, lost=False)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        # tunnelled connections first, so no jump connection closes under a live one
        ordered = sorted(self._entries.values(), key=lambda e: e.tunnel_users)
        for entry in ordered:
            if entry.conn is not None:
                await self._discard(entry, entry.conn, lost=False)

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            entry = _Entry(asyncio.Lock(), asyncio.Semaphore(self._options.max_sessions))
            self._entries[name] = entry
        return entry

    async def _run(
        self, device: Device, entry: _Entry, command: str, timeout: float, label: str
    ) -> ExecResult:
        started = time.perf_counter()
        conn, proc = await self._session(device, entry, command)
        self._commands += 1
        errors = asyncio.ensure_future(read_head(proc.stderr.read))
        try:
            async with asyncio.timeout(timeout):
                stdout = await read_capped(proc.stdout.read, self._options.max_output)
                if stdout is None:
                    await _stop(proc, wait=True)
                    raise OutputTooLarge(device.name, label, self._options.max_output)
                stderr = await errors
                await proc.wait_closed()
        except TimeoutError:
            await _stop(proc, wait=True)
            raise CommandTimeout(device.name, label, timeout) from None
        except asyncio.CancelledError:
            await _stop(proc, wait=False)
            raise
        except _channel_errors() as exc:
            await self._discard(entry, conn, lost=True)
            raise HostUnreachable(
                device.name, f"connection lost while running {label}: {_reason(exc)}"
            ) from None
        finally:
            if not errors.done():
                errors.cancel()
        if proc.returncode is None and not entry.alive:
            await self._discard(entry, conn, lost=True)
            raise HostUnreachable(device.name, f"connection lost while running {label}")
        duration = time.perf_counter() - started
        _log.debug("%s on %s exited %s in %.1f ms", label, device.name, proc.returncode, duration * 1000)
        return ExecResult(
            command,
            stdout.decode("utf-8", "replace"),
            stderr.decode("utf-8", "replace"),
            -1 if proc.returncode is None else proc.returncode,
            duration,
        )

    async def _session(
        self, device: Device, entry: _Entry, command: str, *, keep_stdin: bool = False
    ) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes]]:
        """The connection's spare channel, else a new one; a connection found dead is replaced once."""
        for retry in (False, True):
            conn = await self._connection(device, ())
            try:
                import asyncssh

                spare = await self._claim_spare(entry, conn)
                if spare is not None and not spare.usable:
                    _log.debug("spare channel to %s was closed; opening another", device.name)
                    spare.close()
                elif spare is not None:
                    try:
                        return conn, await spare.start(command, keep_stdin=keep_stdin)
                    except _channel_errors() as exc:
                        if not (entry.alive and entry.conn is conn):
                            raise
                        # the server closed the idle channel or refused the request: the command did not
                        # start, a channel of its own runs it
                        _log.debug("spare channel to %s unusable (%s)", device.name, _reason(exc))
                for pause in (*REFUSED_OPEN_RETRIES, None):
                    try:
                        proc = await conn.create_process(
                            command,
                            stdin=asyncssh.PIPE if keep_stdin else asyncssh.DEVNULL,
                            encoding=None,
                        )
                        return conn, proc
                    except asyncssh.ChannelOpenError as exc:
                        if pause is None or not _session_refused(exc) or not entry.alive:
                            raise
                        await asyncio.sleep(pause)
            except _channel_errors() as exc:
                if retry or (entry.alive and entry.conn is conn):
                    raise HostUnreachable(device.name, f"could not open a session: {_reason(exc)}") from None
                _log.info("connection to %s was lost (%s); reconnecting", device.name, _reason(exc))
                await self._discard(entry, conn, lost=True)
        raise AssertionError("unreachable")

    async def _claim_spare(self, entry: _Entry, conn: asyncssh.SSHClientConnection) -> SpareChannel | None:
        """Take the connection's spare (waiting for it when its open is under way: it is sooner than a new
        one), or None when there is none or it could not be opened."""
        held, entry.spare = entry.spare, None
        if held is None:
            return None
        spare_conn, task = held
        if spare_conn is not conn:
            task.cancel()
            task.add_done_callback(close_unclaimed)
            return None
        try:
            spare = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(close_unclaimed)
            raise
        return spare

    def _refill(self, entry: _Entry) -> None:
        """Open the next spare in the background, while the channels in use leave room for one more."""
        conn = entry.conn
        if (
            entry.spare is not None
            or conn is None
            or not entry.alive
            or entry.active + 1 > self._options.max_sessions
        ):
            return
        task = asyncio.get_running_loop().create_task(_spare(conn), name="ssh-spare-channel")
        entry.spare = (conn, task)

    async def _connection(self, device: Device, chain: tuple[str, ...]) -> asyncssh.SSHClientConnection:
        """The device's live connection, opened (once, under its lock) when missing, dead or stale."""
        if device.name in chain:
            hops = " -> ".join((*chain, device.name))
            raise HostUnreachable(chain[0], f"jump hosts form a loop: {hops}")
        entry = self._entry(device.name)
        asked = time.monotonic()
        async with entry.lock:
            if entry.conn is not None and (
                not entry.alive or entry.fields != _fields(device, self._pins.get(device.name))
            ):
                await self._discard(entry, entry.conn, lost=not entry.alive)
            if entry.conn is None and entry.failure is not None and entry.failure[0] >= asked:
                failed = entry.failure[1]
                raise type(failed)(failed.device, failed.detail)
            if entry.conn is None:
                try:
                    await self._open(device, entry, (*chain, device.name))
                except ConnectionError_ as exc:
                    entry.failure = (time.monotonic(), exc)
                    raise
            assert entry.conn is not None
            # a jump connection about to carry a new tunnel must not look idle to the reaper
            entry.last_used = time.monotonic()
            return entry.conn

    async def _open(self, device: Device, entry: _Entry, chain: tuple[str, ...]) -> None:
        import asyncssh

        from mcp_server.ssh_client import Client

        plan = self._host_key_plan(device)
        tunnel = None
        if device.jump_host:
            jump = self._lookup(device.jump_host)
            try:
                tunnel = await self._connection(jump, chain)
            except ConnectionError_ as exc:
                raise type(exc)(device.name, f"via jump host {jump.name!r}: {exc.detail}") from None
        auth, method = self._auth(device)
        client = Client(plan.accept_unknown)
        username = device.username or getpass.getuser()
        limit = self._options.connect_timeout
        started = time.perf_counter()
        try:
            async with asyncio.timeout(limit + 1.0):
                conn = await asyncssh.connect(
                    device.hostname,
                    device.port,
                    tunnel=tunnel,
                    config=None,
                    username=username,
                    known_hosts=plan.trusted,
                    client_factory=lambda: client,
                    connect_timeout=limit,
                    keepalive_interval=self._options.keepalive_interval or None,
                    gss_host=None,
                    encryption_algs=CIPHERS,
                    compression_algs=None,
                    **auth,
                )
        except TimeoutError:
            if client.spoke_ssh:
                raise HostUnreachable(
                    device.name,
                    f"the SSH server at {_where(device)} did not finish its handshake within {limit:g}s",
                ) from None
            _log.info("no SSH answer from %s (%s) within %gs", device.name, _where(device), limit)
            raise no_ssh_server(device) from None
        except (OSError, asyncssh.Error, ValueError) as exc:
            raise _translate(exc, device, plan, client, method, username) from None
        if device.jump_host:
            jump_entry = self._entry(device.jump_host)
            jump_entry.tunnel_users += 1
            entry.jump = device.jump_host
        entry.conn, entry.client, entry.fields = conn, client, _fields(device, self._pins.get(device.name))
        entry.source, entry.last_used = plan.source, time.monotonic()
        self._opened += 1
        if len(chain) == 1:  # a connection opened as a jump host carries tunnels, not commands
            self._refill(entry)
        if entry.lost_before:
            self._reconnects += 1
            entry.lost_before = False
        ms = (time.perf_counter() - started) * 1000
        _log.info("connected to %s (%s as %s) in %.0f ms", device.name, _where(device), username, ms)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="ssh-idle-reaper")
        if plan.source == "pinned_now":
            presented = conn.get_server_host_key()
            if presented is not None:
                line = key_line(presented)
                self._pins[device.name] = line
                entry.fields = _fields(device, line)
                _log.warning("pinned new host key %s for %s", fingerprint(presented), device.name)
                if self._on_pinned is not None:
                    await self._on_pinned(device.name, line)

    def _host_key_plan(self, device: Device) -> _HostKeyPlan:
        import asyncssh

        pinned = device.host_key or self._pins.get(device.name)
        if pinned:
            try:
                key = asyncssh.import_public_key(pinned)
            except (asyncssh.KeyImportError, ValueError):
                raise HostKeyMismatch(
                    device.name,
                    "the pinned host key is not a valid OpenSSH public key line; "
                    "use update_device with clear_host_key to pin it again",
                ) from None
            return _HostKeyPlan(
                "pinned", ([key], [], []), "the pinned host key", "update_device with clear_host_key", False
            )
        path = self._options.known_hosts
        pattern = device.hostname if device.port == 22 else f"[{device.hostname}]:{device.port}"
        if path.is_file():
            try:
                known = asyncssh.read_known_hosts(str(path))
            except (OSError, ValueError) as exc:
                raise HostKeyUnknown(device.name, f"cannot read {path}: {exc}") from None
            # exact [host]:port lookup, as OpenSSH does (asyncssh would fall back to the bare host)
            keys, cas, revoked, *_ = known.match(pattern, "", None)
            if keys or cas:
                return _HostKeyPlan(
                    "known_hosts",
                    (list(keys), list(cas), list(revoked)),
                    f"the key for {pattern} in {path}",
                    f"remove the stale {pattern} line from {path}",
                    False,
                )
        tofu = self._options.host_key_policy == "tofu"
        return _HostKeyPlan("pinned_now", ([], [], []), f"{pattern} is not in {path}", "", tofu)

    @staticmethod
    def _auth(device: Device) -> tuple[dict[str, Any], str]:
        """asyncssh auth arguments and a description of the method, for error messages."""
        if device.key_path:
            path = Path(device.key_path).expanduser()
            if not path.is_file():
                raise AuthenticationFailed(device.name, f"key file {path} does not exist")
            extra: dict[str, Any] = {"passphrase": device.password, "password": device.password}
            method = f"key file {path}" + (" then password" if device.password else "")
            return {"client_keys": [str(path)], "agent_path": None, **extra}, method
        if device.password:
            return {"client_keys": None, "agent_path": None, "password": device.password}, "password"
        return {"ignore_encrypted": True}, "the SSH agent and default keys (~/.ssh/id_*)"

    async def _discard(self, entry: _Entry, conn: asyncssh.SSHClientConnection, *, lost: bool) -> None:
        if entry.conn is not conn:
            return  # already replaced by a concurrent caller
        entry.conn = entry.client = None
        entry.lost_before = entry.lost_before or lost
        if entry.spare is not None:
            entry.spare[1].cancel()
            entry.spare[1].add_done_callback(close_unclaimed)
            entry.spare = None
        if entry.jump is not None:
            self._entry(entry.jump).tunnel_users -= 1
            entry.jump = None
        conn.close()
        with contextlib.suppress(TimeoutError, *_channel_errors()):
            async with asyncio.timeout(2.0):
                await conn.wait_closed()

    async def _reap(self) -> None:
        """Close connections idle longer than idle_timeout, and clear ones the server dropped."""
        idle = self._options.idle_timeout
        interval = min(max(idle / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, entry in list(self._entries.items()):
                if entry.conn is None or entry.active or entry.tunnel_users or entry.lock.locked():
                    continue
                if not entry.alive:
                    await self._discard(entry, entry.conn, lost=True)
                elif now - entry.last_used >= idle:
                    _log.info("closing idle connection to %s", name)
                    # counted before the await, so stats never show the connection gone but not yet counted
                    self._idle_closed += 1
                    await self._discard(entry, entry.conn, lost=False)


async def _spare(conn: asyncssh.SSHClientConnection) -> SpareChannel | None:
    """Open a spare channel; None when the server refuses it (sshd's MaxSessions reached) or the
    connection goes, which the next command finds out for itself."""
    import asyncssh

    for again in (True, False):
        try:
            return await open_spare(conn)
        except asyncssh.ChannelOpenError as exc:
            # asked right after a command's channel closed, sshd may not have freed its slot yet
            if not (again and _session_refused(exc)):
                _log.debug("no spare channel: %s", _reason(exc))
                return None
        except _channel_errors() as exc:
            _log.debug("no spare channel: %s", _reason(exc))
            return None
    return None


def _session_refused(exc: asyncssh.ChannelOpenError) -> bool:
    """The server refused a session channel: OpenSSH answers a session beyond MaxSessions with
    OPEN_CONNECT_FAILED "open failed", others with OPEN_ADMINISTRATIVELY_PROHIBITED."""
    import asyncssh

    return exc.code in (asyncssh.OPEN_CONNECT_FAILED, asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED)


def _fields(device: Device, pinned: str | None = None) -> tuple[object, ...]:
    # A key pinned on first use counts as the device's own, so recording it in the registry does not
    # look like an edit that needs a new connection.
    return (*device.connection_fields(), device.host_key or pinned)


def _where(device: Device) -> str:
    return f"{device.hostname}:{device.port}"


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or exc) or type(exc).__name__


async def _stop(proc: asyncssh.SSHClientProcess[Any], *, wait: bool) -> None:
    """Kill the remote process group if sshd allows it, then close the channel; the connection stays."""
    with contextlib.suppress(*_channel_errors()):
        proc.send_signal("KILL")
    proc.close()
    if wait:
        with contextlib.suppress(TimeoutError, *_channel_errors()):
            async with asyncio.timeout(2.0):
                await proc.wait_closed()


async def _close_stream(proc: asyncssh.SSHClientProcess[Any]) -> None:
    """End a stream: EOF on its stdin first (its script stops its children), then the channel itself."""
    with contextlib.suppress(*_channel_errors()):
        proc.stdin.write_eof()
    with contextlib.suppress(TimeoutError, *_channel_errors()):
        async with asyncio.timeout(STOP_GRACE):
            await proc.wait_closed()
    if not proc.is_closing():
        await _stop(proc, wait=True)


def _translate(
    exc: BaseException, device: Device, plan: _HostKeyPlan, client: Client, method: str, username: str
) -> ConnectionError_:
    """Turn a failed connect into the error an agent can act on; never includes the password."""
    import asyncssh

    name, where = device.name, _where(device)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable | asyncssh.KeyExchangeFailed) and (
        plan.source != "pinned_now" or client.presented is not None
    ):
        return _host_key_error(device, plan, client)
    # offered only the expected key's algorithms, sshd hangs up when it has no key of that type
    if (
        isinstance(exc, asyncssh.DisconnectError | ConnectionResetError)
        and plan.trusted[0]
        and client.in_key_exchange
    ):
        return _host_key_error(device, plan, client)
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthenticationFailed(name, f"{where} rejected {method} for user {username!r}")
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return AuthenticationFailed(name, f"cannot load {method}: {_reason(exc)}")
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(name, f"name {device.hostname!r} does not resolve ({exc.strerror})")
    if isinstance(exc, asyncssh.ChannelOpenError) and exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
        return HostUnreachable(name, f"the jump host refuses to open tunnels (to {where}): {_reason(exc)}")
    if client.spoke_ssh and isinstance(exc, asyncssh.DisconnectError | OSError):
        return HostUnreachable(name, f"the SSH server at {where} closed the connection: {_reason(exc)}")
    if isinstance(exc, asyncssh.Error | OSError):
        _log.info("no SSH session to %s (%s): %s: %s", name, where, type(exc).__name__, _reason(exc))
        return no_ssh_server(device)
    return HostUnreachable(name, f"{where}: {_reason(exc)}")


def no_ssh_server(device: Device) -> HostUnreachable:
    """The one answer for every way a connection can fail before an SSH server has said a word: refused,
    reset, timed out, filtered, no route, or a service that is not SSH (directly or through a jump host).

    Telling them apart would let a caller who may add devices map which ports answer on any address the
    server can reach; the detail goes to the server log at INFO instead."""
    return HostUnreachable(
        device.name,
        f"could not open an SSH session to {_where(device)} (no SSH server answered there: the connection "
        "was refused, reset or timed out, or what answered is not SSH). Check the hostname and port, that "
        "sshd is running there and that no firewall drops the connection; the server log has the detail.",
    )


def _host_key_error(device: Device, plan: _HostKeyPlan, client: Client) -> ConnectionError_:
    presented = client.presented
    shown = f"{presented.get_algorithm()} {fingerprint(presented)}" if presented else "no key of that type"
    if plan.source == "pinned_now":
        return HostKeyUnknown(
            device.name,
            f"the server presented host key {shown}, but {plan.where} and the host-key policy is strict. "
            "Verify the fingerprint out of band, then add the key to known_hosts.",
        )
    expected = ", ".join(f"{k.get_algorithm()} {fingerprint(k)}" for k in plan.trusted[0] + plan.trusted[1])
    return HostKeyMismatch(
        device.name,
        f"expected {plan.where} ({expected}) but the server presented {shown}. "
        f"Someone may be intercepting the connection; if the host was reinstalled, {plan.fix} and connect again.",
    )
