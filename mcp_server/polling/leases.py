"""Poll leases: each (device, category, slot) is collected by exactly one replica.

A claim is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` on the lease's primary key: the first replica
inserts the row; a later one takes it over only if the holder never completed it and its lease expired
(the holder died). PostgreSQL serialises concurrent claims of one key on its row lock and re-checks the
WHERE against the winner's row, so two replicas never both get it; SQLite has a single writer anyway.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from mcp_server.db.engine import Database
from mcp_server.db.series import as_utc
from mcp_server.db.tables import PollLease


@dataclass(frozen=True)
class Claim:
    ours: bool
    owner: str
    request_id: str
    expires_at: datetime
    completed_at: datetime | None
    taken_over: bool = False  # ours, from a holder that let its lease expire uncompleted


def _insert(db: Database) -> Any:
    return (postgresql if db.dialect == "postgresql" else sqlite).insert(PollLease)


async def claim(
    db: Database, device: str, category: str, slot: int, *, owner: str, ttl: timedelta, now: datetime
) -> Claim:
    """Try to take (device, category, slot); the answer says who holds it and until when."""
    request_id = uuid.uuid4().hex
    insert = _insert(db).values(
        device=device,
        category=category,
        slot=slot,
        owner=owner,
        request_id=request_id,
        claimed_at=now,
        expires_at=now + ttl,
        attempts=1,
    )
    statement = insert.on_conflict_do_update(
        index_elements=["device", "category", "slot"],
        set_={
            "owner": insert.excluded.owner,
            "request_id": insert.excluded.request_id,
            "claimed_at": insert.excluded.claimed_at,
            "expires_at": insert.excluded.expires_at,
            "attempts": PollLease.attempts + 1,
        },
        # only a lease its holder never completed and let expire is taken over
        where=PollLease.completed_at.is_(None) & (PollLease.expires_at < insert.excluded.claimed_at),
    ).returning(PollLease.request_id, PollLease.attempts)
    async with db.session() as session, session.begin():
        taken = (await session.execute(statement)).one_or_none()
        if taken is not None and taken.request_id == request_id:
            return Claim(True, owner, request_id, now + ttl, None, taken_over=taken.attempts > 1)
        held = (
            await session.execute(
                select(
                    PollLease.owner, PollLease.request_id, PollLease.expires_at, PollLease.completed_at
                ).where(PollLease.device == device, PollLease.category == category, PollLease.slot == slot)
            )
        ).one()
    return Claim(
        False,
        held.owner,
        held.request_id,
        as_utc(held.expires_at),
        as_utc(held.completed_at) if held.completed_at is not None else None,
    )


async def complete(
    db: Database, device: str, category: str, slot: int, *, request_id: str, outcome: str, now: datetime
) -> bool:
    """Mark our claim done; False when it was taken over meanwhile (we overran the lease)."""
    async with db.session() as session, session.begin():
        result = await session.execute(
            update(PollLease)
            .where(
                PollLease.device == device,
                PollLease.category == category,
                PollLease.slot == slot,
                PollLease.request_id == request_id,
            )
            .values(completed_at=now, outcome=outcome[:32])
        )
    return bool(getattr(result, "rowcount", 0))
