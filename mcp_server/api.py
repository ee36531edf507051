"""The REST API under /api/v1: one route per MCP tool, each a thin adapter over the tool's own function.

A route's parameters are the tool's (its signature: the same types, bounds and defaults; `device` and a few
names in the path, the rest in the query for GET and in a JSON body otherwise), its response model is the
tool's result model, and it calls the tool function itself with the running AppState: there is no second
implementation of anything. Around the call it does what the MCP middleware does around a tool call: scope
check (read ⊂ write ⊂ admin), one audit row (transport `api`), the result budget (INFRA_MAX_RESULT_CHARS).
Errors are RFC 9457 problem details whose `detail` is the text the tool gives.

The app is mounted in the HTTP app (http_app.py) behind its Host/Origin check, bearer authentication, rate
limit and connection caps; the OpenAPI document and the docs page need no token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import logging
import re
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from fastmcp.exceptions import ToolError
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from pydantic import BaseModel, Field, TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_server import __version__, alerts
from mcp_server.audit import CallContext, audit_arguments, calling, oversized_arguments
from mcp_server.auth import ADMIN, READ, REJECTION_SCOPE_KEY, required_scope
from mcp_server.budget import Keep, fit
from mcp_server.errors import (
    ArgumentsTooLarge,
    CommandTimeout,
    ConnectionError_,
    DeviceExists,
    DeviceLimit,
    DeviceNotFound,
    ExecutionError,
    InfrastructorError,
    InvalidParameter,
    MissingScope,
    ParseError,
    StorageError,
    SubscriptionLimit,
    UnknownCommand,
    field_problems,
)
from mcp_server.event_log import RECORDED, EventKind, StreamedEvent, events_after, last_event_id
from mcp_server.http_guard import API_PREFIX
from mcp_server.middleware import accepted_arguments, authorize, write_audit
from mcp_server.progress import OnStep, StepDone
from mcp_server.redact import REDACTED, redact_text
from mcp_server.state import AppState
from mcp_server.tools import (
    KEEP_NEWEST,
    admin,
    config,
    containers,
    devices,
    history,
    host,
    network,
    services,
    storage,
    system,
)

if TYPE_CHECKING:
    from mcp_server.server import InfrastructorServer

log = logging.getLogger(__name__)

PREFIX = API_PREFIX
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class ApiRoute:
    """A route of the API: method and path (under /api/v1) of one tool."""

    method: str
    path: str
    tool: Callable[..., Awaitable[Any]]
    needs: str | None = None  # the scope of an operation that is not a tool (a tool's tags say its own)
    writes: bool = False  # it changes something (a tool's annotations say so)
    secret: tuple[str, ...] = ()  # arguments never audited as sent (a webhook URL is a capability)

    @property
    def name(self) -> str:
        return self.tool.__name__

    @property
    def tags(self) -> set[str]:
        """The tool's FastMCP tags (the scope it needs, how the budget cuts its lists)."""
        meta = self.tool.__dict__.get("__fastmcp__")
        return set(meta.tags or ()) if meta is not None else set()

    @property
    def scope(self) -> str:
        return self.needs or required_scope(self.tags)

    @property
    def arguments(self) -> list[str]:
        return ["after", "kind", "device"] if self is EVENTS_ROUTE else arguments_of(self.tool)

    @property
    def read_only(self) -> bool:
        meta = self.tool.__dict__.get("__fastmcp__")
        if meta is None:
            return not self.writes
        return bool(meta.annotations and meta.annotations.read_only_hint)

    @property
    def path_names(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


D = "/devices/{device}"
ROUTES = (
    # devices
    ApiRoute("GET", "/devices", devices.list_devices),
    ApiRoute("POST", "/devices", devices.add_device),
    ApiRoute("POST", "/devices/import-ssh-config", devices.import_ssh_config),
    ApiRoute("GET", D, devices.get_device),
    ApiRoute("PATCH", D, devices.update_device),
    ApiRoute("DELETE", D, devices.remove_device),
    ApiRoute("POST", f"{D}/connection-test", devices.test_device_connection),
    # system
    ApiRoute("GET", "/fleet", system.get_fleet_overview),
    ApiRoute("GET", "/problems", system.find_problems),
    ApiRoute("GET", f"{D}/system", system.get_system_metrics),
    ApiRoute("GET", f"{D}/processes", system.list_processes),
    ApiRoute("GET", f"{D}/network", network.get_network_interfaces),
    ApiRoute("GET", f"{D}/updates", host.check_updates),
    ApiRoute("GET", f"{D}/vms", host.list_vms),
    # storage
    ApiRoute("GET", f"{D}/disks", storage.get_disk_usage),
    ApiRoute("GET", f"{D}/directory-usage", storage.get_directory_usage),
    ApiRoute("GET", f"{D}/drives", storage.get_drive_health),
    ApiRoute("GET", f"{D}/zfs", storage.get_zfs_status),
    ApiRoute("GET", f"{D}/zfs/snapshots", storage.list_zfs_snapshots),
    # containers
    ApiRoute("GET", f"{D}/containers", containers.list_containers),
    ApiRoute("GET", f"{D}/containers/{{container}}", containers.get_container),
    ApiRoute("GET", f"{D}/containers/{{container}}/logs", containers.get_container_logs),
    ApiRoute("POST", f"{D}/containers/{{container}}/start", containers.start_container),
    ApiRoute("POST", f"{D}/containers/{{container}}/stop", containers.stop_container),
    ApiRoute("POST", f"{D}/containers/{{container}}/restart", containers.restart_container),
    ApiRoute("GET", f"{D}/container-stats", containers.get_container_stats),
    ApiRoute("GET", f"{D}/compose-stacks", containers.list_compose_stacks),
    # services
    ApiRoute("GET", f"{D}/services", services.list_services),
    ApiRoute("GET", f"{D}/services/{{unit}}", services.get_service_status),
    ApiRoute("POST", f"{D}/services/{{unit}}/restart", services.restart_service),
    ApiRoute("GET", f"{D}/journal", services.get_journal_logs),
    # configuration
    ApiRoute("GET", "/config/watched", config.list_watched_files),
    ApiRoute("POST", "/config/watched", config.watch_config_file),
    ApiRoute("POST", "/config/watched/remove", config.unwatch_config_file),
    ApiRoute("GET", "/config/history", config.get_config_history),
    ApiRoute("GET", "/config/diff", config.get_config_diff),
    ApiRoute("GET", "/config/changes", config.list_config_changes),
    ApiRoute("GET", f"{D}/proxy-configs", config.list_proxy_configs),
    ApiRoute("GET", f"{D}/proxy-configs/{{name}}", config.get_proxy_config),
    # history and the service itself
    ApiRoute("GET", "/metrics/history", history.get_metrics_history),
    ApiRoute("GET", "/service/health", history.get_service_health),
    ApiRoute("GET", "/cache/stats", history.get_cache_stats),
    # admin
    ApiRoute("GET", "/commands", admin.list_commands),
    ApiRoute("POST", f"{D}/collect", admin.collect),
    ApiRoute("POST", "/collect", admin.collect_many),
    ApiRoute("POST", f"{D}/run", admin.run_command),
    ApiRoute("GET", "/audit", admin.query_audit_log),
    # alert rules (not tools: agents do not set where the operator's notifications go)
    ApiRoute("GET", "/alerts/rules", alerts.list_alert_rules, needs=ADMIN),
    ApiRoute("PUT", "/alerts/rules/{name}", alerts.set_alert_rule, needs=ADMIN, writes=True, secret=("url",)),
    ApiRoute("DELETE", "/alerts/rules/{name}", alerts.remove_alert_rule, needs=ADMIN, writes=True),
    ApiRoute("POST", "/alerts/rules/{name}/test", alerts.test_alert_rule, needs=ADMIN),
)


async def events() -> None:
    """The event stream: a route of its own (events_route), not a tool."""


EVENTS_ROUTE = ApiRoute("GET", "/events", events)


class ProblemDetails(BaseModel):
    """An error (RFC 9457 problem details): `detail` is the text the MCP tool gives for the same mistake."""

    type: str = Field(default="about:blank", description="Always about:blank: `title` is the HTTP status.")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do about it.")
    error_type: str = Field(description="Machine-readable kind: device_not_found, invalid_arguments, ...")
    request_id: str | None = Field(default=None, description="The request's id in the audit log.")


class ApiProblem(Exception):
    """Answer the request with this problem (and, for a call, audit it with this outcome)."""

    def __init__(
        self,
        status: int,
        error_type: str,
        detail: str,
        *,
        outcome: str = "error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error_type = error_type
        self.detail = detail
        self.outcome = outcome
        self.headers = headers


# The HTTP status of an expected error, most specific class first; anything else is 400.
STATUS: tuple[tuple[type[InfrastructorError], int], ...] = (
    (MissingScope, 403),
    (ArgumentsTooLarge, 413),
    (InvalidParameter, 422),
    (DeviceNotFound, 404),
    (UnknownCommand, 404),
    (DeviceExists, 409),
    (DeviceLimit, 409),
    (SubscriptionLimit, 429),
    (CommandTimeout, 504),
    (ConnectionError_, 502),
    (ExecutionError, 502),
    (ParseError, 502),
    (StorageError, 503),
)
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 422, 429, 502, 503, 504)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": HTTPStatus(status).phrase,
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
    }
    for status in ERROR_STATUSES
}


