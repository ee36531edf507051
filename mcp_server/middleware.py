"""MCP middleware: audit every tool call and resource read (with identity), enforce scopes, turn client
mistakes into readable invalid-params errors, bound results."""

from __future__ import annotations

import asyncio
import getpass
import inspect
import ipaddress
import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import mcp_types as mt
from fastmcp.exceptions import FastMCPError, NotFoundError, PromptError, ResourceError, ToolError
from fastmcp.exceptions import ValidationError as ArgumentsError
from fastmcp.resources import ResourceContent, ResourceResult
from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import ToolResult
from mcp import MCPError
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from mcp_server.audit import CallContext, audit_arguments, calling, oversized_arguments, read_deadline
from mcp_server.auth import ADMIN, READ, granted
from mcp_server.budget import MARKER, Keep, fit
from mcp_server.commands.containers import CONTAINER_PATTERN
from mcp_server.errors import (
    ArgumentsTooLarge,
    DatabaseTimeout,
    DeviceNotFound,
    InfrastructorError,
    InvalidParameter,
    MissingScope,
    Overloaded,
    UnknownCommand,
    field_problems,
)
from mcp_server.redact import redact_text
from mcp_server.settings import Settings
from mcp_server.times import parse_time
from mcp_server.tools.notify import warn

if TYPE_CHECKING:
    from mcp_server.state import AppState

# No tool is named longer than this; a longer name is refused before it is looked up, echoed or stored.
MAX_TOOL_NAME = 128

RESOURCE_SCOPES = {"infra://audit/": ADMIN}

# Seconds after two calls last overlapped before a call journals its own audit row again (see _audited)
ALONE_AFTER = 1.0


def _resource_scope(uri: str) -> str:
    return next((scope for prefix, scope in RESOURCE_SCOPES.items() if uri.startswith(prefix)), READ)


