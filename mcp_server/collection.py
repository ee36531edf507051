"""UnifiedDataCollectionService: cache -> registry -> execute -> parse -> store -> cache -> event.

Every request for data from a device (tool, resource, CLI, poll) comes through `collect`; no other module
runs commands on devices.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import shlex
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from mcp_server.audit import current_call
from mcp_server.cache import CacheKey, CacheManager
from mcp_server.commands import CommandDefinition, CommandRegistry
from mcp_server.db.tables import CollectionSnapshot, ServicePerformanceMetric
from mcp_server.devices import Device, DeviceRegistry
from mcp_server.errors import CommandTimeout, InfrastructorError, InvalidParameter
from mcp_server.events import CollectionCompleted, CollectionFailed, EventBus
from mcp_server.executors import ExecResult, Executor, LocalExecutor, check_exit
from mcp_server.journal import BatchWriter
from mcp_server.parsing import parse_output
from mcp_server.progress import OnStep, Steps
from mcp_server.redact import redact_args
from mcp_server.series import BY_COMMAND
from mcp_server.settings import Settings
from mcp_server.ssh import ProbeResult, SSHPool
from mcp_server.workers import WorkerPool

log = logging.getLogger(__name__)
M = TypeVar("M")  # a result model, or a plain dict for the generic `collect` tool
T = TypeVar("T")


class Collected(BaseModel, Generic[M]):
    """A collected result and how fresh it is."""

    device: str = Field(description="Device the data came from.")
    command: str = Field(description="Registry command that produced it.")
    collected_at: datetime = Field(description="When the command ran on the device (UTC).")
    from_cache: bool = Field(
        description="True when served from the cache instead of running the command now."
    )
    age_seconds: float = Field(description="Seconds since collected_at at the moment of answering.")
    data: M


C = TypeVar("C", bound=Collected[Any])


class DeviceOutcome(BaseModel, Generic[M]):
    """One device's outcome in a fan-out: the result, or why there is none."""

    device: str
    ok: bool
    error_type: str | None = Field(
        default=None, description="Machine-readable failure kind when ok is false."
    )
    error: str | None = Field(default=None, description="What went wrong and what to do about it.")
    result: Collected[M] | None = None


class ConnectionTest(BaseModel):
    """Outcome of connecting to a device and running a no-op command."""

    device: str
    ok: bool
    latency_ms: float | None = None
    server_version: str | None = None
    host_key_fingerprint: str | None = None
    host_key_source: str | None = Field(
        default=None,
        description="known_hosts, pinned (earlier), pinned_now (trusted on first use just now) or local.",
    )
    reused_connection: bool | None = None
    error_type: str | None = None
    error: str | None = None


def paginate(items: Sequence[T], limit: int, offset: int) -> tuple[list[T], int, bool]:
    """(the page, the total, whether items exist beyond the page) for `limit`/`offset` list tools."""
    page = list(items[offset : offset + limit])
    return page, len(items), offset + len(page) < len(items)


def page_of(result: C, field: str, items: Sequence[Any], limit: int, offset: int) -> C:
    """`result` (a Collected) whose data's list `field` holds one page of `items`, with `total`/`truncated` set."""
    page, total, truncated = paginate(items, limit, offset)
    data = result.data.model_copy(update={field: page, "total": total, "truncated": truncated})
    return result.model_copy(update={"data": data})


@functools.lru_cache(maxsize=256)
def _shown(argv: tuple[str, ...]) -> str:
    """The command as audited: masked word by word, then quoted. Remembered, as the same few scripts run on
    every device again and again and redacting a script's text costs more than the rest of the audit row."""
    return shlex.join(redact_args(list(argv)))


@dataclass
class _Run:
    """What one request did, for its audit row."""

    ssh_commands: list[str]
    executed: bool = False


