"""The event log: what GET /api/v1/events streams, kept in the database so a client resumes where it left off.

A subscriber on the event bus turns configuration changes, device health changes (ok, degraded, down) and
failed background polls into `event_log` rows, queued on the batch writer (never blocking a collection); the
stream reads them back by id, which is each Server-Sent Event's id (Last-Event-ID).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select

from mcp_server.audit import BatchWriter, current_call
from mcp_server.db.engine import Database
from mcp_server.db.tables import EventLogRow
from mcp_server.events import CollectionFailed, ConfigChanged, DeviceHealthChanged, Event, EventBus

EventKind = Literal["config_change", "device_health", "poll_failure", "alert"]
RECORDED = (ConfigChanged, DeviceHealthChanged, CollectionFailed)


class StreamedEvent(BaseModel):
    """One event of the stream; `id` is its SSE id (send it back as Last-Event-ID to resume after it)."""

    id: int
    kind: EventKind
    occurred_at: datetime
    device: str | None
    data: dict[str, Any] = Field(
        description="config_change: path, change_type, risk, summary, change_id (get_config_diff); "
        "device_health: previous, status, consecutive_failures, error_type, error; "
        "poll_failure: command, error_type, error; alert: rule, subject, title, message."
    )


def row_of(event: Event) -> dict[str, Any] | None:
    """The event_log row of a bus event, or None when the stream does not carry it."""
    now = datetime.now(UTC)
    if isinstance(event, ConfigChanged):
        data: dict[str, Any] = {
            "path": event.path,
            "file_kind": event.kind,
            "change_type": event.change_type,
            "risk": event.risk,
            "summary": event.summary,
            "change_id": event.event_id,
        }
        return {
            "occurred_at": event.detected_at,
            "kind": "config_change",
            "device": event.device,
            "data": data,
        }
    if isinstance(event, DeviceHealthChanged):
        data = {
            "previous": event.previous,
            "status": event.status,
            "consecutive_failures": event.consecutive_failures,
            "error_type": event.error_type,
            "error": event.error,
        }
        return {"occurred_at": now, "kind": "device_health", "device": event.device, "data": data}
    if isinstance(event, CollectionFailed) and current_call().transport == "poller":
        data = {"command": event.command, "error_type": event.error_type, "error": event.message}
        return {"occurred_at": now, "kind": "poll_failure", "device": event.device, "data": data}
    return None


def record_events(events: EventBus, writer: BatchWriter) -> Callable[[], None]:
    """Keep every streamed kind of event in event_log from now on; returns the function that stops it."""

    def record(event: Event) -> None:
        row = row_of(event)
        if row is not None:
            writer.add(EventLogRow, row)

    return events.subscribe(record, types=RECORDED)


async def events_after(
    db: Database,
    after: int,
    *,
    kinds: list[EventKind] | None = None,
    device: str | None = None,
    limit: int = 100,
) -> list[StreamedEvent]:
    """Events with an id above `after`, oldest first."""
    query = select(EventLogRow).where(EventLogRow.id > after).order_by(EventLogRow.id).limit(limit)
    if kinds:
        query = query.where(EventLogRow.kind.in_(kinds))
    if device is not None:
        query = query.where(EventLogRow.device == device)
    async with db.read_session() as session:
        rows = (await session.scalars(query)).all()
    return [
        StreamedEvent(
            id=r.id,
            kind=r.kind,  # type: ignore[arg-type]
            occurred_at=r.occurred_at if r.occurred_at.tzinfo else r.occurred_at.replace(tzinfo=UTC),
            device=r.device,
            data=r.data,
        )
        for r in rows
    ]


async def last_event_id(db: Database) -> int:
    """The id of the newest event (0 when there is none): a stream without Last-Event-ID starts after it."""
    async with db.read_session() as session:
        return int(await session.scalar(select(func.coalesce(func.max(EventLogRow.id), 0))) or 0)