def status_of(error: InfrastructorError) -> int:
    return next((status for cls, status in STATUS if isinstance(error, cls)), 400)


def problem_response(problem: ApiProblem, request_id: str | None = None) -> JSONResponse:
    body = ProblemDetails(
        title=HTTPStatus(problem.status).phrase,
        status=problem.status,
        detail=problem.detail,
        error_type=problem.error_type,
        request_id=request_id,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM,
        headers=problem.headers,
    )


# ---- one route: admission (scope, size, unknown arguments), the call, the audit ---------------------------


async def _no_progress(_step: StepDone) -> None:
    """Progress of a multi-step tool: an API call answers once, at the end."""


def injected(fn: Callable[..., Any], state: AppState) -> dict[str, Any]:
    """What the API passes for the parameters a tool function takes from FastMCP's dependency injection: the
    running AppState, and a progress callback that does nothing (an API call answers once, at the end)."""
    hints = _hints(fn)
    out: dict[str, Any] = {}
    for name in _signature(fn):
        if hints.get(name) is AppState:
            out[name] = state
        elif hints.get(name) == OnStep:
            out[name] = _no_progress
    return out


def arguments_of(fn: Callable[..., Any]) -> list[str]:
    """A tool function's parameters that callers give (not the injected ones)."""
    hints = _hints(fn)
    return [name for name in _signature(fn) if hints.get(name) is not AppState and hints.get(name) != OnStep]


