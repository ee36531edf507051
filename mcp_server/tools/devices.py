"""Device tools: list, inspect, add, change, remove, test and import devices."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import BaseModel, Field

from mcp_server.collection import ConnectionTest
from mcp_server.devices import (
    NAME_PATTERN,
    DeviceInfo,
    SSHConfigImport,
    device_spec,
    import_ssh_hosts,
    spec_changes,
)
from mcp_server.state import AppState, current_state
from mcp_server.tools import READ_ONLY, WRITE_TAGS, DeviceArg, changes, expected_errors

Tags = Annotated[list[str] | None, Field(description="Free-form labels, e.g. ['nas', 'prod'].")]


class DeviceList(BaseModel):
    devices: list[DeviceInfo]
    total: int


class RemovedDevice(BaseModel):
    removed: str
    cache_entries_dropped: int


TOOLSET = "devices"


# what the tools that change the registry are: local, not destructive, not idempotent unless they say so
WRITE = changes(destructive=False, idempotent=False, open_world=False)


@tool(annotations=READ_ONLY | {"openWorldHint": False})
async def list_devices(tags: Tags = None, state: AppState = Depends(current_state)) -> DeviceList:
    """List registered devices (optionally only those carrying all the given tags), with each one's health
    as background polling sees it."""
    await state.refresh_health()
    devices = [state.describe(d) for d in state.devices.list(tags or ())]
    return DeviceList(devices=devices, total=len(devices))


@tool(annotations=READ_ONLY | {"openWorldHint": False})
@expected_errors()
async def get_device(device: DeviceArg, state: AppState = Depends(current_state)) -> DeviceInfo:
    """Show one device's registry entry: address, user, auth method, tags, pinned host key, and its health
    (circuit breaker: ok, degraded, down with the next retry, or unknown)."""
    await state.refresh_health()
    return state.describe(state.devices.get(device))


@tool(annotations=WRITE, tags=WRITE_TAGS)
@expected_errors()
async def add_device(
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Unique device name (slug), e.g. 'nas01'.")],
    hostname: Annotated[str, Field(description="DNS name or IP address to SSH to.")],
    port: Annotated[int, Field(ge=1, le=65535)] = 22,
    username: Annotated[str | None, Field(description="SSH user; default: the server's OS user.")] = None,
    key_path: Annotated[
        str | None,
        Field(description="Private key file on the server, inside INFRA_SSH_FILE_DIRS (default ~/.ssh)."),
    ] = None,
    password: Annotated[str | None, Field(description="SSH password (stored encrypted).")] = None,
    jump_host: Annotated[
        str | None, Field(description="Name of a registered device to tunnel through.")
    ] = None,
    tags: Tags = None,
    description: str = "",
    use_sudo: Annotated[
        bool, Field(description="Run root-only commands (smartctl, zpool) via `sudo -n`.")
    ] = False,
    state: AppState = Depends(current_state),
) -> DeviceInfo:
    """Register an SSH device. The host key is verified against known_hosts or pinned on first connect."""
    spec = device_spec(
        hostname=hostname,
        port=port,
        username=username,
        key_path=key_path,
        password=password,
        jump_host=jump_host,
        tags=tuple(tags or ()),
        description=description,
        use_sudo=use_sudo,
    )
    return state.describe(await state.devices.add(name, spec))


@tool(annotations=WRITE | {"idempotentHint": True}, tags=WRITE_TAGS)
@expected_errors()
async def update_device(
    device: DeviceArg,
    hostname: str | None = None,
    port: Annotated[int | None, Field(ge=1, le=65535)] = None,
    username: str | None = None,
    key_path: str | None = None,
    password: Annotated[str | None, Field(description="New password; empty string removes it.")] = None,
    jump_host: Annotated[str | None, Field(description="Jump device name; empty string removes it.")] = None,
    tags: Tags = None,
    description: str | None = None,
    use_sudo: bool | None = None,
    clear_host_key: Annotated[
        bool,
        Field(
            description="Forget the pinned host key (after a reinstall); it is pinned again on next connect."
        ),
    ] = False,
    state: AppState = Depends(current_state),
) -> DeviceInfo:
    """Change a device's fields; only the given ones change. Drops its pooled connection and cached data."""
    changes = spec_changes(
        hostname=hostname,
        port=port,
        username=username,
        key_path=key_path,
        password=password,
        jump_host=jump_host,
        tags=tags,
        description=description,
        use_sudo=use_sudo,
    )
    updated = await state.devices.update(device, changes, clear_host_key=clear_host_key)
    await state.forget_connection(device)
    return state.describe(updated)


@tool(annotations=WRITE | {"destructiveHint": True, "idempotentHint": True}, tags=WRITE_TAGS)
@expected_errors()
async def remove_device(device: DeviceArg, state: AppState = Depends(current_state)) -> RemovedDevice:
    """Unregister a device: closes its connection and drops its cached data (history stays in the database)."""
    await state.devices.remove(device)
    return RemovedDevice(removed=device, cache_entries_dropped=await state.forget_connection(device))


@tool(annotations=READ_ONLY)
@expected_errors()
async def test_device_connection(
    device: DeviceArg, state: AppState = Depends(current_state)
) -> ConnectionTest:
    """Connect to a device and run a no-op: reports latency, SSH server version and host key, or why it failed."""
    return await state.service.test_connection(device)


@tool(annotations=WRITE, tags=WRITE_TAGS)
@expected_errors()
async def import_ssh_config(
    path: Annotated[
        str | None,
        Field(
            description="OpenSSH client config on the server, inside INFRA_SSH_FILE_DIRS "
            "(default ~/.ssh); default ~/.ssh/config."
        ),
    ] = None,
    hosts: Annotated[list[str] | None, Field(description="Only these Host aliases (default: all).")] = None,
    tags: Tags = None,
    state: AppState = Depends(current_state),
) -> SSHConfigImport:
    """Register the hosts of an OpenSSH config file (HostName, Port, User, IdentityFile, ProxyJump)."""
    return await import_ssh_hosts(state.devices, path or "~/.ssh/config", hosts, tags or [])


TOOLS = (
    list_devices,
    get_device,
    add_device,
    update_device,
    remove_device,
    test_device_connection,
    import_ssh_config,
)
