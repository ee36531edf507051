"""CacheManager: TTL, LRU, single-flight, invalidation and counters, driven by a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from mcp_server.cache import CacheKey, CacheManager, CacheStats
from tests.helpers import until

EPOCH = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Loader:
    """Counts its runs; when gated, each run waits until the test opens the gate."""

    def __init__(self, value: object = "v", *, gated: bool = False) -> None:
        self.value = value
        self.calls = 0
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def __call__(self) -> object:
        self.calls += 1
        await self.gate.wait()
        return self.value


class Failing:
    def __init__(self, *, gated: bool = False) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def __call__(self) -> object:
        self.calls += 1
        await self.gate.wait()
        raise RuntimeError(f"boom {self.calls}")


def key(
    device: str = "nas01", command: str = "disk_usage", category: str = "storage", params: str = "{}"
) -> CacheKey:
    return CacheKey(device=device, command=command, category=category, params=params)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> CacheManager:
    return CacheManager(100, clock=clock, wall_clock=clock.wall)


async def test_first_call_runs_the_loader_and_reports_a_fresh_result(
    cache: CacheManager, clock: FakeClock
) -> None:
    loader = Loader("data")
    result = await cache.get_or_load(key(), 60, loader)
    assert result.value == "data"
    assert (result.from_cache, result.joined, result.age_seconds) == (False, False, 0.0)
    assert result.collected_at == clock.wall()
    assert loader.calls == 1
    assert cache.stats().misses == 1


async def test_second_call_within_ttl_is_served_from_cache(cache: CacheManager, clock: FakeClock) -> None:
    loader = Loader("data")
    first = await cache.get_or_load(key(), 60, loader)
    clock.advance(42.5)
    second = await cache.get_or_load(key(), 60, loader)
    assert second.value == "data"
    assert second.from_cache is True
    assert second.joined is False
    assert second.age_seconds == 42.5
    assert second.collected_at == first.collected_at
    assert loader.calls == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_ratio) == (1, 1, 0.5)


async def test_entry_past_its_ttl_is_reloaded_and_counted_as_expired(
    cache: CacheManager, clock: FakeClock
) -> None:
    loader = Loader()
    await cache.get_or_load(key(), 30, loader)
    clock.advance(31)
    result = await cache.get_or_load(key(), 30, loader)
    assert result.from_cache is False
    assert loader.calls == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.expirations, stats.entries) == (0, 2, 1, 1)


async def test_an_entry_exactly_ttl_seconds_old_is_expired(cache: CacheManager, clock: FakeClock) -> None:
    loader = Loader()
    await cache.get_or_load(key(), 30, loader)
    clock.advance(30)
    assert cache.peek(key()) is None
    assert (await cache.get_or_load(key(), 30, loader)).from_cache is False
    assert loader.calls == 2


async def test_fifty_concurrent_identical_calls_run_the_loader_once(cache: CacheManager) -> None:
    loader = Loader("shared", gated=True)
    tasks = [asyncio.create_task(cache.get_or_load(key(), 60, loader)) for _ in range(50)]
    await until(lambda: cache.stats().joined == 49)
    assert cache.stats().in_flight == 1
    loader.gate.set()
    results = await asyncio.gather(*tasks)
    assert loader.calls == 1
    assert all(r.value == "shared" and r.from_cache is False for r in results)
    assert sum(r.joined for r in results) == 49
    stats = cache.stats()
    assert (stats.misses, stats.joined, stats.in_flight, stats.entries) == (50, 49, 0, 1)


async def test_different_keys_load_independently_and_concurrently(cache: CacheManager) -> None:
    started: set[str] = set()
    both_started = asyncio.Event()

    def loader_for(name: str) -> Callable[[], Awaitable[str]]:
        async def load() -> str:
            started.add(name)
            if len(started) == 2:
                both_started.set()
            # Each load finishes only once the other has started, so serial loading would hang.
            await both_started.wait()
            return name

        return load

    results = await asyncio.wait_for(
        asyncio.gather(
            cache.get_or_load(key(device="a"), 60, loader_for("a")),
            cache.get_or_load(key(device="b"), 60, loader_for("b")),
        ),
        timeout=2,
    )
    assert [r.value for r in results] == ["a", "b"]
    assert not any(r.joined for r in results)
    assert cache.stats().joined == 0


async def test_keys_differing_only_in_params_are_cached_separately(cache: CacheManager) -> None:
    loader = Loader()
    await cache.get_or_load(key(params='{"tail":10}'), 60, loader)
    await cache.get_or_load(key(params='{"tail":20}'), 60, loader)
    assert loader.calls == 2


async def test_force_refresh_skips_a_fresh_entry_and_stores_the_new_value(
    cache: CacheManager, clock: FakeClock
) -> None:
    await cache.get_or_load(key(), 60, Loader("old"))
    clock.advance(5)
    refreshed = await cache.get_or_load(key(), 60, Loader("new"), force_refresh=True)
    assert refreshed.value == "new"
    assert refreshed.from_cache is False
    clock.advance(1)
    again = await cache.get_or_load(key(), 60, Loader("unused"))
    assert (again.value, again.from_cache, again.age_seconds) == ("new", True, 1.0)


async def test_force_refresh_joins_a_load_already_in_flight(cache: CacheManager) -> None:
    loader = Loader("fresh", gated=True)
    first = asyncio.create_task(cache.get_or_load(key(), 60, loader))
    await until(lambda: loader.calls == 1)
    second = asyncio.create_task(cache.get_or_load(key(), 60, Loader("other"), force_refresh=True))
    await until(lambda: cache.stats().joined == 1)
    loader.gate.set()
    assert (await first).joined is False
    joined = await second
    assert (joined.value, joined.joined, joined.from_cache) == ("fresh", True, False)
    assert loader.calls == 1


async def test_loader_exception_reaches_every_waiter_and_is_not_cached(cache: CacheManager) -> None:
    failing = Failing(gated=True)
    tasks = [asyncio.create_task(cache.get_or_load(key(), 60, failing)) for _ in range(3)]
    await until(lambda: cache.stats().joined == 2)
    failing.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and str(o) == "boom 1" for o in outcomes)
    assert failing.calls == 1
    assert cache.stats().entries == 0
    assert cache.stats().in_flight == 0

    retry = await cache.get_or_load(key(), 60, Loader("recovered"))
    assert (retry.value, retry.from_cache) == ("recovered", False)


async def test_zero_ttl_never_stores_but_still_collapses_concurrent_calls(cache: CacheManager) -> None:
    loader = Loader("live", gated=True)
    tasks = [asyncio.create_task(cache.get_or_load(key(), 0, loader)) for _ in range(5)]
    await until(lambda: cache.stats().joined == 4)
    loader.gate.set()
    await asyncio.gather(*tasks)
    assert loader.calls == 1
    assert cache.stats().entries == 0
    await cache.get_or_load(key(), 0, loader)
    assert loader.calls == 2


async def test_lru_evicts_the_least_recently_used_entry(clock: FakeClock) -> None:
    cache = CacheManager(2, clock=clock, wall_clock=clock.wall)
    await cache.get_or_load(key(device="a"), 60, Loader("a"))
    await cache.get_or_load(key(device="b"), 60, Loader("b"))
    # "a" is older but was just used, so "b" is the least recently used.
    assert (await cache.get_or_load(key(device="a"), 60, Loader("x"))).from_cache is True
    await cache.get_or_load(key(device="c"), 60, Loader("c"))
    assert cache.peek(key(device="b")) is None
    assert cache.peek(key(device="a")) is not None
    assert cache.peek(key(device="c")) is not None
    stats = cache.stats()
    assert (stats.entries, stats.max_entries, stats.evictions) == (2, 2, 1)


async def test_peek_does_not_refresh_recency(clock: FakeClock) -> None:
    cache = CacheManager(2, clock=clock, wall_clock=clock.wall)
    await cache.get_or_load(key(device="a"), 60, Loader("a"))
    await cache.get_or_load(key(device="b"), 60, Loader("b"))
    assert cache.peek(key(device="a")) is not None
    await cache.get_or_load(key(device="c"), 60, Loader("c"))
    assert cache.peek(key(device="a")) is None


async def test_peek_touches_no_counters_and_hides_expired_entries(
    cache: CacheManager, clock: FakeClock
) -> None:
    assert cache.peek(key()) is None
    await cache.get_or_load(key(), 10, Loader("v"))
    before = cache.stats()
    clock.advance(4)
    peeked = cache.peek(key())
    assert peeked is not None
    assert (peeked.value, peeked.from_cache, peeked.age_seconds) == ("v", True, 4.0)
    clock.advance(6)
    assert cache.peek(key()) is None
    assert cache.stats() == before


async def _fill(cache: CacheManager) -> None:
    for device in ("nas01", "web01"):
        await cache.get_or_load(key(device, "disk_usage", "storage"), 60, Loader())
        await cache.get_or_load(key(device, "zfs_pools", "storage"), 60, Loader())
        await cache.get_or_load(key(device, "containers", "containers"), 60, Loader())


async def test_invalidate_by_device_removes_only_that_devices_entries(cache: CacheManager) -> None:
    await _fill(cache)
    assert cache.invalidate(device="nas01") == 3
    assert cache.peek(key("nas01", "disk_usage", "storage")) is None
    assert cache.peek(key("web01", "disk_usage", "storage")) is not None
    assert cache.stats().invalidations == 3


async def test_invalidate_by_category_removes_it_on_every_device(cache: CacheManager) -> None:
    await _fill(cache)
    assert cache.invalidate(category="storage") == 4
    assert cache.peek(key("web01", "containers", "containers")) is not None


async def test_invalidate_by_command(cache: CacheManager) -> None:
    await _fill(cache)
    assert cache.invalidate(command="zfs_pools") == 2
    assert cache.peek(key("nas01", "zfs_pools", "storage")) is None
    assert cache.peek(key("nas01", "disk_usage", "storage")) is not None


async def test_invalidate_filters_combine_with_and(cache: CacheManager) -> None:
    await _fill(cache)
    assert cache.invalidate(device="web01", command="disk_usage") == 1
    assert cache.invalidate(device="nobody") == 0
    assert cache.stats().entries == 5


async def test_clear_empties_the_cache_without_counting_evictions(cache: CacheManager) -> None:
    await _fill(cache)
    assert cache.clear() == 6
    stats = cache.stats()
    assert (stats.entries, stats.evictions, stats.invalidations) == (0, 0, 6)


async def test_invalidation_during_a_load_keeps_its_stale_result_out_of_the_cache(
    cache: CacheManager,
) -> None:
    stale = Loader("stale", gated=True)
    waiting = asyncio.create_task(cache.get_or_load(key(), 60, stale))
    await until(lambda: stale.calls == 1)
    cache.invalidate(device="nas01")

    # A caller arriving after the invalidation must not join the load that started before it.
    fresh = Loader("fresh")
    after = await cache.get_or_load(key(), 60, fresh)
    assert (after.value, after.joined) == ("fresh", False)

    stale.gate.set()
    assert (await waiting).value == "stale"
    assert cache.peek(key()).value == "fresh"  # type: ignore[union-attr]
    assert cache.stats().in_flight == 0


async def test_clear_during_a_load_keeps_its_result_out_of_the_cache(cache: CacheManager) -> None:
    loader = Loader("stale", gated=True)
    waiting = asyncio.create_task(cache.get_or_load(key(), 60, loader))
    await until(lambda: loader.calls == 1)
    cache.clear()
    loader.gate.set()
    await waiting
    assert cache.peek(key()) is None


async def test_invalidation_of_another_device_does_not_affect_a_load_in_flight(cache: CacheManager) -> None:
    loader = Loader("kept", gated=True)
    waiting = asyncio.create_task(cache.get_or_load(key(device="nas01"), 60, loader))
    await until(lambda: loader.calls == 1)
    cache.invalidate(device="web01")
    loader.gate.set()
    await waiting
    assert cache.peek(key(device="nas01")) is not None


async def test_cancelling_the_first_caller_does_not_break_joiners(cache: CacheManager) -> None:
    loader = Loader("survives", gated=True)
    first = asyncio.create_task(cache.get_or_load(key(), 60, loader))
    await until(lambda: loader.calls == 1)
    joiner = asyncio.create_task(cache.get_or_load(key(), 60, loader))
    await until(lambda: cache.stats().joined == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    loader.gate.set()
    result = await joiner
    assert (result.value, result.joined) == ("survives", True)
    assert loader.calls == 1


async def test_a_load_whose_callers_all_gave_up_still_completes_and_is_stored(cache: CacheManager) -> None:
    loader = Loader("late", gated=True)
    caller = asyncio.create_task(cache.get_or_load(key(), 60, loader))
    await until(lambda: loader.calls == 1)
    caller.cancel()
    loader.gate.set()
    await until(lambda: cache.peek(key()) is not None)
    assert (await cache.get_or_load(key(), 60, loader)).from_cache is True
    assert loader.calls == 1


async def test_hit_ratio_is_zero_before_any_lookup(cache: CacheManager) -> None:
    stats = cache.stats()
    assert stats.hit_ratio == 0.0
    assert stats == CacheStats(
        entries=0, max_entries=100, hits=0, misses=0, evictions=0, expirations=0,
        joined=0, in_flight=0, invalidations=0, hit_ratio=0.0,
    )  # fmt: skip


def test_every_stats_field_is_described_for_the_agent() -> None:
    properties = CacheStats.model_json_schema()["properties"]
    assert all(prop.get("description") for prop in properties.values())


def test_a_cache_needs_room_for_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CacheManager(0)