@dataclass
class _Call:
    """The request's call as admitted: its context (who, through what) and when it started."""

    ctx: CallContext
    started: float
    arguments: dict[str, Any]
    audited: dict[str, Any] | None = None  # the arguments as audited, when not audit_arguments(arguments)
    secret: tuple[str, ...] = ()


class Api:
    """The API of one InfrastructorServer: its routes, admission, audit and problem answers."""

    def __init__(self, server: InfrastructorServer) -> None:
        self.server = server
        self.settings = server.settings
        self.disabled = server.disabled_tools
        self.by_name = {route.name: route for route in ROUTES}
        self.streams: dict[str, int] = {}  # open event streams per subject

    def state(self) -> AppState:
        state = self.server.state_of()
        if state is None:
            raise ApiProblem(503, "starting", "The server is starting; retry in a moment.")
        return state

    # -- admission ------------------------------------------------------------------------------------

    def context(self, request: Request, name: str) -> tuple[CallContext, set[str] | None]:
        ctx, scopes = self.server.audit.caller(name, request)
        return dataclasses.replace(ctx, transport="api"), scopes

    async def admit(self, request: Request) -> None:
        """Run before the arguments are validated: who is calling, with which scope, within the size limit;
        the call is audited from here on."""
        route = self.route_of(request)
        ctx, scopes = self.context(request, route.name)
        raw = await self._raw_arguments(request, route)
        call = _Call(ctx, time.perf_counter(), raw, secret=route.secret)
        request.state.call = call
        size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False, default=str))
        if size > self.settings.max_argument_chars:
            call.audited = oversized_arguments(json.dumps(raw, default=str))
            raise ApiProblem(
                413,
                ArgumentsTooLarge.error_type,
                f"Refused tool call: the arguments (as JSON) are {size:,} characters; the limit is "
                f"{self.settings.max_argument_chars:,} (INFRA_MAX_ARGUMENT_CHARS). Send smaller values (no "
                "tool needs more).",
                outcome="denied",
            )
        needed = route.scope
        try:
            authorize(scopes, needed, f"tool {route.name!r}")
        except MissingScope as exc:
            raise ApiProblem(403, exc.error_type, str(exc), outcome="denied") from exc
        known = set(route.arguments)
        unknown = [k for k in raw if k not in known]
        if unknown:
            problems = [f"{k}: unknown argument" for k in unknown]
            problems.append(accepted_arguments(sorted(known - set(route.path_names))))
            raise ApiProblem(
                422, "invalid_arguments", "\n".join([f"Invalid arguments for {route.name}:", *problems])
            )

    async def _raw_arguments(self, request: Request, route: ApiRoute) -> dict[str, Any]:
        """The arguments as sent (before validation): path, query and a JSON body's members."""
        raw: dict[str, Any] = dict(request.path_params)
        for key in request.query_params:
            values = request.query_params.getlist(key)
            raw[key] = values if len(values) > 1 else values[0]
        if route.method != "GET":
            body = await request.body()
            if body:
                try:
                    decoded = json.loads(body)
                except ValueError:
                    decoded = None
                if isinstance(decoded, dict):
                    raw.update(decoded)
        return raw

    def route_of(self, request: Request) -> ApiRoute:
        name = request.scope["route"].name
        return EVENTS_ROUTE if name == "events" else self.by_name[name]

    async def stream(
        self, state: AppState, owner: str, after: int, kinds: list[EventKind] | None, device: str | None
    ) -> AsyncIterator[str]:
        """The events after `after`, then each new one as it is logged, until the client goes."""
        self.streams[owner] = self.streams.get(owner, 0) + 1
        wake = state.events.subscribe_queue(16, types=RECORDED)
        quiet = 0.0
        try:
            yield f"retry: {int(EVENTS_POLL * 2000)}\n\n"
            while True:
                batch = await events_after(state.db, after, kinds=kinds, device=device)
                for event in batch:
                    after = event.id
                    yield _sse(event)
                if batch:
                    quiet = 0.0
                    continue
                try:
                    await asyncio.wait_for(wake.get(), EVENTS_POLL)
                    await state.writer.flush()  # the recorder has queued the row: write it, then read it
                except TimeoutError:
                    quiet += EVENTS_POLL
                    if quiet >= EVENTS_KEEPALIVE:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
        finally:
            wake.close()
            self.streams[owner] -= 1
            if not self.streams[owner]:
                del self.streams[owner]

    # -- the call -------------------------------------------------------------------------------------

    async def call(self, request: Request, route: ApiRoute, arguments: dict[str, Any]) -> Response:
        state = self.state()
        call: _Call = request.state.call
        call.arguments = arguments
        fn = route.tool
        try:
            with calling(call.ctx):
                result = await fn(**arguments, **injected(fn, state))
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, InfrastructorError):
                raise ApiProblem(status_of(cause), cause.error_type, str(cause)) from cause
            raise
        except InfrastructorError as exc:
            raise ApiProblem(status_of(exc), exc.error_type, str(exc)) from exc
        payload = _returns(fn).dump_python(result, mode="json")
        keep: Keep = "newest" if KEEP_NEWEST in route.tags else "first"
        if isinstance(payload, dict):
            payload = fit(payload, self.settings.max_result_chars, keep=keep)
        self.audit(request, "ok", None, None)
        return JSONResponse(payload)

    def audit(self, request: Request, outcome: str, error_type: str | None, message: str | None) -> None:
        call: _Call | None = getattr(request.state, "call", None)
        state = self.server.state_of()
        if call is None or state is None:
            return
        write_audit(
            state,
            call.ctx,
            kind="subscription" if call.ctx.tool == "events" else "tool",
            arguments=call.audited
            if call.audited is not None
            else audit_arguments({k: REDACTED if k in call.secret else v for k, v in call.arguments.items()}),
            device=call.arguments.get("device"),
            started=call.started,
            outcome=outcome,
            error_type=error_type,
            message=message,
        )

    # -- answers for failures -------------------------------------------------------------------------

    async def on_problem(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiProblem)
        exc.detail = redact_text(exc.detail)  # device stderr, a value echoed back
        self.audit(request, exc.outcome, exc.error_type, exc.detail)
        call: _Call | None = getattr(request.state, "call", None)
        return problem_response(exc, call.ctx.request_id if call else None)

    async def on_invalid(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        route = self.route_of(request)
        if getattr(request.state, "call", None) is None:
            try:  # a body that is not JSON fails before admission: admit it now (scope first)
                await self.admit(request)
            except ApiProblem as problem:
                return await self.on_problem(request, problem)
        errors = [
            {**error, "loc": tuple(error.get("loc", ()))[1:] or ("arguments",)} for error in exc.errors()
        ]
        problems = field_problems(errors)  # type: ignore[arg-type]
        detail = "\n".join([f"Invalid arguments for {route.name}:", *problems])
        return await self.on_problem(request, ApiProblem(422, "invalid_arguments", detail))

    async def on_http_error(self, request: Request, exc: Exception) -> Response:
        """No such route (404) or method (405), or a request the framework refused before any route (400: a
        body that is not JSON, ...): a problem too, saying which, and pointing to the routes there are."""
        assert isinstance(exc, StarletteHTTPException)
        where = f"{request.method} {redact_text(request.url.path)[:200]}"
        routes = f"the routes are listed at {PREFIX}/docs and {PREFIX}/openapi.json."
        if exc.status_code in (404, 405):
            detail = f"No route {where}; {routes}"
        else:
            reason = redact_text(str(exc.detail))[:200] if exc.detail else HTTPStatus(exc.status_code).phrase
            detail = f"Refused {where}: {reason}. Send a JSON object body (Content-Type: application/json); {routes}"
        kind = (
            "not_found"
            if exc.status_code == 404
            else HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        )
        return problem_response(ApiProblem(exc.status_code, kind, detail, headers=dict(exc.headers or {})))

    async def on_unexpected(self, request: Request, exc: Exception) -> Response:
        log.exception("API call %s failed", request.url.path, exc_info=exc)
        problem = ApiProblem(500, "internal", "Internal error; the server log has the details.")
        return await self.on_problem(request, problem)


@functools.cache
def _signature(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


@functools.cache
def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(fn)


@functools.cache
def _returns(fn: Callable[..., Any]) -> TypeAdapter[Any]:
    return TypeAdapter(_hints(fn)["return"])


def _endpoint(api: Api, route: ApiRoute) -> Callable[..., Awaitable[Response]]:
    """An endpoint whose signature is the tool's parameters, placed in path, query or body."""
    fn = route.tool
    hints = typing.get_type_hints(fn, include_extras=True)
    in_body = route.method != "GET"
    params = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)]
    for name in arguments_of(fn):
        p = _signature(fn)[name]
        where: Any
        if p.name in route.path_names:
            where, default = Path(), inspect.Parameter.empty
        else:
            where, default = (Body(embed=True) if in_body else Query()), p.default
        params.append(
            inspect.Parameter(
                p.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[hints[p.name], where],
                default=default,
            )
        )

    async def endpoint(request: Request, **arguments: Any) -> Response:
        return await api.call(request, route, arguments)

    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = route.name
    return endpoint


