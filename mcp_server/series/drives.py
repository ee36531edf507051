"""drive_metrics: the temperature of each drive, one row per drive_smart answer that reports one.

The drives poll runs get_drive_health's walk (drive_inventory, then drive_smart for every disk), so every
disk lsblk lists gets a sample per poll, and so does every get_drive_health call.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from mcp_server.db.tables import Base, BigId
from mcp_server.parsers.storage_drives import DriveHealth
from mcp_server.series.spec import Category, Key, Metric, Series


class DriveMetricRow(Base):
    """Time series of drive_smart collections: one row per drive that reported a temperature."""

    __tablename__ = "drive_metrics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    collected_at: Mapped[datetime]
    drive: Mapped[str] = mapped_column(String(128), doc="The drive's path, as drive_smart was asked for it.")
    temperature_c: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_drive_metrics_device_drive", "device", "drive", "collected_at"),)


def _rows(health: DriveHealth) -> list[dict[str, Any]]:
    if health.temperature_c is None:
        return []
    return [{"drive": health.path, "temperature_c": float(health.temperature_c)}]


DRIVES: Series[DriveHealth] = Series(
    table=DriveMetricRow,
    command="drive_smart",
    rows=_rows,
    poll=Category("drives", "poll_drives_interval", ("drive_inventory", "drive_smart")),
    tool="get_drive_health",
    retention="retention_metrics_days",
    key=Key("drive", "Drive (e.g. /dev/sda)"),
    metrics=(Metric("drive_temperature_c", "gauge", "temperature_c", "°C", "SMART temperature, °C"),),
)
