"""MCP resources: devices, per-device command results, the command catalogue, the recent audit, cache
statistics and watched configuration files; and the completion of device, command and path arguments for
resource templates and prompts."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import mcp_types as mt
from fastmcp.dependencies import Depends
from fastmcp.exceptions import ResourceError
from fastmcp.resources import resource
from fastmcp.server.completions import MAX_COMPLETION_VALUES
from fastmcp.server.dependencies import get_access_token, get_http_request
from mcp import MCPError

from mcp_server.auth import READ, granted
from mcp_server.state import AppState, current_state
from mcp_server.tools import expected_errors

if TYPE_CHECKING:
    from mcp_server.server import InfrastructorServer


@resource("infra://devices", mime_type="application/json")
async def devices(state: AppState = Depends(current_state)) -> list[dict[str, Any]]:
    """Every registered device (no secrets)."""
    return [state.describe(d).model_dump(mode="json") for d in state.devices.list()]


@resource("infra://devices/{device}", mime_type="application/json")
@expected_errors(ResourceError)
async def device(device: str, state: AppState = Depends(current_state)) -> dict[str, Any]:
    """One device's registry entry."""
    return state.describe(state.devices.get(device)).model_dump(mode="json")


@resource("infra://devices/{device}/{command}", mime_type="application/json")
@expected_errors(ResourceError)
async def device_command(
    device: str, command: str, state: AppState = Depends(current_state)
) -> dict[str, Any]:
    """A command's result for a device with default parameters (cached like the tools)."""
    state.registry.get_read(command)
    result = await state.service.collect(device, command)
    return result.model_dump(mode="json")


@resource("infra://commands", mime_type="application/json")
async def commands(state: AppState = Depends(current_state)) -> dict[str, Any]:
    """Every registered command: name, category, summary, cache TTL, parameters."""
    return state.registry.catalogue().model_dump(mode="json")


@resource("infra://audit/recent", mime_type="application/json")
async def audit_recent(state: AppState = Depends(current_state)) -> dict[str, Any]:
    """The 50 most recent audit entries, newest first (scope infra:admin)."""
    return (await state.audit_page(limit=50, offset=0)).model_dump(mode="json")


@resource("infra://cache/stats", mime_type="application/json")
async def cache_stats(state: AppState = Depends(current_state)) -> dict[str, Any]:
    """Cache hit/miss/eviction counters."""
    return state.cache.stats().model_dump(mode="json")


@resource("infra://config/{device}/{path*}", mime_type="application/json")
@expected_errors(ResourceError)
async def config_file(device: str, path: str, state: AppState = Depends(current_state)) -> dict[str, Any]:
    """A watched configuration file as it is now (secrets redacted) with its parsed structure."""
    current = await state.config.current(device, "/" + path.lstrip("/"))
    return current.model_dump(mode="json")


RESOURCES = (devices, device, device_command, commands, audit_recent, cache_stats, config_file)


def register(mcp: InfrastructorServer) -> None:
    """Add every resource, and the completion of their arguments, to the server."""
    for each in RESOURCES:
        mcp.add_resource(each)
    mcp.add_completion_handler(functools.partial(complete, mcp))


async def complete(
    mcp: InfrastructorServer,
    ref: mt.PromptReference | mt.ResourceTemplateReference,
    argument: mt.CompletionArgument,
    context: mt.CompletionContext | None,
) -> mt.Completion:
    """Device names, readable command names and a device's watched paths, by prefix."""
    _check_read(mcp)
    state = mcp.state_of()
    if state is None:
        return mt.Completion(values=[])
    known = (context.arguments if context is not None else None) or {}
    candidates = await _candidates(state, ref, argument.name, known)
    matches = [c for c in candidates if c.startswith(argument.value)]
    return mt.Completion(
        values=matches[:MAX_COMPLETION_VALUES],
        total=len(matches),
        has_more=len(matches) > MAX_COMPLETION_VALUES,
    )


async def _candidates(
    state: AppState, ref: mt.PromptReference | mt.ResourceTemplateReference, name: str, known: dict[str, str]
) -> list[str]:
    if name == "device":
        return state.devices.names()
    if name == "command" and isinstance(ref, mt.ResourceTemplateReference):
        return state.registry.readable()  # what infra://devices/{device}/{command} will read
    if name == "path" and isinstance(ref, mt.ResourceTemplateReference) and known.get("device"):
        config = state.config
        await config.load()
        device = known["device"]
        files = {p for (d, p) in config.latest if d == device}
        files |= {p for p, t in config.targets.get(device, {}).items() if not t.is_directory}
        return sorted(p.lstrip("/") for p in files)  # the template's {path*} has no leading slash
    return []


def _check_read(mcp: InfrastructorServer) -> None:
    """Over authenticated HTTP, completions (device names, watched paths) need infra:read like resources."""
    if mcp.auth is None:
        return
    try:
        get_http_request()
    except RuntimeError:
        return  # in memory or stdio: the local user
    token = get_access_token()
    have = granted(token.scopes) if token is not None else set()
    if READ not in have:
        listed = ", ".join(sorted(have)) or "no infra scopes"
        raise MCPError(
            code=mt.INVALID_REQUEST,
            message=f"missing scope {READ}: completions need {READ}; this token has {listed}.",
        )