def _summary(fn: Callable[..., Any]) -> tuple[str, str]:
    doc = inspect.getdoc(fn) or fn.__name__
    first = doc.split(". ")[0].split("\n")[0].rstrip(".")
    return first[:120], doc


# ---- the event stream ------------------------------------------------------------------------------------

# Seconds between looks at the event log when the bus is quiet (events of other replicas arrive this way),
# and between keep-alive comments on a quiet stream.
EVENTS_POLL = 1.0
EVENTS_KEEPALIVE = 15.0


def _sse(event: StreamedEvent) -> str:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"


def events_route(api: Api, app: FastAPI) -> None:
    """GET /events: Server-Sent Events from the event log, resumed after Last-Event-ID (or `after`)."""

    async def events(
        request: Request,
        after: Annotated[
            int | None,
            Query(
                ge=0, le=10**18, description="Resume after this event id (as the Last-Event-ID header does)."
            ),
        ] = None,
        kind: Annotated[list[EventKind] | None, Query(description="Only these kinds of event.")] = None,
        device: Annotated[str | None, Query(max_length=63, description="Only this device's events.")] = None,
    ) -> Response:
        state = api.state()
        call: _Call = request.state.call
        header = request.headers.get("last-event-id", "").strip()
        if after is None and header:
            if not header.isdigit() or len(header) > 18:
                raise ApiProblem(
                    422, "invalid_arguments", f"Last-Event-ID: must be an event id (got {header[:40]!r})"
                )
            after = int(header)
        start = after if after is not None else await last_event_id(state.db)
        owner = call.ctx.subject or call.ctx.client_ip or "?"
        if api.streams.get(owner, 0) >= api.settings.http_max_sessions_per_subject:
            raise ApiProblem(
                429,
                "stream_limit",
                f"Too many open event streams: {owner} already holds {api.streams[owner]} "
                "(INFRA_HTTP_MAX_SESSIONS_PER_SUBJECT). Close one first.",
                outcome="denied",
            )
        call.arguments = {"after": start, "kind": kind, "device": device}
        api.audit(request, "ok", None, None)
        return StreamingResponse(
            api.stream(state, owner, start, kind, device),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.add_api_route(
        "/events",
        events,
        methods=["GET"],
        name="events",
        operation_id="events",
        summary="Server-Sent Events: configuration changes, device health changes, failed polls",
        description=(
            "A text/event-stream of the event log. Each event's `id` is its id in the log: reconnect with "
            "Last-Event-ID (or `after`) to get everything after it; without either the stream starts now. "
            "Each `data` is one JSON StreamedEvent; a comment line keeps a quiet stream open."
        ),
        tags=["events"],
        responses={
            200: {
                "description": "The stream",
                "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamedEvent"}}},
            },
            **ERROR_RESPONSES,
        },
        response_class=StreamingResponse,
        dependencies=[Depends(api.admit)],
        openapi_extra={"x-scope": READ, "x-read-only": True},
    )


