"""The change feed: what another process changed (devices, watch targets, file versions) reaches this server
within about a second, through the database every process already shares; there is no other broker.

Every change is a `registry_changes` row written in the transaction of the change itself (db/changes.py).
This server reads the rows after the last one it applied and applies each one another process wrote:
- device: reload that one device; close its pooled SSH connection and drop its cached results when it was
  removed or its address, credentials or host key changed; publish DeviceChanged here (the config watcher
  follows);
- watch: reload that device's watch targets and watch the new set;
- config: know the new version as the latest, and publish its change event to this server's subscribers (the
  server that saw the change told its own), so every subscriber is told once, by the server it is connected to.

When to read: PostgreSQL sends NOTIFY with each change, heard on one dedicated connection (re-opened with
backoff when it breaks, catching up on what it missed); SQLite is checked every POLL seconds with
`PRAGMA data_version` on one dedicated connection, which changes when another connection commits, and the
rows are read only then. Either way the rows are also read every CHECK seconds.

On PostgreSQL the same dedicated connection holds the watch leases: a session advisory lock per watched
device, so among servers sharing the database exactly one runs a device's watcher. A server that loses the
connection has lost its locks, stops its watchers and takes them again once reconnected; another server takes
the locks it gave up within CHECK seconds. On SQLite one server watches (`serve` on a SQLite file is one server;
the CLI watches nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from mcp_server.db import changes
from mcp_server.db.tables import DeviceRow
from mcp_server.events import DeviceChanged

if TYPE_CHECKING:
    from mcp_server.state import AppState

log = logging.getLogger(__name__)
POLL = 0.5  # SQLite: how often `PRAGMA data_version` is checked
CHECK = 2.0  # read the rows at least this often (and, on PostgreSQL, retry the watch leases)
MAX_BACKOFF = 10.0


def lease_key(device: str) -> int:
    """The advisory-lock key of a device's watch lease (a signed 64-bit hash of its name)."""
    digest = hashlib.blake2b(f"infrastructor:watch:{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ChangeFeed:
    """Applies the changes other processes made; on PostgreSQL also holds this server's watch leases."""

    def __init__(self, state: AppState, *, since: int) -> None:
        self.state = state
        self.db = state.db
        self.last = since
        self.applied = 0
        self.reconnects = 0
        self.backend_pid: int | None = None  # PostgreSQL: the listening connection's server process
        self._wake = asyncio.Event()
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.pg = self.db.dialect == "postgresql"

    def start(self) -> None:
        if self.pg:
            self.state.config.lease = self
        self._task = asyncio.create_task(self._run(), name="infra-change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.state.config.lease is self:
            self.state.config.lease = None

    # ---- the watch lease (PostgreSQL) ----------------------------------------------------------------------

    def holds(self, device: str) -> bool:
        return device in self._held

    def want(self, device: str) -> None:
        self._wake.set()

    async def _leases(self, conn: AsyncConnection) -> None:
        """Take the lease of every device with targets that nobody watches; give back those without."""
        wanted = self.state.config.wanted()
        async with conn.begin():
            await self._take(conn, wanted)

    async def _take(self, conn: AsyncConnection, wanted: set[str]) -> None:
        for device in sorted(wanted - self._held):
            taken = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lease_key(device)})
            if taken:
                self._held.add(device)
                log.info("watching %s from this server (watch lease taken)", device)
                self.state.config.acquired(device)
        for device in sorted(self._held - wanted):
            self.state.config.released(device)
            await conn.scalar(text("SELECT pg_advisory_unlock(:k)"), {"k": lease_key(device)})
            self._held.discard(device)

    def _lost(self) -> None:
        for device in sorted(self._held):
            self.state.config.released(device)
        self._held.clear()

    # ---- the loops ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = POLL
        while True:
            try:
                async with self.db.engine.connect() as conn:
                    try:
                        await (self._listen(conn) if self.pg else self._poll(conn))
                    except BaseException:
                        self._lost()
                        await conn.invalidate()  # its locks and listener go with it; never reuse it
                        raise
            except Exception as exc:  # a broken connection surfaces as the driver's own errors too
                self.reconnects += 1
                log.warning("change feed: %s: %s; reconnecting in %.1fs", type(exc).__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = POLL

    async def _listen(self, conn: AsyncConnection) -> None:
        await conn.execution_options(isolation_level="AUTOCOMMIT")  # notifications arrive between statements
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.add_listener(changes.CHANNEL, self._notified)
        self.backend_pid = driver.get_server_pid()
        while True:
            self._wake.clear()
            await self._catch_up(conn)
            await self._leases(conn)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK):
                    await self._wake.wait()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _poll(self, conn: AsyncConnection) -> None:
        await conn.execution_options(infra_read_only=True)  # a deferred transaction: no write lock
        version = None
        since_read = 0.0
        while True:
            async with conn.begin():
                now = (await conn.exec_driver_sql("PRAGMA data_version")).scalar()
            if now != version or since_read >= CHECK or self._wake.is_set():
                self._wake.clear()
                version, since_read = now, 0.0
                await self._catch_up(conn)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await self._wake.wait()
            since_read += POLL

    # ---- applying changes ---------------------------------------------------------------------------------

    async def _catch_up(self, conn: AsyncConnection) -> None:
        while True:
            async with conn.begin():
                found = await changes.after(conn, self.last)
                oldest = await changes.oldest_id(conn) if found and found[0].id > self.last + 1 else None
            if oldest is not None and oldest > self.last + 1:
                log.warning("change feed: changes before #%d were pruned; reloading every device", oldest)
                await self._resync(conn)
                continue
            if not found:
                return
            await self._apply(found)
            self.last = found[-1].id

    async def _resync(self, conn: AsyncConnection) -> None:
        async with conn.begin():
            names = set((await conn.scalars(select(DeviceRow.name))).all())
            self.last = await changes.latest_id(conn)
        for name in sorted(names | set(self.state.devices.names())):
            await self._device(name)
        for device in sorted(set(self.state.config.targets) | names):
            await self.state.config.reload_targets(device)

    async def _apply(self, found: list[changes.Change]) -> None:
        done: set[tuple[str, str]] = set()
        for change in found:
            if change.origin == self.db.origin:
                continue  # this process made it and applied it already
            key = (change.kind, change.device)
            if change.kind != "config" and key in done:
                continue  # one reload reads the newest row
            done.add(key)
            try:
                if change.kind == "device":
                    await self._device(change.device)
                elif change.kind == "watch":
                    await self.state.config.reload_targets(change.device)
                elif change.kind == "config" and change.path is not None and change.snapshot_id is not None:
                    await self.state.config.apply_version(
                        change.device, change.path, change.snapshot_id, change.event_id
                    )
            except Exception:  # one change that cannot be applied must not stop the others
                log.exception("change feed: applying %r failed", change)
            self.applied += 1

    async def _device(self, name: str) -> None:
        before, after = await self.state.devices.reload(name)
        if before == after:
            return
        if before is not None and (
            after is None
            or before.connection_fields() != after.connection_fields()
            or (before.host_key is not None and before.host_key != after.host_key)
        ):
            await self.state.forget_connection(name)
        change: Literal["added", "updated", "removed"] = (
            "added" if before is None else "removed" if after is None else "updated"
        )
        log.info("device %s %s by another process", name, change)
        await self.state.events.publish(DeviceChanged(device=name, change=change))
