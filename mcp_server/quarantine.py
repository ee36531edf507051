"""Rows the database refuses, set aside so they hold up no other row.

A row the database refuses for what it holds (a value a column type rejects, a violated constraint) would fail
every attempt of its batch and keep every later row waiting. The shipper (journal.py) tells such a refusal
from the database being away or slow (`refused`), ships the batch in parts until the refused row is alone,
and appends it here (`Quarantine.set_aside`) before moving the segment's mark past it.

`<spool>/quarantine.jsonl` (0600) holds one JSON line per refused row: when, the database's error (redacted,
cut), the segment and byte offset it came from, and the journal line's `table` and `row` as they were
(already redacted and bounded when journaled). A row is set aside once: its (segment, offset) is its key.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from mcp_server.redact import redact_text

QUARANTINE_FILE = "quarantine.jsonl"
QUARANTINE_AFTER = 3  # refused attempts of one batch before it is shipped in parts
ERROR_CHARS = 500

# SQLSTATE classes that name the row itself: 22 data exception (out of range, too long, bad input), 23
# integrity constraint violation (NOT NULL, CHECK, UNIQUE, foreign key, no partition for the row).
_ROW_CLASSES = ("22", "23")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: SQLAlchemy's `orig` (the driver's error) and explicit `raise … from`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def refused(exc: BaseException) -> bool:
    """Whether the database refused the rows themselves, and would refuse them again: a constraint, or a value
    a column type (or the driver encoding it) rejects. A database away, hung, busy, read-only, out of space or
    refusing the login is not: those rows wait in the journal and are retried."""
    causes = list(_causes(exc))
    if any(isinstance(c, TimeoutError | OSError | OperationalError) for c in causes):
        return False
    if any(getattr(c, "connection_invalidated", False) for c in causes):
        return False
    for cause in causes:
        if isinstance(cause, IntegrityError | DataError | sqlite3.IntegrityError | sqlite3.DataError):
            return True
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str):
            return state[:2] in _ROW_CLASSES
    # a value the driver cannot encode for its column (a float column given text, an integer past the
    # column's range): raised before anything reaches the database, by COPY and SQLite's binding as they
    # are, by SQLAlchemy's bind processors wrapped in a StatementError
    return any(isinstance(c, ValueError | TypeError | OverflowError) for c in causes)


def reason(exc: BaseException) -> str:
    """The database's own words for a refusal (not SQLAlchemy's echo of the statement and its parameters),
    redacted and cut."""
    causes = list(_causes(exc))
    driver = next((c for c in reversed(causes) if str(c)), exc)
    text = f"{type(driver).__name__}: {driver}".replace("\n", " ")  # PostgreSQL's DETAIL: one line
    return redact_text(text)[:ERROR_CHARS]


@dataclass(frozen=True)
class QuarantineStatus:
    rows: int  # rows in the quarantine file
    last_error: str | None
    last_at: datetime | None
    path: Path


class Quarantine:
    """The quarantine file of one spool dir: appended by the shipper thread, counted for the status."""

    def __init__(self, spool: Path) -> None:
        self.path = spool / QUARANTINE_FILE
        self._lock = threading.Lock()
        self._keys: set[tuple[str, int]] | None = None
        self._rows = 0
        self.last_error: str | None = None
        self.last_at: datetime | None = None

    def load(self) -> None:
        """Count the rows set aside before (by this or an earlier process) and remember their keys."""
        keys: set[tuple[str, int]] = set()
        last: dict[str, Any] | None = None
        try:
            with self.path.open("rb") as handle:
                for raw in handle:
                    try:
                        item = json.loads(raw)
                        keys.add((str(item["segment"]), int(item["offset"])))
                        last = item
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a crash: its row is set aside again
        except FileNotFoundError:
            pass
        with self._lock:
            self._keys = keys
            self._rows = len(keys)
            if last is not None and self.last_error is None:
                self.last_error = str(last.get("error"))
                self.last_at = datetime.fromisoformat(str(last["quarantined_at"]))

    def set_aside(self, segment: str, offset: int, table: str, row: dict[str, Any], error: str) -> bool:
        """Append one refused row and fsync it; False when it is already there (set aside by an attempt whose
        mark did not commit)."""
        if self._keys is None:
            self.load()
        assert self._keys is not None
        now = datetime.now(UTC)
        with self._lock:
            self.last_error, self.last_at = error, now
            if (segment, offset) in self._keys:
                return False
        line = {
            "quarantined_at": now.isoformat(),
            "error": error,
            "segment": segment,
            "offset": offset,
            "table": table,
            "row": row,
        }
        data = (json.dumps(line, separators=(",", ":"), default=_encode) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._keys.add((segment, offset))
            self._rows += 1
        return True

    def status(self) -> QuarantineStatus:
        with self._lock:
            return QuarantineStatus(self._rows, self.last_error, self.last_at, self.path)


def _encode(value: Any) -> Any:
    """Journal values as the journal writes them (a datetime as {"$datetime": iso})."""
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"cannot write {type(value).__name__}")
