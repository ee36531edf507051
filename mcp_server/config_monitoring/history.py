"""What clients read about the past: a file's versions, diffs between them, and change events."""

from __future__ import annotations

from datetime import datetime

from mcp_server.config_monitoring import store
from mcp_server.config_monitoring.diff import counts, unified_diff
from mcp_server.config_monitoring.models import (
    ConfigChange,
    ConfigChanges,
    ConfigDiff,
    ConfigHistory,
    ConfigVersion,
)
from mcp_server.config_monitoring.risk import Assessment, at_least, classify
from mcp_server.config_monitoring.targets import ChangeType, checked
from mcp_server.db.engine import Database
from mcp_server.db.tables import ConfigurationSnapshot
from mcp_server.errors import InvalidParameter


async def history(db: Database, device: str, path: str, limit: int, offset: int) -> ConfigHistory:
    path = checked(path)
    rows, total = await store.versions(db, device, path, limit, offset)
    if not total:
        raise InvalidParameter(f"No versions of {path} on {device!r}: watch it first with watch_config_file.")
    events = await store.events_for(db, [r.id for r in rows])
    versions = [
        ConfigVersion(
            id=r.id,
            collected_at=r.collected_at,
            sha256=r.content_hash,
            size_bytes=r.size_bytes,
            change_type=events[r.id].change_type if r.id in events else None,
            risk=events[r.id].risk if r.id in events else None,
            summary=events[r.id].summary if r.id in events else None,
        )
        for r in rows
    ]
    return ConfigHistory(
        device=device, path=path, versions=versions, total=total, truncated=offset + len(rows) < total
    )


async def diff(db: Database, device: str, path: str, from_id: int | None, to_id: int | None) -> ConfigDiff:
    path = checked(path)
    rows, total = await store.versions(db, device, path, limit=2, offset=0)
    if not total:
        raise InvalidParameter(f"No versions of {path} on {device!r}: watch it first with watch_config_file.")
    newer = await _version(db, device, path, to_id) if to_id is not None else rows[0]
    if from_id is not None:
        older: ConfigurationSnapshot | None = await _version(db, device, path, from_id)
    else:
        event = await store.event_for(db, newer.id)
        older = (
            await store.snapshot(db, event.from_snapshot_id)
            if event is not None and event.from_snapshot_id is not None
            else None
        )
    if older is not None and older.id > newer.id:
        older, newer = newer, older
    old_text = older.content if older is not None else None
    change: ChangeType = (
        "created"
        if older is None or older.content_hash is None
        else "deleted"
        if newer.content_hash is None
        else "modified"
    )
    if older is not None and older.content_hash == newer.content_hash:
        assessment = Assessment(reasons=["low: the two versions are identical"])
    else:
        assessment = classify(
            newer.kind,
            path,
            change,
            old_text,
            newer.content,
            hidden_change=old_text == newer.content,
        )
    text = unified_diff(old_text, newer.content, f"a{path}@{older.id if older else 0}", f"b{path}@{newer.id}")
    added, removed = counts(text)
    return ConfigDiff(
        device=device,
        path=path,
        from_version=older.id if older is not None else None,
        to_version=newer.id,
        from_at=older.collected_at if older is not None else None,
        to_at=newer.collected_at,
        diff=text,
        added_lines=added,
        removed_lines=removed,
        risk=assessment.risk,
        reasons=assessment.reasons,
        affected_services=assessment.affected_services,
    )


async def _version(db: Database, device: str, path: str, version_id: int) -> ConfigurationSnapshot:
    row = await store.snapshot(db, version_id)
    if row is None or row.device != device or row.path != path:
        raise InvalidParameter(
            f"Version {version_id} is not a version of {path} on {device!r}; get_config_history lists them."
        )
    return row


async def changes(
    db: Database,
    *,
    device: str | None,
    path: str | None = None,
    since: datetime | None,
    min_risk: str | None,
    limit: int,
    offset: int,
    with_diff: bool = False,
) -> ConfigChanges:
    rows, total = await store.changes(
        db,
        device=device,
        path=path,
        since=since,
        risks=at_least(min_risk) if min_risk else None,
        limit=limit,
        offset=offset,
    )
    changes = [
        ConfigChange(
            id=r.id,
            detected_at=r.detected_at,
            device=r.device,
            path=r.path,
            kind=r.kind,
            change_type=r.change_type,
            risk=r.risk,  # type: ignore[arg-type]
            reasons=list(r.reasons or []),
            affected_services=list(r.affected_services or []),
            summary=r.summary,
            diff=r.diff if with_diff else None,
            from_version=r.from_snapshot_id,
            to_version=r.to_snapshot_id,
        )
        for r in rows
    ]
    return ConfigChanges(changes=changes, total=total, truncated=offset + len(rows) < total)