# ---- authentication at the edge of the API ------------------------------------------------------------

PUBLIC = frozenset({"/openapi.json", "/docs"})


class ApiAuth:
    """Bearer token required on every route but the OpenAPI document and the docs page: 401 problem+json
    with a challenge. (Refused tokens are audited by the HTTP guard, scopes checked per route.)"""

    def __init__(self, app: ASGIApp, *, hint: str | None) -> None:
        self.app = app
        self.hint = hint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.hint is None
            or scope["type"] != "http"
            or isinstance(scope.get("user"), AuthenticatedUser)
            or scope["path"].removeprefix(scope.get("root_path", "")) in PUBLIC
        ):
            await self.app(scope, receive, send)
            return
        reason = scope.get(REJECTION_SCOPE_KEY)
        challenge = f'Bearer realm="infrastructor", scope="{READ}"'
        if reason is None:
            detail = f"This API needs a bearer token: send Authorization: Bearer <token>; {self.hint}."
        else:
            challenge += (
                f', error="invalid_token", error_description="the bearer token was refused ({reason})"'
            )
            detail = (
                f"The bearer token was refused ({reason}). Send a valid one as Authorization: Bearer "
                f"<token>; {self.hint}."
            )
        problem = ApiProblem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})
        await problem_response(problem)(scope, receive, send)


