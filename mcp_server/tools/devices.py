"""Device tools: list, inspect, add, change, remove, test and import devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import asyncssh
from fastmcp import FastMCP
from fastmcp.dependencies import Depends
from pydantic import BaseModel, Field

from mcp_server.devices import NAME_PATTERN, Device, device_spec
from mcp_server.errors import InfrastructorError, InvalidParameter
from mcp_server.server import AppState
from mcp_server.ssh_config import load_ssh_config_with_warnings
from mcp_server.tools import READ_ONLY, WRITE_TAGS, DeviceArg, app_state, changes, expected_errors

Tags = Annotated[list[str] | None, Field(description="Free-form labels, e.g. ['nas', 'prod'].")]


class DeviceInfo(BaseModel):
    """A registered device. Secrets are never included."""

    name: str
    hostname: str
    port: int
    username: str | None
    key_path: str | None
    auth: Literal["local", "key", "password", "default"] = Field(
        description="How the server authenticates: a key file, a stored password, or ssh-agent/default keys."
    )
    jump_host: str | None
    tags: list[str]
    description: str
    host_key_fingerprint: str | None = Field(
        description="SHA256 fingerprint of the pinned host key, if pinned."
    )
    use_sudo: bool = Field(
        description="Commands that need root run through `sudo -n` (never with a password)."
    )
    connected: bool = Field(description="True when a pooled SSH connection is open right now.")


class DeviceList(BaseModel):
    devices: list[DeviceInfo]
    total: int


class RemovedDevice(BaseModel):
    removed: str
    cache_entries_dropped: int


class ConnectionTest(BaseModel):
    """Outcome of connecting to a device and running a no-op command."""

    device: str
    ok: bool
    latency_ms: float | None = None
    server_version: str | None = None
    host_key_fingerprint: str | None = None
    host_key_source: str | None = Field(
        default=None,
        description="known_hosts, pinned (earlier), pinned_now (trusted on first use just now) or local.",
    )
    reused_connection: bool | None = None
    error_type: str | None = None
    error: str | None = None


class ImportedHost(BaseModel):
    alias: str
    status: Literal["added", "skipped"]
    reason: str | None = None


class SSHConfigImport(BaseModel):
    path: str
    hosts: list[ImportedHost]
    added: int
    skipped: int
    warnings: list[str]


def fingerprint(key_line: str | None) -> str | None:
    if not key_line:
        return None
    try:
        return str(asyncssh.import_public_key(key_line).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError):
        return None


def describe(device: Device, state: AppState) -> DeviceInfo:
    if device.is_local:
        auth: Literal["local", "key", "password", "default"] = "local"
    elif device.key_path:
        auth = "key"
    elif device.password:
        auth = "password"
    else:
        auth = "default"
    return DeviceInfo(
        name=device.name,
        hostname=device.hostname,
        port=device.port,
        username=device.username,
        key_path=device.key_path,
        auth=auth,
        jump_host=device.jump_host,
        tags=list(device.tags),
        description=device.description,
        host_key_fingerprint=fingerprint(device.host_key),
        use_sudo=device.use_sudo,
        connected=state.ssh.is_connected(device.name),
    )


async def _forget(state: AppState, name: str) -> int:
    await state.ssh.drop(name)
    return state.cache.invalidate(device=name)


def register(mcp: FastMCP) -> None:
    write = changes(destructive=False, idempotent=False, open_world=False)

    @mcp.tool(annotations=READ_ONLY | {"openWorldHint": False})
    async def list_devices(tags: Tags = None, state: AppState = Depends(app_state)) -> DeviceList:
        """List registered devices (optionally only those carrying all the given tags)."""
        devices = [describe(d, state) for d in state.devices.list(tags or ())]
        return DeviceList(devices=devices, total=len(devices))

    @mcp.tool(annotations=READ_ONLY | {"openWorldHint": False})
    @expected_errors()
    async def get_device(device: DeviceArg, state: AppState = Depends(app_state)) -> DeviceInfo:
        """Show one device's registry entry: address, user, auth method, tags, pinned host key."""
        return describe(state.devices.get(device), state)

    @mcp.tool(annotations=write, tags=WRITE_TAGS)
    @expected_errors()
    async def add_device(
        name: Annotated[
            str, Field(pattern=NAME_PATTERN, description="Unique device name (slug), e.g. 'nas01'.")
        ],
        hostname: Annotated[str, Field(description="DNS name or IP address to SSH to.")],
        port: Annotated[int, Field(ge=1, le=65535)] = 22,
        username: Annotated[str | None, Field(description="SSH user; default: the server's OS user.")] = None,
        key_path: Annotated[str | None, Field(description="Private key file on the server.")] = None,
        password: Annotated[str | None, Field(description="SSH password (stored encrypted).")] = None,
        jump_host: Annotated[
            str | None, Field(description="Name of a registered device to tunnel through.")
        ] = None,
        tags: Tags = None,
        description: str = "",
        use_sudo: Annotated[
            bool, Field(description="Run root-only commands (smartctl, zpool) via `sudo -n`.")
        ] = False,
        state: AppState = Depends(app_state),
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
        return describe(await state.devices.add(name, spec), state)

    @mcp.tool(annotations=write | {"idempotentHint": True}, tags=WRITE_TAGS)
    @expected_errors()
    async def update_device(
        device: DeviceArg,
        hostname: str | None = None,
        port: Annotated[int | None, Field(ge=1, le=65535)] = None,
        username: str | None = None,
        key_path: str | None = None,
        password: Annotated[str | None, Field(description="New password; empty string removes it.")] = None,
        jump_host: Annotated[
            str | None, Field(description="Jump device name; empty string removes it.")
        ] = None,
        tags: Tags = None,
        description: str | None = None,
        use_sudo: bool | None = None,
        clear_host_key: Annotated[
            bool,
            Field(
                description="Forget the pinned host key (after a reinstall); it is pinned again on next connect."
            ),
        ] = False,
        state: AppState = Depends(app_state),
    ) -> DeviceInfo:
        """Change a device's fields; only the given ones change. Drops its pooled connection and cached data."""
        changes: dict[str, Any] = {
            k: v
            for k, v in {
                "hostname": hostname,
                "port": port,
                "username": username,
                "key_path": key_path,
                "description": description,
                "use_sudo": use_sudo,
                "tags": tuple(tags) if tags is not None else None,
            }.items()
            if v is not None
        }
        if password is not None:
            changes["password"] = password or None
        if jump_host is not None:
            changes["jump_host"] = jump_host or None
        updated = await state.devices.update(device, changes, clear_host_key=clear_host_key)
        await _forget(state, device)
        return describe(updated, state)

    @mcp.tool(annotations=write | {"destructiveHint": True, "idempotentHint": True}, tags=WRITE_TAGS)
    @expected_errors()
    async def remove_device(device: DeviceArg, state: AppState = Depends(app_state)) -> RemovedDevice:
        """Unregister a device: closes its connection and drops its cached data (history stays in the database)."""
        await state.devices.remove(device)
        return RemovedDevice(removed=device, cache_entries_dropped=await _forget(state, device))

    @mcp.tool(annotations=READ_ONLY)
    @expected_errors()
    async def test_device_connection(
        device: DeviceArg, state: AppState = Depends(app_state)
    ) -> ConnectionTest:
        """Connect to a device and run a no-op: reports latency, SSH server version and host key, or why it failed."""
        state.devices.get(device)  # an unknown name is a caller error, not a connection failure
        try:
            probe = await state.service.probe(device)
        except InfrastructorError as exc:
            return ConnectionTest(device=device, ok=False, error_type=exc.error_type, error=str(exc))
        return ConnectionTest(
            device=device,
            ok=True,
            latency_ms=round(probe.latency_ms, 2),
            server_version=probe.server_version or None,
            host_key_fingerprint=probe.host_key_fingerprint or None,
            host_key_source=probe.host_key_source,
            reused_connection=probe.reused_connection,
        )

    @mcp.tool(annotations=write, tags=WRITE_TAGS)
    @expected_errors()
    async def import_ssh_config(
        path: Annotated[
            str | None, Field(description="OpenSSH client config on the server; default ~/.ssh/config.")
        ] = None,
        hosts: Annotated[
            list[str] | None, Field(description="Only these Host aliases (default: all).")
        ] = None,
        tags: Tags = None,
        state: AppState = Depends(app_state),
    ) -> SSHConfigImport:
        """Register the hosts of an OpenSSH config file (HostName, Port, User, IdentityFile, ProxyJump)."""
        return await import_config(state, Path(path or "~/.ssh/config").expanduser(), hosts, tags or [])


def _existing(identity_file: str | None, warnings: list[str], alias: str) -> str | None:
    """IdentityFile if it exists; ssh itself silently skips missing ones, we say so."""
    if identity_file and not Path(identity_file).is_file():
        warnings.append(f"{alias}: IdentityFile {identity_file!r} does not exist; using default keys")
        return None
    return identity_file


async def import_config(
    state: AppState, path: Path, only: list[str] | None, tags: list[str]
) -> SSHConfigImport:
    """Add every concrete Host of an OpenSSH config; jump hosts first so ProxyJump can refer to them."""
    if not path.is_file():
        raise InvalidParameter(f"No SSH config file at {str(path)!r}.")
    entries, warnings = load_ssh_config_with_warnings(path)
    wanted = set(only) if only else None
    by_alias = {e.alias: e for e in entries}
    ordered = sorted(entries, key=lambda e: 0 if any(o.proxy_jump == e.alias for o in entries) else 1)
    results: list[ImportedHost] = []
    for entry in ordered:
        if wanted is not None and entry.alias not in wanted:
            continue
        name = entry.alias.lower()
        jump = None
        if entry.proxy_jump:
            jump = entry.proxy_jump.lower() if entry.proxy_jump in by_alias else None
            if jump is None:
                results.append(
                    ImportedHost(
                        alias=entry.alias,
                        status="skipped",
                        reason=f"ProxyJump {entry.proxy_jump!r} is not a Host in this file",
                    )
                )
                continue
        try:
            spec = device_spec(
                hostname=entry.hostname,
                port=entry.port,
                username=entry.user,
                key_path=_existing(entry.identity_file, warnings, entry.alias),
                jump_host=jump,
                tags=tuple(tags),
                description=f"Imported from {path}",
            )
            await state.devices.add(name, spec)
        except InfrastructorError as exc:
            results.append(ImportedHost(alias=entry.alias, status="skipped", reason=str(exc)))
            continue
        results.append(ImportedHost(alias=entry.alias, status="added"))
    added = sum(r.status == "added" for r in results)
    return SSHConfigImport(
        path=str(path), hosts=results, added=added, skipped=len(results) - added, warnings=warnings
    )
