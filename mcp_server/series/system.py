"""system_metrics: CPU, memory, load and uptime of a device, one row per system_metrics collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from mcp_server.db.tables import Base, BigId
from mcp_server.parsers.system import SystemMetrics
from mcp_server.series.spec import Category, Metric, Series


class SystemMetricRow(Base):
    """Time series of system_metrics collections."""

    __tablename__ = "system_metrics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    collected_at: Mapped[datetime]
    cpu_percent: Mapped[float] = mapped_column(Float)
    load_1: Mapped[float] = mapped_column(Float)
    load_5: Mapped[float] = mapped_column(Float)
    load_15: Mapped[float] = mapped_column(Float)
    memory_total_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_available_bytes: Mapped[int] = mapped_column(BigInteger)
    swap_total_bytes: Mapped[int] = mapped_column(BigInteger)
    swap_used_bytes: Mapped[int] = mapped_column(BigInteger)
    uptime_seconds: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_system_metrics_device_collected_at", "device", "collected_at"),)


def _rows(m: SystemMetrics) -> list[dict[str, Any]]:
    return [
        {
            "cpu_percent": m.cpu.busy_percent,
            "load_1": m.load.load_1m,
            "load_5": m.load.load_5m,
            "load_15": m.load.load_15m,
            "memory_total_bytes": m.memory.total_bytes,
            "memory_used_bytes": m.memory.used_bytes,
            "memory_available_bytes": m.memory.available_bytes,
            "swap_total_bytes": m.swap.total_bytes,
            "swap_used_bytes": m.swap.used_bytes,
            "uptime_seconds": m.uptime_seconds,
        }
    ]


SYSTEM: Series[SystemMetrics] = Series(
    table=SystemMetricRow,
    command="system_metrics",
    rows=_rows,
    poll=Category("system", "poll_system_interval", ("system_metrics",)),
    tool="get_system_metrics",
    retention="retention_metrics_days",
    # all of them are columns of the hourly rollup too, with these same expressions (migration 0005)
    metrics=(
        Metric("cpu_percent", "gauge", "cpu_percent", "%", "CPU busy, all cores", rollup=True),
        Metric(
            "memory_percent",
            "gauge",
            "CAST(memory_used_bytes AS {f}) * 100.0 / NULLIF(CAST(memory_total_bytes AS {f}), 0)",
            "%",
            "RAM in use",
            rollup=True,
        ),
        Metric(
            "memory_used_bytes", "gauge", "CAST(memory_used_bytes AS {f})", "bytes", "RAM in use", rollup=True
        ),
        Metric("load_1", "gauge", "load_1", "load", "load averages", rollup=True),
        Metric("load_5", "gauge", "load_5", "load", "load averages", rollup=True),
        Metric("load_15", "gauge", "load_15", "load", "load averages", rollup=True),
    ),
)
