"""Configuration tools: watch files, their history, diffs and risk-rated changes; nginx proxy confs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server import ui
from mcp_server.collection import Collected, page_of
from mcp_server.commands.base import Limit, Offset
from mcp_server.config_monitoring.models import (
    ConfigChanges,
    ConfigDiff,
    ConfigHistory,
    UnwatchResult,
    WatchedFiles,
    WatchResult,
)
from mcp_server.errors import InvalidParameter
from mcp_server.parsers.config_paths import MAX_PATH
from mcp_server.parsers.config_proxy import ProxyConfigFile, ProxyConfigs
from mcp_server.state import AppState, current_state
from mcp_server.times import parse_time
from mcp_server.tools import READ_ONLY, WRITE_TAGS, DeviceArg, ForceRefresh, changes, expected_errors

PathArg = Annotated[
    str,
    Field(
        min_length=2,
        max_length=MAX_PATH,
        description="Absolute path on the device, e.g. /opt/stacks/media/compose.yaml or /etc/nginx/conf.d.",
    ),
]
Kind = Annotated[
    Literal["compose", "nginx", "systemd", "file"] | None,
    Field(description="How to parse and classify changes; default: judged by the file name and place."),
]
SinceArg = Annotated[
    str | None,
    Field(
        max_length=40,
        description="Only changes since: a duration back from now ('30m', '24h', '7d') or an ISO 8601 time.",
    ),
]
MinRisk = Annotated[
    Literal["low", "medium", "high"] | None, Field(description="Only changes at least this risky.")
]


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """'24h' -> 24 hours ago; an ISO 8601 time as given (UTC when it has no zone); None when not given."""
    if value is None or value == "":
        return None
    return parse_time(value, "since", now=now or datetime.now(UTC))


def _nginx_dirs(state: AppState, device: str) -> list[str]:
    targets = state.config.targets.get(device, {}).values()
    return [t.path for t in targets if t.is_directory and t.kind == "nginx"][:20]


async def _proxy_configs(state: AppState, device: str, force_refresh: bool) -> Collected[ProxyConfigs]:
    await state.config.load()
    params = {"dirs": _nginx_dirs(state, device), "policy": state.config.policy(device)}
    return await state.service.collect(device, "proxy_configs", params, force_refresh=force_refresh)


TOOLSET = "config"


@tool(annotations=changes(destructive=False, idempotent=True, open_world=True), tags=WRITE_TAGS)
@expected_errors()
async def watch_config_file(
    device: DeviceArg, path: PathArg, kind: Kind = None, state: AppState = Depends(current_state)
) -> WatchResult:
    """Watch a configuration file, or a directory of them (nginx conf.d, SWAG proxy-confs), for changes.

    Its current content becomes the first version; every later change is stored as a new version with a
    diff and a risk rating within about a second. A missing file is watched for creation. Content is
    stored and shown with secrets redacted. Only configuration places may be watched (compose projects,
    nginx/SWAG, systemd units, service configs in /etc, Unraid; more with INFRA_CONFIG_WATCH_ALLOW), never
    credential stores, keys or histories, and a symlink that leads elsewhere is refused on the device.
    """
    return await state.config.watch(device, path, kind)


@tool(annotations=changes(destructive=False, idempotent=True, open_world=False), tags=WRITE_TAGS)
@expected_errors()
async def unwatch_config_file(
    device: DeviceArg, path: PathArg, state: AppState = Depends(current_state)
) -> UnwatchResult:
    """Stop watching a file or directory; its stored versions and changes are kept."""
    return await state.config.unwatch(device, path)


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_watched_files(
    device: Annotated[str | None, Field(description="Only this device (default: all).")] = None,
    discover: Annotated[
        bool,
        Field(
            description="First look for compose files and nginx/SWAG proxy-conf directories on the device "
            "and watch them (when the server allows discovery, INFRA_CONFIG_DISCOVERY)."
        ),
    ] = False,
    limit: Limit = 100,
    offset: Offset = 0,
    state: AppState = Depends(current_state),
) -> WatchedFiles:
    """Watched files and directories, their newest version, and how each device is watched right now
    (inotify, polling, or restarting after an error)."""
    added: list[str] = []
    errors: list[str] = []
    if discover:
        if device is None:
            raise InvalidParameter("discover needs a device.")
        if state.settings.config_discovery:
            added, errors = await state.config.discover(device)
        else:
            errors = ["discovery is off on this server (INFRA_CONFIG_DISCOVERY=false)"]
    result = await state.config.watched(device, limit, offset)
    return result.model_copy(update={"discovered": added, "discovery_errors": errors})


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_config_history(
    device: DeviceArg,
    path: PathArg,
    limit: Limit = 50,
    offset: Offset = 0,
    state: AppState = Depends(current_state),
) -> ConfigHistory:
    """Versions of a watched file, newest first, with each change's type, risk and summary."""
    return await state.config.history(device, path, limit, offset)


