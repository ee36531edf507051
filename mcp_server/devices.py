"""Devices: the Device model and the DeviceRegistry (in-memory index, written through to the database)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

LOCAL = "local"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
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
    key_path: str | None = Field(default=None, description="Private key file for SSH; default: ssh agent/keys.")
    password: str | None = Field(default=None, repr=False, exclude=True, description="Never serialised.")
    jump_host: str | None = Field(default=None, description="Name of another device to tunnel through.")
    tags: tuple[str, ...] = ()
    description: str = ""
    host_key: str | None = Field(default=None, description="Pinned host key (OpenSSH public key line).")
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL and self.hostname == LOCAL

    def connection_fields(self) -> tuple[object, ...]:
        """What a pooled connection depends on; a change to any of these drops the connection."""
        return (self.hostname, self.port, self.username, self.key_path, self.password, self.jump_host)
