"""In-process event bus: typed events, callback subscribers and bounded queue listeners."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectionCompleted:
    """A command ran on a device and its output was parsed and stored."""

    device: str
    command: str
    params_key: str
    collected_at: datetime
    duration_ms: float


@dataclass(frozen=True)
class CollectionFailed:
    """A collection ended in an error; `error_type` is the InfrastructorError's error_type."""

    device: str
    command: str
    error_type: str
    message: str


@dataclass(frozen=True)
class DeviceChanged:
    """A device was added, updated or removed."""

    device: str
    change: Literal["added", "updated", "removed"]


@dataclass(frozen=True)
class ConfigChanged:
    """A watched configuration file changed: a new version was stored with its diff and risk."""

    device: str
    path: str
    kind: str
    change_type: Literal["created", "modified", "deleted"]
    risk: Literal["low", "medium", "high"]
    event_id: int
    detected_at: datetime
    summary: str


@dataclass(frozen=True)
class DeviceHealthChanged:
    """Background polling moved a device's health from one status to another (ok, degraded, down)."""

    device: str
    previous: str
    status: str
    consecutive_failures: int
    error_type: str | None
    error: str | None


Event = CollectionCompleted | CollectionFailed | DeviceChanged | ConfigChanged | DeviceHealthChanged
Handler = Callable[[Event], Awaitable[None] | None]


class EventQueue(asyncio.Queue[Event]):
    """A bounded listener queue that drops its oldest event rather than block the publisher."""

    def __init__(self, maxsize: int, types: tuple[type, ...] | None, on_close: Callable[[EventQueue], None]):
        super().__init__(maxsize)
        self.types = types
        self.dropped = 0
        self._on_close = on_close

    def offer(self, event: Event) -> bool:
        """Enqueue without blocking; returns False when an older event had to be dropped for it."""
        dropped = False
        if self.full():
            self.get_nowait()
            self.dropped += 1
            dropped = True
        self.put_nowait(event)
        return not dropped

    def close(self) -> None:
        """Stop receiving events; events already queued stay readable."""
        self._on_close(self)


@dataclass(frozen=True, eq=False)
class _Subscription:
    handler: Handler
    types: tuple[type, ...] | None


def _wanted(types: tuple[type, ...] | None, event: Event) -> bool:
    return types is None or isinstance(event, types)


class EventBus:
    """Delivers each published event to every interested subscriber; a failing subscriber harms no other."""

    def __init__(self) -> None:
        self._subscriptions: list[_Subscription] = []
        self._queues: list[EventQueue] = []
        self.published = 0
        self.dropped = 0
        self.handler_errors = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions) + len(self._queues)

    def subscribe(self, handler: Handler, *, types: tuple[type, ...] | None = None) -> Callable[[], None]:
        """Call `handler` for each event (of `types`, if given); returns a function that unsubscribes."""
        subscription = _Subscription(handler, types)
        self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

        return unsubscribe

    def subscribe_queue(self, maxsize: int = 1000, *, types: tuple[type, ...] | None = None) -> EventQueue:
        """A queue receiving each event (of `types`, if given); `close()` it to unsubscribe."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        queue = EventQueue(maxsize, types, self._remove_queue)
        self._queues.append(queue)
        return queue

    async def publish(self, event: Event) -> None:
        """Deliver `event` to queues at once, then to handlers in subscription order."""
        self.published += 1
        for queue in list(self._queues):
            if _wanted(queue.types, event) and not queue.offer(event):
                self.dropped += 1
        for subscription in list(self._subscriptions):
            if _wanted(subscription.types, event):
                await self._call(subscription.handler, event)

    async def _call(self, handler: Handler, event: Event) -> None:
        # Subscribers are independent features (metrics, watchers, logs); one bug must not stop the rest.
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.handler_errors += 1
            logger.exception("event handler %r failed on %r", handler, event)

    def _remove_queue(self, queue: EventQueue) -> None:
        if queue in self._queues:
            self._queues.remove(queue)