# ---- the app ----------------------------------------------------------------------------------------------


def build_api(server: InfrastructorServer, *, auth_hint: str | None) -> ASGIApp:
    """The FastAPI app of /api/v1 (mounted there by build_http_app)."""
    api = Api(server)
    app = FastAPI(
        title="Infrastructor API",
        version=__version__,
        summary="The operations MCP agents have, over HTTP: same parameters, results, errors and audit.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    for route in ROUTES:
        if route.name in api.disabled or (route.writes and server.settings.read_only):
            continue
        summary, description = _summary(route.tool)
        app.add_api_route(
            route.path,
            _endpoint(api, route),
            methods=[route.method],
            name=route.name,
            operation_id=route.name,
            summary=summary,
            description=description,
            tags=[route.tool.__module__.rsplit(".", 1)[-1]],
            response_model=typing.get_type_hints(route.tool)["return"],
            responses=ERROR_RESPONSES,
            dependencies=[Depends(api.admit)],
            openapi_extra={"x-scope": route.scope, "x-read-only": route.read_only},
        )
    events_route(api, app)
    app.add_exception_handler(ApiProblem, api.on_problem)
    app.add_exception_handler(RequestValidationError, api.on_invalid)
    app.add_exception_handler(StarletteHTTPException, api.on_http_error)
    app.add_exception_handler(Exception, api.on_unexpected)

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = original()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, model in (("ProblemDetails", ProblemDetails), ("StreamedEvent", StreamedEvent)):
                # a result model of the same name would be replaced, and its routes documented wrongly
                if name in schemas:
                    raise RuntimeError(f"two models are named {name} in the OpenAPI document")
                schemas[name] = model.model_json_schema()
            document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            document["security"] = [{"bearer": []}]
            document["servers"] = [{"url": PREFIX}]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def docs(_request: Request) -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)

    app.add_route("/docs", docs, include_in_schema=False)
    return ApiAuth(app, hint=auth_hint)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Infrastructor API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
