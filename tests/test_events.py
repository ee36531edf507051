"""EventBus: delivery, filtering, unsubscribing, failure isolation and bounded queues."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

import pytest

from mcp_server.events import (
    CollectionCompleted,
    CollectionFailed,
    DeviceChanged,
    Event,
    EventBus,
)

COMPLETED = CollectionCompleted(
    device="nas01",
    command="disk_usage",
    params_key="{}",
    collected_at=datetime(2024, 5, 1, tzinfo=UTC),
    duration_ms=12.5,
)
FAILED = CollectionFailed(
    device="nas01", command="zfs_pools", error_type="command_not_available", message="no zpool"
)
ADDED = DeviceChanged(device="web01", change="added")


async def test_sync_and_async_handlers_both_receive_every_event() -> None:
    bus = EventBus()
    sync_seen: list[Event] = []
    async_seen: list[Event] = []

    async def record(event: Event) -> None:
        async_seen.append(event)

    bus.subscribe(sync_seen.append)
    bus.subscribe(record)
    await bus.publish(COMPLETED)
    await bus.publish(ADDED)
    assert sync_seen == [COMPLETED, ADDED]
    assert async_seen == [COMPLETED, ADDED]
    assert bus.published == 2


async def test_a_handler_only_gets_the_event_types_it_asked_for() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append, types=(CollectionFailed, DeviceChanged))
    for event in (COMPLETED, FAILED, ADDED):
        await bus.publish(event)
    assert seen == [FAILED, ADDED]


async def test_unsubscribed_handler_receives_nothing_more_and_unsubscribing_twice_is_harmless() -> None:
    bus = EventBus()
    seen: list[Event] = []
    unsubscribe = bus.subscribe(seen.append)
    await bus.publish(COMPLETED)
    unsubscribe()
    unsubscribe()
    await bus.publish(FAILED)
    assert seen == [COMPLETED]
    assert bus.subscriber_count == 0


async def test_a_failing_handler_is_logged_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("handler bug")

    async def broken_async(event: Event) -> None:
        raise KeyError("async handler bug")

    bus.subscribe(broken)
    bus.subscribe(broken_async)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="mcp_server.events"):
        await bus.publish(COMPLETED)
    assert seen == [COMPLETED]
    assert bus.handler_errors == 2
    tracebacks = [r.exc_info for r in caplog.records if r.exc_info]
    assert [type(exc_info[1]) for exc_info in tracebacks] == [ValueError, KeyError]


async def test_a_handler_may_unsubscribe_itself_while_an_event_is_being_delivered() -> None:
    bus = EventBus()
    seen: list[str] = []
    unsubscribe_first = None

    def first(event: Event) -> None:
        seen.append("first")
        assert unsubscribe_first is not None
        unsubscribe_first()

    unsubscribe_first = bus.subscribe(first)
    bus.subscribe(lambda event: seen.append("second"))
    await bus.publish(ADDED)
    await bus.publish(ADDED)
    assert seen == ["first", "second", "second"]


async def test_a_queue_listener_receives_events_in_order() -> None:
    bus = EventBus()
    queue = bus.subscribe_queue(maxsize=10)
    for event in (COMPLETED, FAILED, ADDED):
        await bus.publish(event)
    assert [queue.get_nowait() for _ in range(3)] == [COMPLETED, FAILED, ADDED]
    assert queue.empty()


async def test_a_full_queue_drops_its_oldest_events_and_counts_them() -> None:
    bus = EventBus()
    queue = bus.subscribe_queue(maxsize=2)
    events = [DeviceChanged(device=f"d{i}", change="updated") for i in range(5)]
    for event in events:
        await bus.publish(event)
    assert [queue.get_nowait() for _ in range(2)] == events[3:]
    assert queue.dropped == 3
    assert bus.dropped == 3
    assert bus.published == 5


async def test_a_queue_can_filter_by_type_and_stops_receiving_once_closed() -> None:
    bus = EventBus()
    queue = bus.subscribe_queue(maxsize=10, types=(CollectionFailed,))
    await bus.publish(COMPLETED)
    await bus.publish(FAILED)
    queue.close()
    await bus.publish(FAILED)
    assert queue.qsize() == 1
    assert await queue.get() == FAILED
    assert bus.subscriber_count == 0


async def test_a_slow_queue_listener_never_blocks_the_publisher_or_other_queues() -> None:
    bus = EventBus()
    slow = bus.subscribe_queue(maxsize=1)
    roomy = bus.subscribe_queue(maxsize=100)
    for _ in range(50):
        await bus.publish(ADDED)
    assert slow.qsize() == 1
    assert roomy.qsize() == 50
    assert (slow.dropped, roomy.dropped) == (49, 0)


def test_a_queue_needs_room_for_one_event() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        EventBus().subscribe_queue(maxsize=0)


def test_events_are_immutable_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ADDED.device = "other"  # type: ignore[misc]
    assert DeviceChanged(device="web01", change="added") == ADDED
