"""network_metrics: the byte, error and drop counters of each interface, one row per interface per
network_interfaces collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from mcp_server.db.tables import Base, BigId
from mcp_server.parsers.network import NetworkInterfaces
from mcp_server.series.spec import Category, Key, Metric, Series


class NetworkMetricRow(Base):
    """Time series of network_interfaces collections: the byte, error and drop counters per interface."""

    __tablename__ = "network_metrics"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device: Mapped[str] = mapped_column(String(63))
    collected_at: Mapped[datetime]
    interface: Mapped[str] = mapped_column(String(64))
    rx_bytes: Mapped[int | None] = mapped_column(BigInteger)
    tx_bytes: Mapped[int | None] = mapped_column(BigInteger)
    rx_errors: Mapped[int | None] = mapped_column(BigInteger)
    tx_errors: Mapped[int | None] = mapped_column(BigInteger)
    rx_dropped: Mapped[int | None] = mapped_column(BigInteger)
    tx_dropped: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_network_metrics_device_interface", "device", "interface", "collected_at"),)


def _rows(links: NetworkInterfaces) -> list[dict[str, Any]]:
    return [
        {
            "interface": i.name,
            "rx_bytes": i.rx_bytes,
            "tx_bytes": i.tx_bytes,
            "rx_errors": i.rx_errors,
            "tx_errors": i.tx_errors,
            "rx_dropped": i.rx_dropped,
            "tx_dropped": i.tx_dropped,
        }
        for i in links.interfaces
    ]


NETWORK: Series[NetworkInterfaces] = Series(
    table=NetworkMetricRow,
    command="network_interfaces",
    rows=_rows,
    poll=Category("network", "poll_network_interval", ("network_interfaces",)),
    tool="get_network_interfaces",
    retention="retention_metrics_days",
    key=Key("interface", "Interface (e.g. eth0)"),
    metrics=(
        Metric("net_rx_bytes_per_s", "counter", "rx_bytes", "bytes/s", "received / sent"),
        Metric("net_tx_bytes_per_s", "counter", "tx_bytes", "bytes/s", "received / sent"),
    ),
)
