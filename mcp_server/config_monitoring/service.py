"""ConfigurationMonitoringService: watch targets, versions stored only when the content hash changes, diffs,
risk, change events on the bus. Every read of a device goes through the UnifiedDataCollectionService."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from mcp_server.collection import UnifiedDataCollectionService
from mcp_server.config_monitoring import history as past
from mcp_server.config_monitoring import store
from mcp_server.config_monitoring.changes import assess_change
from mcp_server.config_monitoring.models import (
    ConfigChanges,
    ConfigDiff,
    ConfigHistory,
    UnwatchResult,
    WatchedFile,
    WatchedFiles,
    WatchResult,
    WatchStatus,
)
from mcp_server.config_monitoring.targets import (
    ChangeType,
    Target,
    checked,
    directory_kind,
    replaced,
    watch_policy,
)
from mcp_server.config_monitoring.watcher import DIR_EVENTS, RESTART_EVENTS, DeviceMonitor
from mcp_server.db.engine import Database
from mcp_server.db.tables import ConfigurationChangeEvent, ConfigurationSnapshot, ConfigWatchTarget
from mcp_server.devices import DeviceRegistry
from mcp_server.errors import InfrastructorError, InvalidParameter
from mcp_server.events import CollectionCompleted, ConfigChanged, DeviceChanged, Event, EventBus
from mcp_server.parsers.config_files import ConfigFile, ConfigHashes, WatchDir
from mcp_server.parsers.config_paths import ConfigKind, WatchPolicy, detect_kind
from mcp_server.settings import Settings

log = logging.getLogger(__name__)


class WatchLease(Protocol):
    """Who may run a device's watcher when several servers share the database (see coherence.py)."""

    def holds(self, device: str) -> bool: ...

    def want(self, device: str) -> None: ...


_UNSEEN = "?"  # no hash prompted a read (a file event, a client's read); hashes are hex, "!" or None


