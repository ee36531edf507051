"""Audit: who is calling (a context variable set at the edge) and the batched writer that stores every row."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mcp_server.db.engine import Database
from mcp_server.db.tables import Base, CollectionSnapshot, DataCollectionAudit

log = logging.getLogger(__name__)


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


def with_tool(ctx: CallContext, tool: str) -> CallContext:
    return replace(ctx, tool=tool)


class BatchWriter:
    """Queues rows and writes them in batches off the request path.

    A failed flush keeps its rows (in order) and retries with backoff, so a database that is briefly away
    loses nothing; `flush()` waits until everything queued so far is written.
    """

    def __init__(self, db: Database, *, interval: float = 0.25, max_batch: int = 1000) -> None:
        self._db = db
        self._interval = interval
        self._max_batch = max_batch
        self._pending: list[tuple[type[Base], dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.failures = 0

    def add(self, table: type[Base], row: dict[str, Any]) -> None:
        self._pending.append((table, row))
        if len(self._pending) >= self._max_batch:
            self._wake.set()

    def audit(self, **row: Any) -> None:
        self.add(DataCollectionAudit, row)

    @property
    def pending(self) -> int:
        return len(self._pending)

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
            except SQLAlchemyError as exc:
                self.failures += 1
                backoff = min(backoff * 2, 5.0)
                log.warning("database write failed (%d rows kept, retrying): %s", self.pending, exc)

    async def flush(self) -> None:
        """Write everything queued so far; raises if the database refuses (rows are kept)."""
        async with self._lock:
            while self._pending:
                batch = self._pending[: self._max_batch]
                await self._write(batch)
                del self._pending[: len(batch)]
                self.written += len(batch)

    async def _write(self, batch: list[tuple[type[Base], dict[str, Any]]]) -> None:
        grouped: dict[type[Base], list[dict[str, Any]]] = defaultdict(list)
        snapshots: dict[tuple[str, str, str], dict[str, Any]] = {}
        for table, row in batch:
            if table is CollectionSnapshot:
                snapshots[(row["device"], row["command"], row["params"])] = row
            else:
                grouped[table].append(row)
        async with self._db.session() as session, session.begin():
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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except SQLAlchemyError as exc:
            log.error("could not write %d queued rows at shutdown: %s", self.pending, exc)
