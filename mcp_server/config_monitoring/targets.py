"""Watch targets: a file, or a directory whose files are watched, and which of its files count."""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from mcp_server.db.tables import ConfigWatchTarget
from mcp_server.errors import InvalidParameter
from mcp_server.parsers.config_paths import ConfigKind, check_path, refused

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
        if refused(path) is not None:
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


def checked(path: str) -> str:
    try:
        return check_path(path)
    except ValueError as exc:
        raise InvalidParameter(f"path {path!r}: {exc}") from None


def replaced(target: Target, **changes: Any) -> Target:
    return replace(target, **changes)
