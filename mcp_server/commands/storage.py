"""Storage commands: disk_usage (df), directory_usage (du), drive_inventory (lsblk), drive_smart (smartctl), zpool_list, zpool_status and zfs_snapshots."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mcp_server.commands.base import Arg, ArgList, CommandDefinition, NoParams
from mcp_server.parsers.storage import DiskUsage, parse_disk_usage
from mcp_server.parsers.storage_dirs import DirectoryUsage, parse_directory_usage
from mcp_server.parsers.storage_drives import (
    DriveHealth,
    DriveInventory,
    parse_drive_inventory,
    parse_drive_smart,
)
from mcp_server.parsers.storage_zfs import (
    ZfsSnapshots,
    ZpoolList,
    ZpoolStatus,
    parse_zfs_snapshots,
    parse_zpool_list,
    parse_zpool_status,
)


def _drive_path(value: str) -> str:
    # re.fullmatch, not the schema pattern alone: "$" would also accept a trailing newline
    if not re.fullmatch(r"/dev/[A-Za-z0-9/_-]+", value) or ".." in value:
        raise ValueError("must be a device path like /dev/sda or /dev/nvme0n1")
    return value


def _pool(value: str) -> str:
    if not re.fullmatch(POOL_PATTERN[1:-1], value):
        raise ValueError("must start with a letter and hold only letters, digits, '_', '.', ':' or '-'")
    return value


def _dataset(value: str) -> str:
    if (
        not re.fullmatch(DATASET_PATTERN[1:-1], value)
        or ".." in value
        or "//" in value
        or value.endswith("/")
    ):
        raise ValueError("must be a dataset name like tank or tank/data/photos")
    return value


POOL_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]*$"

DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"

PoolName = Annotated[
    str,
    Field(
        pattern=POOL_PATTERN, min_length=1, max_length=255, description="A pool name as zpool list shows it."
    ),
    AfterValidator(_pool),
]

DatasetName = Annotated[
    str,
    Field(pattern=DATASET_PATTERN, min_length=1, max_length=255, description="A dataset, e.g. tank/data."),
    AfterValidator(_dataset),
]


class ZfsSnapshotsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetName | None = None

    @property
    def dataset_args(self) -> list[str]:
        return ["-r", "--", self.dataset] if self.dataset else []


DRIVE_PATTERN = r"^/dev/[A-Za-z0-9/_-]+$"

DrivePath = Annotated[
    str,
    Field(
        pattern=DRIVE_PATTERN,
        min_length=6,
        max_length=128,
        description="A disk as lsblk lists it, e.g. /dev/sda.",
    ),
    AfterValidator(_drive_path),
]


class DriveSmartParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    drive: DrivePath


class DiskUsageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    include_pseudo: bool = Field(
        default=False,
        description="Also list in-memory and virtual filesystems (tmpfs, devtmpfs, overlay, squashfs, ...).",
    )


# GNU df gives bytes and inodes in fixed columns with the mount point last; busybox and old coreutils
# lack --output, so they fall back to POSIX df -Pk and /proc/mounts supplies the filesystem type.
# df exits 1 when one mount cannot be read (a stale NFS share, another user's FUSE mount) but still
# prints the rest.
DISK_USAGE_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        "if df --output=target / >/dev/null 2>&1; then echo '@@df-gnu'; "
        "df -B1 --output=source,fstype,size,used,avail,pcent,itotal,iused,iavail,ipcent,target; "
        "else echo '@@df-posix'; df -Pk; fi",
        "status=$?",
        "echo '@@mounts'",
        "cat /proc/mounts 2>/dev/null",
        "echo '@@end'",
        "exit $status",
    )
)

DISK_USAGE: CommandDefinition[DiskUsage] = CommandDefinition(
    name="disk_usage",
    category="storage",
    summary="Size, used and available bytes and inode use of every mounted filesystem.",
    argv=("sh", "-c", DISK_USAGE_SCRIPT),
    model=DiskUsage,
    parse=parse_disk_usage,
    params=DiskUsageParams,
    ttl=60.0,
    timeout=30.0,
    ok_exit_statuses=frozenset({0, 1}),
)


def _absolute_path(value: str) -> str:
    # re.search, not the schema pattern alone: "$" would also accept a trailing newline
    if not value.startswith("/") or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError("must be an absolute path (starting with '/') without control characters")
    return value


AbsolutePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        pattern=r"^/[^\x00-\x1f\x7f]*$",
        description="An absolute path on the device, e.g. / or /var/lib/docker.",
    ),
    AfterValidator(_absolute_path),
]


class DirectoryUsageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: AbsolutePath
    depth: int = Field(default=2, ge=1, le=6, description="How many levels below the path to list.")
    top: int = Field(default=20, ge=1, le=200, description="How many of the biggest entries to return.")
    timeout: int = Field(
        default=20,
        ge=1,
        le=120,
        description="Seconds du may walk; past it the sizes walked so far are shown.",
    )

    @property
    def lines(self) -> int:
        return self.top + 1  # the path's own total comes first (it is the biggest)


# du -x stays on the path's filesystem; -a lists files too, down to the depth. GNU du, sort and head keep
# names NUL-separated (a name may hold a newline); busybox (and coreutils before 8.25, whose head has no -z)
# print lines, in KiB. du's exit
# status goes around sort (fd 3) and is printed before the records: sort prints only once du has finished.
# Without `timeout` the command's own timeout still bounds the walk.
DIRECTORY_USAGE_SCRIPT = "; ".join(
    (
        "export LC_ALL=C",
        "if [ ! -e \"$1\" ]; then echo '@@missing'; echo '@@end'; exit 0; fi",
        "if [ ! -d \"$1\" ]; then echo '@@not-directory'; echo '@@end'; exit 0; fi",
        'if command -v timeout >/dev/null 2>&1; then t="timeout $4"; else t=""; fi',
        "if du --version >/dev/null 2>&1 && head -z -n 1 </dev/null >/dev/null 2>&1; then echo '@@du-gnu'"
        '; { { $t du -x -a -0 -B1 -d "$2" -- "$1" 2>/dev/null; echo "@@status $?" >&3; }'
        ' | sort -z -rn | head -z -n "$3"; } 3>&1'
        "; else echo '@@du-posix'"
        '; { { $t du -x -a -k -d "$2" -- "$1" 2>/dev/null; echo "@@status $?" >&3; }'
        ' | sort -rn | head -n "$3"; } 3>&1'
        "; fi",
        "echo",
        "echo '@@end'",
    )
)

DIRECTORY_USAGE: CommandDefinition[DirectoryUsage] = CommandDefinition(
    name="directory_usage",
    category="storage",
    summary="The biggest files and directories under a path (du -x, bounded by depth, count and time).",
    argv=(
        "sh",
        "-c",
        DIRECTORY_USAGE_SCRIPT,
        "sh",
        Arg("path"),
        Arg("depth"),
        Arg("lines"),
        Arg("timeout"),
    ),
    model=DirectoryUsage,
    parse=parse_directory_usage,
    params=DirectoryUsageParams,
    ttl=60.0,
    timeout=130.0,
)


# -d: whole disks only (partitions carry no SMART data of their own); -b: sizes in bytes.
DRIVE_INVENTORY: CommandDefinition[DriveInventory] = CommandDefinition(
    name="drive_inventory",
    category="drives",
    summary="Physical disks of the device (lsblk): path, size, model, serial, rotational, transport.",
    argv=("lsblk", "-J", "-b", "-d", "-o", "NAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,TRAN"),
    model=DriveInventory,
    parse=parse_drive_inventory,
    params=NoParams,
    ttl=300.0,
    timeout=15.0,
)

# smartctl's exit status is a bitmask. Bits 2-7 describe the disk (failing, logged errors, ...) and come with
# full JSON on stdout, so they are data, not failures. Bit 0 (bad command line, unknown device type) stays a
# failure: sudo also exits 1 when it wants a password, and check_exit must see that to say so. Bit 1 (open
# failed) still prints JSON naming the cause. 126/127 are the shell's "cannot execute" / "not found".
SMART_OK_STATUSES = frozenset(status for status in range(256) if not status & 1) - {126}

DRIVE_SMART: CommandDefinition[DriveHealth] = CommandDefinition(
    name="drive_smart",
    category="drives",
    summary="SMART health of one drive (smartctl --json -a): overall health, wear, sectors, temperature, verdict.",
    argv=("smartctl", "--json", "-a", "--", Arg("drive")),
    model=DriveHealth,
    parse=parse_drive_smart,
    params=DriveSmartParams,
    ttl=300.0,
    timeout=60.0,
    ok_exit_statuses=SMART_OK_STATUSES,
    root=True,
)


# -H: tab-separated without a header; -p: exact bytes and plain numbers (no "%" or "x" suffixes).
ZPOOL_LIST: CommandDefinition[ZpoolList] = CommandDefinition(
    name="zpool_list",
    category="zfs",
    summary="ZFS pools: size, allocated, free, fragmentation, capacity, dedup ratio, health.",
    argv=("zpool", "list", "-Hp", "-o", "name,size,alloc,free,frag,cap,dedup,health"),
    model=ZpoolList,
    parse=parse_zpool_list,
    params=NoParams,
    ttl=60.0,
    timeout=30.0,
    root=True,
)

# -p only makes the READ/WRITE/CKSUM counters exact. Every pool is listed and the tool filters: one cached answer
# serves any pool, and a pool name never reaches the device.
ZPOOL_STATUS: CommandDefinition[ZpoolStatus] = CommandDefinition(
    name="zpool_status",
    category="zfs",
    summary="ZFS pool status: state, vdev tree with read/write/checksum errors, scrub or resilver, data errors.",
    argv=("zpool", "status", "-p"),
    model=ZpoolStatus,
    parse=parse_zpool_status,
    params=NoParams,
    ttl=60.0,
    timeout=30.0,
    root=True,
)

# A snapshot's `refer` is not requested: no public capture of that column set exists to test it against.
ZFS_SNAPSHOTS: CommandDefinition[ZfsSnapshots] = CommandDefinition(
    name="zfs_snapshots",
    category="zfs",
    summary="ZFS snapshots, optionally of one dataset and its children: name, dataset, used bytes, creation time.",
    argv=("zfs", "list", "-Hp", "-t", "snapshot", "-o", "name,used,creation", ArgList("dataset_args")),
    model=ZfsSnapshots,
    parse=parse_zfs_snapshots,
    params=ZfsSnapshotsParams,
    ttl=120.0,
    timeout=60.0,
)


COMMANDS: tuple[CommandDefinition[Any], ...] = (
    DISK_USAGE,
    DIRECTORY_USAGE,
    DRIVE_INVENTORY,
    DRIVE_SMART,
    ZPOOL_LIST,
    ZPOOL_STATUS,
    ZFS_SNAPSHOTS,
)