class UnifiedDataCollectionService:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CommandRegistry,
        devices: DeviceRegistry,
        cache: CacheManager,
        ssh: SSHPool,
        local: LocalExecutor,
        writer: BatchWriter,
        events: EventBus,
        workers: WorkerPool,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.registry = registry
        self.devices = devices
        self.cache = cache
        self.ssh = ssh
        self.local = local
        self.writer = writer
        self.events = events

    def executor(self, device: Device) -> Executor:
        """The one seam between the pipeline and where commands run."""
        return self.local if device.is_local else self.ssh

    async def collect(
        self,
        device: str,
        command: str,
        params: Mapping[str, Any] | BaseModel | None = None,
        *,
        force_refresh: bool = False,
    ) -> Collected[Any]:
        """Return the command's parsed result for the device, from the cache when fresh enough."""
        started = time.perf_counter()
        run = _Run(ssh_commands=[])
        error: BaseException | None = None
        params_key: str | None = None
        cache_hit = False
        try:
            target = self.devices.get(device)
            definition = self.registry.get(command)
            if definition.streaming:
                raise InvalidParameter(
                    f"{command!r} is a long-lived stream; it is read with stream(), not collected."
                )
            validated = definition.validate(params)
            params_key = definition.params_key(validated)
            key = CacheKey(target.name, definition.name, definition.category, params_key)
            cached = await self.cache.get_or_load(
                key,
                definition.ttl,
                lambda: self._execute(target, definition, validated, params_key or "", run),
                force_refresh=force_refresh,
            )
            cache_hit = cached.from_cache
            return Collected(
                device=target.name,
                command=definition.name,
                collected_at=cached.collected_at,
                from_cache=cached.from_cache,
                age_seconds=round(cached.age_seconds, 3),
                data=cached.value,
            )
        except BaseException as exc:
            error = exc
            raise
        finally:
            trace = current_call().trace
            # a command name as the caller gave it is stored only once known (identity columns are not
            # redacted); an unknown one stays in the error message, which is
            known_command = command if command in self.registry.names() else None
            trace.commands.extend([known_command] if known_command else [])
            trace.ssh_commands.extend(run.ssh_commands)
            trace.executions += run.executed
            trace.cache_hits += cache_hit
            self._audit(device, known_command, params_key, cache_hit, run, started, error)

    @contextlib.asynccontextmanager
    async def stream(
        self, device: str, command: str, params: Mapping[str, Any] | BaseModel | None = None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """Start a streaming command and yield its output parsed one line at a time; leaving stops it.

        Audited like a collection: one row when the stream starts (or fails to), one when it ends, with
        how long it ran and why it stopped. Nothing is cached or stored: the caller owns what it reads.
        """
        started = time.perf_counter()
        run = _Run(ssh_commands=[])
        error: BaseException | None = None
        params_key: str | None = None
        opened = False
        try:
            target = self.devices.get(device)
            definition = self.registry.get(command)
            if not definition.streaming:
                raise InvalidParameter(f"{command!r} is not a stream; collect it instead.")
            validated = definition.validate(params)
            params_key = definition.params_key(validated)
            argv = definition.render(validated, sudo=target.use_sudo)
            run.ssh_commands.append(shlex.join(redact_args(argv)))  # masked word by word, then quoted
            run.executed = True
            async with self.executor(target).stream(
                target, argv, label=definition.name, separator=definition.separator
            ) as handle:
                self._audit(device, command, params_key, False, run, started, None)
                opened = True

                async def parsed() -> AsyncIterator[Any]:
                    tail: collections.deque[str] = collections.deque(maxlen=5)
                    async for line in handle.lines:
                        tail.append(line)
                        yield definition.parse(line, validated)
                    status = handle.exit_status()
                    if status not in (0, None):
                        # the stream's last lines stand in for stderr (stream scripts merge the two)
                        result = ExecResult(handle.command, "", "\n".join(tail), status, 0.0)
                        check_exit(result, target.name, definition.name)

                yield parsed()
        except (asyncio.CancelledError, GeneratorExit):
            raise  # stopped by its owner: a normal end
        except BaseException as exc:
            error = exc
            raise
        finally:
            if opened or error is not None:
                self._audit(device, command, params_key, False, run, started, error)

    def select(self, devices: Sequence[str] | None, tags: Sequence[str] | None) -> list[str]:
        """The devices a multi-device request names: the listed ones (each must exist), those carrying all of
        `tags`, or both (listed ones carrying the tags); by name, each once."""
        if devices is None and tags is None:
            raise InvalidParameter("Name the devices (devices) or a tag selection (tags), or both.")
        for name in devices or ():
            self.devices.get(name)  # an unknown name: an error listing the known ones
        chosen = [d.name for d in self.devices.list(tags or ())]
        if devices is not None:
            listed = set(devices)
            chosen = [name for name in chosen if name in listed]
        if not chosen and tags:
            among = " among the devices named" if devices else ""
            raise InvalidParameter(
                f"No device{among} carries all of the tags {', '.join(tags)}; list_devices shows their tags."
            )
        if not chosen:
            raise InvalidParameter("Name at least one device.")
        return chosen

    async def collect_many(
        self,
        devices: Sequence[str],
        command: str,
        params: Mapping[str, Any] | None = None,
        *,
        force_refresh: bool = False,
        on_device: OnStep | None = None,
    ) -> list[DeviceOutcome[Any]]:
        """Collect from many devices at once; each device's failure is reported, never raised.

        `on_device` hears about each device as it finishes (its outcome: "ok" or the error type).
        """
        limit = asyncio.Semaphore(self.settings.fanout_concurrency)
        # A backstop only: the executors enforce their own connect and command timeouts.
        deadline = self.settings.ssh_connect_timeout * 2 + self.settings.ssh_command_timeout + 5
        steps = Steps(len(devices), on_device)

        async def attempt(name: str) -> DeviceOutcome[Any]:
            async with limit:
                try:
                    async with asyncio.timeout(deadline):
                        result = await self.collect(name, command, params, force_refresh=force_refresh)
                except TimeoutError:
                    exc = CommandTimeout(name, command, deadline)
                    return DeviceOutcome(device=name, ok=False, error_type=exc.error_type, error=str(exc))
                except InfrastructorError as exc:
                    return DeviceOutcome(device=name, ok=False, error_type=exc.error_type, error=str(exc))
                return DeviceOutcome(device=name, ok=True, result=result)

        async def one(name: str) -> DeviceOutcome[Any]:
            outcome = await attempt(name)
            await steps.finished(name, outcome.error_type or "ok", outcome.error)
            return outcome

        return list(await asyncio.gather(*(one(n) for n in devices)))

    async def probe(self, device: str) -> ProbeResult:
        """Connect to the device (or reuse its connection) and run a no-op; audited like a collection."""
        started = time.perf_counter()
        run = _Run(ssh_commands=["true"], executed=True)
        error: BaseException | None = None
        try:
            target = self.devices.get(device)
            if target.is_local:
                result = await self.local.run(target, ["true"], timeout=5, label="connection_test")
                check_exit(result, target.name, "connection_test")
                return ProbeResult(target.name, "local", "", "local", result.duration * 1000, True)
            return await self.ssh.probe(target)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._audit(device, "connection_test", None, False, run, started, error)

    async def test_connection(self, device: str) -> ConnectionTest:
        """`probe`, with a connection failure reported in the result instead of raised."""
        self.devices.get(device)  # an unknown name is a caller error, not a connection failure
        try:
            probe = await self.probe(device)
        except InfrastructorError as exc:
            return ConnectionTest(device=device, ok=False, error_type=exc.error_type, error=str(exc))
        return ConnectionTest(
            device=device,
            ok=True,
            latency_ms=round(probe.latency_ms, 2),
            server_version=probe.server_version or None,
            host_key_fingerprint=probe.host_key_fingerprint or None,
            host_key_source=probe.host_key_source,
            reused_connection=probe.reused_connection,
        )

    async def _execute(
        self,
        device: Device,
        definition: CommandDefinition[Any],
        params: BaseModel,
        params_key: str,
        run: _Run,
    ) -> BaseModel:
        run.executed = True
        argv = definition.render(params, sudo=device.use_sudo)
        # read commands' argvs (scripts and validated parameters) repeat; an admin's argv is never remembered
        shown = _shown(tuple(argv)) if definition.access == "read" else shlex.join(redact_args(argv))
        run.ssh_commands.append(shown)
        timeout = min(definition.timeout, self.settings.ssh_command_timeout)
        t0 = time.perf_counter()
        t_exec = t_parse = 0.0
        outcome = "error"
        try:
            result = await self.executor(device).run(device, argv, timeout=timeout, label=definition.name)
            t_exec = time.perf_counter()
            check_exit(result, device.name, definition.name, definition.ok_exit_statuses)
            value = await parse_output(
                definition,
                result.stdout,
                params,
                workers=self.workers,
                deadline=self.settings.parse_timeout,
            )
            t_parse = time.perf_counter()
            outcome = "ok"
        except InfrastructorError as exc:
            await self.events.publish(
                CollectionFailed(device.name, definition.name, exc.error_type, str(exc))
            )
            raise
        finally:
            end = time.perf_counter()
            self.writer.add(
                ServicePerformanceMetric,
                {
                    "recorded_at": datetime.now(UTC),
                    "device": device.name,
                    "command": definition.name,
                    "execute_ms": ((t_exec or end) - t0) * 1000,
                    "parse_ms": (t_parse - t_exec) * 1000 if t_parse else 0.0,
                    "total_ms": (end - t0) * 1000,
                    "outcome": outcome,
                },
            )
        collected_at = datetime.now(UTC)
        for category in definition.invalidates:
            self.cache.invalidate(device=device.name, category=category)
        self._store(device.name, definition.name, params_key, collected_at, value)
        await self.events.publish(
            CollectionCompleted(device.name, definition.name, params_key, collected_at, (t_parse - t0) * 1000)
        )
        return value

    def _store(self, device: str, command: str, params_key: str, at: datetime, value: BaseModel) -> None:
        self.writer.add(
            CollectionSnapshot,
            {
                "device": device,
                "command": command,
                "params": params_key,
                "collected_at": at,
                "data": value.model_dump(mode="json"),
            },
        )
        for series in BY_COMMAND.get(command, ()):
            for row in series.to_rows(device, at, value):
                self.writer.add(series.table, row)

    def _audit(
        self,
        device: str,
        command: str | None,
        params_key: str | None,
        cache_hit: bool,
        run: _Run,
        started: float,
        error: BaseException | None,
    ) -> None:
        if isinstance(error, InfrastructorError):
            outcome, error_type, message = "error", error.error_type, str(error)
        elif error is not None:
            outcome, error_type, message = "error", type(error).__name__, None
        else:
            outcome, error_type, message = "ok", None, None
        record = current_call().to_audit(
            "collection",
            started=started,
            outcome=outcome,
            error_type=error_type,
            error_message=message,
            device=device,
            command=command,
            params=params_key,
            cache_hit=cache_hit,
            ssh_commands=run.ssh_commands,
        )
        self.writer.audit(record)
