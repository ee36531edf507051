"""Devices: the Device model and the DeviceRegistry (in-memory index, written through to the database)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from mcp_server import NAME_PATTERN as NAME_PATTERN  # re-exported
from mcp_server.db.changes import announce
from mcp_server.db.engine import Database
from mcp_server.db.tables import DeviceRow
from mcp_server.errors import (
    DeviceExists,
    DeviceLimit,
    DeviceNotFound,
    InfrastructorError,
    InvalidParameter,
    invalid,
)
from mcp_server.events import DeviceChanged, EventBus
from mcp_server.redact import redact_text
from mcp_server.secrets import SecretStore
from mcp_server.ssh_config import parse_ssh_config_with_warnings
from mcp_server.ssh_files import FilePolicy, check_key_path, include_access, key_problem, read_ssh_config

LOCAL = "local"
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.:%\[\]-]{1,253}$")

DeviceName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Device name: lower-case letters, digits, '.', '_' or '-', at most 63 characters.",
    ),
]


class Device(BaseModel):
    """A host Infrastructor can collect from. `local` is the machine the server runs on."""

    model_config = ConfigDict(frozen=True)

    name: DeviceName
    hostname: str = Field(description="DNS name or IP address the SSH connection goes to.")
    port: int = Field(default=22, ge=1, le=65535)
    username: str | None = Field(default=None, description="SSH user; default: the server's OS user.")
    key_path: str | None = Field(
        default=None, description="Private key file for SSH; default: ssh agent/keys."
    )
    password: str | None = Field(default=None, repr=False, exclude=True, description="Never serialised.")
    jump_host: str | None = Field(default=None, description="Name of another device to tunnel through.")
    tags: tuple[str, ...] = ()
    description: str = ""
    host_key: str | None = Field(default=None, description="Pinned host key (OpenSSH public key line).")
    use_sudo: bool = Field(default=False, description="Run commands that need root through `sudo -n`.")
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL and self.hostname == LOCAL

    def connection_fields(self) -> tuple[object, ...]:
        """What a pooled connection depends on; a change to any of these drops the connection."""
        return (self.hostname, self.port, self.username, self.key_path, self.password, self.jump_host)


class DeviceSpec(BaseModel):
    """What a caller may set on a device (add_device / update_device / import)."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(pattern=_HOSTNAME.pattern, description="DNS name or IP address.")
    port: int = Field(default=22, ge=1, le=65535)
    username: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
    key_path: str | None = None
    password: str | None = Field(default=None, repr=False)
    jump_host: str | None = Field(default=None, pattern=NAME_PATTERN)
    tags: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")], ...] = ()
    description: str = Field(default="", max_length=1000)
    use_sudo: bool = False


def spec_changes(**given: Any) -> dict[str, Any]:
    """update_device's arguments as registry changes: None leaves a field alone, and an empty password or
    jump_host removes it."""
    changes = {k: v for k, v in given.items() if v is not None}
    for field in ("password", "jump_host"):
        if changes.get(field) == "":
            changes[field] = None
    if "tags" in changes:
        changes["tags"] = tuple(changes["tags"])
    return changes


def device_spec(**fields: Any) -> DeviceSpec:
    """A DeviceSpec, or InvalidParameter naming each bad field."""
    try:
        return DeviceSpec(**fields)
    except ValidationError as exc:
        raise invalid(exc) from None


def _password_secret(name: str) -> str:
    return f"device:{name}:password"


