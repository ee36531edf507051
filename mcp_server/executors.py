"""Running argv on a device: the result type, the local executor, and exit-status classification."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mcp_server.devices import Device
from mcp_server.errors import (
    CommandFailed,
    CommandNotAvailable,
    CommandTimeout,
    OutputTooLarge,
    SudoPasswordRequired,
)

STOP_GRACE = 2.0  # seconds a stopped stream gets to exit on its own after its stdin closes
MAX_OUTPUT = 16_777_216  # bytes of stdout a command may write (INFRA_MAX_OUTPUT_BYTES)
STDERR_KEEP = 65_536  # stderr beyond this is read and dropped: only its start reaches an error message
MAX_RECORD = 65_536  # a streamed record (line) longer than this is cut
_CHUNK = 65_536
Read = Callable[[int], Awaitable[bytes]]


async def read_capped(read: Read, limit: int) -> bytes | None:
    """Everything `read` gives until EOF, or None as soon as it exceeds `limit` bytes (the rest unread)."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await read(_CHUNK):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_head(read: Read, keep: int = STDERR_KEEP) -> bytes:
    """The first `keep` bytes `read` gives; the rest is read until EOF and dropped (memory stays bounded)."""
    kept = bytearray()
    while chunk := await read(_CHUNK):
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
    return bytes(kept)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


async def records(read: Read, separator: bytes = b"\n", limit: int = MAX_RECORD) -> AsyncIterator[str]:
    """The records of a stream, split at `separator` (without it) and decoded; a record longer than `limit`
    bytes is given cut to `limit` with a marker, and its rest skipped. Memory stays within about `limit`."""
    pending = bytearray()
    skipping = False
    while chunk := await read(_CHUNK):
        start = 0
        while (end := chunk.find(separator, start)) >= 0:
            if skipping:
                skipping = False
            elif pending:
                pending += chunk[start:end]
                yield _decode(bytes(pending)) if len(pending) <= limit else _cut(bytes(pending), limit)
                pending.clear()
            else:
                yield _decode(chunk[start:end]) if end - start <= limit else _cut(chunk[start:end], limit)
            start = end + len(separator)
        if not skipping:
            pending += chunk[start:]
            if len(pending) > limit:
                yield _cut(bytes(pending), limit)
                pending.clear()
                skipping = True
    if pending and not skipping:
        yield _decode(bytes(pending))


def _cut(raw: bytes, limit: int) -> str:
    return _decode(raw[:limit]) + f"…[record cut at {limit} bytes]"


@dataclass(frozen=True)
class ExecResult:
    """What one command run produced."""

    command: str  # the exact text that ran (shlex-joined argv)
    stdout: str
    stderr: str
    exit_status: int
    duration: float


@dataclass(frozen=True)
class LineStream:
    """A long-lived command's output, line by line (stderr merged into it by the command itself)."""

    command: str  # the exact text that runs (shlex-joined argv)
    lines: AsyncIterator[str]  # ends when the command exits or its channel closes
    exit_status: Callable[[], int | None]  # once `lines` has ended: how it exited (None: killed or lost)


class Executor(Protocol):
    """Where commands run: the LocalExecutor for the built-in `local` device, the SSHPool for the rest."""

    async def run(self, device: Device, argv: list[str], *, timeout: float, label: str) -> ExecResult:
        """Run argv on `device`; `label` (the command's registry name) is what errors mention.

        Returns the result whatever the exit status; raises CommandTimeout, OutputTooLarge (the command is
        stopped once its stdout exceeds the executor's limit), or a ConnectionError_.
        """
        ...

    def stream(
        self, device: Device, argv: list[str], *, label: str, separator: bytes = b"\n"
    ) -> AbstractAsyncContextManager[LineStream]:
        """Start argv on `device` and read its output as it comes, record by record (split at `separator`,
        each at most MAX_RECORD bytes); leaving the context stops it.

        The command's stdin stays open for its lifetime and closes when the context exits, so a script can
        notice that its reader went away. Raises CommandNotAvailable, SessionLimit or a ConnectionError_.
        """
        ...