class ConfigurationMonitoringService:
    """The files watched on every device, their versions and changes; watchers run between start() and stop()."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: UnifiedDataCollectionService,
        db: Database,
        devices: DeviceRegistry,
        events: EventBus,
    ) -> None:
        self.settings = settings
        self.service = service
        self.db = db
        self.devices = devices
        self.events = events
        self.targets: dict[str, dict[str, Target]] = defaultdict(dict)
        self.latest: dict[tuple[str, str], store.Latest] = {}
        self.monitors: dict[str, DeviceMonitor] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._loaded = False
        self._running = False
        self._unsubscribe: list[Callable[[], None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._baselining: set[int] = set()  # targets `watch` is recording the first version of
        self.lease: WatchLease | None = None  # None: this server alone watches every device

    # ---- life cycle --------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the targets and the newest version of every path (once)."""
        if self._loaded:
            return
        for row in await store.targets(self.db):
            reason = self.policy(row.device).refusal(row.path, directory=row.is_directory)
            if reason is not None:  # watched before the policy refused it: its versions stay, reading stops
                log.warning("no longer watching %s on %s: %s", row.path, row.device, reason)
                await store.remove_target(self.db, row.device, row.path)
                continue
            self.targets[row.device][row.path] = Target.of(row)
        self.latest = await store.latest(self.db)
        self._loaded = True

    async def start(self) -> None:
        """Load, then watch every device that has targets; changes made while stopped are found at once."""
        await self.load()
        if self._running:
            return
        self._running = True
        self._unsubscribe = [
            self.events.subscribe(self._on_device, types=(DeviceChanged,)),
            self.events.subscribe(self._on_collection, types=(CollectionCompleted,)),
        ]
        if self.settings.config_watch:
            for device in list(self.targets):
                self._ensure_monitor(device)

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._running = False
        for task in list(self._background):
            task.cancel()
        monitors, self.monitors = list(self.monitors.values()), {}
        for monitor in monitors:
            await monitor.stop()

    def _ensure_monitor(self, device: str) -> None:
        if not (self._running and self.settings.config_watch) or device in self.monitors:
            return
        if self.lease is not None and not self.lease.holds(device):
            self.lease.want(device)  # the lease's holder starts it (here, once it is taken)
            return
        try:
            target = self.devices.get(device)
        except InfrastructorError:
            log.warning("watched files on %s, which is no longer registered; not watching them", device)
            return
        monitor = DeviceMonitor(self, self.service, self.settings, target)
        self.monitors[device] = monitor
        monitor.start()

    def _retarget(self, device: str) -> None:
        """The device's targets changed: watch the new set (or stop watching)."""
        monitor = self.monitors.get(device)
        if not self.targets.get(device):
            if monitor is not None:
                del self.monitors[device]
                self._spawn(monitor.stop())
            return
        if monitor is None:
            self._ensure_monitor(device)
        else:
            monitor.restart()

    def acquired(self, device: str) -> None:
        """This server took the device's watch lease: watch it if it has targets."""
        if self.targets.get(device):
            self._ensure_monitor(device)

    def released(self, device: str) -> None:
        """This server lost (or gave back) the device's watch lease: stop watching it here."""
        monitor = self.monitors.pop(device, None)
        if monitor is not None:
            self._spawn(monitor.stop())

    def wanted(self) -> set[str]:
        """Devices that have watch targets (each needs a watcher somewhere)."""
        return {d for d, paths in self.targets.items() if paths} if self._running else set()

    async def reload_targets(self, device: str) -> None:
        """Another process changed the device's watch targets: read them again and watch the new set."""
        if not self._loaded:
            return  # load() reads them all when first needed
        rows = await store.targets_of(self.db, device)
        targets = {r.path: Target.of(r) for r in rows}
        if targets:
            self.targets[device] = targets
        else:
            self.targets.pop(device, None)
        self._retarget(device)

    async def apply_version(self, device: str, path: str, snapshot_id: int, event_id: int | None) -> None:
        """Another server stored a new version of a watched file: know it as the latest, and tell this
        server's subscribers about its change event."""
        if self._loaded:
            known = self.latest.get((device, path))
            if known is None or known.snapshot_id < snapshot_id:
                self.latest[(device, path)] = store.Latest(
                    snapshot_id, await store.version_hash(self.db, snapshot_id)
                )
        if event_id is None:
            return
        row = await store.event(self.db, event_id)
        if row is None:
            return
        await self.events.publish(
            ConfigChanged(
                device=row.device,
                path=row.path,
                kind=row.kind,
                change_type=row.change_type,  # type: ignore[arg-type]
                risk=row.risk,  # type: ignore[arg-type]
                event_id=row.id,
                detected_at=row.detected_at,
                summary=row.summary,
                remote=True,
            )
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_device(self, event: Event) -> None:
        assert isinstance(event, DeviceChanged)
        if event.change == "removed":
            for path in list(self.targets.get(event.device, {})):
                await store.remove_target(self.db, event.device, path)
            self.targets.pop(event.device, None)
            self._retarget(event.device)
        elif event.change == "updated" and event.device in self.monitors:
            monitor = self.monitors.pop(event.device)
            await monitor.stop()
            self._ensure_monitor(event.device)

    async def _on_collection(self, event: Event) -> None:
        assert isinstance(event, CollectionCompleted)
        if self.settings.config_discovery and event.command in ("compose_stacks", "proxy_configs"):
            self._spawn(self._discover_quietly(event.device, event.command))

    async def _discover_quietly(self, device: str, command: str) -> None:
        with contextlib.suppress(InfrastructorError):
            await self._discover(device, (command,))

    # ---- targets ----------------------------------------------------------------------------------------

    def policy(self, device: str) -> WatchPolicy:
        """What may be read on the device: one policy for watching, reading, hashing and the proxy scan."""
        try:
            local = self.devices.get(device).is_local
        except InfrastructorError:
            local = False
        return watch_policy(self.settings, local=local)

    def target_for(self, device: str, path: str) -> Target | None:
        """The target that watches `path` on `device` (the file itself, or its directory)."""
        targets = self.targets.get(device, {})
        exact = targets.get(path)
        if exact is not None and not exact.is_directory:
            return exact
        parent = targets.get(posixpath.dirname(path))
        if parent is not None and parent.holds(path):
            return parent
        return exact

    def watch_dirs(self, device: str) -> list[str]:
        """The directories whose events matter: each file target's directory and each directory target."""
        dirs = {
            t.path if t.is_directory else posixpath.dirname(t.path)
            for t in self.targets.get(device, {}).values()
        }
        return sorted(dirs)

    def route_event(self, device: str, path: str, names: list[str], is_dir: bool) -> str | None:
        """What a file event means: 'refresh' a watched path, 'rewatch' (directories changed), or nothing."""
        dirs = self.watch_dirs(device)
        if RESTART_EVENTS & set(names) and (path in dirs or any(d.startswith(path + "/") for d in dirs)):
            return "rewatch"
        if is_dir and DIR_EVENTS & set(names) and any(d == path or d.startswith(path + "/") for d in dirs):
            return "rewatch"
        target = self.target_for(device, path)
        if target is not None and not (target.is_directory and target.path == path):
            self._forget_reads(device)  # from now on a reader gets what the file is after this event
            return "refresh"
        return None

    async def watch(
        self,
        device: str,
        path: str,
        kind: ConfigKind | None = None,
        source: Literal["explicit", "discovered"] = "explicit",
    ) -> WatchResult:
        """Watch a file (or a directory of files) on a device; its current content becomes the first version."""
        await self.load()
        self.devices.get(device)
        policy = self.policy(device)
        path = checked(path, policy)
        existing = self.targets.get(device, {}).get(path)
        if existing is not None:
            return WatchResult(
                watched=self._watched(existing), created=False, exists=True, status=self.status(device)
            )
        current = await self._read(device, path, kind or detect_kind(path))
        if current.type == "refused":
            raise InvalidParameter(current.refusal())
        is_dir = current.type == "directory"
        reason = policy.refusal(path, directory=is_dir)  # now that it is known to be a file or a directory
        if reason is not None:
            raise InvalidParameter(reason)
        resolved: ConfigKind = kind or (directory_kind(path) if is_dir else current.kind)
        row = await store.add_target(
            self.db,
            ConfigWatchTarget(
                device=device,
                path=path,
                kind=resolved,
                source=source,
                is_directory=is_dir,
                created_at=datetime.now(UTC),
                baseline_at=None,
            ),
        )
        target = Target.of(row)
        self.targets[device][path] = target
        self._baselining.add(target.id)  # a check running meanwhile leaves it alone: no second first read
        try:
            await self._baseline(target, None if is_dir else current)
        finally:
            self._baselining.discard(target.id)
        self._retarget(device)
        return WatchResult(
            watched=self._watched(self.targets[device][path]),
            created=True,
            exists=current.type != "missing",
            status=self.status(device),
        )

    async def unwatch(self, device: str, path: str) -> UnwatchResult:
        await self.load()
        path = checked(path)
        if path not in self.targets.get(device, {}):
            watched = ", ".join(sorted(self.targets.get(device, {}))) or "none"
            raise InvalidParameter(f"{path} is not watched on {device!r}. Watched there: {watched}.")
        await store.remove_target(self.db, device, path)
        del self.targets[device][path]
        if not self.targets[device]:
            del self.targets[device]
        self._retarget(device)
        return UnwatchResult(
            device=device,
            path=path,
            removed=True,
            note="No longer watched; its versions and changes are kept.",
        )

    async def discover(self, device: str) -> tuple[list[str], list[str]]:
        """Watch the compose files and proxy-conf directories found on the device: (added, errors)."""
        await self.load()
        self.devices.get(device)
        return await self._discover(device, ("compose_stacks", "proxy_configs"))

    async def _discover(self, device: str, commands: Iterable[str]) -> tuple[list[str], list[str]]:
        added: list[str] = []
        errors: list[str] = []
        for command in commands:
            try:
                found = await self._found(device, command)
            except InfrastructorError as exc:
                errors.append(f"{command}: {exc}")
                continue
            for path, kind in found:
                if path in self.targets.get(device, {}):
                    continue
                try:
                    await self.watch(device, path, kind, source="discovered")
                    added.append(path)
                except InfrastructorError as exc:
                    errors.append(f"{path}: {exc}")
        return added, errors

    async def _found(self, device: str, command: str) -> list[tuple[str, ConfigKind]]:
        params = {"policy": self.policy(device)} if command == "proxy_configs" else None
        result = await self.service.collect(device, command, params)
        if command == "compose_stacks":
            return [(f, "compose") for s in result.data.stacks for f in s.config_files if f.startswith("/")]
        return [(d, "nginx") for d in result.data.dirs]

    # ---- reading devices ----------------------------------------------------------------------------------

    async def _read(self, device: str, path: str, kind: ConfigKind) -> ConfigFile:
        """The file now, read once for every concurrent reader and shared for the command's short TTL
        (a change event drops the shared read, see _forget_reads). A file of a watched directory must
        resolve inside that directory; one the policy refuses by its name is not read at all."""
        policy = self.policy(device)
        reason = policy.refusal(path, directory=None)
        if reason is not None:
            return ConfigFile.without_content(path, kind, "refused", None, reason)
        owner = self.target_for(device, path)
        params = {
            "path": path,
            "kind": kind,
            "max_bytes": self.settings.config_max_file_bytes,
            "watched_dir": owner.path
            if owner is not None and owner.is_directory and owner.path != path
            else None,
            "policy": policy,
        }
        result: ConfigFile = (await self.service.collect(device, "config_file", params)).data
        for _ in range(3):  # the file changed between hashing and reading: read again
            if result.consistent:
                break
            await asyncio.sleep(0.05)
            result = (await self.service.collect(device, "config_file", params, force_refresh=True)).data
        return result

    def _forget_reads(self, device: str) -> None:
        self.service.cache.invalidate(device=device, command="config_file")

    async def _hashes(self, device: str, targets: list[Target]) -> ConfigHashes:
        params = {
            "files": [t.path for t in targets if not t.is_directory],
            "dirs": [WatchDir(path=t.path, pattern=t.pattern) for t in targets if t.is_directory],
            "policy": self.policy(device),
        }
        result: ConfigHashes = (
            await self.service.collect(device, "config_hashes", params, force_refresh=True)
        ).data
        return result

    async def _baseline(self, target: Target, current: ConfigFile | None = None) -> None:
        if target.is_directory:
            hashes = await self._hashes(target.device, [target])
            for path, digest in sorted(hashes.files.items()):
                if digest != "!" and target.holds(path):
                    await self._refresh_path(target.device, path, target, baseline=True)
        else:
            await self._refresh_path(target.device, target.path, target, baseline=True, current=current)
        at = datetime.now(UTC)
        await store.set_baseline(self.db, target.id, at)
        self.targets[target.device][target.path] = replaced(target, baseline_at=at)

    async def reconcile(self, device: str) -> None:
        """Compare every watched hash on the device with the newest version; record what differs."""
        await self.load()
        targets = [t for t in self.targets.get(device, {}).values() if t.id not in self._baselining]
        if not targets:
            return
        for target in targets:
            if target.baseline_at is None:
                await self._baseline(target)
        hashes = await self._hashes(device, targets)
        changed: set[str] = set()
        for path, digest in hashes.files.items():
            if digest == "!" or self.target_for(device, path) is None:
                continue
            known = self.latest.get((device, path))
            if (known.content_hash if known else None) != digest:
                changed.add(path)
        # files of a watched directory that are gone now
        for (dev, path), known in self.latest.items():
            if dev != device or known.content_hash is None or path in hashes.files:
                continue
            owner = self.target_for(device, path)
            if owner is not None and owner.is_directory and owner.id not in self._baselining:
                changed.add(path)
        if changed and self.settings.config_debounce:
            # a hash taken in the middle of a write (truncated, half written) is not a version: wait for
            # the debounce and hash again; a file still changing is read by the next check instead
            await asyncio.sleep(self.settings.config_debounce)
            again = await self._hashes(device, targets)
            changed = {p for p in changed if again.files.get(p) == hashes.files.get(p)}
        if changed:
            await self.refresh(device, changed, {p: hashes.files.get(p) for p in changed})

    async def refresh(
        self, device: str, paths: Iterable[str], seen: dict[str, str | None] | None = None
    ) -> None:
        """Read each path now and record a new version where its content changed. `seen` holds the hashes
        that prompted the refresh: a path already recorded at that hash (by a concurrent check) is not
        read again."""
        self._forget_reads(device)
        for path in sorted(paths):
            target = self.target_for(device, path)
            if target is not None:
                await self._refresh_path(device, path, target, seen=(seen or {}).get(path, _UNSEEN))

    async def _refresh_path(
        self,
        device: str,
        path: str,
        target: Target,
        *,
        baseline: bool = False,
        current: ConfigFile | None = None,
        seen: str | None = _UNSEEN,
    ) -> None:
        published: ConfigChanged | None = None
        async with self._locks[device]:
            known = self.latest.get((device, path))
            if seen != _UNSEEN and known is not None and known.content_hash == seen:
                return  # recorded at that hash while this waited for the lock
            if current is None:
                current = await self._read(device, path, target.kind)
            digest = current.sha256 if current.type == "file" else None
            known = self.latest.get((device, path))
            before = known.content_hash if known is not None else None
            if known is not None and before == digest:
                return  # unchanged: no duplicate version
            if known is None and digest is None:
                return  # never seen and still absent
            now = datetime.now(UTC)
            version = ConfigurationSnapshot(
                device=device,
                path=path,
                kind=target.kind,
                collected_at=now,
                content_hash=digest,
                size_bytes=current.size_bytes,
                content=current.content,
            )
            first_sight = known is None and (baseline or target.baseline_at is None)
            event = None if first_sight else await self._change(target, path, known, current, digest, now)
            version_id, event_id = await store.record(self.db, version, event)
            self.latest[(device, path)] = store.Latest(version_id, digest)
            if event is not None and event_id is not None:
                published = ConfigChanged(
                    device=device,
                    path=path,
                    kind=target.kind,
                    change_type=event.change_type,  # type: ignore[arg-type]
                    risk=event.risk,  # type: ignore[arg-type]
                    event_id=event_id,
                    detected_at=now,
                    summary=event.summary,
                )
        if published is not None:  # stored first; subscribers run outside the device's lock
            await self.events.publish(published)

    async def _change(
        self,
        target: Target,
        path: str,
        known: store.Latest | None,
        current: ConfigFile,
        digest: str | None,
        now: datetime,
    ) -> ConfigurationChangeEvent:
        before = known.content_hash if known is not None else None
        old_text: str | None = None
        if known is not None and before is not None:
            previous = await store.snapshot(self.db, known.snapshot_id)
            old_text = previous.content if previous is not None else None
        change_type: ChangeType = "created" if before is None else "deleted" if digest is None else "modified"
        new_text = current.content if digest is not None else None
        change = await assess_change(
            self.service.workers,
            self.settings.parse_timeout,
            target.kind,
            path,
            change_type,
            old_text,
            new_text,
            binary=current.binary and digest is not None,
            hidden_change=old_text == new_text,
        )
        return ConfigurationChangeEvent(
            detected_at=now,
            device=target.device,
            path=path,
            kind=target.kind,
            change_type=change_type,
            risk=change.risk,
            reasons=change.reasons,
            affected_services=change.affected_services,
            summary=change.summary,
            diff=change.diff,
            from_snapshot_id=known.snapshot_id if known is not None else None,
        )

    # ---- what clients read --------------------------------------------------------------------------------

    def status(self, device: str) -> WatchStatus:
        monitor = self.monitors.get(device)
        if monitor is not None:
            return monitor.status
        if (
            self.lease is not None
            and self._running
            and self.targets.get(device)
            and not self.lease.holds(device)
        ):
            return WatchStatus(
                device=device, mode="by another replica", since=None, restarts=0, last_error=None
            )
        return WatchStatus(device=device, mode="not watching", since=None, restarts=0, last_error=None)

    def _watched(self, target: Target) -> WatchedFile:
        files = sorted(
            p
            for (d, p), v in self.latest.items()
            if d == target.device and target.is_directory and target.holds(p)
        )
        known = self.latest.get((target.device, target.path))
        return WatchedFile(
            device=target.device,
            path=target.path,
            kind=target.kind,
            source=target.source,
            is_directory=target.is_directory,
            files=[p for p in files if (v := self.latest.get((target.device, p))) and v.content_hash],
            latest_sha256=known.content_hash if known is not None else None,
            latest_at=None,
            watched_since=target.created_at,
        )

    async def watched(self, device: str | None, limit: int, offset: int) -> WatchedFiles:
        await self.load()
        if device is not None:
            self.devices.get(device)
        targets = [
            t
            for d, paths in sorted(self.targets.items())
            if device in (None, d)
            for _, t in sorted(paths.items())
        ]
        page = targets[offset : offset + limit]
        ids = [self.latest[(t.device, t.path)].snapshot_id for t in page if (t.device, t.path) in self.latest]
        stamps = {}
        for snapshot_id in ids:
            row = await store.snapshot(self.db, snapshot_id)
            if row is not None:
                stamps[(row.device, row.path)] = row.collected_at
        files = [
            self._watched(t).model_copy(update={"latest_at": stamps.get((t.device, t.path))}) for t in page
        ]
        devices = sorted({t.device for t in targets})
        return WatchedFiles(
            files=files,
            status=[self.status(d) for d in devices],
            total=len(targets),
            truncated=offset + len(page) < len(targets),
            note=None if targets else self.nothing_watched(device),
        )

    def nothing_watched(self, device: str | None) -> str | None:
        """How to start watching, when nothing is watched on `device` (None: on any device)."""
        if self.targets.get(device) if device is not None else any(self.targets.values()):
            return None
        where = f"on {device!r}" if device is not None else "on any device"
        example = device or "nas01"
        start = (
            f"Nothing is watched {where}, so no changes are recorded. Start with `watch_config_file` "
            f'{{"device": "{example}", "path": "/opt/stacks/app/compose.yaml"}} (a file, or a directory such '
            "as /etc/nginx/conf.d)"
        )
        if not self.settings.config_discovery:
            return start + "."
        return start + (
            f', or `list_watched_files` {{"device": "{example}", "discover": true}} to find and watch compose '
            "files and nginx/SWAG proxy confs."
        )

    async def history(self, device: str, path: str, limit: int, offset: int) -> ConfigHistory:
        self.devices.get(device)
        checked(path, self.policy(device))
        return await past.history(self.db, device, path, limit, offset)

    async def diff(self, device: str, path: str, from_id: int | None, to_id: int | None) -> ConfigDiff:
        self.devices.get(device)
        checked(path, self.policy(device))
        return await past.diff(self.db, device, path, from_id, to_id)

    async def changes(
        self,
        *,
        device: str | None,
        path: str | None = None,
        since: datetime | None,
        min_risk: str | None,
        limit: int,
        offset: int,
        with_diff: bool = False,
    ) -> ConfigChanges:
        if device is not None:
            self.devices.get(device)
        found = await past.changes(
            self.db,
            device=device,
            path=path,
            since=since,
            min_risk=min_risk,
            limit=limit,
            offset=offset,
            with_diff=with_diff,
        )
        if not found.total:
            await self.load()
            return found.model_copy(update={"note": self.nothing_watched(device)})
        # versions stored before the policy refused their path keep their summary, never their content
        hidden = [
            c.model_copy(update={"diff": None})
            if c.diff is not None and self.policy(c.device).refusal(c.path, directory=None)
            else c
            for c in found.changes
        ]
        return found.model_copy(update={"changes": hidden})

    async def current(self, device: str, path: str) -> ConfigFile:
        """The file as it is now, for a watched path only (watching is what grants reading)."""
        await self.load()
        self.devices.get(device)
        path = checked(path, self.policy(device))
        target = self.target_for(device, path)
        if target is None or (target.is_directory and target.path == path):
            raise InvalidParameter(
                f"{path} is not a watched file on {device!r}; only watched files can be read "
                "(watch_config_file, scope infra:write)."
            )
        current = await self._read(device, path, target.kind)
        await self._refresh_path(device, path, target, current=current)  # a change read here is recorded too
        if current.type == "refused":
            raise InvalidParameter(current.refusal())
        return current
