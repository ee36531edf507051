"""The control socket: a running `serve` answers the CLI's read collections over its pooled, authenticated
connections, as an OpenSSH ControlMaster answers `ssh`.

`serve` (stdio and HTTP) listens on `<data dir>/control.sock` (mode 0600 in the 0700 data dir; a stale socket
is replaced, a live one left to its server; removed on exit). A connection is taken only from a process of the
server's own user or root (SO_PEERCRED); others are refused and audited. One request per connection, one line
of JSON (at most MAX_REQUEST bytes, within READ_SECONDS):

    {"v": 1, "op": "collect", "command": "os_info", "device": "a,b" | null, "all": false, "tags": [..] | null,
     "params": {..} | null, "force_refresh": false, "database": "<sha256 of INFRA_DATABASE_URL>" | null,
     "render": {"json": false, "out_width": 200, "err_width": 80, "out_encoding": "utf-8",
                "err_encoding": "utf-8", "environ": {"COLUMNS": "120", ..}} | null}

Answers, one JSON line each: a finished device (`{"stderr": text}` with `render`, else `{"step": {..}}`), then
the last one: `{"stdout": text, "stderr": text, "exit": n}` with `render`, else `{"outcomes": [..], "exit": n}`
or `{"error": text, "exit": 2}`; or `{"refused": why}`, after which the CLI runs the collection itself.

Only read commands of the registry are taken (nothing that changes a device, a secret or the server); the
arguments are checked as the `collect_many` tool's are, then run through the collection service's
`collect_many` (cache, audit). Each request is audited as a `collect_many` call with transport `cli` and
subject `local:<the peer's user>`; its collections link to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import os
import pwd
import socket
import stat
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_server.audit import CallContext, audit_arguments, calling, oversized_arguments, read_deadline
from mcp_server.errors import (
    ArgumentsTooLarge,
    InfrastructorError,
    InvalidParameter,
    Overloaded,
    field_problems,
)
from mcp_server.progress import StepDone

if TYPE_CHECKING:
    from rich.console import Console

    from mcp_server.cli_output import CliConsoles
    from mcp_server.collection import DeviceOutcome
    from mcp_server.state import AppState

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
PROTOCOL = 1
MAX_REQUEST = 1 << 20  # bytes of the request line
READ_SECONDS = 5.0  # to send the request line once connected
SEND_SECONDS = 30.0  # for the CLI to take each answer line
MAX_CLIENTS = 32  # requests served at once; more are refused (the CLI then runs in-process)
# the environment variables rich reads to shape its output; the CLI sends its own
RICH_ENVIRON = (
    *("COLUMNS", "LINES", "TERM", "COLORTERM", "NO_COLOR"),
    *("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"),
)


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def database_fingerprint(url: str | None) -> str | None:
    """INFRA_DATABASE_URL as the CLI and the server compare it (None: the default, SQLite in the data dir)."""
    return None if not url else hashlib.sha256(url.encode()).hexdigest()


class Render(BaseModel):
    """The CLI's stdout and stderr when neither is a terminal (see cli_output.CliConsoles)."""

    model_config = ConfigDict(extra="forbid")

    json_output: bool = Field(alias="json")
    out_width: int = Field(ge=1, le=100_000)
    err_width: int = Field(ge=1, le=100_000)
    out_encoding: str = Field(max_length=64)
    err_encoding: str = Field(max_length=64)
    environ: dict[str, Any] = Field(default_factory=dict, max_length=len(RICH_ENVIRON))


