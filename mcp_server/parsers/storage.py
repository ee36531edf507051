"""Parser for disk_usage: GNU `df --output` or POSIX `df -Pk` (busybox), joined with /proc/mounts."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as, percent, split_sections

if TYPE_CHECKING:
    from mcp_server.commands.storage import DiskUsageParams

PSEUDO_FSTYPES = frozenset(
    {
        "aufs", "autofs", "binfmt_misc", "bpf", "configfs", "debugfs", "devfs", "devpts", "devtmpfs",
        "efivarfs", "fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal", "fuse.snapfuse", "fusectl",
        "hugetlbfs", "mqueue", "nfsd", "nsfs", "overlay", "proc", "pstore", "ramfs", "rootfs",
        "rpc_pipefs", "securityfs", "selinuxfs", "shm", "squashfs", "sysfs", "tmpfs", "tracefs",
    }
)  # fmt: skip
# what busybox df shows as the source of a pseudo mount when /proc/mounts was unreadable
_PSEUDO_SOURCES = frozenset({"tmpfs", "devtmpfs", "udev", "overlay", "none", "shm", "proc", "sysfs"})

_SPACE = r"(?P<size>\d++|-)\s++(?P<used>\d++|-)\s++(?P<avail>\d++|-)\s++(?:\d++%|-)"
_INODES = r"(?P<itotal>\d++|-)\s++(?P<iused>\d++|-)\s++(?P<ifree>\d++|-)\s++(?:\d++%|-)"
# The source is matched lazily and everything after it is anchored, so spaces in source or mount point parse.
# It ends on a non-space and every field is possessive, so each try costs only the fields it reads and
# starts only at the end of a word: linear, where backtracking `\s+` runs made a long line cubic.
_SOURCE = r"^(?P<source>\s|.*?\S)\s++"
_TARGET = r"\s++(?P<target>/.*)"  # to the end of the line; its trailing spaces are stripped after
_GNU_LINE = re.compile(rf"{_SOURCE}(?P<fstype>\S++)\s++{_SPACE}\s++{_INODES}{_TARGET}")
_POSIX_LINE = re.compile(rf"{_SOURCE}{_SPACE}{_TARGET}")


class Filesystem(BaseModel):
    source: str = Field(
        description="What is mounted: a device (/dev/sda1), a pool/dataset, or a remote share."
    )
    fstype: str | None = Field(description="Filesystem type (ext4, xfs, zfs, nfs4, tmpfs); null if unknown.")
    mount_point: str = Field(description="Where it is mounted; may contain spaces.")
    size_bytes: int = Field(description="Total size.")
    used_bytes: int = Field(description="Space in use.")
    available_bytes: int = Field(
        description="Space an unprivileged user can still write (excludes blocks reserved for root)."
    )
    use_percent: float = Field(
        description="used / (used + available) * 100, as df computes it; 100 means non-root writes fail."
    )
    inodes_total: int | None = Field(description="Inodes; null when the filesystem or df reports none.")
    inodes_used: int | None = Field(description="Inodes in use; null when not reported.")
    inodes_free: int | None = Field(description="Free inodes; 0 means no new files even with free space.")
    inodes_use_percent: float | None = Field(
        description="inodes_used / inodes_total * 100; null when not reported."
    )
    pseudo: bool = Field(description="True for in-memory or virtual filesystems (tmpfs, overlay, ...).")


class DiskUsage(BaseModel):
    filesystems: list[Filesystem] = Field(
        description="Mounted filesystems, one per mount point, in df order."
    )


def _unescape(field: str) -> str:
    """Undo /proc/mounts octal escapes (\\040 is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mount_types(lines: Iterable[str]) -> dict[str, str]:
    types: dict[str, str] = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            types[_unescape(fields[1])] = fields[2]  # later entries are mounted on top
    return types


def _is_pseudo(fstype: str | None, source: str) -> bool:
    if fstype is None:
        return source in _PSEUDO_SOURCES
    return fstype in PSEUDO_FSTYPES or fstype.startswith("cgroup")


def _filesystem(
    source: str, fstype: str | None, target: str, space: list[str], unit: int, inodes: list[str]
) -> Filesystem:
    size, used, available = (int(value) * unit for value in space)
    total, iused, ifree = (
        (int(value) if value != "-" else None for value in inodes) if inodes else (None,) * 3
    )
    reported = bool(total) and iused is not None and ifree is not None
    return Filesystem(
        source=source,
        fstype=fstype,
        mount_point=target,
        size_bytes=size,
        used_bytes=used,
        available_bytes=available,
        use_percent=percent(used, used + available),
        inodes_total=total if reported else None,
        inodes_used=iused if reported else None,
        inodes_free=ifree if reported else None,
        inodes_use_percent=percent(iused or 0, total or 0) if reported else None,
        pseudo=_is_pseudo(fstype, source),
    )


def _without_bind_mounts(found: dict[str, Filesystem]) -> dict[str, Filesystem]:
    """Keep one mount point per device, the shortest, as GNU df does; busybox df lists bind mounts too."""
    shortest: dict[str, str] = {}
    for target, fs in found.items():
        if fs.source.startswith("/"):
            kept = shortest.get(fs.source)
            if kept is None or len(target) < len(kept):
                shortest[fs.source] = target
    return {
        target: fs
        for target, fs in found.items()
        if not fs.source.startswith("/") or shortest[fs.source] == target
    }


@parse_errors_as("disk_usage")
def parse_disk_usage(stdout: str, params: DiskUsageParams) -> DiskUsage:
    """`@@df-gnu` (df -B1 --output=...) or `@@df-posix` (df -Pk) plus `@@mounts` -> DiskUsage."""
    s = split_sections(stdout, ("mounts",))
    gnu = "df-gnu" in s
    rows = s.get("df-gnu") if gnu else s.get("df-posix")
    if not rows or not rows[0].startswith("Filesystem"):
        raise ValueError("df printed no header")
    # POSIX df names its block size in the header ("1024-blocks"); GNU ran with -B1
    blocks = re.search(r"\s(\d+)-blocks\s", rows[0])
    unit = 1 if gnu else int(blocks.group(1)) if blocks else 1024
    types = _mount_types(s["mounts"])
    found: dict[str, Filesystem] = {}
    for line in rows[1:]:
        match = (_GNU_LINE if gnu else _POSIX_LINE).match(line)
        if match is None:
            raise ValueError(f"unrecognised df line {line!r}")
        space = [match.group("size"), match.group("used"), match.group("avail")]
        if "-" in space:
            continue  # a filesystem without a size; df hides those itself unless -a
        target = match.group("target").rstrip()
        fstype = match.group("fstype") if gnu else types.get(target)
        inodes = [match.group("itotal"), match.group("iused"), match.group("ifree")] if gnu else []
        # busybox lists a mount point once per /proc/mounts entry; the numbers are the same stat()
        found[target] = _filesystem(match.group("source"), fstype, target, space, unit, inodes)
    if not gnu:
        found = _without_bind_mounts(found)
    return DiskUsage(
        filesystems=[fs for fs in found.values() if params.include_pseudo or not fs.pseudo],
    )
