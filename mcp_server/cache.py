"""CacheManager: an LRU-bounded cache with per-entry TTL, single-flight loading and counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import cachetools
from pydantic import BaseModel, Field

T = TypeVar("T")


@dataclass(frozen=True)
class CacheKey:
    """Identifies one collected result; `params` is the command's stable JSON parameter string."""

    device: str
    command: str
    category: str
    params: str


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A value with how fresh it is and where it came from."""

    value: T
    collected_at: datetime
    age_seconds: float
    from_cache: bool
    joined: bool


class CacheStats(BaseModel):
    """Counters of the result cache since the server started."""

    entries: int = Field(description="Results stored now (expired ones count until they are next looked up).")
    max_entries: int = Field(description="Capacity; past it the least recently used result is evicted.")
    hits: int = Field(description="Lookups answered from a stored, unexpired result.")
    misses: int = Field(
        description="Lookups that had to load (no entry, expired entry, or force_refresh), including joiners."
    )
    evictions: int = Field(description="Results dropped because the cache was full.")
    expirations: int = Field(description="Results dropped because their TTL had passed.")
    joined: int = Field(
        description="Misses that waited on an identical load already running instead of "
        "running the command again."
    )
    in_flight: int = Field(description="Loads running right now.")
    invalidations: int = Field(description="Results removed by invalidation or clearing.")
    hit_ratio: float = Field(description="hits / (hits + misses); 0.0 before the first lookup.")


@dataclass(frozen=True)
class _Entry:
    value: Any
    stored_at: float
    collected_at: datetime
    ttl: float


@dataclass(frozen=True)
class _Loaded:
    value: Any
    loaded_at: float
    collected_at: datetime


@dataclass(eq=False)
class _Flight:
    key: CacheKey
    # Set when an invalidation overtakes the load: its result predates the invalidation, so it is
    # handed to the callers already waiting but never stored.
    stale: bool = False
    task: asyncio.Task[_Loaded] | None = field(default=None, repr=False)


class _LRUStore(cachetools.LRUCache):  # type: ignore[type-arg]
    """cachetools' LRU with a hook counting capacity evictions (popitem is only called when full)."""

    def __init__(self, maxsize: int, on_evict: Callable[[], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[CacheKey, _Entry]:
        item: tuple[CacheKey, _Entry] = super().popitem()
        self._on_evict()
        return item

    def peek(self, key: CacheKey) -> _Entry | None:
        """The entry without refreshing its recency."""
        if key not in self:
            return None
        entry: _Entry = cachetools.Cache.__getitem__(self, key)
        return entry


def _consume_exception(task: asyncio.Task[_Loaded]) -> None:
    # A load whose callers were all cancelled still finishes; retrieve its exception so asyncio does
    # not report it as never retrieved.
    if not task.cancelled():
        task.exception()


class CacheManager:
    """Serves results within their TTL and collapses concurrent identical misses into one load."""

    def __init__(
        self,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._clock = clock
        self._wall_clock = wall_clock
        self._store = _LRUStore(max_entries, self._count_eviction)
        self._in_flight: dict[CacheKey, _Flight] = {}
        self._running: set[_Flight] = set()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0
        self._joined = 0
        self._invalidations = 0

    async def get_or_load(
        self,
        key: CacheKey,
        ttl: float,
        loader: Callable[[], Awaitable[T]],
        *,
        force_refresh: bool = False,
    ) -> Cached[T]:
        """A stored result younger than its TTL, else the result of one shared run of `loader`."""
        if not force_refresh:
            entry = self._store.get(key)
            if entry is not None:
                age = self._clock() - entry.stored_at
                if age < entry.ttl:
                    self._hits += 1
                    return Cached(entry.value, entry.collected_at, age, from_cache=True, joined=False)
                del self._store[key]
                self._expirations += 1
        self._misses += 1
        flight = self._in_flight.get(key)
        joined = flight is not None
        if flight is None:
            flight = self._start(key, ttl, loader)
        else:
            self._joined += 1
        assert flight.task is not None
        # shield: a caller that is cancelled stops waiting, but the load goes on for the others.
        loaded = await asyncio.shield(flight.task)
        age = max(0.0, self._clock() - loaded.loaded_at)
        return Cached(loaded.value, loaded.collected_at, age, from_cache=False, joined=joined)

    def peek(self, key: CacheKey) -> Cached[Any] | None:
        """The stored, unexpired result for `key`, touching neither counters nor recency."""
        entry = self._store.peek(key)
        if entry is None:
            return None
        age = self._clock() - entry.stored_at
        if age >= entry.ttl:
            return None
        return Cached(entry.value, entry.collected_at, age, from_cache=True, joined=False)

    def invalidate(
        self, *, device: str | None = None, category: str | None = None, command: str | None = None
    ) -> int:
        """Remove results matching every given filter (all results when none is given); returns how many."""

        def matches(key: CacheKey) -> bool:
            return (
                (device is None or key.device == device)
                and (category is None or key.category == category)
                and (command is None or key.command == command)
            )

        doomed = [key for key in self._store if matches(key)]
        for key in doomed:
            del self._store[key]
        for key in [key for key in self._in_flight if matches(key)]:
            # Detached: waiting callers still get its result, new callers start a fresh load.
            self._in_flight.pop(key).stale = True
        self._invalidations += len(doomed)
        return len(doomed)

    def clear(self) -> int:
        """Remove every result; returns how many."""
        return self.invalidate()

    def stats(self) -> CacheStats:
        lookups = self._hits + self._misses
        return CacheStats(
            entries=len(self._store),
            max_entries=int(self._store.maxsize),
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
            joined=self._joined,
            in_flight=len(self._running),
            invalidations=self._invalidations,
            hit_ratio=self._hits / lookups if lookups else 0.0,
        )

    def _count_eviction(self) -> None:
        self._evictions += 1

    def _start(self, key: CacheKey, ttl: float, loader: Callable[[], Awaitable[Any]]) -> _Flight:
        flight = _Flight(key)
        flight.task = asyncio.get_running_loop().create_task(self._load(flight, ttl, loader))
        flight.task.add_done_callback(_consume_exception)
        self._in_flight[key] = flight
        self._running.add(flight)
        return flight

    async def _load(self, flight: _Flight, ttl: float, loader: Callable[[], Awaitable[Any]]) -> _Loaded:
        try:
            value = await loader()
        finally:
            self._running.discard(flight)
            if self._in_flight.get(flight.key) is flight:
                del self._in_flight[flight.key]
        loaded = _Loaded(value, self._clock(), self._wall_clock())
        if ttl > 0 and not flight.stale:
            self._store[flight.key] = _Entry(value, loaded.loaded_at, loaded.collected_at, ttl)
        return loaded
