"""Resource subscriptions as MCP requests: `resources/subscribe` and `resources/unsubscribe` (2025 protocol)
and `subscriptions/listen` (2026-07-28), checked, capped and audited before the notifier holds anything.

The rules, the same in both eras:
- the caller needs infra:read (over authenticated HTTP; stdio and in-memory callers are the local user);
- a URI is at most MAX_URI_CHARS characters and names a watched file, infra://config/<device><path>, of a
  known device, written as the notifications will carry it. An unwatched path is refused, as reading it is:
  nothing would ever be sent for it, so accepting it would only promise the agent an update that never comes
  (the error says to watch the file first); and what a connection holds is then always the name of a file the
  server already watches, never text of the caller's choosing;
- one session (or one listen stream) holds at most INFRA_MAX_SUBSCRIPTIONS_PER_SESSION URIs; subscribing
  again to one it holds changes nothing; one subject keeps at most INFRA_HTTP_MAX_SESSIONS_PER_SUBJECT listen
  streams open, and all subjects together INFRA_HTTP_MAX_SESSIONS;
- every subscribe, unsubscribe and listen is audited (kind "subscription"), allowed or not.
A refused request is a JSON-RPC error: invalid params (-32602) for a bad URI, invalid request (-32600) for a
missing scope or a full cap, each saying what was wrong and what is accepted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import mcp_types as mt
from mcp import MCPError
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler
from starlette.requests import Request

from mcp_server.audit import CallContext, audit_arguments, oversized_arguments
from mcp_server.auth import READ
from mcp_server.config_monitoring.notifier import ConfigNotifier, config_uri
from mcp_server.errors import (
    ArgumentsTooLarge,
    InfrastructorError,
    InvalidParameter,
    MissingScope,
    SubscriptionLimit,
)
from mcp_server.fastmcp_internals import connection_of, low_level
from mcp_server.middleware import AuditMiddleware, authorize, write_audit
from mcp_server.redact import redact_text
from mcp_server.settings import Settings

if TYPE_CHECKING:
    from mcp_server.server import InfrastructorServer
    from mcp_server.state import AppState

MAX_URI_CHARS = 1024
PREFIX = "infra://config/"
FORM = "infra://config/<device></absolute/path> (e.g. infra://config/local/etc/hosts)"
AUDITED_URIS = 10  # a listen request's audit row names this many of its URIs (and counts them all)
DENIED = (MissingScope, ArgumentsTooLarge, SubscriptionLimit)

Context = ServerRequestContext[Any, Any]


class Subscriptions:
    """The subscription requests of one server, in front of its ConfigNotifier."""

    def __init__(
        self,
        settings: Settings,
        audit: AuditMiddleware,
        state_of: Callable[[], AppState | None],
        notifier: ConfigNotifier,
    ) -> None:
        self.notifier = notifier
        self.per_session = settings.max_subscriptions_per_session
        self.streams_per_subject = settings.http_max_sessions_per_subject
        self.streams_in_all = settings.http_max_sessions
        self.listen_handler = ListenHandler(notifier.bus, max_subscriptions=settings.http_max_sessions)
        self._audit = audit
        self._state_of = state_of
        self._streams: Counter[str] = Counter()

    def install(self, mcp: InfrastructorServer) -> None:
        """Serve subscriptions/listen, resources/subscribe and resources/unsubscribe on the server."""
        low = low_level(mcp)
        low.add_request_handler("subscriptions/listen", mt.SubscriptionsListenRequestParams, self.listen)
        low.add_request_handler("resources/subscribe", mt.SubscribeRequestParams, self.subscribe)
        low.add_request_handler("resources/unsubscribe", mt.UnsubscribeRequestParams, self.unsubscribe)

    def listening(self) -> int:
        """Listen streams open now."""
        return sum(self._streams.values())

    def close(self) -> None:
        self.listen_handler.close()
        self.notifier.close()

    # ---- the three requests -------------------------------------------------------------------------------

    async def subscribe(self, ctx: Context, params: mt.SubscribeRequestParams) -> mt.EmptyResult:
        uri = str(params.uri)
        connection = connection_of(ctx.session)

        async def admit(caller: CallContext, scopes: set[str] | None) -> None:
            _short(uri)
            authorize(scopes, READ, "resources/subscribe")
            await self._watched(uri)
            held = self.notifier.subscriptions(connection)
            if uri not in held and len(held) >= self.per_session:
                raise SubscriptionLimit(
                    f"This session already holds {len(held)} subscriptions, the most allowed "
                    "(INFRA_MAX_SUBSCRIPTIONS_PER_SESSION); unsubscribe from one (resources/unsubscribe) first."
                )
            self.notifier.subscribe(connection, uri)

        await self._decide(ctx, "resources/subscribe", {"uri": _kept(uri)}, _device_of(uri), admit, uri)
        return mt.EmptyResult()

    async def unsubscribe(self, ctx: Context, params: mt.UnsubscribeRequestParams) -> mt.EmptyResult:
        uri = str(params.uri)
        connection = connection_of(ctx.session)

        async def admit(caller: CallContext, scopes: set[str] | None) -> None:
            _short(uri)
            authorize(scopes, READ, "resources/unsubscribe")
            self.notifier.unsubscribe(connection, uri)  # not subscribed: nothing to do, and no error

        await self._decide(ctx, "resources/unsubscribe", {"uri": _kept(uri)}, _device_of(uri), admit, uri)
        return mt.EmptyResult()

    async def listen(
        self, ctx: Context, params: mt.SubscriptionsListenRequestParams
    ) -> mt.SubscriptionsListenResult:
        requested = list(params.notifications.resource_subscriptions or [])
        uris = list(dict.fromkeys(requested))
        owner = ""

        async def admit(caller: CallContext, scopes: set[str] | None) -> None:
            nonlocal owner
            for uri in uris:
                _short(uri)
            authorize(scopes, READ, "subscriptions/listen")
            if len(uris) > self.per_session:
                raise SubscriptionLimit(
                    f"This listen request names {len(uris)} resources; a stream may name at most "
                    f"{self.per_session} (INFRA_MAX_SUBSCRIPTIONS_PER_SESSION). Open fewer, narrower streams."
                )
            for uri in uris:
                await self._watched(uri)
            owner = caller.subject or caller.client_ip or "local"
            if self._streams[owner] >= self.streams_per_subject:
                raise SubscriptionLimit(
                    f"{owner} already has {self._streams[owner]} listen streams open, the most allowed "
                    "(INFRA_HTTP_MAX_SESSIONS_PER_SUBJECT); close one first."
                )
            if self.listening() >= self.streams_in_all:
                raise SubscriptionLimit(
                    f"{self.listening()} listen streams are open, the most allowed in all "
                    "(INFRA_HTTP_MAX_SESSIONS); retry later."
                )
            self._streams[owner] += 1

        arguments = {"uris": [_kept(u) for u in uris[:AUDITED_URIS]], "count": len(requested)}
        device = _device_of(uris[0]) if uris else None
        await self._decide(ctx, "subscriptions/listen", arguments, device, admit)
        notifications = params.notifications.model_copy(update={"resource_subscriptions": uris or None})
        try:
            return await self.listen_handler(ctx, params.model_copy(update={"notifications": notifications}))
        finally:
            self._streams[owner] -= 1
            if self._streams[owner] <= 0:
                del self._streams[owner]

    # ---- checks and the audit -----------------------------------------------------------------------------

    async def _watched(self, uri: str) -> None:
        """Raise InvalidParameter unless `uri` names a watched file of a known device, canonically."""
        if not uri.startswith(PREFIX):
            raise InvalidParameter(
                f"Only watched configuration files can be subscribed to, as {FORM}; got {uri!r}."
            )
        device, _, rest = uri.removeprefix(PREFIX).partition("/")
        state = self._state_of()
        if state is None:
            raise InvalidParameter("The server is starting; retry in a moment.")
        state.devices.get(device)  # DeviceNotFound names the known devices
        from mcp_server.config_monitoring.targets import checked  # loaded with the state, after `initialize`

        path = checked("/" + rest)
        if config_uri(device, path) != uri:
            raise InvalidParameter(f"Write the URI as notifications carry it: {config_uri(device, path)!r}.")
        await state.config.load()
        target = state.config.target_for(device, path)
        if target is None or (target.is_directory and target.path == path):
            raise InvalidParameter(
                f"{path} is not a watched file on {device!r}, so no change to it would ever be notified. "
                "Subscribe to a watched file (list_watched_files shows them; watch_config_file, scope "
                "infra:write, adds one)."
            )

    async def _decide(
        self,
        ctx: Context,
        method: str,
        arguments: dict[str, Any],
        device: str | None,
        admit: Callable[[CallContext, set[str] | None], Awaitable[None]],
        uri: str | None = None,
    ) -> None:
        """Run `admit` with the caller's scopes and audit the outcome (`arguments` as audited); a refusal
        becomes a JSON-RPC error, carrying `uri` when it was about that one."""
        started = time.perf_counter()
        caller, scopes = self._audit.caller(method, _request(ctx))
        outcome, error_type, message = "ok", None, None
        try:
            await admit(caller, scopes)
        except InfrastructorError as exc:
            outcome = "denied" if isinstance(exc, DENIED) else "error"
            error_type, message = exc.error_type, str(exc)
            raise _rpc_error(exc, uri) from exc
        finally:
            state = self._state_of()
            if state is not None:
                write_audit(
                    state,
                    caller,
                    kind="subscription",
                    arguments=audit_arguments(arguments),
                    device=device,
                    started=started,
                    outcome=outcome,
                    error_type=error_type,
                    message=message,
                )


def _request(ctx: Context) -> Request | None:
    return ctx.request if isinstance(ctx.request, Request) else None


def _short(uri: str) -> None:
    if len(uri) > MAX_URI_CHARS:
        raise ArgumentsTooLarge(
            f"A subscription URI is at most {MAX_URI_CHARS:,} characters; this one is {len(uri):,}. "
            f"Subscribe to a watched file as {FORM}."
        )


def _device_of(uri: str) -> str | None:
    """The device a config URI names (the audit keeps it when it has a device name's shape)."""
    if len(uri) > MAX_URI_CHARS or not uri.startswith(PREFIX):
        return None
    return uri.removeprefix(PREFIX).partition("/")[0]


def _kept(uri: str) -> Any:
    """A URI as the audit keeps it: whole when short enough to be accepted, else a fingerprint."""
    return uri if len(uri) <= MAX_URI_CHARS else oversized_arguments(uri)


def _rpc_error(exc: InfrastructorError, uri: str | None) -> MCPError:
    """The JSON-RPC error for a refusal; a bad URI comes back in its data (when short enough to echo)."""
    message = redact_text(str(exc))
    if isinstance(exc, MissingScope | SubscriptionLimit):
        return MCPError(code=mt.INVALID_REQUEST, message=message)
    data = {"uri": redact_text(uri)} if uri is not None and len(uri) <= MAX_URI_CHARS else None
    return MCPError(code=mt.INVALID_PARAMS, message=message, data=data)
