"""Running argv on a device: the result type, the local executor, and exit-status classification."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from mcp_server.devices import Device
from mcp_server.errors import CommandFailed, CommandNotAvailable, CommandTimeout, SudoPasswordRequired

STOP_GRACE = 2.0  # seconds a stopped stream gets to exit on its own after its stdin closes


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

        Returns the result whatever the exit status; raises CommandTimeout, or a ConnectionError_.
        """
        ...

    def stream(
        self, device: Device, argv: list[str], *, label: str
    ) -> AbstractAsyncContextManager[LineStream]:
        """Start argv on `device` and read its output as it comes; leaving the context stops it.

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

    def __init__(self) -> None:
        self.commands_run = 0

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
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                # the whole session, so a script's children die with it
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise CommandTimeout(device.name, label, timeout) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        return ExecResult(
            text,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            proc.returncode if proc.returncode is not None else -1,
            time.perf_counter() - started,
        )

    @contextlib.asynccontextmanager
    async def stream(self, device: Device, argv: list[str], *, label: str) -> AsyncIterator[LineStream]:
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
            while raw := await stdout.readline():
                yield raw.decode("utf-8", "replace").rstrip("\n")
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
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
