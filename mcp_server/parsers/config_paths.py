"""Paths of watched configuration files: what a caller may name, what is refused, and what kind a file is."""

from __future__ import annotations

import fnmatch
import posixpath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

ConfigKind = Literal["compose", "nginx", "systemd", "file"]
KINDS: tuple[str, ...] = ("compose", "nginx", "systemd", "file")
MAX_PATH = 1024

# Files that hold credentials rather than configuration. They are refused by name here and again on the
# device after symlinks are resolved (the fetch script carries the same patterns), so a link to one is
# refused too. `*` matches across '/', as in a shell `case` pattern.
SECRET_PATHS: tuple[str, ...] = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssl/private/*",
    "/etc/ssh/ssh_host_*key",
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/secrets/*",
    "/var/run/secrets/*",
    "*/.ssh/id_*",
    "*/.ssh/*_key",
    "*/.gnupg/*",
    "*/.git-credentials",
    "*/.netrc",
    "*/.pgpass",
    "*/.docker/config.json",
    "*/.aws/credentials",
    "*/.kube/config",
    "*.key",
    "*/master.key",
)

COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
SYSTEMD_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".mount",
    ".automount",
    ".path",
    ".target",
    ".slice",
    ".swap",
)


def refused(path: str) -> str | None:
    """The secret-store pattern `path` falls under, if any."""
    return next((p for p in SECRET_PATHS if fnmatch.fnmatchcase(path, p)), None)


def check_path(path: str) -> str:
    """An absolute, normalised path that names no secret store; ValueError says what is wrong."""
    if not path.startswith("/"):
        raise ValueError("must be an absolute path (start with '/')")
    if any(ch in path for ch in "\x00\n\r") or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ValueError("must not contain control characters (NUL, newline, ...)")
    if path != "/" and path.endswith("/"):
        raise ValueError("must not end with '/'")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise ValueError("must be normalised: no '.', '..', or repeated '/' components")
    pattern = refused(path)
    if pattern is not None:
        raise ValueError(
            f"{path} is a credential store ({pattern}); the server never reads such files. "
            "Watch configuration files only."
        )
    return path


ConfigPath = Annotated[
    str,
    Field(
        min_length=2,
        max_length=MAX_PATH,
        description="Absolute path of the file on the device, e.g. /opt/stacks/media/compose.yaml.",
    ),
    AfterValidator(check_path),
]


def detect_kind(path: str) -> ConfigKind:
    """The kind of a configuration file, judged by its name and place."""
    name = posixpath.basename(path)
    lowered = name.lower()
    if lowered in COMPOSE_NAMES or fnmatch.fnmatch(lowered, "*compose*.y*ml"):
        return "compose"
    if lowered.endswith(SYSTEMD_SUFFIXES) or "/systemd/" in path:
        return "systemd"
    if "/nginx/" in path or (lowered.endswith(".conf") and "proxy-confs" in path) or lowered == "nginx.conf":
        return "nginx"
    return "file"