class DeviceRegistry:
    """All devices, held in memory for the hot path and written through to the `devices` table."""

    def __init__(
        self,
        db: Database,
        secrets: SecretStore,
        *,
        local_device: bool = True,
        max_devices: int = 1000,
        file_dirs: tuple[Path, ...] | None = None,
        data_dir: Path | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._db = db
        self._secrets = secrets
        self._local = local_device
        self._events = events
        self._devices: dict[str, Device] = {}
        self.max_devices = max_devices
        self._adding: set[str] = set()  # names being added right now: they count toward max_devices
        # the only places key files and SSH configs are read from (settings.ssh_file_directories)
        self.files = FilePolicy(file_dirs or (Path("~/.ssh").expanduser(),), data_dir)

    async def load(self) -> None:
        async with self._db.read_session() as session:
            rows = (await session.scalars(select(DeviceRow).order_by(DeviceRow.name))).all()
        devices = {}
        for row in rows:
            password = await self._secrets.get(row.password_secret) if row.password_secret else None
            devices[row.name] = _to_device(row, password)
        if self._local:
            devices[LOCAL] = Device(name=LOCAL, hostname=LOCAL, description="The machine the server runs on.")
        self._devices = devices

    async def reload(self, name: str) -> tuple[Device | None, Device | None]:
        """Re-read one device after another process changed it: (before, after), None where it is absent.
        The built-in 'local' device is never stored, so never reloaded."""
        before = self._devices.get(name)
        if name == LOCAL and self._local:
            return before, before
        async with self._db.read_session() as session:
            row = await session.scalar(select(DeviceRow).where(DeviceRow.name == name))
        if row is None:
            self._devices.pop(name, None)
            return before, None
        password = await self._secrets.get(row.password_secret) if row.password_secret else None
        after = self._devices[name] = _to_device(row, password)
        return before, after

    def get(self, name: str) -> Device:
        try:
            return self._devices[name]
        except KeyError:
            raise DeviceNotFound(name, self._devices) from None

    def names(self) -> list[str]:
        return sorted(self._devices)

    def list(self, tags: Iterable[str] = ()) -> list[Device]:
        wanted = set(tags)
        return [d for _, d in sorted(self._devices.items()) if wanted <= set(d.tags)]

    def count(self) -> int:
        """Registered SSH devices (the built-in 'local' is not one), with those being added right now."""
        return len(self._devices) - (LOCAL in self._devices) + len(self._adding)

    async def add(self, name: str, spec: DeviceSpec) -> Device:
        self._check_name(name)
        if name in self._devices or name in self._adding:
            raise DeviceExists(name)
        self._check_refs(name, spec)
        if self.count() >= self.max_devices:
            raise DeviceLimit(name, self.max_devices)
        self._adding.add(name)
        try:
            device = await self._insert(name, spec)
        finally:
            self._adding.discard(name)
        await self._publish(name, "added")
        return device

    async def _insert(self, name: str, spec: DeviceSpec) -> Device:
        now = datetime.now(UTC)
        secret = None
        if spec.password:
            secret = _password_secret(name)
            await self._secrets.put(secret, spec.password)
        row = DeviceRow(
            name=name,
            created_at=now,
            updated_at=now,
            password_secret=secret,
            host_key=None,
            **spec.model_dump(exclude={"password", "description"}),
            description=redact_text(spec.description),
        )
        row.tags = list(spec.tags)
        try:
            async with self._db.session() as session, session.begin():
                session.add(row)
                await announce(session, self._db, "device", name)
        except IntegrityError:
            raise DeviceExists(name) from None
        device = _to_device(row, spec.password)
        self._devices[name] = device
        return device

    async def _publish(self, name: str, change: Literal["added", "updated", "removed"]) -> None:
        if self._events is not None:
            await self._events.publish(DeviceChanged(device=name, change=change))

    async def update(self, name: str, changes: Mapping[str, Any], *, clear_host_key: bool = False) -> Device:
        """Apply `changes` (DeviceSpec fields). A new hostname or port forgets the pinned host key."""
        current = self.get(name)
        if current.is_local:
            raise InvalidParameter("The built-in 'local' device cannot be changed.")
        merged = {**current.model_dump(include=set(DeviceSpec.model_fields)), "password": current.password}
        merged.update(changes)
        try:
            spec = DeviceSpec.model_validate(merged)
        except ValidationError as exc:
            raise invalid(exc) from None
        self._check_refs(name, spec)
        moved = (spec.hostname, spec.port) != (current.hostname, current.port)
        if "password" in changes and spec.password:
            # stored before the row names it: another server reloading the row finds the new password
            await self._secrets.put(_password_secret(name), spec.password)
        async with self._db.session() as session, session.begin():
            row = await session.scalar(select(DeviceRow).where(DeviceRow.name == name))
            if row is None:
                raise DeviceNotFound(name, self._devices)
            for field in ("hostname", "port", "username", "key_path", "jump_host", "use_sudo"):
                setattr(row, field, getattr(spec, field))
            row.description = redact_text(spec.description)
            row.tags = list(spec.tags)
            if clear_host_key or moved:
                row.host_key = None
            if "password" in changes:
                row.password_secret = _password_secret(name) if spec.password else None
            row.updated_at = datetime.now(UTC)
            await announce(session, self._db, "device", name)
        if "password" in changes and not spec.password:
            await self._secrets.delete(_password_secret(name))
        device = _to_device(row, spec.password)
        self._devices[name] = device
        await self._publish(name, "updated")
        return device

    async def remove(self, name: str) -> Device:
        device = self.get(name)
        if device.is_local:
            raise InvalidParameter(
                "The built-in 'local' device cannot be removed; set INFRA_LOCAL_DEVICE=false."
            )
        users = [d.name for d in self._devices.values() if d.jump_host == name]
        if users:
            raise InvalidParameter(
                f"Device {name!r} is the jump host of {', '.join(users)}; change those first."
            )
        async with self._db.session() as session, session.begin():
            await session.execute(delete(DeviceRow).where(DeviceRow.name == name))
            await announce(session, self._db, "device", name)
        await self._secrets.delete(_password_secret(name))
        del self._devices[name]
        await self._publish(name, "removed")
        return device

    async def pin_host_key(self, name: str, key_line: str) -> None:
        async with self._db.session() as session, session.begin():
            row = await session.scalar(select(DeviceRow).where(DeviceRow.name == name))
            if row is None:
                return
            row.host_key = key_line
            await announce(session, self._db, "device", name)
        if name in self._devices:
            self._devices[name] = self._devices[name].model_copy(update={"host_key": key_line})

    def _check_name(self, name: str) -> None:
        if not re.match(NAME_PATTERN, name):
            raise InvalidParameter(
                f"Invalid device name {name!r}: use lower-case letters, digits, '.', '_' or '-' "
                "(start with a letter or digit, at most 63 characters)."
            )
        if name == LOCAL:
            raise InvalidParameter("'local' is reserved for the built-in device.")

    def _check_refs(self, name: str, spec: DeviceSpec) -> None:
        if spec.jump_host is not None:
            if spec.jump_host == name:
                raise InvalidParameter("A device cannot be its own jump host.")
            jump = self.get(spec.jump_host)
            if jump.is_local:
                raise InvalidParameter("The 'local' device cannot be a jump host.")
        if spec.key_path is not None:
            check_key_path(self.files, spec.key_path)


def _to_device(row: DeviceRow, password: str | None) -> Device:
    return Device(
        name=row.name,
        hostname=row.hostname,
        port=row.port,
        username=row.username,
        key_path=row.key_path,
        password=password,
        jump_host=row.jump_host,
        tags=tuple(row.tags or ()),
        description=row.description or "",
        host_key=row.host_key,
        use_sudo=row.use_sudo,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class DeviceHealth(BaseModel):
    """What background polling has seen of a device: its circuit breaker, shared by every server replica."""

    status: Literal["ok", "degraded", "down", "unknown"] = Field(
        description="ok: the last poll reached it; degraded: recent polls failed but fewer than the breaker "
        "threshold; down: the breaker is open and polls back off; unknown: not polled yet."
    )
    breaker: Literal["closed", "open", "half_open"] = Field(
        description="open: polls are skipped until retry_at; half_open: one trial poll is running."
    )
    consecutive_failures: int
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error_type: str | None = None
    last_error: str | None = None
    retry_at: datetime | None = Field(default=None, description="When an open breaker lets a poll try again.")
    unsupported: list[str] = Field(
        default_factory=list,
        description="Poll categories whose programs are missing on the device (retried hourly).",
    )


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
    health: DeviceHealth = Field(description="Reachability as background polling sees it (circuit breaker).")


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
    import asyncssh  # here, not at the top: listing devices needs no SSH stack until a key is shown

    try:
        return str(asyncssh.import_public_key(key_line).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError):
        return None


UNKNOWN_HEALTH = DeviceHealth(status="unknown", breaker="closed", consecutive_failures=0)


def describe(device: Device, *, connected: bool, health: DeviceHealth | None = None) -> DeviceInfo:
    """The registry entry as clients see it: no secrets, the host key as a fingerprint."""
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
        connected=connected,
        health=health or UNKNOWN_HEALTH,
    )


def _usable_key(policy: FilePolicy, identity_file: str | None, warnings: list[str], alias: str) -> str | None:
    """IdentityFile if the server may and can use it; ssh itself silently skips missing ones, we say so."""
    if identity_file:
        problem = key_problem(policy, identity_file)
        if problem is not None:
            warnings.append(f"{alias}: IdentityFile not used, default keys instead: {problem}")
            return None
    return identity_file


async def import_ssh_hosts(
    devices: DeviceRegistry, path: str, only: list[str] | None, tags: list[str]
) -> SSHConfigImport:
    """Add every concrete Host of an OpenSSH config; jump hosts first so ProxyJump can refer to them.

    The config and the files it includes are read only from the registry's SSH file directories.
    """
    text = read_ssh_config(devices.files, path)
    read, glob = include_access(devices.files)
    # bounded (ssh_config's limits), but up to about a second of CPU: not on the event loop
    entries, warnings = await asyncio.to_thread(
        parse_ssh_config_with_warnings, text, path=Path(path).expanduser(), read=read, glob=glob
    )
    wanted = set(only) if only else None
    by_alias = {e.alias: e for e in entries}
    jumps = {e.proxy_jump for e in entries}
    ordered = sorted(entries, key=lambda e: 0 if e.alias in jumps else 1)
    results: list[ImportedHost] = []
    full = False
    limit = (
        f"not added: the limit of {devices.max_devices:,} registered devices (INFRA_MAX_DEVICES) is reached"
    )
    for entry in ordered:
        if wanted is not None and entry.alias not in wanted:
            continue
        if full:
            results.append(ImportedHost(alias=entry.alias, status="skipped", reason=limit))
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
                key_path=_usable_key(devices.files, entry.identity_file, warnings, entry.alias),
                jump_host=jump,
                tags=tuple(tags),
                description=f"Imported from {path}",
            )
            await devices.add(name, spec)
        except DeviceLimit:
            full = True
            results.append(ImportedHost(alias=entry.alias, status="skipped", reason=limit))
            continue
        except InfrastructorError as exc:
            results.append(ImportedHost(alias=entry.alias, status="skipped", reason=str(exc)))
            continue
        results.append(ImportedHost(alias=entry.alias, status="added"))
    added = sum(r.status == "added" for r in results)
    if full:
        left = sum(r.reason == limit for r in results)
        warnings.insert(
            0,
            f"Device limit reached: added {added} host(s); {left} more not added because the limit of "
            f"{devices.max_devices:,} registered devices (INFRA_MAX_DEVICES) is reached. Remove devices or raise "
            "the limit, then import again (hosts already added are skipped).",
        )
    return SSHConfigImport(
        path=path, hosts=results, added=added, skipped=len(results) - added, warnings=warnings
    )
