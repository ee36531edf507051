"""History tools: metrics over days and weeks from the time-series tables, the service's own health, cache stats."""

from __future__ import annotations

from typing import Annotated

from fastmcp.dependencies import Depends
from fastmcp.tools import tool
from pydantic import Field

from mcp_server import ui
from mcp_server.db.history import MetricsHistory
from mcp_server.metrics_history import metrics_history
from mcp_server.polling.report import CacheStatsReport, ServiceHealth, cache_report
from mcp_server.polling.service import service_health
from mcp_server.series import MetricName, key_help, metric_help
from mcp_server.state import AppState, current_state
from mcp_server.tools import READ_ONLY, DeviceArg, expected_errors

SeriesKey = Annotated[str | None, Field(max_length=255)]

TOOLSET = "history"


@tool(annotations=READ_ONLY | {"openWorldHint": False}, meta=ui.linked("history"))
@expected_errors()
async def get_metrics_history(
    device: DeviceArg,
    metric: Annotated[MetricName, Field(description=metric_help())],
    since: Annotated[
        str | None,
        Field(
            max_length=64,
            description="Start: ISO 8601 time (UTC when no offset is given) or a duration before `until` "
            "such as 90m, 24h, 7d, 2w. Default: 24h.",
        ),
    ] = None,
    until: Annotated[
        str | None, Field(max_length=64, description="End: ISO 8601 time or a duration ago; default now.")
    ] = None,
    bucket: Annotated[
        str | None,
        Field(
            max_length=8,
            description="Bucket width from 1m to 1d that divides a day: 1m, 5m, 15m, 30m, 1h, 6h, 1d, ... "
            "Default: the finest giving at most 500 points.",
        ),
    ] = None,
    # one argument per series key (mcp_server.series.KEYS)
    mount: Annotated[SeriesKey, Field(description=key_help("mount"))] = None,
    interface: Annotated[SeriesKey, Field(description=key_help("interface"))] = None,
    container: Annotated[SeriesKey, Field(description=key_help("container"))] = None,
    drive: Annotated[SeriesKey, Field(description=key_help("drive"))] = None,
    state: AppState = Depends(current_state),
) -> MetricsHistory:
    """A metric of one device over hours to weeks from the recorded history: per bucket avg/min/max and
    sample count, plus trend, peak and latest value. Buckets are whole and aligned to UTC (since is
    rounded down, until up)."""
    await state.writer.flush()  # samples collected a moment ago are part of the answer
    return await metrics_history(
        state.db,
        state.devices,
        state.settings,
        device=device,
        metric=metric,
        since=since,
        until=until,
        bucket=bucket,
        mount=mount,
        interface=interface,
        container=container,
        drive=drive,
    )


@tool(annotations=READ_ONLY | {"openWorldHint": False})
async def get_service_health(state: AppState = Depends(current_state)) -> ServiceHealth:
    """The server's own health: storage mode and retention, the background poller's counts, every replica's
    latest report (collections, failures, p50/p95 durations, cache hit ratio, SSH connections), devices whose
    polls fail or back off, and the audit writer's backlog."""
    return await service_health(state)


@tool(annotations=READ_ONLY | {"openWorldHint": False})
async def get_cache_stats(state: AppState = Depends(current_state)) -> CacheStatsReport:
    """Cache counters: entries, hits, misses, evictions, expirations, single-flight joins, hit ratio; plus
    the counters every server replica recorded in the last hour."""
    return await cache_report(state)


TOOLS = (
    get_metrics_history,
    get_service_health,
    get_cache_stats,
)
