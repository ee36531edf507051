"""One DeviceMonitor per device with watched files: a watch loop that turns file events into work (inotify
over a long-lived SSH stream, inotify_simple in-process on `local`, or batched hash polling), and a work loop
that debounces bursts and has the service read what changed. Every (re)start of watching is followed by a
full hash check, so changes made while nothing watched (down, reconnecting, restarting) are never missed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from mcp_server.config_monitoring.models import WatchMode, WatchStatus
from mcp_server.devices import Device
from mcp_server.errors import CommandNotAvailable, InfrastructorError, SessionLimit
from mcp_server.settings import Settings

log = logging.getLogger(__name__)

HEALTHY_AFTER = 60.0  # a watcher that ran this long starts over with the shortest backoff
MAX_BACKOFF = 30.0
RETRY_STREAM_AFTER = 600.0  # a device that fell back to polling tries inotify again after this long
RESTART_EVENTS = frozenset({"DELETE_SELF", "MOVE_SELF"})
DIR_EVENTS = frozenset({"CREATE", "MOVED_TO", "DELETE", "MOVED_FROM"})


class Rewatch(Exception):
    """The set of directories to watch changed on the device (one was created, moved or removed)."""


class Watched(Protocol):
    """What a DeviceMonitor asks of the service that owns it (ConfigurationMonitoringService)."""

    def watch_dirs(self, device: str) -> list[str]: ...

    def route_event(self, device: str, path: str, names: list[str], is_dir: bool) -> str | None: ...

    async def reconcile(self, device: str) -> None: ...

    async def refresh(self, device: str, paths: Iterable[str]) -> None: ...


class Streams(Protocol):
    """Where a DeviceMonitor runs inotifywait (UnifiedDataCollectionService.stream)."""

    def stream(
        self, device: str, command: str, params: Mapping[str, Any]
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]: ...


class DeviceMonitor:
    """Watches one device's targets and hands changed paths to the service, one batch at a time."""

    def __init__(self, owner: Watched, streams: Streams, settings: Settings, device: Device) -> None:
        self.owner = owner
        self.streams = streams
        self.settings = settings
        self.device = device
        self.status = WatchStatus(
            device=device.name, mode="starting", since=None, restarts=0, last_error=None
        )
        self._pending: set[str] = set()
        self._reconcile = False
        self._wake = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._work_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        name = self.device.name
        self._work_task = asyncio.create_task(self._work_loop(), name=f"config-work-{name}")
        self._watch_task = asyncio.create_task(self._watch_loop(), name=f"config-watch-{name}")
        self._sweep_task = asyncio.create_task(self._sweep(), name=f"config-sweep-{name}")

    async def stop(self) -> None:
        tasks = (self._watch_task, self._work_task, self._sweep_task)
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._set_mode("stopped")

    def restart(self) -> None:
        """Watch again from scratch (the targets changed): new directories, then a full hash check."""
        if self._watch_task is not None:
            self._watch_task.cancel()
        self.status = self.status.model_copy(update={"restarts": self.status.restarts + 1})
        self._watch_task = asyncio.create_task(self._watch_loop(), name=f"config-watch-{self.device.name}")

    def notify(self, paths: set[str] | None = None, *, reconcile: bool = False) -> None:
        if paths:
            self._pending |= paths
        self._reconcile = self._reconcile or reconcile
        self._wake.set()

    def _set_mode(self, mode: WatchMode, error: str | None = None) -> None:
        update: dict[str, object] = {"mode": mode, "since": datetime.now(UTC)}
        if error is not None:
            update["last_error"] = error
        self.status = self.status.model_copy(update=update)

    # ---- the work loop: debounce, then read what changed ----------------------------------------------

    async def _work_loop(self) -> None:
        debounce = self.settings.config_debounce
        backoff = 0.5
        while True:
            await self._wake.wait()
            if debounce:
                # quiet for `debounce`, but never wait more than ten times that through a long burst
                limit = time.monotonic() + max(debounce * 10, 0.5)
                while time.monotonic() < limit:
                    self._wake.clear()
                    try:
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                        async with asyncio.timeout(debounce):
                            await self._wake.wait()
                    except TimeoutError:
                        break
            self._wake.clear()
            paths, self._pending = self._pending, set()
            reconcile, self._reconcile = self._reconcile, False
            try:
                if reconcile:
                    await self.owner.reconcile(self.device.name)
                if paths:
                    await self.owner.refresh(self.device.name, paths)
                backoff = 0.5
            except InfrastructorError as exc:
                # nothing is lost: the next attempt compares every hash again
                log.warning("config check on %s failed: %s", self.device.name, exc)
                self.status = self.status.model_copy(update={"last_error": str(exc)})
                self.notify(paths, reconcile=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:
                log.exception("config check on %s failed", self.device.name)
                self.notify(paths, reconcile=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _sweep(self) -> None:
        """A full hash check now and then while inotify watches: it cannot see every change (a network or
        FUSE filesystem changed from elsewhere, a watched directory replaced through a symlink)."""
        while True:
            await asyncio.sleep(self.settings.config_reconcile_interval)
            if self.status.mode == "inotify":
                self.notify(reconcile=True)

    # ---- the watch loop: inotify where possible, polling otherwise, restarted with backoff -------------

    async def _watch_loop(self) -> None:
        backoff = 0.5
        poll_until = 0.0
        while True:
            started = time.monotonic()
            error: str
            try:
                if time.monotonic() < poll_until:
                    await self._poll(poll_until)
                    continue
                if self.device.is_local:
                    await self._watch_local()
                else:
                    await self._watch_stream()
                error = "the watcher exited"
            except Rewatch:
                self.notify(reconcile=True)
                continue
            except (CommandNotAvailable, SessionLimit) as exc:
                self._set_mode("polling", str(exc))
                poll_until = time.monotonic() + RETRY_STREAM_AFTER
                continue
            except OSError as exc:  # inotify_simple: no inotify, or out of watches/instances
                self._set_mode("polling", f"inotify unavailable: {exc}")
                poll_until = time.monotonic() + RETRY_STREAM_AFTER
                continue
            except InfrastructorError as exc:
                error = str(exc)
            self._set_mode("restarting", error)
            self.status = self.status.model_copy(update={"restarts": self.status.restarts + 1})
            log.info("config watcher on %s stopped (%s); again in %.1fs", self.device.name, error, backoff)
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff = 0.5
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _event(self, path: str, names: list[str], is_dir: bool) -> None:
        action = self.owner.route_event(self.device.name, path, names, is_dir)
        if action == "rewatch":
            raise Rewatch(path)
        if action == "refresh":
            self.notify({path})

    async def _watch_stream(self) -> None:
        dirs = self.owner.watch_dirs(self.device.name)
        if not dirs:
            await asyncio.Event().wait()  # nothing to watch until restart()
        params = {"dirs": dirs}
        rewatch: Rewatch | None = None
        async with self.streams.stream(self.device.name, "config_watch", params) as chunks:
            async for chunk in chunks:
                if chunk.ready:
                    self._set_mode("inotify")
                    self.notify(reconcile=True)
                if chunk.errors:
                    # an overflowed queue or a watch that could not be set: trust hashes, not events
                    log.warning("inotifywait on %s: %s", self.device.name, "; ".join(chunk.errors))
                    self.notify(reconcile=True)
                try:
                    for event in chunk.events:
                        self._event(event.path, event.events, event.is_dir)
                except Rewatch as exc:
                    rewatch = exc  # raised after the stream is closed: stopping it is its normal end
                    break
        if rewatch is not None:
            raise rewatch

    async def _watch_local(self) -> None:
        from inotify_simple import INotify, flags

        dirs = self.owner.watch_dirs(self.device.name)
        if not dirs:
            await asyncio.Event().wait()
        mask = (
            flags.CREATE
            | flags.MODIFY
            | flags.CLOSE_WRITE
            | flags.MOVED_TO
            | flags.MOVED_FROM
            | flags.DELETE
            | flags.DELETE_SELF
            | flags.MOVE_SELF
            | flags.ATTRIB
        )
        inotify = INotify(nonblocking=True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Any]] = asyncio.Queue()
        try:
            base: dict[int, str] = {}
            for directory in dirs:
                existing = nearest_existing(directory)
                base[inotify.add_watch(existing, mask)] = existing
            loop.add_reader(inotify.fileno(), lambda: queue.put_nowait(list(inotify.read(timeout=0))))
            self._set_mode("inotify")
            self.notify(reconcile=True)
            while True:
                for event in await queue.get():
                    wd: int = event.wd
                    event_mask: int = event.mask
                    name: str = event.name
                    if event_mask & flags.Q_OVERFLOW:
                        self.notify(reconcile=True)
                        continue
                    root = base.get(wd)
                    if root is None:
                        continue
                    names = [
                        f.name for f in flags.from_mask(event_mask) if f.name not in ("ISDIR", "IGNORED")
                    ]
                    path = os.path.join(root, name) if name else root
                    self._event(path, names, bool(event_mask & flags.ISDIR))
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(inotify.fileno())
            inotify.close()

    async def _poll(self, until: float) -> None:
        """One batched hash check per interval (the work loop runs it) until it is time to try inotify."""
        interval = self.settings.config_poll_interval
        if self.status.mode != "polling":
            self._set_mode("polling")
        while time.monotonic() < until:
            self.notify(reconcile=True)
            await asyncio.sleep(interval)


def nearest_existing(path: str, exists: Callable[[str], bool] = os.path.isdir) -> str:
    """`path`, or its closest ancestor that exists (so that creating the missing part is seen)."""
    while not exists(path) and path != "/":
        path = os.path.dirname(path)
    return path
