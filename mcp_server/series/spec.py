"""What a time series is: a table filled from a command's results, polled in a category, kept for a retention
setting, offering metrics to get_metrics_history. Each series declares itself once (mcp_server/series/<area>.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from mcp_server.db.series import RetentionSetting, SeriesTable
from mcp_server.db.tables import Base

M = TypeVar("M")  # the command's result model
Kind = Literal["gauge", "counter"]
TIME_COLUMN = "collected_at"  # every series table's sample time (the history queries read it by this name)


@dataclass(frozen=True)
class Metric:
    """One value get_metrics_history offers from a series' rows."""

    name: str  # the `metric` argument: public, never renamed
    kind: Kind  # gauge: the value as sampled; counter: a monotonic count, answered as its per-second rate
    expression: str  # SQL over the table's columns ({f}: the dialect's float type); a counter's raw count
    unit: str  # of the answer (a counter's: per second)
    description: str  # a few words for the tool's `metric` description
    rollup: bool = (
        False  # also a column of the TimescaleDB hourly rollup (migration 0005), for whole-hour buckets
    )


@dataclass(frozen=True)
class Key:
    """What tells apart the several series one device has of a table (a mount, an interface, ...): a column of
    the table and a get_metrics_history argument of the same name."""

    name: str
    description: str  # for the tool argument, completed with the metrics that take it


@dataclass(frozen=True)
class Category:
    """Something the poller collects together, every `setting` seconds (0 turns it off)."""

    name: str  # in poll_leases and the audit ("poll:<name>"): public, never renamed
    setting: str  # the Settings field with its interval in seconds
    commands: tuple[str, ...]  # run one after another


@dataclass(frozen=True)
class Series(Generic[M]):
    """A time series: each result of `command` (polled or asked for) adds `rows(result)` to `table`."""

    table: type[Base]  # its columns: id, device, collected_at, the key's column, the metrics' columns
    command: str
    rows: Callable[[M], list[dict[str, Any]]]  # the rows of one result, without device and collected_at
    poll: Category
    tool: str  # the tool whose every call also adds a sample (named when history is empty)
    retention: RetentionSetting  # Settings field: days kept (0 = forever)
    metrics: tuple[Metric, ...]
    key: Key | None = None
    partition: timedelta = timedelta(days=1)  # native partition / TimescaleDB chunk width

    @property
    def name(self) -> str:
        return str(self.table.__tablename__)

    @property
    def storage(self) -> SeriesTable:
        return SeriesTable(self.name, TIME_COLUMN, self.partition, self.retention)

    def to_rows(self, device: str, at: datetime, result: M) -> list[dict[str, Any]]:
        return [{"device": device, TIME_COLUMN: at, **row} for row in self.rows(result)]


@dataclass(frozen=True)
class MetricSpec:
    """A metric with what its series says about where it is stored: what the history queries read."""

    metric: Metric
    series: Series[Any]

    @property
    def table(self) -> str:
        return self.series.name

    @property
    def expression(self) -> str:
        return self.metric.expression

    @property
    def unit(self) -> str:
        return self.metric.unit

    @property
    def key(self) -> str | None:
        return self.series.key.name if self.series.key else None

    @property
    def key_column(self) -> str | None:
        return self.key

    @property
    def counter(self) -> bool:
        return self.metric.kind == "counter"

    @property
    def rollup(self) -> bool:
        return self.metric.rollup
