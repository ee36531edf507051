"""ZFS commands: zpool_list, zpool_status and zfs_snapshots."""

from __future__ import annotations

from mcp_server.commands.base import ArgList, CommandDefinition, NoParams
from mcp_server.parsers.zfs import (
    ZfsSnapshots,
    ZfsSnapshotsParams,
    ZpoolList,
    ZpoolStatus,
    parse_zfs_snapshots,
    parse_zpool_list,
    parse_zpool_status,
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

COMMANDS: tuple[CommandDefinition, ...] = (ZPOOL_LIST, ZPOOL_STATUS, ZFS_SNAPSHOTS)
