"""The poller: every device, every category, once per interval, through the UnifiedDataCollectionService.

Time is cut into slots per category (slot = floor(epoch / interval)); each (device, category) is due at a
fixed offset into its slot (a hash of the pair times INFRA_POLL_JITTER of the interval), so polls spread
evenly and every replica agrees on when a slot is due. A due slot is claimed through a lease (leases.py)
before anything runs, so with several replicas each slot is polled once; a replica that finds the slot
held by another waits for that lease to expire and takes over only if the holder never finished.
Polls run under a global and a per-device bound, with a deadline below the lease, and feed the device's
circuit breaker. Each poll is audited like any collection (transport "poller", subject "poller:<replica>",
tool "poll:<category>", the lease's request id).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from mcp_server.audit import CallContext, calling
from mcp_server.collection import UnifiedDataCollectionService
from mcp_server.commands import CommandRegistry
from mcp_server.db.engine import Database
from mcp_server.devices import DeviceRegistry
from mcp_server.errors import (
    CommandNotAvailable,
    CommandTimeout,
    ConnectionError_,
    InfrastructorError,
    SudoPasswordRequired,
)
from mcp_server.polling import leases
from mcp_server.polling.breaker import HealthBook
from mcp_server.reports import drive_health
from mcp_server.series import CATEGORIES
from mcp_server.series.spec import Category
from mcp_server.settings import Settings

log = logging.getLogger(__name__)

LEASE_MARGIN = 5.0  # seconds a lease outlives the deadline of the poll it covers
MAX_SLEEP = 1.0


@dataclass
class PollCounters:
    """What this replica's poller did since it started."""

    completed: int = 0
    failed: int = 0
    skipped_breaker_open: int = 0
    skipped_unsupported: int = 0
    held_elsewhere: int = 0
    taken_over: int = 0
    missed: int = 0
    by_category: dict[str, int] = field(default_factory=dict)


def jitter_offset(device: str, category: str, interval: float, jitter: float) -> float:
    """Seconds into each slot at which (device, category) is due; the same on every replica."""
    return zlib.crc32(f"{device}\0{category}".encode()) / 2**32 * jitter * interval


