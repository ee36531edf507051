"""container_restart_counts: how many times each container's restart policy has restarted it, one row per
container per container_restarts collection (the containers poll, and every list_containers call). What
the `container_restarts` alert rule counts: restarts within its window are the growth of this count."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mcp_server.db.tables import Base, BigId
from mcp_server.parsers.containers import ContainerRestartList
from mcp_server.series.containers import CONTAINER, CONTAINERS_POLL
from mcp_server.series.spec import Metric, Series


class ContainerRestartRow(Base):
    """Time series of container_restarts collections: one row per container per sample."""

    __tablename__ = "container_restart_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    collected_at: Mapped[datetime]
    container: Mapped[str] = mapped_column(String(255), doc="Container name (its id when it has none).")
    container_id: Mapped[str] = mapped_column(String(64))
    restart_count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_container_restart_counts_device_container", "device", "container", "collected_at"),
    )


def _rows(restarts: ContainerRestartList) -> list[dict[str, Any]]:
    return [
        {
            "container": c.name or c.id[:64],
            "container_id": c.id[:64],
            "restart_count": c.restart_count,
        }
        for c in restarts.containers
    ]


CONTAINER_RESTARTS: Series[ContainerRestartList] = Series(
    table=ContainerRestartRow,
    command="container_restarts",
    rows=_rows,
    poll=CONTAINERS_POLL,
    tool="list_containers",
    retention="retention_metrics_days",
    key=CONTAINER,
    metrics=(
        Metric(
            "container_restart_count",
            "gauge",
            "CAST(restart_count AS {f})",
            "restarts",
            "restarts by the container's restart policy so far",
        ),
    ),
)