class ControlRequest(BaseModel):
    """A collect request on the socket: the arguments of the `collect_many` tool, with the CLI's selection
    (`device` as `--device` takes it, `all`), and how to render the answer."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    op: Literal["collect"]
    command: str = Field(max_length=128)
    device: str | None = Field(default=None, max_length=65_536)
    all: bool = False
    tags: list[str] | None = None
    params: dict[str, Any] | None = None
    force_refresh: bool = False
    database: str | None = Field(default=None, max_length=64)
    render: Render | None = None


class Refused(Exception):
    """The server will not take this request; the CLI runs it itself."""


def targets(state: AppState, device: str | None, every: bool, tags: list[str] | None) -> list[str]:
    """The devices `collect` runs on: all, a tag selection and/or a list of names (each must exist), or one
    device (an unknown one is reported as that device's failure)."""
    if every and not tags:
        return state.devices.names()
    name = device or "local"
    if tags or "," in name:
        named = [n.strip() for n in name.split(",") if n.strip()] if device else None
        return state.service.select(named, tags)
    return [name]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size))
    return pid, uid, gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class ControlSocket:
    """The listening socket of one server, and the requests it is answering."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.path = socket_path(state.settings.data_dir)
        self.server: asyncio.AbstractServer | None = None
        self.inode: int | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.busy = 0
        self.refusals = _RefusalLog(state.settings.audit_auth_failures_per_minute)

    async def start(self) -> bool:
        """Listen, unless another live server already answers on the path (or it cannot be bound)."""
        path = str(self.path)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        if current is not None:
            if not stat.S_ISSOCK(current.st_mode) or current.st_uid != os.geteuid():
                log.warning("control socket: %s is not this user's socket; the CLI runs in-process", path)
                return False
            if _answers(path):
                log.warning("control socket: another server answers on %s; this one does not listen", path)
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: its server is gone
        try:
            self.server = await asyncio.start_unix_server(self._accept, path=path, limit=MAX_REQUEST)
            os.chmod(path, 0o600)
            self.inode = os.lstat(path).st_ino
        except OSError as exc:  # a path too long for a Unix socket, a read-only data dir
            log.warning("control socket: cannot listen on %s (%s); the CLI runs in-process", path, exc)
            await self.stop()
            return False
        # the renderer's imports (rich) now, not in the first request
        await asyncio.to_thread(importlib.import_module, "mcp_server.cli_output")
        log.info("control socket %s", path)
        return True

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.inode is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self.inode:
                    os.unlink(self.path)
            self.inode = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, BrokenPipeError):
            pass  # the CLI went away
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
        if uid not in (os.geteuid(), 0):
            self.refusals.record(self.state, uid, pid)
            await _send(writer, {"refused": "not this server's user"})
            return
        if self.busy >= MAX_CLIENTS:
            await _send(writer, {"refused": "busy"})
            return
        self.busy += 1
        try:
            await Request(self.state, uid, pid, writer).run(reader)
        finally:
            self.busy -= 1


class Request:
    """One request on the socket, from reading it to its audit row and last answer."""

    def __init__(self, state: AppState, uid: int, pid: int, writer: asyncio.StreamWriter) -> None:
        self.state = state
        self.writer = writer
        self.gone = False
        self.ctx = CallContext(
            transport="cli",
            tool="collect_many",
            subject=f"local:{user_name(uid)}",
            client_id="cli",
            user_agent=f"infrastructor collect (pid {pid})",
        )
        self.render: Render | None = None
        self.err_console: Console | None = None  # measures the CLI's stderr for its progress lines
        self.arguments: dict[str, Any] = {}  # as audited

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            await _send(self.writer, message)
        except (ConnectionError, BrokenPipeError):
            self.gone = True  # the CLI went away; the collection still ends and is audited

    async def run(self, reader: asyncio.StreamReader) -> None:
        started = time.perf_counter()
        outcome, error_type, message = "ok", None, None
        answer: dict[str, Any]
        unread: _Invalid | None = None
        try:
            line = await _read_line(reader)
        except _Closed:
            return  # connected and left without a word (a liveness probe): nothing to answer or audit
        except _Invalid as exc:
            line, unread = b"", exc
        with calling(self.ctx), read_deadline(self.state.settings.db_read_timeout):
            try:
                if unread is not None:
                    raise unread
                request = self.parse(line)
                if request.database != database_fingerprint(self.state.settings.database_url):
                    raise Refused("the CLI names another database (INFRA_DATABASE_URL)")
                from mcp_server.middleware import overloaded

                overloaded(self.state)
                answer = await self.collect(request)
            except Refused as exc:
                outcome, error_type, message = "denied", "refused", str(exc)
                answer = {"refused": str(exc)}
            except InfrastructorError as exc:
                if isinstance(exc, _Invalid):
                    self.arguments = exc.shown
                denied = exc.error_type in (ArgumentsTooLarge.error_type, Overloaded.error_type)
                outcome, error_type, message = "denied" if denied else "error", exc.error_type, str(exc)
                answer = await self.failed(str(exc))
            finally:
                self.state.writer.audit(
                    self.ctx.to_audit(
                        "tool",
                        started=started,
                        outcome=outcome,
                        error_type=error_type,
                        error_message=message,
                        arguments=self.arguments,
                        command=self.ctx.trace.command,
                        cache_hit=self.ctx.trace.cache_hit,
                        ssh_commands=self.ctx.trace.ssh_commands,
                    )
                )
            if self.state.settings.audit_sync:
                await self.state.writer.durable()  # answered only once its audit row is on disk
        await self.send(answer)

    def parse(self, line: bytes) -> ControlRequest:
        """The request, checked as a tool call's arguments are; its arguments as audited in self.arguments."""
        text = line.decode("utf-8", errors="replace")
        limit = self.state.settings.max_argument_chars
        if len(text) > limit:
            raise _Invalid(
                f"Refused request: it is {len(text):,} characters; the limit is {limit:,} "
                "(INFRA_MAX_ARGUMENT_CHARS).",
                oversized_arguments(text),
                too_large=True,
            )
        try:
            raw = json.loads(text)
        except ValueError:
            raise _Invalid("Invalid request: not one line of JSON.", oversized_arguments(text)) from None
        if not isinstance(raw, dict):
            raise _Invalid("Invalid request: not a JSON object.", oversized_arguments(text))
        shown = self.arguments = audit_arguments({k: v for k, v in raw.items() if k != "render"})
        try:
            request = ControlRequest.model_validate(raw)
        except ValidationError as exc:
            raise _Invalid(
                "\n".join(["Invalid arguments for collect_many:", *field_problems(exc)]), shown
            ) from None
        if request.render is not None and set(request.render.environ) - set(RICH_ENVIRON):
            raise _Invalid("Invalid arguments for collect_many:\nrender.environ: unknown variable", shown)
        self.render = request.render
        self.state.registry.get_read(request.command)  # read commands only
        return request

    async def collect(self, request: ControlRequest) -> dict[str, Any]:
        state = self.state
        names = targets(state, request.device, request.all, request.tags)

        async def step(done: StepDone) -> None:
            if self.render is None:
                shown = {"name": done.name, "done": done.done, "total": done.total, "outcome": done.outcome}
                await self.send({"step": shown | {"problem": done.problem}})
                return
            from mcp_server.cli_output import step_line

            text = step_line(request.command, done.done, done.total, done.message)
            await self.send({"stderr": self._step(text)})

        outcomes: list[DeviceOutcome[Any]] = await state.service.collect_many(
            names, request.command, request.params, force_refresh=request.force_refresh, on_device=step
        )
        dumped = [o.model_dump(mode="json") for o in outcomes]
        code = 0 if all(o.ok for o in outcomes) else 1
        if self.render is None:
            return {"outcomes": dumped, "exit": code}
        from mcp_server.cli_output import print_json, print_outcomes

        render = self.render
        if render.json_output:
            text = await asyncio.to_thread(self._rendered, False, lambda c: print_json(c, dumped))
        else:
            text = await asyncio.to_thread(
                self._rendered, False, lambda c: print_outcomes(c, request.command, dumped)
            )
        return {"stdout": text, "stderr": "", "exit": code}

    async def failed(self, message: str) -> dict[str, Any]:
        """A usage error, as the CLI prints it (exit status 2)."""
        if self.render is None:
            return {"error": message, "exit": 2}
        from mcp_server.cli_output import print_error

        return {"stdout": "", "stderr": self._rendered(True, lambda c: print_error(c, message)), "exit": 2}

    def _step(self, text: str) -> str:
        """A finished device's line on the CLI's stderr; one console per request, not per device."""
        from mcp_server.cli_output import plain_line

        if self.err_console is None:
            self.err_console = self._consoles().console(True)[0]
        shown = plain_line(self.err_console, text)
        if shown is not None:
            return shown
        return self._rendered(True, lambda c: c.print(text, markup=False, highlight=False))

    def _consoles(self) -> CliConsoles:
        from mcp_server.cli_output import CliConsoles

        render = self.render
        assert render is not None
        return CliConsoles(
            out_width=render.out_width,
            err_width=render.err_width,
            out_encoding=render.out_encoding,
            err_encoding=render.err_encoding,
            environ={k: str(v) for k, v in render.environ.items()},
        )

    def _rendered(self, stderr: bool, draw: Any) -> str:
        console, buffer = self._consoles().console(stderr)
        draw(console)
        return buffer.getvalue()


