"""Thin MCP adapters: each tool validates its arguments (via its signature) and makes one call into the core.

Each area module defines its tools as module-level functions marked with FastMCP's `@tool`, lists them in
`TOOLS` and names its `TOOLSET`; build_server registers them with `add_tool()` (server.areas() lists the areas).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

from fastmcp.exceptions import FastMCPError, ToolError
from pydantic import Field

from mcp_server.errors import InfrastructorError

P = ParamSpec("P")
R = TypeVar("R")


def expected_errors(
    error: type[FastMCPError] = ToolError,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Turn InfrastructorError into a client-visible ToolError/ResourceError with the same message.

    This is the one place expected failures become protocol errors; anything else is masked by FastMCP
    (mask_error_details) and logged with its traceback. Expected ones (an unknown device, a host that is down)
    are the caller's to read and are in the audit log: FastMCP logs them at INFO, not as ERROR tracebacks.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except InfrastructorError as exc:
                raise error(str(exc), log_level=logging.INFO) from exc

        return wrapper

    return decorate


DeviceArg = Annotated[str, Field(description="From list_devices.")]
ForceRefresh = Annotated[
    bool,
    Field(description="Bypass the cache."),
]

# Tools whose results hold lists ordered oldest to newest: the result budget keeps the newest items.
KEEP_NEWEST = "budget:keep-newest"

# Tools tagged with a scope need it over authenticated HTTP (see middleware.py); untagged tools need infra:read.
WRITE_TAGS = {"scope:infra:write"}
ADMIN_TAGS = {"scope:infra:admin"}


def changes(*, destructive: bool, idempotent: bool, open_world: bool = True) -> dict[str, Any]:
    """Annotations of a tool that changes something; hints at their protocol defaults (destructive, not
    idempotent, open world) are left out."""
    hints: dict[str, Any] = {"readOnlyHint": False}
    if not destructive:
        hints["destructiveHint"] = False
    if idempotent:
        hints["idempotentHint"] = True
    if not open_world:
        hints["openWorldHint"] = False
    return hints


# destructiveHint and idempotentHint mean something only when readOnlyHint is false; openWorldHint defaults to
# true: a read tool's annotations are this one flag (plus openWorldHint=false for those that stay local).
READ_ONLY: dict[str, Any] = {"readOnlyHint": True}
