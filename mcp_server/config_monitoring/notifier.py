"""Tells connected MCP clients that a watched file changed: `notifications/resources/updated` for
`infra://config/{device}/{path}`.

Who receives it depends on the protocol era. Clients on the 2026-07-28 protocol open a
`subscriptions/listen` stream naming the URIs they care about (served by the SDK's ListenHandler over the
in-process `bus`). Clients on the 2025 protocol subscribe their connection (a session, or a stdio stream) to
URIs and get the notification on its standalone channel (stdio, or the HTTP GET stream when they opened
one). What may be subscribed, by whom and how much is decided in subscriptions.py; this module delivers.
"""

from __future__ import annotations

import asyncio
import logging

from mcp.server.connection import Connection
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated

from mcp_server.events import ConfigChanged, Event

log = logging.getLogger(__name__)
SEND_TIMEOUT = 5.0


def config_uri(device: str, path: str) -> str:
    """The resource URI of a watched file: infra://config/<device><absolute path>."""
    return f"infra://config/{device}{path}"


class ConfigNotifier:
    """The EventBus subscriber that turns ConfigChanged events into resource-updated notifications, and the
    register of which 2025-protocol connection is subscribed to which URI.

    A connection's subscriptions end with it: the first one registers a callback on the connection's exit
    stack, which the SDK unwinds when the session is deleted or expires or the stdio stream ends."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._uris: dict[Connection, set[str]] = {}
        self._connections: dict[str, set[Connection]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.sent = 0

    def subscriptions(self, connection: Connection) -> frozenset[str]:
        return frozenset(self._uris.get(connection, ()))

    def held(self) -> int:
        """Subscriptions held by every connection together."""
        return sum(len(uris) for uris in self._uris.values())

    def subscribe(self, connection: Connection, uri: str) -> None:
        if connection not in self._uris:
            self._uris[connection] = set()
            connection.exit_stack.callback(self.forget, connection)
        self._uris[connection].add(uri)
        self._connections.setdefault(uri, set()).add(connection)

    def unsubscribe(self, connection: Connection, uri: str) -> None:
        held = self._uris.get(connection)
        if held is not None:
            held.discard(uri)
        listeners = self._connections.get(uri)
        if listeners is not None:
            listeners.discard(connection)
            if not listeners:
                del self._connections[uri]

    def forget(self, connection: Connection) -> None:
        """Drop every subscription of a connection that has ended."""
        for uri in self._uris.pop(connection, set()):
            self.unsubscribe(connection, uri)

    async def on_event(self, event: Event) -> None:
        if not isinstance(event, ConfigChanged):
            return
        uri = config_uri(event.device, event.path)
        await self.bus.publish(ResourceUpdated(uri=uri))
        for connection in list(self._connections.get(uri, ())):
            # off the publisher's path: a client that does not read must not hold up change detection
            task = asyncio.create_task(self._send(uri, connection))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, uri: str, connection: Connection) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await connection.send_resource_updated(uri)
            self.sent += 1
        except (
            Exception
        ) as exc:  # a closed or stuck client: drop this subscription; the others still get theirs
            log.debug("dropping a subscriber of %s: %s", uri, exc)
            self.unsubscribe(connection, uri)

    def close(self) -> None:
        for connection in list(self._uris):
            self.forget(connection)
        for task in list(self._sending):
            task.cancel()
