"""Results of the configuration tools: watched files, versions, diffs and change events."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

WatchMode = Literal[
    "inotify", "polling", "starting", "restarting", "stopped", "not watching", "by another replica"
]


class WatchStatus(BaseModel):
    """How a device's files are being watched right now."""

    device: str
    mode: WatchMode = Field(
        description="inotify (events within milliseconds), polling (hash check every interval), "
        "restarting (the watcher died and comes back with backoff), stopped, not watching, or by another "
        "replica (servers sharing a PostgreSQL database watch each device from one of them).",
    )
    since: datetime | None = Field(description="When the current mode began.")
    restarts: int = Field(description="Times the watcher was restarted (died, connection lost, new targets).")
    last_error: str | None = Field(description="Why the watcher last stopped or fell back to polling.")


class WatchedFile(BaseModel):
    device: str
    path: str
    kind: str = Field(description="compose, nginx, systemd or file: how changes are parsed and classified.")
    source: Literal["explicit", "discovered"]
    is_directory: bool = Field(description="A directory: every file in it is watched (*.conf for nginx).")
    files: list[str] = Field(description="For a directory: the files in it that have versions.")
    latest_sha256: str | None = Field(
        description="Hash of the newest version; null when absent or a directory."
    )
    latest_at: datetime | None = Field(description="When the newest version was recorded.")
    watched_since: datetime


class WatchedFiles(BaseModel):
    files: list[WatchedFile]
    status: list[WatchStatus] = Field(description="The watcher of each device with watched files.")
    discovered: list[str] = Field(default_factory=list, description="Paths added by discovery in this call.")
    discovery_errors: list[str] = Field(default_factory=list)
    total: int
    truncated: bool
    note: str | None = Field(default=None, description="When nothing is watched: how to start.")


class WatchResult(BaseModel):
    watched: WatchedFile
    created: bool = Field(description="False when the path was already watched.")
    exists: bool = Field(
        description="The path exists on the device now (a missing file is watched for creation)."
    )
    status: WatchStatus


class UnwatchResult(BaseModel):
    device: str
    path: str
    removed: bool
    note: str


class ConfigVersion(BaseModel):
    id: int = Field(description="Version id (use with get_config_diff from/to).")
    collected_at: datetime
    sha256: str | None = Field(description="null: the file was absent (deleted).")
    size_bytes: int | None
    change_type: str | None = Field(description="created, modified or deleted; null for the first version.")
    risk: str | None
    summary: str | None


class ConfigHistory(BaseModel):
    device: str
    path: str
    versions: list[ConfigVersion] = Field(description="Newest first.")
    total: int
    truncated: bool


class ConfigChange(BaseModel):
    id: int
    detected_at: datetime
    device: str
    path: str
    kind: str
    change_type: str
    risk: Literal["low", "medium", "high"]
    reasons: list[str] = Field(description="Why the change got its risk, one reason per finding.")
    affected_services: list[str] = Field(description="Compose services, nginx server names or units touched.")
    summary: str
    diff: str | None = Field(default=None, description="Unified diff (secrets shown as ***).")
    from_version: int | None
    to_version: int | None


class ConfigChanges(BaseModel):
    changes: list[ConfigChange] = Field(description="Newest first.")
    total: int
    truncated: bool
    note: str | None = Field(default=None, description="When nothing is watched: how to start.")


class ConfigDiff(BaseModel):
    device: str
    path: str
    from_version: int | None
    to_version: int
    from_at: datetime | None
    to_at: datetime
    diff: str = Field(description="Unified diff from the older to the newer version (secrets shown as ***).")
    added_lines: int
    removed_lines: int
    risk: Literal["low", "medium", "high"]
    reasons: list[str]
    affected_services: list[str]