@tool(annotations=READ_ONLY, meta=ui.linked("diff"))
@expected_errors()
async def get_config_diff(
    device: DeviceArg,
    path: PathArg,
    from_version: Annotated[
        int | None,
        Field(alias="from", ge=1, description="Older version id (default: the one before `to`)."),
    ] = None,
    to_version: Annotated[
        int | None, Field(alias="to", ge=1, description="Newer version id (default: the newest).")
    ] = None,
    state: AppState = Depends(current_state),
) -> ConfigDiff:
    """Unified diff between two versions of a watched file (default: the latest change), with its risk,
    the reasons and the affected services. Secrets appear as ***."""
    return await state.config.diff(device, path, from_version, to_version)


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_config_changes(
    device: Annotated[str | None, Field(description="Only this device (default: all).")] = None,
    since: SinceArg = None,
    min_risk: MinRisk = None,
    include_diff: Annotated[bool, Field(description="Include each change's unified diff.")] = False,
    limit: Limit = 50,
    offset: Offset = 0,
    state: AppState = Depends(current_state),
) -> ConfigChanges:
    """Detected configuration changes, newest first: what changed, how risky (low/medium/high) and why,
    and which services it affects."""
    return await state.config.changes(
        device=device,
        since=parse_since(since),
        min_risk=min_risk,
        limit=limit,
        offset=offset,
        with_diff=include_diff,
    )


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_proxy_configs(
    device: DeviceArg,
    limit: Limit = 100,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ProxyConfigs]:
    """nginx / SWAG reverse-proxy routes: domain -> upstream, TLS and authentication, from conf.d,
    sites-enabled, SWAG proxy-confs (found through its container's /config mount) and watched nginx dirs."""
    result = await _proxy_configs(state, device, force_refresh)
    slim = [f.model_copy(update={"config": None}) for f in result.data.files]
    result = result.model_copy(update={"data": result.data.model_copy(update={"files": slim})})
    return page_of(result, "routes", result.data.routes, limit, offset)


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_proxy_config(
    device: DeviceArg,
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PATH,
            description="A conf file name (grafana.subdomain.conf), its path, or a domain it serves.",
        ),
    ],
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> ProxyConfigFile:
    """One proxy conf parsed: server blocks, listen, TLS, every location with its upstream and auth."""
    result = await _proxy_configs(state, device, force_refresh)
    files = result.data.files
    found = next((f for f in files if name in (f.name, f.path)), None) or next(
        (f for f in files if name in f.server_names), None
    )
    if found is None:
        known = ", ".join(f.name for f in files) or "none found"
        raise InvalidParameter(f"No proxy conf named or serving {name!r} on {device!r}. Known: {known}.")
    return found


TOOLS = (
    watch_config_file,
    unwatch_config_file,
    list_watched_files,
    get_config_history,
    get_config_diff,
    list_config_changes,
    list_proxy_configs,
    get_proxy_config,
)
