"""Audit: who is calling (a context variable set at the edge) and the batched, spooling row writer."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mcp_server.db.engine import Database
from mcp_server.db.tables import Base, CollectionSnapshot, DataCollectionAudit, SpoolSegment

log = logging.getLogger(__name__)


@dataclass
class CallTrace:
    """What the collections of one call did, summed up in that call's audit row."""

    devices: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    ssh_commands: list[str] = field(default_factory=list)
    executions: int = 0
    cache_hits: int = 0


@dataclass(frozen=True)
class CallContext:
    """Who asked, through what. Identity fields are filled by the transport edge when known."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    transport: str = "internal"
    tool: str | None = None
    subject: str | None = None
    client_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_path: str | None = None
    trace: CallTrace = field(default_factory=CallTrace, compare=False)

    def audit_fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "transport": self.transport,
            "tool": self.tool,
            "subject": self.subject,
            "client_id": self.client_id,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
            "request_path": self.request_path,
        }


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("infra_call", default=None)


def current_call() -> CallContext:
    return _current.get() or CallContext()


@contextlib.contextmanager
def calling(ctx: CallContext) -> Iterator[CallContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


_TABLES: dict[str, type[Base]] = {
    mapper.class_.__tablename__: mapper.class_ for mapper in Base.registry.mappers
}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"cannot spool {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$datetime"]) if obj.keys() == {"$datetime"} else obj


class BatchWriter:
    """Queues rows and writes them in batches off the request path; loses none while the database is away.

    A flush that fails appends its rows to a segment file in `spool_dir` (fsynced) before forgetting them, so
    a crash or restart loses nothing. Segments are replayed oldest first, each in one transaction that also
    records the segment's name in `spool_segments`, so a crash between commit and unlink cannot replay twice.
    """

    def __init__(
        self, db: Database, spool_dir: Path, *, interval: float = 0.25, max_batch: int = 1000
    ) -> None:
        self._db = db
        self._spool = spool_dir
        self._interval = interval
        self._max_batch = max_batch
        self._pending: list[tuple[type[Base], dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.failures = 0
        self.spooled = 0
        self.replayed = 0

    def add(self, table: type[Base], row: dict[str, Any]) -> None:
        self._pending.append((table, row))
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    def audit(self, **row: Any) -> None:
        self.add(DataCollectionAudit, row)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def segments(self) -> list[Path]:
        return sorted(self._spool.glob("segment-*.jsonl")) if self._spool.is_dir() else []

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="infra-batch-writer")

    async def _run(self) -> None:
        backoff = self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._interval
            except (SQLAlchemyError, OSError) as exc:
                backoff = min(backoff * 2, 5.0)
                log.warning("database unavailable, %d segment(s) spooled: %s", len(self.segments()), exc)
            except Exception:  # a dead writer would silently stop the audit: keep it alive
                backoff = min(backoff * 2, 5.0)
                log.exception("audit writer failed; %d rows kept and retried", self.pending)

    async def flush(self) -> None:
        """Write spooled segments, then everything queued so far; on failure spool the batch and raise."""
        async with self._lock:
            try:
                for segment in self.segments():
                    await self._replay(segment)
                while self._pending:
                    batch = self._pending[: self._max_batch]
                    await self._write(batch)
                    del self._pending[: len(batch)]
                    self.written += len(batch)
            except (SQLAlchemyError, OSError):
                self.failures += 1
                if self._pending:
                    self._spool_rows(self._pending)
                    self._pending.clear()
                raise

    def _spool_rows(self, rows: list[tuple[type[Base], dict[str, Any]]]) -> None:
        self._spool.mkdir(parents=True, exist_ok=True)
        name = f"segment-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        path = self._spool / name
        lines = "".join(
            json.dumps({"table": table.__tablename__, "row": row}, default=_encode) + "\n"
            for table, row in rows
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            os.write(fd, lines.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self._spool, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.spooled += len(rows)

    async def _replay(self, segment: Path) -> None:
        rows = [
            json.loads(line, object_hook=_decode) for line in segment.read_text().splitlines() if line.strip()
        ]
        batch = [(_TABLES[item["table"]], item["row"]) for item in rows]
        await self._write(batch, segment=segment.name)
        segment.unlink()
        self.replayed += len(batch)
        log.info("replayed %d spooled rows from %s", len(batch), segment.name)

    async def _write(
        self, batch: list[tuple[type[Base], dict[str, Any]]], *, segment: str | None = None
    ) -> None:
        grouped: dict[type[Base], list[dict[str, Any]]] = defaultdict(list)
        snapshots: dict[tuple[str, str, str], dict[str, Any]] = {}
        for table, row in batch:
            if table is CollectionSnapshot:
                snapshots[(row["device"], row["command"], row["params"])] = row
            else:
                grouped[table].append(row)
        async with self._db.session() as session, session.begin():
            if segment is not None:
                done = await session.scalar(select(SpoolSegment.name).where(SpoolSegment.name == segment))
                if done is not None:  # committed before a crash kept us from deleting the file
                    return
                session.add(SpoolSegment(name=segment, replayed_at=datetime.now(UTC), rows=len(batch)))
            for table, rows in grouped.items():
                await session.execute(insert(table), rows)
            if snapshots:
                await session.execute(self._upsert_snapshots(list(snapshots.values())))

    def _upsert_snapshots(self, rows: list[dict[str, Any]]) -> Any:
        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        stmt = dialect.insert(CollectionSnapshot).values(rows)
        return stmt.on_conflict_do_update(
            index_elements=["device", "command", "params"],
            set_={"collected_at": stmt.excluded.collected_at, "data": stmt.excluded.data},
        )

    async def close(self) -> None:
        if self._task is not None:
            # Cancel only while holding the lock: a flush interrupted between its commit and forgetting the
            # rows would hand the same rows to the final flush below and write them twice.
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except (SQLAlchemyError, OSError) as exc:
            log.warning(
                "database unavailable at shutdown; rows kept in %s for the next start: %s", self._spool, exc
            )
