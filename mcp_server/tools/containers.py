"""Container tools: list, inspect, logs, stats, compose stacks, and start/stop/restart (scope infra:write)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server.collection import Collected, page_of
from mcp_server.commands.base import GrepText, Limit, Offset
from mcp_server.commands.containers import ContainerName, Since
from mcp_server.parsers.containers import ContainerList, select_containers
from mcp_server.parsers.containers_compose import ComposeStacks
from mcp_server.parsers.containers_inspect import ContainerDetails
from mcp_server.parsers.containers_runtime import ContainerActionResult, ContainerLogs, ContainerStatsList
from mcp_server.reports import containers_with_restarts
from mcp_server.state import AppState, current_state
from mcp_server.tools import (
    KEEP_NEWEST,
    READ_ONLY,
    WRITE_TAGS,
    DeviceArg,
    ForceRefresh,
    changes,
    expected_errors,
)

Container = Annotated[ContainerName, Field(description="Container name or id, as listed by list_containers.")]
StopTimeout = Annotated[
    int | None,
    Field(
        ge=0, le=600, description="Seconds to wait for a graceful stop before killing (docker's default: 10)."
    ),
]

TOOLSET = "containers"


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_containers(
    device: DeviceArg,
    all: Annotated[bool, Field(description="Include stopped containers (default: running only).")] = False,
    name: Annotated[
        str | None,
        Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$", description="Only containers whose name contains this."),
    ] = None,
    label: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9_./-]{1,200}(=[^\x00-\x1f\x7f]{0,200})?$",
            description="Only containers with this label: 'key' or 'key=value'.",
        ),
    ] = None,
    status: Annotated[
        Literal["created", "running", "paused", "restarting", "removing", "exited", "dead"] | None,
        Field(
            description="Only containers in this state (stopped states imply all=true); restarting: in a "
            "restart loop, also where the engine shows running between restarts (podman)."
        ),
    ] = None,
    include_labels: Annotated[
        bool, Field(description="Return every container's labels (long for compose/OCI images).")
    ] = False,
    limit: Limit = 50,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ContainerList]:
    """Containers on a device with image, state, health, restart count, ports, networks and compose project."""
    want_all = all or (status is not None and status != "running")
    result = await containers_with_restarts(state.service, device, all=want_all, force=force_refresh)
    selected = select_containers(result.data, name=name, label=label, status=status)
    if not include_labels:
        selected = [c.model_copy(update={"labels": {}}) for c in selected]
    return page_of(result, "containers", selected, limit, offset)


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_container(
    device: DeviceArg,
    container: Container,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ContainerDetails]:
    """One container in detail: state, health checks, restart count and policy, ports, mounts, networks,
    resource limits and environment (secret values shown as '***')."""
    return await state.service.collect(
        device, "container_inspect", {"container": container}, force_refresh=force_refresh
    )


@tool(annotations=READ_ONLY, tags={KEEP_NEWEST})
@expected_errors()
async def get_container_logs(
    device: DeviceArg,
    container: Container,
    tail: Annotated[int, Field(ge=1, le=2000, description="Newest lines to return.")] = 100,
    since: Since | None = None,
    grep: Annotated[
        GrepText | None,
        Field(description="Only lines containing this exact text (case-sensitive, no wildcards)."),
    ] = None,
    timestamps: Annotated[
        bool, Field(description="Prefix lines with the time docker received them.")
    ] = False,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ContainerLogs]:
    """The newest log lines (stdout and stderr) of a container; with grep, the newest matching lines among
    the last 50,000. Lines are cut at 2000 characters; the oldest lines are dropped to fit the output budget."""
    params = {
        "container": container,
        "tail": tail,
        "since": since,
        "grep": grep,
        "timestamps": timestamps,
    }
    return await state.service.collect(device, "container_logs", params, force_refresh=force_refresh)


@tool(annotations=READ_ONLY)
@expected_errors()
async def get_container_stats(
    device: DeviceArg,
    limit: Limit = 50,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ContainerStatsList]:
    """CPU %, memory use/limit, network and block I/O in bytes of every running container (one sample),
    busiest CPU first."""
    result = await state.service.collect(device, "container_stats", force_refresh=force_refresh)
    return page_of(result, "containers", result.data.containers, limit, offset)


@tool(annotations=READ_ONLY)
@expected_errors()
async def list_compose_stacks(
    device: DeviceArg,
    limit: Limit = 50,
    offset: Offset = 0,
    force_refresh: ForceRefresh = False,
    state: AppState = Depends(current_state),
) -> Collected[ComposeStacks]:
    """Docker Compose projects: status, config files, working directory, and each service's container state."""
    result = await state.service.collect(device, "compose_stacks", force_refresh=force_refresh)
    return page_of(result, "stacks", result.data.stacks, limit, offset)


@tool(annotations=changes(destructive=False, idempotent=True), tags=WRITE_TAGS)
@expected_errors()
async def start_container(
    device: DeviceArg, container: Container, state: AppState = Depends(current_state)
) -> Collected[ContainerActionResult]:
    """Start a stopped container and report its new state; container reads afterwards are fresh."""
    return await state.service.collect(device, "container_start", {"container": container})


@tool(annotations=changes(destructive=True, idempotent=True), tags=WRITE_TAGS)
@expected_errors()
async def stop_container(
    device: DeviceArg,
    container: Container,
    timeout: StopTimeout = None,
    state: AppState = Depends(current_state),
) -> Collected[ContainerActionResult]:
    """Stop a running container (SIGTERM, then SIGKILL after `timeout` seconds) and report its state."""
    return await state.service.collect(device, "container_stop", {"container": container, "timeout": timeout})


@tool(annotations=changes(destructive=True, idempotent=False), tags=WRITE_TAGS)
@expected_errors()
async def restart_container(
    device: DeviceArg,
    container: Container,
    timeout: StopTimeout = None,
    state: AppState = Depends(current_state),
) -> Collected[ContainerActionResult]:
    """Restart a container (stop with `timeout`, then start) and report its new state."""
    return await state.service.collect(
        device, "container_restart", {"container": container, "timeout": timeout}
    )


TOOLS = (
    list_containers,
    get_container,
    get_container_logs,
    get_container_stats,
    list_compose_stacks,
    start_container,
    stop_container,
    restart_container,
)
