"""Work on untrusted content off the event loop: worker processes with a deadline and a memory cap.

Parsing, diffing and assessing what a host sent is linear in its size, but a megabyte of it is still too much
to do on the event loop, and a parser bug must never freeze or exhaust the server. `WorkerPool.call(fn, ...)`
runs a module-level function in a worker process (`python -m mcp_server.workers`): the worker's address
space is capped (RLIMIT_AS), a call that outlives its deadline has its worker killed, and a dead worker is
replaced on the next call. Workers start on first use and are reused; arguments and results travel pickled
over the worker's stdin and stdout, framed by length.

A deadline bounds what a call costs: the worker's CPU time, so that a busy machine, where the (niced) worker
gets a small share of a core, does not turn ordinary work into a refusal; wall time is capped too, at
WALL_FACTOR times the deadline. A worker's start-up (the interpreter and the parsers' imports) is not part
of any call's deadline: a new worker says when it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import pickle
import resource
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from mcp_server.errors import InfrastructorError

log = logging.getLogger(__name__)
T = TypeVar("T")
_FRAME = struct.Struct("!Q")
_MAX_FRAME = 1 << 31  # a result this large means something is wrong: the worker is dropped
_READY = _FRAME.pack(0)  # what a new worker writes once its imports are done
START_TIMEOUT = 60.0  # seconds a new worker may take to become ready (a loaded machine, a cold disk)
WALL_FACTOR = 5  # a call is stopped past this many times its deadline in wall time, whatever its CPU time
_TICKS = os.sysconf("SC_CLK_TCK")


class WorkLimitExceeded(InfrastructorError):
    """A call took longer than its deadline, or more memory than a worker may have (the worker is gone)."""

    error_type = "work_limit_exceeded"

    def __init__(self, what: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{what} {reason}")


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        if await self.proc.stdout.readexactly(_FRAME.size) != _READY:
            raise EOFError("a worker that did not start properly")

    def cpu_seconds(self) -> float | None:
        """CPU time the worker process has used (user + system), or None where /proc cannot tell."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / _TICKS

    async def call(self, request: bytes) -> tuple[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(_FRAME.pack(len(request)) + request)
        await self.proc.stdin.drain()
        (size,) = _FRAME.unpack(await self.proc.stdout.readexactly(_FRAME.size))
        if size > _MAX_FRAME:
            raise EOFError(f"a {size}-byte answer")
        status, value = pickle.loads(await self.proc.stdout.readexactly(size))
        return status, value

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


class WorkerPool:
    """Up to `size` worker processes, started when first needed."""

    def __init__(self, *, size: int = 2, memory_mb: int = 1024) -> None:
        self.size = size
        self.memory_mb = memory_mb
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(size)
        self._all: set[_Worker] = set()
        self.calls = 0
        self.replaced = 0  # workers killed at a deadline or lost to a crash or the memory cap

    async def call(self, fn: Callable[..., T], *args: Any, deadline: float, what: str) -> T:
        """`fn(*args)` in a worker, within `deadline` seconds; `what` names the work in errors.

        Raises what `fn` raised when it is an InfrastructorError, WorkLimitExceeded past the deadline or
        the memory cap.
        """
        request = pickle.dumps((fn.__module__, fn.__qualname__, args), protocol=pickle.HIGHEST_PROTOCOL)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._spawn(what)
            self.calls += 1
            keep = False
            try:
                status, value = await self._within(worker, request, deadline)
                keep = status in ("ok", "raise")
            except TimeoutError:
                raise WorkLimitExceeded(what, f"took longer than {deadline:g}s and was stopped") from None
            except (EOFError, asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
                raise WorkLimitExceeded(what, "stopped its worker process (out of memory?)") from None
            finally:
                if keep and worker.alive:
                    self._idle.append(worker)
                else:
                    self._all.discard(worker)
                    self.replaced += 1
                    await worker.stop()
        if status == "ok":
            return value  # type: ignore[no-any-return]
        if status == "raise":
            raise value
        if status == "memory":
            raise WorkLimitExceeded(what, f"needed more than {self.memory_mb} MiB and was stopped")
        raise WorkLimitExceeded(what, f"failed unexpectedly ({value})")

    @staticmethod
    async def _within(worker: _Worker, request: bytes, deadline: float) -> tuple[str, Any]:
        """The worker's answer to `request`; TimeoutError once it has used `deadline` seconds of CPU, or
        WALL_FACTOR times that in wall time."""
        answer = asyncio.ensure_future(worker.call(request))
        cpu_start, wall_end = worker.cpu_seconds(), time.monotonic() + deadline * WALL_FACTOR
        try:
            while True:
                cpu_now = worker.cpu_seconds()
                used = cpu_now - cpu_start if cpu_now is not None and cpu_start is not None else None
                left = min(wall_end - time.monotonic(), deadline - used if used is not None else deadline)
                if left <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({answer}, timeout=max(left, 0.01))
                if done:
                    return answer.result()
                if used is None:  # no CPU accounting here: the deadline is wall time
                    raise TimeoutError
        finally:
            answer.cancel()

    async def _spawn(self, what: str) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mcp_server.workers",
            str(self.memory_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=1 << 20,
        )
        worker = _Worker(proc)
        self._all.add(worker)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await worker.ready()
        except (TimeoutError, EOFError, asyncio.IncompleteReadError, ConnectionError):
            self._all.discard(worker)
            await worker.stop()
            raise WorkLimitExceeded(
                what, f"could not start a worker process within {START_TIMEOUT:g}s"
            ) from None
        return worker

    @property
    def running(self) -> int:
        return sum(1 for w in self._all if w.alive)

    async def close(self) -> None:
        workers, self._all, self._idle = list(self._all), set(), []
        for worker in workers:
            await worker.stop()


# ---- the worker process -------------------------------------------------------------------------------------


def _read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    return stream.read(size)


def _answer(request: bytes) -> tuple[str, Any]:
    module, name, args = pickle.loads(request)
    fn: Any = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    try:
        return "ok", fn(*args)
    except MemoryError:
        return "memory", None
    except InfrastructorError as exc:
        return "raise", exc
    except RecursionError:
        return "error", "nested too deeply"
    except Exception as exc:  # the worker reports every failure instead of dying with it
        return "error", type(exc).__name__


def _serve(memory_mb: int) -> None:
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    importlib.import_module("mcp_server.parsing")  # the parsers, before the first call's deadline starts
    stdout.write(_READY)
    stdout.flush()
    while (request := _read_frame(stdin)) is not None:
        status, value = _answer(request)
        try:
            reply = pickle.dumps((status, value), protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            reply = pickle.dumps(("memory", None))
        except Exception as exc:  # an unpicklable result
            reply = pickle.dumps(("error", f"unpicklable result: {type(exc).__name__}"))
        stdout.write(_FRAME.pack(len(reply)) + reply)
        stdout.flush()
        if status == "memory":
            return  # a worker that ran out of memory may be damaged: exit, the pool starts a new one


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the server dies, even in the middle of a call (SIGKILLed server)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(10)  # the server's event loop (answers, health checks) comes before a host's big output
    _serve(int(sys.argv[1]))
