"""Storage commands: disk_usage."""

from __future__ import annotations

from mcp_server.commands.base import CommandDefinition
from mcp_server.parsers.storage import DiskUsage, DiskUsageParams, parse_disk_usage

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

COMMANDS: tuple[CommandDefinition, ...] = (DISK_USAGE,)
