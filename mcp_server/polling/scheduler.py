"""The poller: every device, every category, once per interval, through the UnifiedDataCollectionService.

Time is cut into slots per category (slot = floor(epoch / interval)); each (device, category) is due at a
fixed offset into its slot (a hash of the pair times INFRA_POLL_JITTER of the interval: by default 0.9, so
a fleet's polls spread over nine tenths of every interval), and every replica agrees on when a slot is due.
A due slot is claimed through a lease (leases.py) before anything runs, so with several replicas each slot
is polled once; a replica that finds the slot held by another waits for that lease to expire and takes over
only if the holder never finished. Polls run under a global and a per-device bound, with a deadline below
the lease, and feed the device's circuit breaker. Each poll is audited like any collection (transport
"poller", subject "poller:<replica>", tool "poll:<category>", the lease's request id).

Due times sit in a heap, so a wake costs what is due, not the size of the fleet. A fleet that connects
(the server starts, devices are added) ramps: connections first, then the schedule. Each new device's pooled
connection is opened, at most INFRA_POLL_CONNECT_CONCURRENCY at once, and the device's schedule starts only
once that first connection attempt has finished (opened or failed: a failed connect is left to the polls,
whose failures feed the breaker). Polls come first: while some wait for one of the INFRA_POLL_CONCURRENCY poll
slots, a new connection waits (up to RAMP_YIELD seconds) before it opens, so the CPU a connection's handshake
costs does not make the polls already taken on late.

Which slots a new device owes (the ramp rule). When its first connection attempt has finished, a new device
is *taken on*, per category, in the slot under way if at least a tenth of it is left (RAMP_MIN_LEFT), else in
the next one. The lease of that first slot is claimed at once, so the lease table shows every slot taken on
and when the device was taken on (its claimed_at), and the first poll is due at that moment (polled at once,
not at the device's offset: a new device is polled promptly, a homelab's single host included), or early in
the next slot when too little of the slot under way was left (spread over its first tenth by a hash of the
pair: a fleet whose connections finish late in a slot is not polled all at once as the next one starts).
Slots that ended, or had less than a tenth left, while the device's first connection was opening were never
possible: they are counted `not_taken_on`, not missed. Every later slot is due at the device's offset and
owed. A slot taken on is *missed* when it ends before its poll was stored (collected, its rows handed to the
writer and its lease completed): not started in time, finished late, the database away, or never scheduled
because the event loop stalled past it. Lag is the time from a poll's due time to stored: for a first poll,
from its lease's claim (the device taken on, its connection attempt finished) or its first_due, not from a
slot start that passed while the device was still connecting; bench/bench_poller.py judges the lease table
by the same definition.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

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
    DeviceNotFound,
    InfrastructorError,
    SudoPasswordRequired,
)
from mcp_server.polling import leases
from mcp_server.polling.breaker import HealthBook
from mcp_server.reports import drive_health
from mcp_server.series import CATEGORIES
from mcp_server.series.spec import Category
from mcp_server.settings import Settings
from mcp_server.ssh import SSHPool

log = logging.getLogger(__name__)

LEASE_MARGIN = 5.0  # seconds a lease outlives the deadline of the poll it covers
MAX_SLEEP = 1.0
MIN_SLEEP = 0.05  # polls due within this of each other start together
LAG_WINDOW = 1000  # polls whose lag the report's percentiles cover
RAMP_MIN_LEFT = 0.1  # share of a slot that must be left for a new device's first poll to be taken on in it
RAMP_YIELD = 5.0  # longest (s) a new connection waits for polls queued for a poll slot to start


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
    waited_for_connection: int = 0
    not_taken_on: int = 0
    by_category: dict[str, int] = field(default_factory=dict)


def jitter_offset(device: str, category: str, interval: float, jitter: float) -> float:
    """Seconds into each slot at which (device, category) is due; the same on every replica."""
    return zlib.crc32(f"{device}\0{category}".encode()) / 2**32 * jitter * interval


def first_due(device: str, category: str, interval: float, slot: int, taken_on: float) -> float:
    """When a new device's first poll (of `slot`, the first slot taken on) is due: at once, when it was taken
    on in that slot; when it was taken on just before the slot, early in it, at the pair's share of the
    slot's first tenth (RAMP_MIN_LEFT), so a fleet whose connections finish late in a slot is not polled all
    at once as the next one starts."""
    start = slot * interval
    if taken_on >= start:
        return taken_on
    return start + jitter_offset(device, category, interval, RAMP_MIN_LEFT)  # the offset, in a tenth


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
        ssh: SSHPool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._service = service
        self._registry = registry
        self._devices = devices
        self._health = health
        self._db = db
        self._ssh = ssh
        self._clock = clock
        self.replica = settings.replica_name
        self.categories = [
            (c, float(getattr(self._settings, c.setting)))
            for c in CATEGORIES
            if float(getattr(self._settings, c.setting)) > 0
        ]
        self.counters = PollCounters()
        self.lags: deque[float] = deque(maxlen=LAG_WINDOW)
        self._handled: dict[tuple[str, str], int] = {}
        # (due, slot, device, index into categories): the next slot of every (device, category) taken on
        self._due: list[tuple[float, int, str, int]] = []
        self._scheduled: set[str] = set()  # devices seen: connecting (the ramp) or taken on
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._all = asyncio.Semaphore(self._settings.poll_concurrency)
        self._queued = 0  # polls waiting for one of the INFRA_POLL_CONCURRENCY poll slots
        self._drained = asyncio.Event()  # set while none is waiting
        self._drained.set()
        self._connects = asyncio.Semaphore(self._settings.poll_connect_concurrency)
        self._per_device: dict[str, asyncio.Semaphore] = {}

    def intervals(self) -> dict[str, float]:
        return {c.name: interval for c, interval in self.categories}

    @property
    def connecting(self) -> int:
        """Devices whose pooled connection the ramp is opening (or waiting to open) right now."""
        return len(self._connecting)

    @property
    def queued(self) -> int:
        """Polls taken on that are waiting for one of the INFRA_POLL_CONCURRENCY poll slots right now."""
        return self._queued

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
                await asyncio.sleep(max(MIN_SLEEP, min(wake - self._clock(), MAX_SLEEP)))
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _schedule_due(self) -> float:
        """Start a task for every (device, category) whose slot is due; returns when to look again."""
        now = self._clock()
        names = set(self._devices.names())
        self._admit(names - self._scheduled, now)
        due = self._due
        while due and due[0][0] <= now:
            _, slot, device, index = heapq.heappop(due)
            if device not in names:
                self._scheduled.discard(device)  # removed: its other categories drop out as they come up
                continue
            category, interval = self.categories[index]
            offset = jitter_offset(device, category.name, interval, self._settings.poll_jitter)
            key = (device, category.name)
            current = int(now // interval)
            if current > slot:
                # the loop was held up past the end of this slot (and maybe more): none of them was polled
                self.counters.missed += current - max(slot, self._handled.get(key, slot - 1) + 1)
                slot = current
                if now < slot * interval + offset:
                    heapq.heappush(due, (slot * interval + offset, slot, device, index))
                    continue
            if self._handled.get(key, -1) < slot:
                self._handled[key] = slot
                self._spawn(self._guarded(device, category, interval, slot), f"poll-{device}-{category.name}")
            heapq.heappush(due, ((slot + 1) * interval + offset, slot + 1, device, index))
        return due[0][0] if due else now + MAX_SLEEP

    def _admit(self, new: set[str], now: float) -> None:
        """Devices seen for the first time: open their connections (the ramp); each is taken on once its first
        connection attempt has finished, or at once when it needs none."""
        if not new:
            return
        self._scheduled |= new
        for device in sorted(new):
            if self._needs_connection(device):
                self._connecting[device] = self._spawn(self._ready(device, now), f"poll-connect-{device}")
            else:
                self._take_on(device, now, waited=False)

    def _take_on(self, device: str, seen: float, *, waited: bool) -> None:
        """Start a new device's schedule (the ramp rule, above): per category, its first slot is the one under
        way if a tenth of it is left, else the next; that first slot's lease is claimed at once and polled at
        once (early in the next slot: first_due); the slots after it are due at the device's offset. `seen`:
        when the poller first saw the device (the slots from then to the first one taken on are not taken
        on)."""
        if device not in self._devices.names():
            self._scheduled.discard(device)  # removed while its connection was opening
            return
        now = self._clock()
        for index, (category, interval) in enumerate(self.categories):
            key = (device, category.name)
            slot = int(now // interval)
            if (slot + 1) * interval - now < RAMP_MIN_LEFT * interval:
                slot += 1
            self.counters.not_taken_on += max(0, slot - int(seen // interval))
            self.counters.waited_for_connection += int(waited)
            if self._handled.get(key, -1) < slot:
                self._handled[key] = slot
                self._spawn(
                    self._guarded(device, category, interval, slot, first=True),
                    f"poll-{device}-{category.name}",
                )
            offset = jitter_offset(device, category.name, interval, self._settings.poll_jitter)
            heapq.heappush(self._due, ((slot + 1) * interval + offset, slot + 1, device, index))

    def _needs_connection(self, device: str) -> bool:
        if self._ssh is None or self._ssh.is_connected(device):
            return False
        try:
            return not self._devices.get(device).is_local
        except DeviceNotFound:
            return False

    async def _ready(self, device: str, seen: float) -> None:
        """Open the device's pooled connection under the ramp's bound, then take the device on; a failed
        connect is left to the polls (they retry it, and their failure feeds the breaker)."""
        try:
            await self._open(device)
        finally:
            self._connecting.pop(device, None)
        self._take_on(device, seen, waited=True)  # not when cancelled: the poller is stopping

    async def _open(self, device: str) -> None:
        try:
            async with self._connects:
                # polls taken on come first: while some wait for a poll slot, the machine is busy enough, and
                # a connection opened now would take the CPU they need to be stored in their slots
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RAMP_YIELD):
                        await self._drained.wait()
                if not self._needs_connection(device) or not self._health.allows(device, self._now()):
                    return
                with contextlib.suppress(ConnectionError_, TimeoutError):
                    async with asyncio.timeout(self._settings.ssh_connect_timeout * 2):
                        assert self._ssh is not None
                        await self._ssh.connect(self._devices.get(device))
        except DeviceNotFound:
            return

    @contextlib.asynccontextmanager
    async def _poll_slot(self) -> AsyncIterator[None]:
        """One of the INFRA_POLL_CONCURRENCY poll slots; the ramp yields to polls waiting for one."""
        self._queued += 1
        self._drained.clear()
        try:
            await self._all.acquire()
        finally:
            self._queued -= 1
            if not self._queued:
                self._drained.set()
        try:
            yield
        finally:
            self._all.release()

    def _device_limit(self, device: str) -> asyncio.Semaphore:
        limit = self._per_device.get(device)
        if limit is None:
            limit = self._per_device[device] = asyncio.Semaphore(self._settings.poll_device_concurrency)
        return limit

    async def _guarded(
        self, device: str, category: Category, interval: float, slot: int, *, first: bool = False
    ) -> None:
        try:
            await self._slot(device, category, interval, slot, first=first)
        except asyncio.CancelledError:
            if self._clock() >= (slot + 1) * interval:
                self.counters.missed += 1  # the poller stopped with this ended slot still unstored
            raise
        except (SQLAlchemyError, OSError) as exc:
            # the database is away: this slot is lost, the next one tries again
            self.counters.missed += 1
            self._health.forget_probe(device)
            log.warning("poll %s/%s slot %d: database unavailable: %s", device, category.name, slot, exc)

    async def _slot(
        self, device: str, category: Category, interval: float, slot: int, *, first: bool
    ) -> None:
        """Claim and run one due slot, or leave it to the replica holding it. A new device's `first` slot is
        claimed at once, and due then (or early in the slot, when taken on just before it: first_due)."""
        slot_start, slot_end = slot * interval, (slot + 1) * interval
        due = slot_start + jitter_offset(device, category.name, interval, self._settings.poll_jitter)
        health = self._health
        ttl = timedelta(seconds=self.deadline(category) + LEASE_MARGIN)
        while True:
            now = self._now()
            if not health.supports(device, category.name, now):
                self.counters.skipped_unsupported += 1
                return
            if not health.allows(device, now):
                self.counters.skipped_breaker_open += 1
                return
            claim = None
            if first:
                # claimed as soon as the device is taken on, so the lease table shows it (and when) even when
                # the poll cannot start before the slot ends; due from that moment
                first = False
                taken_on = now.timestamp()
                due = first_due(device, category.name, interval, slot, taken_on)
                ahead = timedelta(seconds=due - taken_on)  # taken on just before the slot: held until it runs
                claim = await leases.claim(
                    self._db, device, category.name, slot, owner=self.replica, ttl=ttl + ahead, now=now
                )
                if claim.ours and due > self._clock():
                    await asyncio.sleep(due - self._clock())
            if claim is None or claim.ours:
                async with self._poll_slot(), self._device_limit(device):
                    if self._clock() >= slot_end:
                        # too busy to start it within its slot; a late sample would crowd the next one
                        self.counters.missed += 1
                        health.forget_probe(device)
                        return
                    if claim is None:
                        claim = await leases.claim(
                            self._db,
                            device,
                            category.name,
                            slot,
                            owner=self.replica,
                            ttl=ttl,
                            now=self._now(),
                        )
                    if claim.ours:
                        # whether it waited for the lease to expire or found it expired already
                        self.counters.taken_over += claim.taken_over
                        await self._poll(device, category, interval, slot, claim.request_id, due)
                        return
            health.forget_probe(device)
            if claim.completed_at is not None or claim.expires_at.timestamp() >= slot_end:
                self.counters.held_elsewhere += 1
                return
            # the holder may have died: once its lease expires the slot is free again
            await asyncio.sleep(max(0.0, claim.expires_at.timestamp() - self._clock()) + 0.05)

    async def _poll(
        self, device: str, category: Category, interval: float, slot: int, request_id: str, due: float
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
        stored = self._now()  # the lease's completed_at: what "stored in its slot" is judged by
        done = await leases.complete(
            self._db, device, category.name, slot, request_id=request_id, outcome=outcome, now=stored
        )
        if not done:
            log.warning(
                "poll %s/%s slot %d overran its lease and was taken over", device, category.name, slot
            )
        self.lags.append(max(0.0, stored.timestamp() - due))
        if stored.timestamp() >= (slot + 1) * interval:
            self.counters.missed += 1  # stored after its slot ended

    async def _collect(self, device: str, category: Category) -> None:
        service = self._service
        if category.name == "drives":
            # drive_smart needs a drive: the report asks drive_inventory, then every disk at once
            await drive_health(service, device, None, True)
            return
        for command in category.commands:
            await service.collect(device, command, force_refresh=True)