_NOT_FOUND = (
    re.compile(r"(?:^|: )(?P<bin>[^\s:]+): (?:command )?not found", re.M),
    re.compile(r"(?:can't|cannot) execute '?(?P<bin>[^\s':]+)'?", re.M),
    re.compile(r"exec: (?P<bin>[^\s:]+): not found", re.M),
)


def missing_binary(stderr: str) -> str | None:
    """The binary a shell says it could not find, if any."""
    for pattern in _NOT_FOUND:
        match = pattern.search(stderr)
        if match:
            return match.group("bin")
    return None


_SUDO_NOT_FOUND = re.compile(r"sudo: (?P<bin>[^\s:]+): command not found")
_SUDO_PASSWORD = re.compile(r"sudo: (?:a password is required|a terminal is required|no tty present)")


def check_exit(result: ExecResult, device: str, command: str, ok: frozenset[int] = frozenset({0})) -> None:
    """Raise the right error for a failed run: CommandNotAvailable for exit 127, else CommandFailed."""
    if result.exit_status in ok:
        return
    if result.command.startswith("sudo -n "):
        if _SUDO_PASSWORD.search(result.stderr):
            raise SudoPasswordRequired(device, command)
        missing = _SUDO_NOT_FOUND.search(result.stderr)
        if missing:  # sudo exits 1, not 127, when the program is not on its secure_path
            raise CommandNotAvailable(device, command, missing.group("bin"))
    if result.exit_status == 127:
        binary = missing_binary(result.stderr) or shlex.split(result.command)[0]
        raise CommandNotAvailable(device, command, binary)
    raise CommandFailed(device, command, result.exit_status, result.stderr)


class LocalExecutor:
    """Runs argv as a subprocess of the server (the built-in `local` device); no shell involved."""

    def __init__(self, *, max_output: int = MAX_OUTPUT) -> None:
        self.commands_run = 0
        self.max_output = max_output

    async def run(self, device: Device, argv: list[str], *, timeout: float, label: str) -> ExecResult:
        text = shlex.join(argv)
        started = time.perf_counter()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            return ExecResult(text, "", f"{argv[0]}: not found", 127, time.perf_counter() - started)
        except PermissionError:
            return ExecResult(text, "", f"{argv[0]}: Permission denied", 126, time.perf_counter() - started)
        self.commands_run += 1
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.ensure_future(read_head(proc.stderr.read))
        try:
            async with asyncio.timeout(timeout):
                out = await read_capped(proc.stdout.read, self.max_output)
                if out is None:
                    _kill_session(proc)
                    raise OutputTooLarge(device.name, label, self.max_output)
                err = await errors
                await proc.wait()
        except TimeoutError:
            _kill_session(proc)
            raise CommandTimeout(device.name, label, timeout) from None
        except BaseException:
            _kill_session(proc)
            raise
        finally:
            if not errors.done():
                errors.cancel()
            await proc.wait()
        return ExecResult(
            text,
            _decode(out),
            _decode(err),
            proc.returncode if proc.returncode is not None else -1,
            time.perf_counter() - started,
        )

    @contextlib.asynccontextmanager
    async def stream(
        self, device: Device, argv: list[str], *, label: str, separator: bytes = b"\n"
    ) -> AsyncIterator[LineStream]:
        text = shlex.join(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise CommandNotAvailable(device.name, label, argv[0]) from None
        self.commands_run += 1
        assert proc.stdout is not None and proc.stdin is not None
        stdout = proc.stdout

        async def lines() -> AsyncIterator[str]:
            async for record in records(stdout.read, separator):
                yield record
            await proc.wait()

        try:
            yield LineStream(text, lines(), lambda: proc.returncode)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await proc.wait()
            except TimeoutError:
                _kill_session(proc)
                await proc.wait()


def _kill_session(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process's whole session, so a script's children die with it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