def client_ip(request: Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """The socket peer; X-Forwarded-For is followed only through peers listed as trusted proxies."""
    peer = request.client.host if request.client else None
    if peer is None or not trusted:
        return peer
    hops = [
        peer,
        *reversed([h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]),
    ]
    for hop in hops:
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop[:64]
        if not any(address in net for net in trusted):
            return hop
    return hops[-1]


def authorize(scopes: set[str] | None, needed: str, what: str) -> None:
    """Raise MissingScope unless `scopes` (None: not checked) hold `needed`."""
    if scopes is not None and needed not in scopes:
        have = ", ".join(sorted(scopes)) or "no infra scopes"
        raise MissingScope(f"missing scope {needed}: {what} needs {needed}; this token has {have}.")


def write_audit(
    state: AppState,
    ctx: CallContext,
    *,
    kind: str,
    arguments: dict[str, Any],
    device: object,
    started: float,
    outcome: str,
    error_type: str | None,
    message: str | None,
) -> None:
    """The audit row of one call (a tool call, a resource read, a subscription): what its collections ran,
    from the context's trace."""
    trace = ctx.trace
    state.writer.audit(
        ctx.to_audit(
            kind,
            started=started,
            outcome=outcome,
            error_type=error_type,
            error_message=message,
            arguments=arguments,
            device=device,
            command=trace.command,
            cache_hit=trace.cache_hit,
            ssh_commands=trace.ssh_commands,
        )
    )


def overloaded(state: AppState) -> None:
    """Refuse a new call while the audit cannot keep up (see BatchWriter.overloaded)."""
    reason = state.writer.overloaded()
    if reason is not None:
        state.writer.refused += 1
        raise Overloaded(f"The server is overloaded: {reason}. Retry in a few seconds; nothing was done.")


def _outcome(exc: BaseException) -> tuple[str, str, str | None]:
    """(outcome, error_type, message safe to store) for an exception leaving a call."""
    cause = exc.__cause__
    if isinstance(cause, MissingScope):
        return "denied", cause.error_type, str(cause)
    if isinstance(cause, ArgumentsTooLarge | Overloaded):
        return "denied", cause.error_type, str(cause)
    if isinstance(cause, InfrastructorError):
        return "error", cause.error_type, str(cause)
    if isinstance(exc, ValidationError) or isinstance(cause, ValidationError):
        return "error", "invalid_arguments", str(exc)[:1000]
    if isinstance(exc, NotFoundError):
        return "error", "not_found", str(exc)
    if isinstance(exc, MCPError) and exc.error.code == mt.INVALID_PARAMS:
        return "error", "invalid_params", redact_text(exc.error.message)[:1000]
    if isinstance(exc, FastMCPError):
        return "error", type(exc).__name__, str(exc)[:1000]
    return "error", "internal", None


class AuditMiddleware(Middleware):
    """One audit row per tool call and resource read — allowed, failed or denied — and scope enforcement.

    It also sets the CallContext that collection rows inherit (request id, identity), so each collection row
    links to the call that caused it.
    """

    def __init__(self, settings: Settings, transport: str, *, enforce_scopes: bool) -> None:
        self.settings = settings
        self.transport = transport
        self.enforce_scopes = enforce_scopes
        self.trusted = settings.trusted_proxy_networks
        self.os_user = getpass.getuser()
        # tool name -> the scope it needs; filled by build_server once every tool is registered
        self.tool_scopes: dict[str, str] = {}
        self.running = 0  # calls and reads between their start and their audit row
        self.overlapped_at = -math.inf  # monotonic time a call last started while another ran

    def _context(self, target: str) -> tuple[CallContext, set[str] | None]:
        try:
            request: Request | None = get_http_request()
        except RuntimeError:
            request = None
        return self.caller(target, request)

    def caller(self, target: str, request: Request | None) -> tuple[CallContext, set[str] | None]:
        """The context of a call that arrived with `request` (None: not over HTTP) and, over authenticated
        HTTP, the caller's effective scopes."""
        if request is None:
            subject = f"local:{self.os_user}" if self.transport == "stdio" else None
            return CallContext(transport=self.transport, tool=target, subject=subject), None
        user = request.scope.get("user")
        token = user.access_token if isinstance(user, AuthenticatedUser) else None
        claims = getattr(token, "claims", None) or {}
        ctx = CallContext(
            transport="http",
            tool=target,
            subject=claims.get("sub"),
            client_id=token.client_id if token is not None else None,
            client_ip=client_ip(request, self.trusted),
            user_agent=(request.headers.get("user-agent") or "")[:512] or None,
            request_path=request.url.path,
        )
        scopes = granted(token.scopes) if token is not None else set()
        return ctx, scopes if self.enforce_scopes else None

    def _too_large(self, what: str, text: str) -> str | None:
        limit = self.settings.max_argument_chars
        if len(text) <= limit:
            return None
        return (
            f"{what} {len(text):,} characters; the limit is {limit:,} (INFRA_MAX_ARGUMENT_CHARS). "
            "Send smaller values (no tool needs more)."
        )

    async def on_call_tool(
        self, context: MiddlewareContext[mt.CallToolRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        name = context.message.name
        arguments = dict(context.message.arguments or {})
        # Size first, before any other work: a huge call must cost no more than measuring it.
        encoded = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, default=str)
        problem = self._too_large("the arguments (as JSON) are", encoded)
        if len(name) > MAX_TOOL_NAME:
            encoded = name  # what the audit fingerprints
            problem = (
                f"the tool name is {len(name):,} characters; no tool has a name longer than {MAX_TOOL_NAME}."
            )
        ctx, scopes = self._context(name[:MAX_TOOL_NAME])
        needed = self.tool_scopes.get(name, READ)  # an unknown tool fails as unknown, after this

        def admit() -> None:
            if problem is not None:
                raise ArgumentsTooLarge(f"Refused tool call: {problem}")
            authorize(scopes, needed, f"tool {name!r}")

        return await self._audited(
            context,
            call_next,
            ctx,
            "tool",
            oversized_arguments(encoded) if problem else audit_arguments(arguments),
            None if problem else arguments.get("device"),
            admit,
            ToolError,
        )

    async def on_read_resource(
        self, context: MiddlewareContext[mt.ReadResourceRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        uri = str(context.message.uri)
        problem = self._too_large("the resource URI is", uri)
        ctx, scopes = self._context(uri[:MAX_TOOL_NAME])
        needed = _resource_scope(uri)

        def admit() -> None:
            if problem is not None:
                raise ArgumentsTooLarge(f"Refused resource read: {problem}")
            authorize(scopes, needed, f"resource {uri}")

        return await self._audited(
            context,
            call_next,
            ctx,
            "resource",
            # the tool column keeps 128 characters; a longer URI is kept whole (redacted, bounded) here
            oversized_arguments(uri)
            if problem
            else audit_arguments({"uri": uri} if len(uri) > MAX_TOOL_NAME else {}),
            None,
            admit,
            ResourceError,
        )

    async def _audited(
        self,
        context: MiddlewareContext[Any],
        call_next: CallNext[Any, Any],
        ctx: CallContext,
        kind: str,
        arguments: dict[str, Any],
        device: object,
        admit: Callable[[], None],
        error: type[Exception],
    ) -> Any:
        started = time.perf_counter()
        outcome, error_type, message = "ok", None, None
        state = context.fastmcp_context.lifespan_context.get("state") if context.fastmcp_context else None
        answered = True
        self.running += 1
        if self.running > 1:
            self.overlapped_at = time.monotonic()
        try:
            with calling(ctx), read_deadline(self.settings.db_read_timeout):
                try:
                    admit()
                    if state is not None:
                        overloaded(state)
                except InfrastructorError as exc:
                    raise error(str(exc)) from exc
                return await call_next(context)
        except BaseException as exc:
            answered = not isinstance(exc, asyncio.CancelledError)
            outcome, error_type, message = _outcome(exc)
            if isinstance(exc.__cause__, DatabaseTimeout) and str(exc) != message:
                # from any tool, also one that masks unexpected errors: the caller can act on it
                raise error(message) from exc.__cause__
            masked = _redacted(exc, error)
            if masked is not None:
                raise masked from exc.__cause__
            raise
        finally:
            self.running -= 1
            if state is not None:
                write_audit(
                    state,
                    ctx,
                    kind=kind,
                    arguments=arguments,
                    device=device,
                    started=started,
                    outcome=outcome,
                    error_type=error_type,
                    message=message,
                )
                sync = self.settings.audit_sync
                if answered and sync == "write":
                    # the answer leaves only once its audit row (and its collections') is written to the
                    # journal, here on the loop; the journal thread fsyncs it as the answer leaves
                    await state.writer.durable(synced=False, inline=True)
                elif answered and sync == "fsync":
                    # the answer leaves only once those rows are fsynced. While calls come one at a time,
                    # each writes its own here (no hand-off to the journal thread, the event loop waits for
                    # the fsync); once they overlap, the journal thread writes them in groups (group commit)
                    # and the loop goes on serving
                    alone = time.monotonic() - self.overlapped_at > ALONE_AFTER
                    await state.writer.durable(inline=alone and self.running == 0)


def _redacted(exc: BaseException, error: type[Exception]) -> Exception | None:
    """The client-visible error with secrets masked (device stderr, input echoed by a validation error),
    when it held any."""
    if not isinstance(exc, FastMCPError | NotFoundError | ValidationError):
        return None
    text = str(exc)
    masked = redact_text(text)
    if masked == text:
        return None
    # as the call's own error type: FastMCP rebuilds some messages (an unknown tool's) from the raw input
    return error(masked)


def accepted_arguments(names: list[str]) -> str:
    return f"accepted arguments: {', '.join(names)}" if names else "it takes no arguments"


class InvalidParamsMiddleware(Middleware):
    """Client mistakes as the client can act on them: one readable line per bad tool or prompt argument
    (no pydantic internals), and invalid params (-32602) for a prompt's missing or invalid argument and for
    a resource template naming an unknown device, command or path, as FastMCP answers an unknown URI.

    It sits inside the audit, so audit rows keep the readable text.
    """

    def __init__(self) -> None:
        # the tools this server offers; filled by build_server once they are registered
        self.offered: set[str] = set()

    async def on_call_tool(
        self, context: MiddlewareContext[mt.CallToolRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        name = context.message.name
        if name not in self.offered:
            # as the protocol says (FastMCP answers with a tool result marked as an error)
            shown = redact_text(name)
            raise MCPError(
                code=mt.INVALID_PARAMS,
                message=f"Unknown tool: {shown!r}. tools/list shows the tools this server offers.",
                data={"tool": shown},
            )
        try:
            return await call_next(context)
        except (ArgumentsError, ValidationError) as exc:
            cause = exc if isinstance(exc, ValidationError) else exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            name = context.message.name
            problems = field_problems(cause)
            tool = await context.fastmcp_context.fastmcp.get_tool(name) if context.fastmcp_context else None
            if tool is not None and any(p.endswith("unknown argument") for p in problems):
                problems.append(accepted_arguments(list(tool.parameters.get("properties", {}))))
            raise ArgumentsError("\n".join([f"Invalid arguments for {name}:", *problems])) from cause

    async def on_get_prompt(
        self, context: MiddlewareContext[mt.GetPromptRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        name = context.message.name
        given = context.message.arguments or {}
        server = context.fastmcp_context.fastmcp if context.fastmcp_context else None
        prompt = await server.get_prompt(name) if server is not None else None
        if prompt is None:
            return await call_next(context)  # unknown: FastMCP's own invalid-params answer
        declared = prompt.arguments or []
        problems = [f"{a.name}: required" for a in declared if a.required and a.name not in given]
        problems += [f"{k}: unknown argument" for k in given if k not in {a.name for a in declared}]
        if not problems and context.fastmcp_context is not None:
            state = context.fastmcp_context.lifespan_context.get("state")
            problems = _argument_problems(state, given)
        if not problems:
            try:
                return await call_next(context)
            except PromptError:
                problems = _value_problems(getattr(prompt, "fn", None), given)
                if not problems:
                    raise
        usage = [f"{a.name}{'' if a.required else ' (optional)'}" for a in declared]
        problems = [redact_text(p) for p in problems]  # they may echo a value
        raise MCPError(
            code=mt.INVALID_PARAMS,
            message="\n".join(
                [f"Invalid arguments for prompt {name}:", *problems, accepted_arguments(usage)]
            ),
            data={"prompt": name, "problems": problems},
        )

    async def on_read_resource(
        self, context: MiddlewareContext[mt.ReadResourceRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        try:
            return await call_next(context)
        except ResourceError as exc:
            if isinstance(exc.__cause__, DeviceNotFound | UnknownCommand | InvalidParameter):
                # both echo the URI, which may carry a secret
                uri = redact_text(str(context.message.uri))
                message = redact_text(str(exc))
                raise MCPError(code=mt.INVALID_PARAMS, message=message, data={"uri": uri}) from exc.__cause__
            raise


def _argument_problems(state: AppState | None, given: dict[str, Any]) -> list[str]:
    """Prompt argument values the tools they name would refuse: an unknown device, a `since` that is no time,
    a container name no engine accepts. The prompt would otherwise hand the agent calls that fail."""
    problems: list[str] = []
    device = given.get("device")
    if device and state is not None:
        try:
            state.devices.get(device)
        except DeviceNotFound as exc:
            problems.append(f"device: {exc}")
    since = given.get("since")
    if since is not None:
        try:
            parse_time(since, "since", now=datetime.now(UTC))
        except InvalidParameter as exc:
            problems.append(str(exc))
    container = given.get("container")
    if container is not None and not re.fullmatch(CONTAINER_PATTERN[1:-1], container):
        problems.append(
            "container: must be a container name or id (letters, digits, '_', '.', '-'; starting with a letter or "
            "digit), as list_containers shows it"
        )
    return problems


def _value_problems(fn: Any, given: dict[str, Any]) -> list[str]:
    """Why a prompt's argument values fail their types (FastMCP only says rendering failed)."""
    if fn is None:
        return []
    parameters = inspect.signature(fn).parameters
    problems: list[str] = []
    for name, value in given.items():
        annotation = parameters[name].annotation if name in parameters else inspect.Parameter.empty
        if annotation is inspect.Parameter.empty:
            continue
        try:
            TypeAdapter(annotation).validate_python(value)
        except ValidationError as exc:
            problems += [f"{name}{line.removeprefix('arguments')}" for line in field_problems(exc)]
    return problems


def without_nulls(value: Any) -> Any:
    """A JSON value with every object field that is null left out (list items stay where they are)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


class ResultBudgetMiddleware(Middleware):
    """Keeps every tool result and resource read within INFRA_MAX_RESULT_CHARS, cutting whole list items
    (see budget.py); tool results leave null fields out (their listed schemas do not require them). The ui://
    views are the server's own code, not data, and are served whole (a cut page would not run)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        # tools whose lists run oldest to newest (logs): the budget keeps their newest items; filled by
        # build_server from the tools' tags
        self.keep_newest: set[str] = set()

    async def on_call_tool(
        self, context: MiddlewareContext[mt.CallToolRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        result = await call_next(context)
        structured = getattr(result, "structured_content", None)
        if not structured:
            return result
        keep: Keep = "newest" if context.message.name in self.keep_newest else "first"
        lean = without_nulls(structured)
        fitted = fit(lean, self.max_chars, keep=keep)
        if fitted is structured:
            return result
        if fitted is not lean and context.fastmcp_context is not None:
            await warn(context.fastmcp_context, f"{context.message.name}: {fitted[MARKER]}")
        text = json.dumps(fitted, separators=(",", ":"), default=str)
        return ToolResult(
            content=[mt.TextContent(type="text", text=text)], structured_content=fitted, meta=result.meta
        )

    async def on_read_resource(
        self, context: MiddlewareContext[mt.ReadResourceRequestParams], call_next: CallNext[Any, Any]
    ) -> Any:
        result = await call_next(context)
        if str(context.message.uri).startswith("ui://"):
            return result
        contents = result.contents if isinstance(result, ResourceResult) else []
        if all(not isinstance(c.content, str) or len(c.content) <= self.max_chars for c in contents):
            return result
        return ResourceResult([self._fit(c) for c in contents], meta=result.meta)

    def _fit(self, item: ResourceContent) -> ResourceContent:
        """One content within the budget: JSON cut by whole list items (newest first lists, such as
        infra://audit/recent, keep their newest), other text cut at the end with a note."""
        text = item.content
        if not isinstance(text, str) or len(text) <= self.max_chars:
            return item
        try:
            payload = json.loads(text) if item.mime_type == "application/json" else None
        except ValueError:
            payload = None
        if isinstance(payload, dict | list):
            # a list has nowhere to carry the marker: it is cut as the `items` of an object
            fitted = fit(payload if isinstance(payload, dict) else {"items": payload}, self.max_chars)
            cut = json.dumps(fitted, separators=(",", ":"), default=str)  # as budget.fit measured it
        else:
            note = f"\n…[{MARKER}: text cut to fit {self.max_chars} characters]"
            cut = text[: max(self.max_chars - len(note), 0)] + note
        return ResourceContent(cut, mime_type=item.mime_type, meta=item.meta)
