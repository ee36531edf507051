"""Tells connected MCP clients that a watched file changed: `notifications/resources/updated` for
`infra://config/{device}/{path}`.

Who receives it depends on the protocol era. Clients on the 2026-07-28 protocol open a
`subscriptions/listen` stream naming the URIs they care about (served by the SDK's ListenHandler over an
in-process bus). Clients on the 2025 protocol send `resources/subscribe` for a URI and get the notification
on their session's standalone channel (stdio, or the HTTP GET stream when they opened one). Both handlers
are registered on FastMCP's low-level server, which FastMCP 4 leaves without them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import mcp_types as mt
from fastmcp import FastMCP
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated

from mcp_server.events import ConfigChanged, Event
from mcp_server.fastmcp_internals import low_level

log = logging.getLogger(__name__)
SEND_TIMEOUT = 5.0


def config_uri(device: str, path: str) -> str:
    """The resource URI of a watched file: infra://config/<device><absolute path>."""
    return f"infra://config/{device}{path}"


class ConfigNotifier:
    """The EventBus subscriber that turns ConfigChanged events into resource-updated notifications."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.listen = ListenHandler(self.bus)
        # legacy sessions per URI; a session that fails to receive is dropped
        self._sessions: dict[str, list[Any]] = defaultdict(list)
        self._sending: set[asyncio.Task[None]] = set()
        self.sent = 0

    def install(self, mcp: FastMCP) -> None:
        """Serve subscriptions/listen, resources/subscribe and resources/unsubscribe on the server."""
        low = low_level(mcp)
        low.add_request_handler("subscriptions/listen", mt.SubscriptionsListenRequestParams, self.listen)
        low.add_request_handler("resources/subscribe", mt.SubscribeRequestParams, self._subscribe)
        low.add_request_handler("resources/unsubscribe", mt.UnsubscribeRequestParams, self._unsubscribe)

    async def _subscribe(self, ctx: Any, params: mt.SubscribeRequestParams) -> mt.EmptyResult:
        sessions = self._sessions[str(params.uri)]
        if not any(s is ctx.session for s in sessions):
            sessions.append(ctx.session)
        return mt.EmptyResult()

    async def _unsubscribe(self, ctx: Any, params: mt.UnsubscribeRequestParams) -> mt.EmptyResult:
        uri = str(params.uri)
        self._sessions[uri] = [s for s in self._sessions.get(uri, []) if s is not ctx.session]
        return mt.EmptyResult()

    async def on_event(self, event: Event) -> None:
        if not isinstance(event, ConfigChanged):
            return
        uri = config_uri(event.device, event.path)
        await self.bus.publish(ResourceUpdated(uri=uri))
        for session in list(self._sessions.get(uri, [])):
            # off the publisher's path: a client that does not read must not hold up change detection
            task = asyncio.create_task(self._send(uri, session))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, uri: str, session: Any) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await session.send_resource_updated(uri)
            self.sent += 1
        except Exception as exc:  # a closed or stuck session: forget it; the others still get theirs
            log.debug("dropping a subscriber of %s: %s", uri, exc)
            self._sessions[uri] = [s for s in self._sessions.get(uri, []) if s is not session]

    def close(self) -> None:
        self.listen.close()
        self._sessions.clear()
        for task in list(self._sending):
            task.cancel()
