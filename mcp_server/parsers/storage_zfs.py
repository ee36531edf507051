"""Parsers for zpool_list (`zpool list -Hp`), zpool_status (`zpool status -p`) and zfs_snapshots (`zfs list -Hp`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as

if TYPE_CHECKING:
    from mcp_server.commands.storage import ZfsSnapshotsParams

NO_POOLS = "no pools available"


class PoolUsage(BaseModel):
    name: str
    size_bytes: int
    allocated_bytes: int
    free_bytes: int
    fragmentation_percent: int | None = Field(description="Free-space fragmentation; null when not reported.")
    capacity_percent: int = Field(description="Allocated share of the pool; above ~80 ZFS slows down.")
    dedup_ratio: float
    health: str = Field(description="ONLINE, DEGRADED, FAULTED, OFFLINE, UNAVAIL or REMOVED.")


class ZpoolList(BaseModel):
    pools: list[PoolUsage]


def _lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip() and line.strip() != NO_POOLS]


@parse_errors_as("zpool_list")
def parse_zpool_list(stdout: str, params: BaseModel) -> ZpoolList:
    """Tab-separated name, size, alloc, free, frag, cap, dedup, health; exact numbers (-p)."""
    pools = []
    for line in _lines(stdout):
        name, size, alloc, free, frag, cap, dedup, health = line.split("\t")
        pools.append(
            PoolUsage(
                name=name,
                size_bytes=int(size),
                allocated_bytes=int(alloc),
                free_bytes=int(free),
                fragmentation_percent=None if frag == "-" else int(frag.rstrip("%")),
                capacity_percent=int(cap.rstrip("%")),
                dedup_ratio=float(dedup.rstrip("x")),
                health=health,
            )
        )
    return ZpoolList(pools=pools)


class Vdev(BaseModel):
    name: str = Field(description="Pool, vdev (mirror-0, raidz2-0) or disk name, as zpool status prints it.")
    depth: int = Field(description="0 for the pool line, 1 for top-level vdevs, 2+ for their members.")
    parent: str | None = Field(description="Name of the enclosing vdev; null for top-level lines.")
    section: str = Field(
        description="data, or the special class it belongs to: logs, cache, spares, special, dedup."
    )
    state: str | None = Field(
        description="ONLINE, DEGRADED, FAULTED, UNAVAIL, OFFLINE, REMOVED, AVAIL, INUSE."
    )
    read_errors: int | None
    write_errors: int | None
    checksum_errors: int | None
    note: str | None = Field(description="What zpool adds after the counters, e.g. 'too many errors'.")


ScanState = Literal["none", "in_progress", "finished", "canceled", "paused", "unknown"]


class ScanInfo(BaseModel):
    function: Literal["scrub", "resilver"] | None = Field(
        description="Which kind of scan the line describes."
    )
    state: ScanState
    started: str | None = Field(description="When a running or paused scan began (device local time).")
    ended: str | None = Field(description="When the last scan finished or was canceled (device local time).")
    duration: str | None
    repaired: str | None = Field(description="Data repaired (scrub) or resilvered, as zpool prints it: '0B'.")
    errors: int | None = Field(description="Errors the finished scan found.")
    percent_done: float | None
    time_left: str | None
    text: str = Field(description="The scan lines verbatim.")


class PoolStatus(BaseModel):
    name: str
    state: str
    status: str | None = Field(description="zpool's explanation of a problem, if any.")
    action: str | None = Field(description="What zpool recommends doing.")
    scan: ScanInfo | None
    vdevs: list[Vdev] = Field(description="The config tree, depth-first, pool line first.")
    errors: str | None = Field(description="The 'errors:' line, e.g. 'No known data errors'.")
    data_errors: int | None = Field(description="Known data errors (permanent errors in files); 0 when none.")
    error_files: list[str] = Field(description="Files with permanent errors, when zpool lists them.")


class ZpoolStatus(BaseModel):
    pools: list[PoolStatus]


_KEY = re.compile(r"^ {0,4}([a-z]+):(?: (.*))?$")
_SCAN_DONE = re.compile(
    r"^(?P<what>scrub repaired|resilvered) (?P<amount>\S+) in (?P<duration>.+?) with (?P<errors>\d+) errors? on (?P<on>.+)$"
)
_SOLARIS_DONE = re.compile(
    r"^(?P<what>scrub|resilver) completed after (?P<duration>\S+) with (?P<errors>\d+) errors? on (?P<on>.+)$"
)
_SECTIONS = frozenset({"logs", "cache", "spares", "special", "dedup"})
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def _counter(text: str) -> int:
    # exact with -p; older zpool without -p support prints 1.2K-style numbers
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", text)
    if match is None:
        raise ValueError(f"bad error counter {text!r}")
    return round(float(match.group(1)) * _SUFFIX[match.group(2)])


def _scan(lines: list[str]) -> ScanInfo:
    head, rest = lines[0].strip(), " ".join(line.strip() for line in lines[1:])
    function: Literal["scrub", "resilver"] | None = "resilver" if head.startswith("resilver") else "scrub"
    state: ScanState = "unknown"
    found: dict[str, str | None] = {}
    if head == "none requested":
        function, state = None, "none"
    elif done := _SCAN_DONE.match(head) or _SOLARIS_DONE.match(head):
        state, found = "finished", done.groupdict()
    elif running := re.match(r"^\S+ (?P<how>in progress|paused) since (?P<since>.+)$", head):
        state = "in_progress" if running.group("how") == "in progress" else "paused"
        # the amount starts a word: a search trying `\S+` at every character of a long word is quadratic
        progress = re.search(
            r"(?<!\S)(?P<amount>\S++) (?:repaired|resilvered), (?P<pct>[\d.]+)% done(?:, (?P<left>\S+) to go)?",
            rest,
        )
        found = {"since": running.group("since"), **(progress.groupdict() if progress else {})}
    elif canceled := re.match(r"^\S+ canceled on (?P<on>.+)$", head):
        state, found = "canceled", canceled.groupdict()
    errors, pct = found.get("errors"), found.get("pct")
    return ScanInfo(
        function=function,
        state=state,
        started=found.get("since"),
        ended=found.get("on"),
        duration=found.get("duration"),
        repaired=found.get("amount"),
        errors=int(errors) if errors is not None else None,
        percent_done=float(pct) if pct is not None else None,
        time_left=found.get("left"),
        text=" ".join((head, rest)).strip(),
    )


def _config(lines: list[str]) -> list[Vdev]:
    rows = [line.expandtabs(8) for line in lines if line.strip()]
    header = next((i for i, line in enumerate(rows) if line.split()[:2] == ["NAME", "STATE"]), None)
    if header is None:
        raise ValueError("config: without its NAME STATE header")
    base = len(rows[header]) - len(rows[header].lstrip())
    vdevs: list[Vdev] = []
    ancestors: dict[int, str] = {}  # the latest name seen at each depth
    section = "data"
    for row in rows[header + 1 :]:
        depth = (len(row) - len(row.lstrip()) - base) // 2
        name, *fields = row.split()
        if depth == 0 and not fields and name in _SECTIONS:
            section, ancestors = name, {0: name}
            continue
        # spares print a state but no counters; a note follows the counters ("too many errors", "was /dev/...")
        counters = fields[1:4] if len(fields) >= 4 and fields[1][:1].isdigit() else []
        vdevs.append(
            Vdev(
                name=name,
                depth=depth,
                parent=ancestors.get(depth - 1) if depth else None,
                section=section,
                state=fields[0] if fields else None,
                read_errors=_counter(counters[0]) if counters else None,
                write_errors=_counter(counters[1]) if counters else None,
                checksum_errors=_counter(counters[2]) if counters else None,
                note=" ".join(fields[1 + len(counters) :]) or None,
            )
        )
        ancestors = {d: n for d, n in ancestors.items() if d < depth} | {depth: name}
    return vdevs


def _joined(lines: list[str] | None) -> str | None:
    return " ".join(line.strip() for line in lines).strip() if lines else None


def _pool_status(block: list[str]) -> PoolStatus:
    keyed: dict[str, list[str]] = {}
    current: list[str] = []
    for line in block:
        key = _KEY.match(line)
        # a repeated key (newer zpool prints several "scan:" lines) continues the first one
        if key and key.group(1) not in keyed:
            current = keyed[key.group(1)] = [key.group(2) or ""]
        else:
            current.append(line)
    scan = keyed.get("scan") or keyed.get("scrub")
    error_lines = [line.strip() for line in keyed.get("errors", []) if line.strip()]
    errors = error_lines[0] if error_lines else None
    files = error_lines[1:]
    counted = re.match(r"^(\d+) data errors?", errors or "")
    return PoolStatus(
        name=keyed["pool"][0].strip(),
        state=keyed["state"][0].strip(),
        status=_joined(keyed.get("status")),
        action=_joined(keyed.get("action")),
        scan=_scan(scan) if scan else None,
        vdevs=_config(keyed["config"][1:]) if "config" in keyed else [],
        errors=errors,
        data_errors=int(counted.group(1)) if counted else (len(files) if errors else None),
        error_files=files,
    )


@parse_errors_as("zpool_status")
def parse_zpool_status(stdout: str, params: BaseModel) -> ZpoolStatus:
    """One PoolStatus per `pool:` block; 'no pools available' is an empty list."""
    if stdout.strip() == NO_POOLS:
        return ZpoolStatus(pools=[])
    blocks: list[list[str]] = []
    for line in stdout.splitlines():
        key = _KEY.match(line)
        if key and key.group(1) == "pool":
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    if not blocks:
        raise ValueError("no 'pool:' line in zpool status output")
    return ZpoolStatus(pools=[_pool_status(block) for block in blocks])


class Snapshot(BaseModel):
    name: str = Field(description="Full snapshot name, dataset@snapshot.")
    dataset: str = Field(description="The dataset it belongs to (may contain '/').")
    snapshot: str = Field(description="The part after '@'.")
    used_bytes: int = Field(description="Space only this snapshot holds: what destroying it alone frees.")
    created_at: datetime = Field(description="Creation time (UTC).")


class ZfsSnapshots(BaseModel):
    snapshots: list[Snapshot] = Field(
        description="In the order zfs listed them (creation order per dataset)."
    )


@parse_errors_as("zfs_snapshots")
def parse_zfs_snapshots(stdout: str, params: ZfsSnapshotsParams) -> ZfsSnapshots:
    """Tab-separated name, used, creation (epoch seconds with -p); no output means no snapshots."""
    snapshots = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        name, used, creation = line.split("\t")
        dataset, sep, snapshot = name.partition("@")
        if not sep or not dataset or not snapshot:
            raise ValueError(f"not a snapshot name: {name!r}")
        snapshots.append(
            Snapshot(
                name=name,
                dataset=dataset,
                snapshot=snapshot,
                used_bytes=int(used),
                created_at=datetime.fromtimestamp(int(creation), UTC),
            )
        )
    return ZfsSnapshots(snapshots=snapshots)