class Poller:
    """Polls every device's categories in their slots (see above), through the collection service."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: UnifiedDataCollectionService,
        registry: CommandRegistry,
        devices: DeviceRegistry,
        health: HealthBook,
        db: Database,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._service = service
        self._registry = registry
        self._devices = devices
        self._health = health
        self._db = db
        self._clock = clock
        self.replica = settings.replica_name
        self.categories = [
            (c, float(getattr(self._settings, c.setting)))
            for c in CATEGORIES
            if float(getattr(self._settings, c.setting)) > 0
        ]
        self.counters = PollCounters()
        self._handled: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._all = asyncio.Semaphore(self._settings.poll_concurrency)
        self._per_device: dict[str, asyncio.Semaphore] = {}

    def intervals(self) -> dict[str, float]:
        return {c.name: interval for c, interval in self.categories}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def deadline(self, category: Category) -> float:
        """The longest a poll of `category` may run: connect (twice, for a retry) plus its commands."""
        registry = self._registry
        longest = max(
            min(registry.get(c).timeout, self._settings.ssh_command_timeout) for c in category.commands
        )
        steps = len(category.commands)  # the commands of a category run one after another
        return self._settings.ssh_connect_timeout * 2 + longest * steps + 5

    async def run(self) -> None:
        """Schedule polls until cancelled."""
        try:
            while True:
                await self._health.refresh()
                wake = self._schedule_due()
                await asyncio.sleep(max(0.01, min(wake - self._clock(), MAX_SLEEP)))
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule_due(self) -> float:
        """Start a task for every (device, category) whose slot is due; returns when to look again."""
        now = self._clock()
        wake = now + MAX_SLEEP
        jitter = self._settings.poll_jitter
        for device in self._devices.names():
            for category, interval in self.categories:
                slot = int(now // interval)
                offset = jitter_offset(device, category.name, interval, jitter)
                due = slot * interval + offset
                key = (device, category.name)
                if now < due or self._handled.get(key, -1) >= slot:
                    next_due = due if now < due else (slot + 1) * interval + offset
                    wake = min(wake, next_due)
                    continue
                self._handled[key] = slot
                task = asyncio.create_task(
                    self._guarded(device, category, interval, slot), name=f"poll-{device}-{category.name}"
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return wake

    def _device_limit(self, device: str) -> asyncio.Semaphore:
        limit = self._per_device.get(device)
        if limit is None:
            limit = self._per_device[device] = asyncio.Semaphore(self._settings.poll_device_concurrency)
        return limit

    async def _guarded(self, device: str, category: Category, interval: float, slot: int) -> None:
        try:
            await self._slot(device, category, interval, slot)
        except (SQLAlchemyError, OSError) as exc:
            # the database is away: this slot is lost, the next one tries again
            self.counters.missed += 1
            self._health.forget_probe(device)
            log.warning("poll %s/%s slot %d: database unavailable: %s", device, category.name, slot, exc)

    async def _slot(self, device: str, category: Category, interval: float, slot: int) -> None:
        """Claim and run one due slot, or leave it to the replica holding it."""
        slot_end = (slot + 1) * interval
        health = self._health
        ttl = timedelta(seconds=self.deadline(category) + LEASE_MARGIN)
        takeover = False
        while True:
            now = self._now()
            if not health.supports(device, category.name, now):
                self.counters.skipped_unsupported += 1
                return
            if not health.allows(device, now):
                self.counters.skipped_breaker_open += 1
                return
            async with self._all, self._device_limit(device):
                if self._clock() >= slot_end:
                    # too busy to start it within its slot; a late sample would crowd the next one
                    self.counters.missed += 1
                    health.forget_probe(device)
                    return
                claim = await leases.claim(
                    self._db, device, category.name, slot, owner=self.replica, ttl=ttl, now=self._now()
                )
                if claim.ours:
                    self.counters.taken_over += takeover
                    await self._poll(device, category, interval, slot, claim.request_id)
                    return
            health.forget_probe(device)
            if claim.completed_at is not None or claim.expires_at.timestamp() >= slot_end:
                self.counters.held_elsewhere += 1
                return
            # the holder may have died: once its lease expires the slot is free again
            takeover = True
            await asyncio.sleep(max(0.0, claim.expires_at.timestamp() - self._clock()) + 0.05)

    async def _poll(
        self, device: str, category: Category, interval: float, slot: int, request_id: str
    ) -> None:
        health = self._health
        context = CallContext(
            request_id=request_id,
            transport="poller",
            tool=f"poll:{category.name}",
            subject=f"poller:{self.replica}",
        )
        outcome = "ok"
        try:
            with calling(context):
                async with asyncio.timeout(self.deadline(category)):
                    await self._collect(device, category)
        except (ConnectionError_, CommandTimeout, TimeoutError) as exc:
            outcome = getattr(exc, "error_type", "command_timeout")
            message = str(exc) or f"poll of {category.name} exceeded {self.deadline(category):g}s"
            opened = await health.record_failure(device, outcome, message, self._now())
            if opened.breaker == "open":
                log.warning(
                    "device %s is down (%s); polls back off until %s", device, outcome, opened.retry_at
                )
        except (CommandNotAvailable, SudoPasswordRequired) as exc:
            outcome = exc.error_type
            health.mark_unsupported(device, category.name, self._now(), interval)
            await health.record_success(device, self._now())  # it answered; it lacks the program
        except InfrastructorError as exc:
            outcome = exc.error_type  # a failing command or an unreadable output: the device answered
            await health.record_success(device, self._now())
        else:
            await health.record_success(device, self._now())
        if outcome == "ok":
            self.counters.completed += 1
        else:
            self.counters.failed += 1
        self.counters.by_category[category.name] = self.counters.by_category.get(category.name, 0) + 1
        done = await leases.complete(
            self._db,
            device,
            category.name,
            slot,
            request_id=request_id,
            outcome=outcome,
            now=self._now(),
        )
        if not done:
            log.warning(
                "poll %s/%s slot %d overran its lease and was taken over", device, category.name, slot
            )

    async def _collect(self, device: str, category: Category) -> None:
        service = self._service
        if category.name == "drives":
            # drive_smart needs a drive: the report asks drive_inventory, then every disk at once
            await drive_health(service, device, None, True)
            return
        for command in category.commands:
            await service.collect(device, command, force_refresh=True)
