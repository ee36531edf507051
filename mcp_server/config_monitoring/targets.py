"""Watch targets: a file, or a directory whose files are watched, and which of its files count."""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.engine import make_url

from mcp_server.db.tables import ConfigWatchTarget
from mcp_server.errors import InvalidParameter
from mcp_server.parsers.config_paths import (
    ConfigKind,
    WatchPolicy,
    check_path,
    denied,
    escape_glob,
    well_formed,
)
from mcp_server.settings import Settings, comma_list

ChangeType = Literal["created", "modified", "deleted"]
# files in a watched directory that are never configuration: editor swap/backup files and sed -i temp files
_SCRATCH = ("*~", "*.swp", "*.swx", "*.tmp", ".*", "sed??????", "4913")


@dataclass(frozen=True)
class Target:
    id: int
    device: str
    path: str
    kind: ConfigKind
    source: Literal["explicit", "discovered"]
    is_directory: bool
    created_at: datetime
    baseline_at: datetime | None

    @property
    def pattern(self) -> Literal["conf", "all"]:
        return "conf" if self.kind == "nginx" else "all"

    def holds(self, path: str) -> bool:
        """Whether `path` is this target, or a file this directory target watches."""
        if not self.is_directory:
            return path == self.path
        name = posixpath.basename(path)
        if posixpath.dirname(path) != self.path or any(fnmatch.fnmatchcase(name, p) for p in _SCRATCH):
            return False
        if denied(path) is not None or not well_formed(path):
            return False  # a credential store inside a watched directory is never read
        return self.pattern == "all" or name.endswith(".conf")

    @classmethod
    def of(cls, row: ConfigWatchTarget) -> Target:
        return cls(
            row.id,
            row.device,
            row.path,
            row.kind,  # type: ignore[arg-type]
            row.source,  # type: ignore[arg-type]
            row.is_directory,
            row.created_at,
            row.baseline_at,
        )


def directory_kind(path: str) -> ConfigKind:
    return "nginx" if any(p in path for p in ("nginx", "proxy-confs", "site-confs")) else "file"


def checked(path: str, policy: WatchPolicy | None = None) -> str:
    """`path` if it is well formed and (given a policy) may be watched, else InvalidParameter saying why."""
    try:
        check_path(path)
    except ValueError as exc:
        raise InvalidParameter(f"path {path!r}: {exc}") from None
    reason = policy.refusal(path, directory=None) if policy is not None else None
    if reason is not None:
        raise InvalidParameter(reason)
    return path


def watch_policy(settings: Settings, *, local: bool) -> WatchPolicy:
    """The one policy for every read of a device's files: the defaults and INFRA_CONFIG_WATCH_ALLOW; on the
    server's own machine also its data dir and SQLite database, as named and as resolved."""
    allow = tuple(comma_list(settings.config_watch_allow))
    if not local:
        return WatchPolicy(allow=allow)
    own: list[str] = []
    for form in (os.path.abspath(settings.data_dir), os.path.realpath(settings.data_dir)):
        own += [escape_glob(form), escape_glob(form) + "/*"]
    url = make_url(settings.resolved_database_url)
    database = url.database if url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:":
        for form in (os.path.abspath(database), os.path.realpath(database)):
            own.append(escape_glob(form) + "*")  # with its -wal, -shm and -journal files
    return WatchPolicy(allow=allow, own=tuple(dict.fromkeys(own)))


def replaced(target: Target, **changes: Any) -> Target:
    return replace(target, **changes)
