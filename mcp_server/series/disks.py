"""disk_metrics: space used per mounted filesystem, one row per real (non-pseudo) mount per disk_usage
collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mcp_server.db.tables import Base, BigId
from mcp_server.parsers.storage import DiskUsage
from mcp_server.series.spec import Category, Key, Metric, Series


class DiskMetricRow(Base):
    """Time series of disk_usage collections: one row per real (non-pseudo) mount per sample."""

    __tablename__ = "disk_metrics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    collected_at: Mapped[datetime]
    mount: Mapped[str] = mapped_column(Text)
    fstype: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    used_percent: Mapped[float] = mapped_column(Float)
    inodes_used_percent: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_disk_metrics_device_mount", "device", "mount", "collected_at"),)


def _rows(usage: DiskUsage) -> list[dict[str, Any]]:
    # pseudo filesystems (tmpfs, overlay, ...) come and go with containers and say nothing about disks
    return [
        {
            "mount": f.mount_point,
            "fstype": f.fstype,
            "size_bytes": f.size_bytes,
            "used_bytes": f.used_bytes,
            "used_percent": f.use_percent,
            "inodes_used_percent": f.inodes_use_percent,
        }
        for f in usage.filesystems
        if not f.pseudo
    ]


DISKS: Series[DiskUsage] = Series(
    table=DiskMetricRow,
    command="disk_usage",
    rows=_rows,
    poll=Category("disk", "poll_disk_interval", ("disk_usage",)),
    tool="get_disk_usage",
    retention="retention_metrics_days",
    key=Key("mount", "Mount point (e.g. /)"),
    metrics=(Metric("disk_used_percent", "gauge", "used_percent", "%", "space used"),),
)
