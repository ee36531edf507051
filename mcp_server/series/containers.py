"""container_stats: CPU, memory, network and block I/O of each running container, one row per container per
container_stats collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mcp_server.db.tables import Base, BigId
from mcp_server.parsers.containers_runtime import ContainerStatsList
from mcp_server.series.spec import Category, Key, Metric, Series


class ContainerStatRow(Base):
    """Time series of container_stats collections: one row per running container per sample."""

    __tablename__ = "container_stats"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    collected_at: Mapped[datetime]
    container: Mapped[str] = mapped_column(String(255), doc="Container name.")
    container_id: Mapped[str] = mapped_column(String(64))
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    memory_limit_bytes: Mapped[int | None] = mapped_column(BigInteger)
    net_rx_bytes: Mapped[int | None] = mapped_column(BigInteger)
    net_tx_bytes: Mapped[int | None] = mapped_column(BigInteger)
    block_read_bytes: Mapped[int | None] = mapped_column(BigInteger)
    block_write_bytes: Mapped[int | None] = mapped_column(BigInteger)
    pids: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_container_stats_device_container", "device", "container", "collected_at"),)


def _rows(stats: ContainerStatsList) -> list[dict[str, Any]]:
    return [
        {
            "container": c.name,
            "container_id": c.id,
            "cpu_percent": c.cpu_percent,
            "memory_used_bytes": c.memory_used_bytes,
            "memory_limit_bytes": c.memory_limit_bytes,
            "net_rx_bytes": c.net_rx_bytes,
            "net_tx_bytes": c.net_tx_bytes,
            "block_read_bytes": c.block_read_bytes,
            "block_write_bytes": c.block_write_bytes,
            "pids": c.pids,
        }
        for c in stats.containers
    ]


# one poll for both container series (container_restarts.py): stats, then restart counts
CONTAINERS_POLL = Category(
    "containers", "poll_containers_interval", ("container_stats", "container_restarts")
)
CONTAINER = Key("container", "Container name")

CONTAINERS: Series[ContainerStatsList] = Series(
    table=ContainerStatRow,
    command="container_stats",
    rows=_rows,
    poll=CONTAINERS_POLL,
    tool="get_container_stats",
    retention="retention_metrics_days",
    key=CONTAINER,
    metrics=(
        Metric("container_cpu_percent", "gauge", "cpu_percent", "% of one core", "CPU, 100 = one core"),
        Metric(
            "container_memory_bytes",
            "gauge",
            "CAST(memory_used_bytes AS {f})",
            "bytes",
            "memory, page cache excluded",
        ),
    ),
)
