"""The time series, listed once; everything else reads this index.

Each series is declared in its own module beside its table and row mapper (system.py, network.py, disks.py,
containers.py, container_restarts.py, drives.py): the collection service stores results through `BY_COMMAND`, the poller runs
`CATEGORIES`, storage partitions and expires `TABLES`, get_metrics_history answers `METRICS` and builds its
`metric` argument and its description from them. A new series is one module, one line in `SERIES` and a
migration creating its table (see "How to add a series" in the README).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mcp_server.db.series import EVENT_TABLES, SeriesTable
from mcp_server.series.container_restarts import CONTAINER_RESTARTS
from mcp_server.series.containers import CONTAINERS
from mcp_server.series.disks import DISKS
from mcp_server.series.drives import DRIVES
from mcp_server.series.network import NETWORK
from mcp_server.series.spec import Category, Key, MetricSpec, Series
from mcp_server.series.system import SYSTEM

__all__ = [
    "BY_COMMAND",
    "CATEGORIES",
    "KEYS",
    "METRICS",
    "SERIES",
    "TABLES",
    "MetricName",
    "key_help",
    "metric_help",
]

SERIES: tuple[Series[Any], ...] = (SYSTEM, DISKS, NETWORK, CONTAINERS, CONTAINER_RESTARTS, DRIVES)

V = TypeVar("V")


def _unique(pairs: Iterable[tuple[str, V]], what: str) -> dict[str, V]:
    """A dict of `pairs`; a name given twice must mean the same thing."""
    found: dict[str, V] = {}
    for name, value in pairs:
        if found.setdefault(name, value) != value:
            raise ValueError(f"two different {what} are named {name!r}")
    return found


BY_COMMAND: dict[str, tuple[Series[Any], ...]] = {
    command: tuple(s for s in SERIES if s.command == command)
    for command in dict.fromkeys(s.command for s in SERIES)
}
METRICS: dict[str, MetricSpec] = _unique(
    ((m.name, MetricSpec(m, s)) for s in SERIES for m in s.metrics), "metrics"
)
KEYS: dict[str, Key] = _unique(((s.key.name, s.key) for s in SERIES if s.key), "series keys")
CATEGORIES: tuple[Category, ...] = tuple(
    _unique(((s.poll.name, s.poll) for s in SERIES), "poll categories").values()
)
# every table partitioned (or chunked) by time and kept for a retention setting: the series and the event tables
TABLES: tuple[SeriesTable, ...] = (*EVENT_TABLES, *(s.storage for s in SERIES))
_unique(((t.name, t) for t in TABLES), "time-partitioned tables")  # each is partitioned and expired once

if TYPE_CHECKING:
    MetricName = str
else:
    MetricName = Literal[tuple(METRICS)]  # get_metrics_history's `metric`: its schema lists every name


def metric_help() -> str:
    """get_metrics_history's `metric` description: each series' metrics, what they are, the argument they need."""
    parts = []
    for s in SERIES:
        groups = [list(g) for _, g in itertools.groupby(s.metrics, key=lambda m: m.description)]
        text = ", ".join(f"{' / '.join(m.name for m in g)} ({g[0].description})" for g in groups)
        if any(m.kind == "counter" for m in s.metrics):
            text += ", per-second rates of counters"
        if s.key:
            text += f"; need{'s' if len(s.metrics) == 1 else ''} {s.key.name}"
        parts.append(text)
    return ". ".join(parts) + "."


def key_help(name: str) -> str:
    """The description of get_metrics_history's `name` argument: what it is and which metrics take it."""
    metrics = [m.name for s in SERIES if s.key and s.key.name == name for m in s.metrics]
    return f"{KEYS[name].description}, for {', '.join(metrics)}."