class _Invalid(InvalidParameter):
    """A request that could not be read or checked; `shown` is what the audit keeps of it."""

    def __init__(self, message: str, shown: dict[str, Any], *, too_large: bool = False) -> None:
        super().__init__(message)
        self.shown = shown
        if too_large:
            self.error_type = ArgumentsTooLarge.error_type


class _RefusalLog:
    """Refused peers (another user), audited at most `per_minute` times a minute; what is left out is
    counted in the next row."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.window = -1
        self.written = 0
        self.suppressed = 0

    def record(self, state: AppState, uid: int, pid: int) -> None:
        minute = int(time.monotonic() // 60)
        if minute != self.window:
            self.window, self.written = minute, 0
        if self.written >= self.per_minute:
            self.suppressed += 1
            return
        self.written += 1
        ctx = CallContext(transport="cli", tool="collect_many", subject=f"local:{user_name(uid)}")
        state.writer.audit(
            ctx.to_audit(
                "auth",
                outcome="denied",
                error_type="peer_refused",
                error_message=f"control socket: refused a process of uid {uid} (pid {pid}): "
                "only the server's own user or root may use it",
                arguments={"uid": uid, "pid": pid, "not_recorded_before": self.suppressed},
            )
        )
        self.suppressed = 0


class _Closed(Exception):
    """The peer closed the connection without sending anything."""


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        async with asyncio.timeout(READ_SECONDS):
            line = await reader.readuntil(b"\n")
    except TimeoutError:
        raise _Invalid(f"Invalid request: no complete request line within {READ_SECONDS:g} s.", {}) from None
    except asyncio.LimitOverrunError:
        raise _Invalid(
            f"Refused request: longer than {MAX_REQUEST:,} bytes.", {"$oversized": True}, too_large=True
        ) from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed from None
        raise _Invalid("Invalid request: the connection closed before a whole line.", {}) from exc
    return line


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """One answer line; a CLI that stops reading for SEND_SECONDS is treated as gone."""
    writer.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")
    try:
        async with asyncio.timeout(SEND_SECONDS):
            await writer.drain()
    except TimeoutError:
        raise ConnectionError("the CLI stopped reading its answer") from None


def _answers(path: str) -> bool:
    """Whether a server listens on the socket at `path` now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True