code,pre{font:13px ui-monospace,monospace}pre{background:#f4f4f4;padding:.6rem;overflow:auto}
details{border-top:1px solid #ddd;padding:.4rem 0}summary{cursor:pointer}
.m{display:inline-block;width:4.2rem;font-weight:600}.GET{color:#06c}.POST{color:#080}.PATCH{color:#a60}
.DELETE{color:#c00}table{border-collapse:collapse}td,th{padding:.15rem .6rem;text-align:left;vertical-align:top}
.s{color:#777;font-size:13px}
</style></head><body>
<h1>Infrastructor API</h1>
<p>Send <code>Authorization: Bearer &lt;token&gt;</code> (<code>infrastructor token create</code>). Errors are
<code>application/problem+json</code>. The machine-readable description is <a href="openapi.json">openapi.json</a>
(OpenAPI 3.1); this page is built from it, with nothing loaded from elsewhere.</p>
<div id="ops">Loading openapi.json …</div>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const typeOf = s => !s ? "" : s.$ref ? s.$ref.split("/").pop() : s.anyOf ? s.anyOf.map(typeOf).join(" | ")
  : s.type === "array" ? typeOf(s.items) + "[]" : s.enum ? s.enum.map(JSON.stringify).join(" | ") : (s.type || "");
fetch("openapi.json").then(r => r.json()).then(doc => {
  const out = [];
  for (const [path, ops] of Object.entries(doc.paths)) for (const [method, op] of Object.entries(ops)) {
    const params = (op.parameters || []).map(p => `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td>
      <td>${esc(typeOf(p.schema))}${p.required ? " (required)" : ""}</td><td>${esc(p.description)}</td></tr>`);
    const body = op.requestBody ? op.requestBody.content["application/json"].schema : null;
    const ok = op.responses["200"]?.content?.["application/json"]?.schema;
    out.push(`<details><summary><span class="m ${method.toUpperCase()}">${method.toUpperCase()}</span>
      <code>${esc(doc.servers?.[0]?.url || "")}${esc(path)}</code> — ${esc(op.summary)}
      <span class="s">${esc(op["x-scope"])}</span></summary><pre>${esc(op.description)}</pre>
      ${params.length ? `<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>${params.join("")}</table>` : ""}
      ${body ? `<p>JSON body: <code>${esc(typeOf(body))}</code></p>` : ""}
      <p>Returns <code>${esc(typeOf(ok))}</code> (schema in openapi.json)</p></details>`);
  }
  document.getElementById("ops").innerHTML = out.join("");
}).catch(e => { document.getElementById("ops").textContent = "Could not load openapi.json: " + e; });
</script></body></html>
"""
