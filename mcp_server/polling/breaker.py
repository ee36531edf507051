"""The circuit breaker per device: consecutive failed polls open it, and polls then back off exponentially.

The state lives in the `device_health` table so every replica sees (and feeds) the same breaker; counts
are incremented in SQL, never read-modify-written, so replicas polling one device at once lose none.
Each replica keeps a copy for the hot path (`allows`, `get`) and reloads it every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from mcp_server.db.engine import Database
from mcp_server.db.series import as_utc
from mcp_server.db.tables import DeviceHealthRow
from mcp_server.devices import DeviceHealth
from mcp_server.events import DeviceHealthChanged, EventBus
from mcp_server.redact import redact_text

REFRESH_AFTER = 2.0  # seconds a replica trusts its copy of the shared state
SUCCESS_WRITE_EVERY = timedelta(seconds=60)  # a healthy device's row is refreshed at most this often
UNSUPPORTED_FOR = timedelta(hours=1)


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int
    backoff: float
    max_backoff: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (threshold reached): doubling, capped."""
        steps = max(0, failures - self.threshold)
        return float(min(self.max_backoff, self.backoff * 2 ** min(steps, 30)))


@dataclass(frozen=True)
class _Seen:
    breaker: str
    failures: int
    retry_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error_type: str | None
    last_error: str | None


