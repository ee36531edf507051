"""The durable row writer: every row (audit, snapshot, metric) goes first to an fsynced append-only journal in
the data dir, then a shipper thread writes it to the database exactly once, whatever crashed when.

    add() ──> queue ──> append (the calling loop itself, or the journal thread) ──> durable() returns
                                  │    └──> journal thread: one fsync for every append since the last
                                  │
                                  └──> shipper thread (its own event loop and engine): one transaction per
                                       batch that also advances the segment's mark in `spool_segments`

A journal segment is `spool/segment-<ns>-<hex>.jsonl`, one JSON line per row. The transaction that inserts a
batch reads the segment's mark (bytes shipped) and stores the new one, so a batch replayed after a crash, a
timeout or a restart skips what is already in the database. Each process holds an flock on the segments it
writes or replays; segments of a process that died are unlocked and adopted by the next one to look. A
segment is deleted once rotated and fully shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import operator
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import JSON, Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mcp_server.audit import AuditRecord, storable
from mcp_server.db.engine import Database
from mcp_server.db.tables import Base, CollectionSnapshot, DataCollectionAudit, SpoolSegment
from mcp_server.quarantine import QUARANTINE_AFTER, Quarantine, QuarantineStatus, reason, refused

log = logging.getLogger(__name__)

Row = tuple[type[Base], dict[str, Any]]
# a durable() call waiting: (rows, fsynced too, its loop, its future), resolved once that many rows are
# written to the journal (or fsynced)
_Waiter = tuple[int, bool, asyncio.AbstractEventLoop, asyncio.Future[None]]

SEGMENT_BYTES = 4 << 20  # a segment is rotated past this, and deleted once shipped
_ADOPT_EVERY = 10.0  # seconds between looks for segments left by a process that died
COPY_ROWS = 50  # on PostgreSQL, a batch of at least this many rows of one table goes in by COPY
MARK_DAYS = 30  # how long a shipped segment's mark is kept after its file is deleted
FLUSH_ATTEMPTS = 3  # shipping attempts a flush without a timeout waits through before it gives up
_CACHE_ROWS = 50_000  # journaled rows kept in memory for the shipper; beyond, it reads them back from disk
# INFRA_AUDIT_SYNC=write: how long after a call writes its rows their fsync may wait for other calls' rows.
# One fsync (and one wake-up of the journal thread) per call cost a cached call ~8% on 2 cores; sharing it
# over this window bounds what a power loss can take to the answers of its last 20 ms.
SYNC_WINDOW = 0.02


class JournalError(OSError):
    """The journal could not be written (disk full, read-only, gone)."""


_TABLES: dict[str, type[Base]] = {
    mapper.class_.__tablename__: mapper.class_ for mapper in Base.registry.mappers
}


def _columns(table: type[Base]) -> list[tuple[str, Any]]:
    """(column, value when a row leaves it out) for every inserted column: a batch renders every column of
    every row, so rows of different shapes still go in one statement."""
    out: list[tuple[str, Any]] = []
    for column in table.__table__.columns:
        if column.primary_key and column.autoincrement is True:
            continue
        default = column.default
        value = None
        if default is not None and getattr(default, "is_scalar", False):
            value = default.arg
        elif default is not None and getattr(default, "is_callable", False):
            value = default.arg(None)
        out.append((column.name, value))
    return out


_FULL: dict[type[Base], list[tuple[str, Any]]] = {}


def full_row(table: type[Base], row: dict[str, Any]) -> dict[str, Any]:
    """`row` with every inserted column of `table` present (missing ones at their default or None)."""
    columns = _FULL.get(table)
    if columns is None:
        columns = _FULL[table] = _columns(table)
    if len(row) == len(columns):
        return row
    return {name: row[name] if name in row else default for name, default in columns}


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"cannot journal {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$datetime"]) if obj.keys() == {"$datetime"} else obj


# One encoder for every journal line (json.dumps builds one per call): compact, ASCII (a lone surrogate
# stays escaped), no circularity check (rows are flat records and JSON values already encoded once).
_JOURNAL_LINE = json.JSONEncoder(default=_encode, separators=(",", ":"), check_circular=False)


def _line(table: type[Base], row: dict[str, Any]) -> bytes:
    return (_JOURNAL_LINE.encode({"table": table.__tablename__, "row": row}) + "\n").encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    path: Path
    handle: BinaryIO  # holds the flock while this process owns the segment
    end: int  # bytes journaled (complete lines)
    shipped: int = 0  # bytes believed shipped (the database's mark is the truth)
    active: bool = False  # the journal thread still appends to it
    own: bool = True  # written by this process (its rows are counted in pending)
    born: float = field(default_factory=time.time)


@dataclass
class _Chunk:
    """Rows journaled by one fsync: their segment and the byte offset of each line (and of the end)."""

    segment: str
    offsets: list[int]
    rows: list[Row]
    at: float  # time.time() when journaled


@dataclass
class _Work:
    segment: str
    offsets: list[int]
    rows: list[Row]
    own: bool
    lines: int  # journal lines covered (an unreadable line is covered, never shipped)


@dataclass(frozen=True)
class WriterStatus:
    pending_rows: int  # added but not yet in the database (rows of adopted segments included)
    unjournaled_rows: int  # still only in memory
    journal_bytes: int  # journaled, not yet shipped
    journal_segments: int
    oldest_unshipped_seconds: float | None
    last_error: str | None
    last_error_at: datetime | None
    shipped_rows: int
    refused_calls: int
    quarantine: QuarantineStatus  # rows the database refused, set aside (see quarantine.py)


class BatchWriter:
    """Journals every row before it counts as written, and ships the journal to the database in batches.

    `add` queues a row (made storable first: no secret, over-long string or NUL reaches disk or database);
    `await durable()` returns once every row added so far is fsynced in the journal, or with `synced=False`
    once it is written there with its fsync due within SYNC_WINDOW (what a call waits for before its answer
    leaves, see INFRA_AUDIT_SYNC); `await flush()` once every row added so far is in the database.
    Writes have a deadline (`write_timeout`): a database that hangs is treated as one that refuses, the rows
    stay journaled and are shipped when it answers again.
    """

    def __init__(
        self,
        db: Database,
        spool_dir: Path,
        *,
        interval: float = 0.25,
        max_batch: int = 1000,
        write_timeout: float = 5.0,
        queue_max: int = 10_000,
        journal_max_bytes: int = 1 << 30,
        segment_bytes: int = SEGMENT_BYTES,
        connect: Callable[[], Database] | None = None,
        sync_window: float = SYNC_WINDOW,
    ) -> None:
        self._db = db
        self._sync_window = sync_window
        self._connect = connect or (lambda: Database(db.url, durable_commits=True))
        self._spool = spool_dir
        self._interval = interval
        self._max_batch = max_batch
        self.write_timeout = write_timeout
        self.queue_max = queue_max
        self.journal_max_bytes = journal_max_bytes
        self._segment_bytes = segment_bytes
        self._cond = threading.Condition()
        self._queue: list[Row] = []
        self._added = 0  # rows added (sequence of the newest)
        self._written = 0  # rows written to the journal file (in the page cache: they survive the process)
        self._journaled = 0  # rows fsynced in the journal (they survive a power loss)
        self._sync_wanted = 0  # rows written by a caller whose fsync the journal thread is to issue
        self._sync_due = 0.0  # when (time.monotonic()) that fsync is to be issued at the latest
        self._shipped = 0  # rows of this process's own segments shipped
        self._adopted_pending = 0
        self._durable_waiters: list[_Waiter] = []
        self._flush_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._segments: dict[str, _Segment] = {}
        self._active: str | None = None
        self._fd: int | None = None
        self._cache: deque[_Chunk] = deque()
        self._cache_rows = 0
        self._unshipped_since: deque[tuple[int, float]] = deque()  # (journaled row count, time) per fsync
        self._journal_error: BaseException | None = None
        self._stopping = False
        self._closed = False
        self._ship_deadline: float | None = None
        self._journal_thread: threading.Thread | None = None
        self._ship_thread: threading.Thread | None = None
        self._ship_loop: asyncio.AbstractEventLoop | None = None
        self._ship_wake: asyncio.Event | None = None
        self._ship_ready = threading.Event()
        self._append_lock = threading.Lock()  # one journal writer at a time: the thread or an inline call
        self._sync_lock = threading.Lock()  # one fsync at a time (the thread's, or an inline call's)
        self._carry: list[Row] = []  # rows made storable whose write failed: retried first, as they are
        self.written = 0
        self.batches = 0  # transactions that shipped rows
        self.fsyncs = 0  # fsyncs of the journal that made rows durable
        self.failures = 0
        self.replayed = 0  # rows shipped from segments of a process that died
        self.refused = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.quarantine = Quarantine(spool_dir)
        # where the batch the database refused starts (segment, offset), and how many times in a row
        self._refusals: tuple[tuple[str, int], int] | None = None

    # ---- the request path --------------------------------------------------------------------------------

    def add(self, table: type[Base], row: dict[str, Any]) -> None:
        """Queue a row. The journal thread makes it storable (see `storable`) before anything is written, so
        neither the journal nor the database ever sees a secret, an over-long string or a NUL character.
        Rows nobody waits for are journaled within `interval`, or at once with the next `durable()`."""
        with self._cond:
            self._queue.append((table, row))
            self._added += 1
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    def audit(self, record: AuditRecord) -> None:
        self.add(DataCollectionAudit, record.row())

    async def durable(self, *, synced: bool = True, inline: bool = False) -> None:
        """Return once every row added so far is fsynced in the journal (`synced`), or written to it (in the
        page cache: it survives any crash of this process, not a power loss), with its fsync issued by the
        journal thread within SYNC_WINDOW (shared by every call in it); raise JournalError if that cannot be
        done.

        With `inline`, the rows are made storable and written right here on the event loop, when the journal
        is free (no hand-off to the journal thread and back: two thread wake-ups, and the thread waits for the
        GIL the loop holds); with `synced` the loop then also waits for the fsync (calls that come one at a
        time). Otherwise the journal thread writes them with whatever else arrived (group commit)."""
        if self._journal_thread is None:
            if self._closed:
                return  # a call that outlived the server's shutdown: nothing journals any more
            self.start()
        loop = asyncio.get_running_loop()
        with self._cond:
            if (self._journaled if synced else self._written) >= self._added:
                return
            if self._journal_error is not None:
                raise JournalError(f"the audit journal cannot be written: {self._journal_error}")
            target = self._added
            here = inline and not self._stopping and self._append_lock.acquire(blocking=False)
        if here:
            try:
                written = self._write_queued()
            finally:
                self._append_lock.release()
            if written and synced:
                self._sync(blocking=False)  # busy with another fsync: the journal thread does it next
            elif written:
                with self._cond:
                    if self._sync_wanted <= self._journaled:  # the first write of a window wakes the thread
                        self._sync_due = time.monotonic() + self._sync_window
                        self._cond.notify()
                    self._sync_wanted = max(self._sync_wanted, self._written)
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if (self._journaled if synced else self._written) >= target:
                return
            # not written here (busy, or the write failed): the journal thread writes or retries it
            self._durable_waiters.append((target, synced, loop, future))
            self._cond.notify()
        await future

    def overloaded(self) -> str | None:
        """Why new calls must be refused now (too much work not yet journaled or shipped), or None."""
        with self._cond:
            queued = len(self._queue)
            unshipped = self._unshipped_bytes()
        if queued >= self.queue_max:
            return f"{queued:,} audit rows wait for the journal (INFRA_AUDIT_QUEUE_MAX {self.queue_max:,})"
        if unshipped >= self.journal_max_bytes:
            mb = self.journal_max_bytes / (1 << 20)
            return (
                f"{unshipped:,} journaled bytes wait for the database (INFRA_AUDIT_JOURNAL_MAX_MB {mb:.3g})"
            )
        return None

    @property
    def pending(self) -> int:
        with self._cond:
            return self._added - self._shipped + self._adopted_pending

    @property
    def unsynced_rows(self) -> int:
        """Rows written to the journal whose fsync has not completed yet (they survive a crash of this
        process, not yet a power loss)."""
        with self._cond:
            return self._written - self._journaled

    def segments(self) -> list[Path]:
        return sorted(self._spool.glob("segment-*.jsonl")) if self._spool.is_dir() else []

    def status(self) -> WriterStatus:
        now = time.time()
        with self._cond:
            oldest = [now - self._unshipped_since[0][1]] if self._unshipped_since else []
            oldest += [now - s.born for s in self._segments.values() if not s.own and s.shipped < s.end]
            if len(self._queue) and not oldest:
                oldest = [0.0]
            return WriterStatus(
                pending_rows=self._added - self._shipped + self._adopted_pending,
                unjournaled_rows=len(self._queue),
                journal_bytes=self._unshipped_bytes(),
                journal_segments=len(self._segments),
                oldest_unshipped_seconds=round(max(oldest), 3) if oldest else None,
                last_error=self.last_error,
                last_error_at=self.last_error_at,
                shipped_rows=self.written,
                refused_calls=self.refused,
                quarantine=self.quarantine.status(),
            )

    def _unshipped_bytes(self) -> int:
        return sum(s.end - s.shipped for s in self._segments.values())

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._journal_thread is not None:
            return
        self._stopping = False
        self.quarantine.load()
        self._adopt()  # what a process that died left is shipped first, and counted in `pending` at once
        self._journal_thread = threading.Thread(target=self._journal_main, name="infra-journal", daemon=True)
        self._ship_thread = threading.Thread(target=self._ship_main, name="infra-shipper", daemon=True)
        self._journal_thread.start()
        self._ship_thread.start()
        self._ship_ready.wait(5)

    async def flush(self, timeout: float | None = None) -> None:
        """Return once every row added so far is in the database; TimeoutError after `timeout` seconds.
        Without a timeout, a failed shipping attempt (a database busy past INFRA_AUDIT_WRITE_TIMEOUT, or away)
        is waited out FLUSH_ATTEMPTS times, as the shipper retries it; then what it met is raised (the rows
        stay journaled either way)."""
        if self._journal_thread is None:
            self._closed = False
            self.start()
        async with asyncio.timeout(timeout):
            await self.durable()
        loop = asyncio.get_running_loop()
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            with self._cond:
                target = self._added
                if self._shipped >= target and self._adopted_pending == 0:
                    return
                future: asyncio.Future[None] = loop.create_future()
                self._flush_waiters.append((target, loop, future))
            self._wake_shipper(now=True)
            try:
                async with asyncio.timeout(timeout):
                    await future
                return
            except (TimeoutError, SQLAlchemyError, OSError):
                if timeout is not None or attempt == FLUSH_ATTEMPTS:
                    raise

    async def caught_up(self, timeout: float) -> bool:
        """Flush, waiting at most `timeout` seconds and never raising: True when everything is shipped."""
        try:
            await self.flush(timeout)
            return True
        except (TimeoutError, SQLAlchemyError, OSError):
            return False

    async def close(self, timeout: float = 1.0) -> None:
        """Journal every queued row, ship what the database takes within `timeout` seconds, stop; what is
        left stays journaled for the next start."""
        if self._journal_thread is None:
            return
        with self._cond:
            self._stopping = True
            self._ship_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        journal, ship = self._journal_thread, self._ship_thread
        await asyncio.to_thread(journal.join)
        self._wake_shipper(now=True)
        if ship is not None:
            await asyncio.to_thread(ship.join, timeout + 2)
        self._journal_thread = self._ship_thread = None
        self._closed = True
        with self._cond:
            left = self._added - self._shipped + self._adopted_pending
            for seg in self._segments.values():
                seg.handle.close()
            self._segments.clear()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._active = None
        if left:
            log.warning(
                "%d rows not yet in the database are kept in %s for the next start", left, self._spool
            )

    # ---- the journal thread ------------------------------------------------------------------------------

    def _journal_main(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                # group commit: wake for a waiter, a full batch, the end, the fsync of what callers wrote once
                # its window is over (the rows of every call within it share it), or the interval
                due = False
                while not (self._stopping or self._durable_waiters or len(self._queue) >= self._max_batch):
                    wait = self._interval
                    if self._sync_wanted > self._journaled:
                        wait = self._sync_due - time.monotonic()
                        if wait <= 0:
                            break
                    if not self._cond.wait(wait) and self._queue and self._sync_wanted <= self._journaled:
                        due = True
                        break
                idle = not self._queue and not self._carry and self._journaled >= self._written
                if idle and not self._stopping:
                    continue
                # woken only to fsync what callers wrote: the rows queued meanwhile belong to calls still
                # running, which write their own (taking the append lock here would make them wait)
                write = bool(
                    due
                    or self._stopping
                    or self._durable_waiters
                    or self._carry
                    or len(self._queue) >= self._max_batch
                )
            if idle:  # stopping, and everything is journaled (an inline write holds the lock to its end)
                with self._append_lock, self._cond:
                    self._finish_active()
                return
            written = True
            if write:
                with self._append_lock:
                    written = self._write_queued()
            if written and self._sync():
                backoff = 0.05
                continue
            with self._cond:
                stop = self._stopping
            if stop:
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _write_queued(self) -> bool:
        """Write the queued rows to the journal file (with the append lock held), without fsync; False when
        the write failed (the rows are kept in memory and retried first)."""
        with self._cond:
            taken, self._queue = self._queue, []
        batch = self._carry + [(table, full_row(table, storable(table, row))) for table, row in taken]
        if not batch:
            return True
        try:
            chunk = self._append(batch)
        except OSError as exc:
            self._carry = batch
            self._journal_failed(exc, len(batch))
            return False
        self._carry = []
        with self._cond:
            seq = self._written + len(batch)
            self._journal_error = None
            self._written = seq
            self._unshipped_since.append((seq, chunk.at))
            if self._cache_rows + len(chunk.rows) <= _CACHE_ROWS:
                self._cache.append(chunk)
                self._cache_rows += len(chunk.rows)
            ready = self._ready_waiters()
        for _, _, loop, future in ready:
            _resolve(loop, future, None)
        return True

    def _sync(self, *, blocking: bool = True) -> bool:
        """fsync the journal up to every row written so far (one fsync for every writer since the last);
        False when it failed (retried by the journal thread; the rows are not written again), or when another
        fsync runs and `blocking` is false."""
        if not self._sync_lock.acquire(blocking=blocking):
            return False
        try:
            with self._cond:  # rows counted in _written are in this segment or in one fsynced when rotated
                target = self._written
                if self._journaled >= target or self._fd is None:
                    return True
                fd = os.dup(self._fd)  # a rotation may close the segment's own descriptor meanwhile
            try:
                os.fsync(fd)
            except OSError as exc:
                self._journal_failed(exc, target - self._journaled)
                return False
            finally:
                os.close(fd)
        finally:
            self._sync_lock.release()
        with self._cond:
            self._journaled = max(self._journaled, target)
            self.fsyncs += 1
            self._journal_error = None
            ready = self._ready_waiters()
        for _, _, loop, future in ready:
            _resolve(loop, future, None)
        self._wake_shipper(now=len(self._flush_waiters) > 0)
        return True

    def _ready_waiters(self) -> list[_Waiter]:
        """Take the durable() waiters that are now satisfied (with the condition held)."""
        ready: list[_Waiter] = []
        waiting: list[_Waiter] = []
        for waiter in self._durable_waiters:
            target, synced = waiter[0], waiter[1]
            reached = self._journaled if synced else self._written
            (ready if target <= reached else waiting).append(waiter)
        self._durable_waiters = waiting
        return ready

    def _journal_failed(self, exc: OSError, rows: int) -> None:
        self._note_error(f"journal: {exc}")
        log.error("audit journal write failed (%s); %d rows kept and retried", exc, rows)
        with self._cond:
            self._journal_error = exc

    def _append(self, batch: list[Row]) -> _Chunk:
        lines = [_line(table, row) for table, row in batch]
        with self._cond:
            active = self._segments.get(self._active) if self._active else None
        if active is None or active.end >= self._segment_bytes:
            active = self._rotate()
        start = active.end
        offsets = [start]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
        data = b"".join(lines)
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            with contextlib.suppress(OSError):  # no cut line left in the middle of the segment
                os.ftruncate(self._fd, start)
            raise
        with self._cond:
            active.end = offsets[-1]
        return _Chunk(active.path.name, offsets, batch, time.time())

    def _rotate(self) -> _Segment:
        """Start a new segment (created under a temporary name and locked before it is visible)."""
        self._spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"segment-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        temp = self._spool / f".{name}.new"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        handle = open(temp, "rb")  # held open: its lock marks the segment as ours
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(temp, self._spool / name)
        _fsync_dir(self._spool)
        segment = _Segment(self._spool / name, handle, end=0, active=True)
        if self._fd is not None:
            os.fsync(self._fd)  # what was written to the old segment is fsynced before it is let go
        with self._cond:
            old = self._segments.get(self._active) if self._active else None
            if old is not None:
                old.active = False
            if self._fd is not None:
                os.close(self._fd)
            self._fd = fd
            self._active = name
            self._segments[name] = segment
        return segment

    def _finish_active(self) -> None:
        """At the end: the active segment is no longer written; shipped entirely, it is deleted."""
        if self._active is not None and self._active in self._segments:
            self._segments[self._active].active = False

    # ---- the shipper thread ------------------------------------------------------------------------------

    def _wake_shipper(self, *, now: bool) -> None:
        loop, wake = self._ship_loop, self._ship_wake
        if loop is not None and wake is not None and (now or self._stopping):
            with contextlib.suppress(RuntimeError):  # its loop just closed
                loop.call_soon_threadsafe(wake.set)

    def _ship_main(self) -> None:
        asyncio.run(self._ship_run())

    async def _ship_run(self) -> None:
        self._ship_loop = asyncio.get_running_loop()
        self._ship_wake = asyncio.Event()
        self._ship_ready.set()
        db = self._connect()
        backoff = self._interval
        adopted_at = time.monotonic()
        try:
            while True:
                stopping = self._stopping and not (self._journal_thread and self._journal_thread.is_alive())
                if stopping and (self._ship_deadline is None or time.monotonic() >= self._ship_deadline):
                    return
                if time.monotonic() - adopted_at >= _ADOPT_EVERY:
                    adopted_at = time.monotonic()
                    self._adopt()
                try:
                    shipped = await self._ship_once(db)
                    backoff = self._interval
                except Exception as exc:  # a dead shipper would silently stop the audit: keep it alive
                    self._failed(exc)
                    if stopping:
                        return
                    backoff = min(backoff * 2, 5.0)
                    shipped = False
                if shipped:
                    continue  # a full batch, or someone waits for a flush: the backlog goes at once
                if stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._ship_wake.wait()
                self._ship_wake.clear()
        finally:
            self._ship_loop = None
            with contextlib.suppress(TimeoutError, SQLAlchemyError, OSError):
                async with asyncio.timeout(1):  # a hung database must not hold up the exit
                    await db.close()

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TimeoutError):
            what = f"database write timed out after {self.write_timeout:g} s (INFRA_AUDIT_WRITE_TIMEOUT)"
        if refused(exc):
            # retried, then shipped in parts with the refused rows set aside: a flush waits for that
            times = self._refusals[1] if self._refusals is not None else 1
            self._note_error(f"the database refused a batch: {reason(exc)}")
            log.warning(
                "the database refused a batch (attempt %d of %d before it is shipped in parts): %s",
                times,
                QUARANTINE_AFTER,
                reason(exc),
            )
            return
        self._note_error(what[:500])
        if isinstance(exc, SQLAlchemyError | OSError | TimeoutError):
            log.warning("database unavailable, %d rows stay journaled: %s", self.pending, what[:500])
        else:
            log.error("audit shipper failed; %d rows stay journaled", self.pending, exc_info=exc)
        with self._cond:
            waiters, self._flush_waiters = self._flush_waiters, []
        for _, loop, future in waiters:
            _resolve(loop, future, exc)

    def _note_error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = datetime.now(UTC)

    def _adopt(self) -> None:
        """Take over (lock) the segments of processes that died, oldest first; drop the empty files of a
        segment a process died creating."""
        for temp in self._spool.glob(".segment-*.new") if self._spool.is_dir() else ():
            with contextlib.suppress(OSError), temp.open("rb") as handle:
                if time.time() - os.fstat(handle.fileno()).st_mtime < 60:
                    continue  # being created right now (renamed within microseconds)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                temp.unlink()
        for path in self.segments():
            if path.name in self._segments:
                continue
            try:
                handle = open(path, "rb")  # held open: its lock marks the segment as ours
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live process writes or replays it
                handle.close()
                continue
            if not path.exists():  # shipped and deleted by its owner just now
                handle.close()
                continue
            data = handle.read()
            end = data.rfind(b"\n") + 1  # a line cut by the crash was never acknowledged
            with self._cond:
                self._segments[path.name] = _Segment(
                    path, handle, end=end, own=False, born=path.stat().st_mtime
                )
                self._adopted_pending += data.count(b"\n", 0, end)

    def _next_work(self) -> tuple[_Work | None, list[_Segment]]:
        """The next batch to ship (from memory when cached, else read back from its segment), and the
        segments now entirely shipped and no longer written (to delete)."""
        done: list[_Segment] = []
        with self._cond:
            for name in sorted(self._segments):
                seg = self._segments[name]
                if seg.shipped >= seg.end:
                    if not seg.active:
                        done.append(seg)
                    continue
                while self._cache and (
                    self._cache[0].segment not in self._segments
                    or self._segments[self._cache[0].segment].shipped >= self._cache[0].offsets[-1]
                ):
                    self._cache_rows -= len(self._cache.popleft().rows)
                if (
                    self._cache
                    and self._cache[0].segment == name
                    and self._cache[0].offsets[0] == seg.shipped
                ):
                    offsets, rows = list(self._cache[0].offsets), list(self._cache[0].rows)
                    for chunk in list(self._cache)[1:]:
                        if chunk.segment != name or len(rows) + len(chunk.rows) > self._max_batch:
                            break
                        offsets[-1:] = chunk.offsets
                        rows += chunk.rows
                    return _Work(name, offsets, rows, seg.own, len(rows)), done
                start, end, path = seg.shipped, seg.end, seg.path
                own = seg.own
                break
            else:
                return None, done
        return self._read(name, path, start, end, own), done

    def _read(self, name: str, path: Path, start: int, end: int, own: bool) -> _Work:
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
        offsets, rows = [start], []
        position = start
        lines = 0
        for raw in data.splitlines(keepends=True):
            position += len(raw)
            lines += 1
            try:
                item = json.loads(raw, object_hook=_decode)
                rows.append((_TABLES[item["table"]], full_row(_TABLES[item["table"]], item["row"])))
                offsets.append(position)
            except (ValueError, KeyError, TypeError):
                log.error("skipping an unreadable line at byte %d of %s", position - len(raw), path)
                if rows:
                    offsets[-1] = position  # fold the bad line into the previous row's span
                else:
                    offsets[0] = position
            if len(rows) >= self._max_batch:
                break
        return _Work(name, offsets, rows, own, lines)

    async def _ship_once(self, db: Database) -> bool:
        """Ship one batch; True when the next is to go at once (this one was full, a flush is awaited, the
        writer is stopping), False when the shipper waits for its interval: rows that trickle in one call at a
        time are shipped together, not one transaction (and one commit fsync) per call."""
        work, done = self._next_work()
        for seg in done:
            await self._retire(db, seg)
        if work is None:
            self._resolve_flushes()
            return False
        try:
            async with asyncio.timeout(self._write_deadline()):
                written = await self._write(db, work)
        except Exception as exc:
            if not refused(exc) or self._refused_times(work) < QUARANTINE_AFTER:
                raise
            written = await self._isolate(db, work, exc)
        self._refusals = None
        end = work.offsets[-1]
        with self._cond:
            shipped = self._segments.get(work.segment)
            finished = None
            if shipped is not None:
                shipped.shipped = max(shipped.shipped, end)
                if shipped.shipped >= shipped.end and not shipped.active:
                    finished = shipped
            if work.own:
                self._shipped += work.lines
                while self._unshipped_since and self._unshipped_since[0][0] <= self._shipped:
                    self._unshipped_since.popleft()
            else:
                self._adopted_pending = max(0, self._adopted_pending - work.lines)
                self.replayed += written
        self.written += written
        self.batches += 1
        if finished is not None:
            await self._retire(db, finished)
        self._resolve_flushes()
        with self._cond:
            return work.lines >= self._max_batch or bool(self._flush_waiters) or self._stopping

    def _write_deadline(self) -> float:
        if self._ship_deadline is None:
            return self.write_timeout
        # closing: the last writes share what is left of its deadline
        return max(0.05, min(self.write_timeout, self._ship_deadline - time.monotonic()))

    def _refused_times(self, work: _Work) -> int:
        """Count one more refusal of the batch starting where `work` starts; how many in a row."""
        key = (work.segment, work.offsets[0])
        times = self._refusals[1] + 1 if self._refusals is not None and self._refusals[0] == key else 1
        self._refusals = (key, times)
        return times

    async def _isolate(self, db: Database, work: _Work, refusal: BaseException) -> int:
        """Ship a batch the database refused in parts, in order, halving a refused part until the row it
        refuses is alone; that row is set aside in the quarantine file and the mark moves past it. Each part
        is one transaction that advances the segment's mark (see `_write`), so a part shipped before a crash
        or an outage is skipped when the batch is tried again. Returns rows inserted; an error that is not a
        refusal (the database away or hung) ends it, and the batch waits in the journal as any other."""
        parts = [(0, len(work.rows))]  # a stack: the leftmost part on top
        written = 0
        error = refusal
        while parts:
            i, j = parts.pop()
            part = _Work(work.segment, work.offsets[i : j + 1], work.rows[i:j], work.own, j - i)
            if (i, j) != (0, len(work.rows)):  # the whole batch was refused just now
                try:
                    async with asyncio.timeout(self._write_deadline()):
                        written += await self._write(db, part)
                    continue
                except Exception as exc:
                    if not refused(exc):
                        raise
                    error = exc
            if j - i == 1:
                await self._set_aside(db, part, error)
                continue
            middle = (i + j) // 2
            parts += [(middle, j), (i, middle)]
        return written

    async def _set_aside(self, db: Database, part: _Work, error: BaseException) -> None:
        """Quarantine the one row of `part` (fsynced first, once), then advance the mark past it."""
        (table, row), start = part.rows[0], part.offsets[0]
        message = reason(error)
        if self.quarantine.set_aside(part.segment, start, table.__tablename__, row, message):
            log.error(
                "the database refused a %s row (%s); set aside in %s",
                table.__tablename__,
                message,
                self.quarantine.path,
            )
        async with asyncio.timeout(self._write_deadline()):
            await self._write(db, _Work(part.segment, part.offsets[:2], [], part.own, 0))

    def _resolve_flushes(self) -> None:
        with self._cond:
            if self._adopted_pending:
                return
            ready = [w for w in self._flush_waiters if w[0] <= self._shipped]
            self._flush_waiters = [w for w in self._flush_waiters if w[0] > self._shipped]
        for _, loop, future in ready:
            _resolve(loop, future, None)

    async def _retire(self, db: Database, seg: _Segment) -> None:
        """Delete a fully shipped segment. Its mark stays (a copy of the file put back is not shipped
        twice); marks untouched for MARK_DAYS are pruned."""
        seg.path.unlink(missing_ok=True)
        _fsync_dir(self._spool)
        seg.handle.close()
        with self._cond:
            self._segments.pop(seg.path.name, None)
        old = datetime.now(UTC) - timedelta(days=MARK_DAYS)
        with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
            async with asyncio.timeout(self.write_timeout):
                async with db.session() as session, session.begin():
                    await session.execute(delete(SpoolSegment).where(SpoolSegment.replayed_at < old))

    async def _write(self, db: Database, work: _Work) -> int:
        """One transaction: the rows past the segment's mark, and the new mark. Returns rows inserted."""
        end = work.offsets[-1]
        async with db.session() as session, session.begin():
            query = select(SpoolSegment.shipped_bytes, SpoolSegment.rows).where(
                SpoolSegment.name == work.segment
            )
            if db.dialect == "postgresql":
                query = query.with_for_update()
            mark = (await session.execute(query)).first()
            if mark is not None and mark.shipped_bytes is None:
                return 0  # a whole spool file replayed by an older version
            shipped = mark.shipped_bytes if mark is not None else 0
            rows = [row for row, at in zip(work.rows, work.offsets, strict=False) if at >= shipped]
            await write_rows(session, db.dialect, rows)
            values = {
                "shipped_bytes": max(end, shipped),
                "rows": (mark.rows if mark else 0) + len(rows),
                "replayed_at": datetime.now(UTC),
            }
            if mark is None:
                session.add(SpoolSegment(name=work.segment, **values))
            else:
                await session.execute(
                    update(SpoolSegment).where(SpoolSegment.name == work.segment).values(values)
                )
            return len(rows)