def _seen(row: Any) -> _Seen:
    def t(value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None

    return _Seen(
        row.breaker,
        row.consecutive_failures,
        t(row.retry_at),
        t(row.last_success_at),
        t(row.last_failure_at),
        row.last_error_type,
        row.last_error,
    )


class HealthBook:
    """This replica's view of every device's breaker, written through to `device_health`."""

    def __init__(
        self,
        db: Database,
        policy: BreakerPolicy,
        replica: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
    ) -> None:
        self._db = db
        self._events = events
        self.policy = policy
        self._replica = replica
        self._monotonic = monotonic
        self._rows: dict[str, _Seen] = {}
        self._loaded_at: float | None = None
        self._probing: set[str] = set()
        self._unsupported: dict[str, dict[str, datetime]] = {}

    async def refresh(self, *, force: bool = False) -> None:
        """Reload the shared state if this copy is older than a couple of seconds."""
        if not force and self._loaded_at is not None and self._monotonic() - self._loaded_at < REFRESH_AFTER:
            return
        async with self._db.read_session() as session:
            rows = (await session.scalars(select(DeviceHealthRow))).all()
        self._rows = {r.device: _seen(r) for r in rows}
        self._loaded_at = self._monotonic()

    def get(self, device: str, now: datetime | None = None) -> DeviceHealth | None:
        seen = self._rows.get(device)
        unsupported = sorted(
            c for c, until in self._unsupported.get(device, {}).items() if until > (now or datetime.now(UTC))
        )
        if seen is None:
            if not unsupported:
                return None
            return DeviceHealth(
                status="unknown", breaker="closed", consecutive_failures=0, unsupported=unsupported
            )
        if seen.breaker == "open":
            breaker = "half_open" if device in self._probing else "open"
            status = "down"
        else:
            breaker, status = "closed", "degraded" if seen.failures else "ok"
        return DeviceHealth(
            status=status,  # type: ignore[arg-type]
            breaker=breaker,  # type: ignore[arg-type]
            consecutive_failures=seen.failures,
            last_success_at=seen.last_success_at,
            last_failure_at=seen.last_failure_at,
            last_error_type=seen.last_error_type,
            last_error=seen.last_error,
            retry_at=seen.retry_at if seen.breaker == "open" else None,
            unsupported=unsupported,
        )

    def allows(self, device: str, now: datetime) -> bool:
        """May a poll of `device` run now? Closed: yes. Open: only once retry_at has passed, one at a time
        (that trial poll closes the breaker or opens it again for longer)."""
        seen = self._rows.get(device)
        if seen is None or seen.breaker != "open":
            return True
        if device in self._probing or (seen.retry_at is not None and now < seen.retry_at):
            return False
        self._probing.add(device)
        return True

    def is_open(self, device: str) -> bool:
        seen = self._rows.get(device)
        return seen is not None and seen.breaker == "open"

    def supports(self, device: str, category: str, now: datetime) -> bool:
        until = self._unsupported.get(device, {}).get(category)
        return until is None or until <= now

    def mark_unsupported(self, device: str, category: str, now: datetime, interval: float) -> None:
        """The category's program is missing on the device: skip it for an hour (or one interval)."""
        wait = max(UNSUPPORTED_FOR, timedelta(seconds=interval))
        self._unsupported.setdefault(device, {})[category] = now + wait

    def _status(self, device: str) -> str:
        health = self.get(device)
        return health.status if health is not None else "unknown"

    async def _changed(self, device: str, before: str) -> None:
        """Tell the event bus when a poll moved the device's status (ok, degraded, down)."""
        health = self.get(device)
        if self._events is None or health is None or health.status == before:
            return
        await self._events.publish(
            DeviceHealthChanged(
                device,
                before,
                health.status,
                health.consecutive_failures,
                health.last_error_type if health.status != "ok" else None,
                health.last_error if health.status != "ok" else None,
            )
        )

    async def record_success(self, device: str, now: datetime) -> None:
        """The device answered: close its breaker and reset its failure count."""
        self._probing.discard(device)
        seen = self._rows.get(device)
        before = self._status(device)
        if (
            seen is not None
            and seen.breaker == "closed"
            and not seen.failures
            and seen.last_success_at is not None
            and now - seen.last_success_at < SUCCESS_WRITE_EVERY
        ):
            return
        values = {
            "breaker": "closed",
            "consecutive_failures": 0,
            "opened_at": None,
            "retry_at": None,
            "last_success_at": now,
            "updated_at": now,
            "updated_by": self._replica,
        }
        async with self._db.session() as session, session.begin():
            insert = self._insert().values(device=device, **values)
            row = (
                await session.execute(
                    insert.on_conflict_do_update(index_elements=["device"], set_=values).returning(
                        DeviceHealthRow
                    )
                )
            ).scalar_one()
            self._rows[device] = _seen(row)
        await self._changed(device, before)

    async def record_failure(self, device: str, error_type: str, message: str, now: datetime) -> DeviceHealth:
        """The device could not be reached: count it; at the threshold open the breaker (longer each time)."""
        self._probing.discard(device)
        before = self._status(device)
        failed = {
            "last_failure_at": now,
            "last_error_type": error_type[:64],
            "last_error": redact_text(message)[:2000],
            "updated_at": now,
            "updated_by": self._replica,
        }
        async with self._db.session() as session, session.begin():
            insert = self._insert().values(device=device, breaker="closed", consecutive_failures=1, **failed)
            counted = (
                await session.execute(
                    insert.on_conflict_do_update(
                        index_elements=["device"],
                        set_={"consecutive_failures": DeviceHealthRow.consecutive_failures + 1, **failed},
                    ).returning(DeviceHealthRow.consecutive_failures)
                )
            ).scalar_one()
            if counted >= self.policy.threshold:
                retry = now + timedelta(seconds=self.policy.delay(counted))
                await session.execute(
                    update(DeviceHealthRow)
                    .where(DeviceHealthRow.device == device)
                    .values(breaker="open", retry_at=retry, opened_at=now)
                )
            row = await session.scalar(select(DeviceHealthRow).where(DeviceHealthRow.device == device))
            assert row is not None
            self._rows[device] = _seen(row)
        await self._changed(device, before)
        health = self.get(device, now)
        assert health is not None
        return health

    def forget_probe(self, device: str) -> None:
        """A trial poll ended without a verdict on reachability (e.g. a parse error)."""
        self._probing.discard(device)

    def _insert(self) -> Any:
        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        return dialect.insert(DeviceHealthRow)