async def write_rows(session: Any, dialect: str, batch: list[Row]) -> None:
    """Insert `batch` with one statement per table (every column rendered, so rows of any shape batch);
    snapshots are upserted, the newest per key."""
    grouped: dict[type[Base], list[dict[str, Any]]] = {}
    snapshots: dict[tuple[str, str, str], dict[str, Any]] = {}
    for table, row in batch:
        if table is CollectionSnapshot:
            snapshots[(row["device"], row["command"], row["params"])] = row
        else:
            grouped.setdefault(table, []).append(row)
    for table, rows in grouped.items():
        core: Table = table.__table__  # type: ignore[assignment]
        if dialect == "postgresql" and len(rows) >= COPY_ROWS:
            await _copy(session, core, rows)
        elif dialect == "sqlite":
            await _executemany(session, table, rows)
        else:
            await session.execute(insert(core), rows)
    if snapshots:
        kind = postgresql if dialect == "postgresql" else sqlite
        stmt = kind.insert(CollectionSnapshot).values(list(snapshots.values()))
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["device", "command", "params"],
                set_={"collected_at": stmt.excluded.collected_at, "data": stmt.excluded.data},
            )
        )


_INSERTS: dict[
    type[Base], tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]], list[tuple[int, Any]]]
] = {}


async def _executemany(session: Any, table: type[Base], rows: list[dict[str, Any]]) -> None:
    """Rows (full, see full_row) into a SQLite table by one executemany of a prepared INSERT, each value bound
    by its column type's own processor: what `session.execute(insert(table), rows)` stores, without
    SQLAlchemy building and processing a parameter dict per row (about half the shipper's time on SQLite)."""
    connection = await session.connection()
    plan = _INSERTS.get(table)
    if plan is None:
        dialect = connection.dialect
        core: Table = table.__table__  # type: ignore[assignment]
        names = [name for name, _ in _FULL.get(table) or _columns(table)]
        quote = dialect.identifier_preparer.quote
        sql = (
            f"INSERT INTO {quote(core.name)} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        processors = [
            (i, p)
            for i, name in enumerate(names)
            if (p := core.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        plan = _INSERTS[table] = (sql, operator.itemgetter(*names), processors)
    sql, values, processors = plan
    records: list[tuple[Any, ...]] = []
    for row in rows:
        record = list(values(row))
        for i, process in processors:
            record[i] = process(record[i])
        records.append(tuple(record))
    await connection.exec_driver_sql(sql, records)


async def _copy(session: Any, table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows (full, see full_row) into a PostgreSQL table with COPY, in the session's transaction: about twice
    the rate of a multi-row INSERT for plain tables (the audit, metrics and series)."""
    columns = list(rows[0])
    encode = {c.name for c in table.columns if isinstance(c.type, JSON)}
    records = [
        tuple(json.dumps(row[c]) if c in encode and row[c] is not None else row[c] for c in columns)
        for row in rows
    ]
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(table.name, records=records, columns=columns)


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], exc: BaseException | None
) -> None:
    def settle() -> None:
        if future.done():
            return
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # the waiter's loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)
