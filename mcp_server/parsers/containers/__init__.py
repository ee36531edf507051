"""Parsers for the docker CLI (and podman's Docker API behind it): containers, inspect, stats, logs, compose."""

from __future__ import annotations

from mcp_server.parsers.containers.compose import (
    ComposeService,
    ComposeStack,
    ComposeStacks,
    parse_compose_stacks,
)
from mcp_server.parsers.containers.inspect import ContainerDetails, parse_container_inspect
from mcp_server.parsers.containers.listing import (
    ContainerList,
    ContainersParams,
    ContainerSummary,
    parse_containers,
    select_containers,
)
from mcp_server.parsers.containers.logs import (
    ContainerActionResult,
    ContainerLogs,
    action_parser,
    fit_newest,
    parse_container_logs,
)
from mcp_server.parsers.containers.params import ContainerActionParams, ContainerLogsParams, ContainerParams
from mcp_server.parsers.containers.stats import ContainerStats, ContainerStatsList, parse_container_stats

__all__ = [
    "ComposeService",
    "ComposeStack",
    "ComposeStacks",
    "ContainerActionParams",
    "ContainerActionResult",
    "ContainerDetails",
    "ContainerList",
    "ContainerLogs",
    "ContainerLogsParams",
    "ContainerParams",
    "ContainerStats",
    "ContainerStatsList",
    "ContainerSummary",
    "ContainersParams",
    "action_parser",
    "fit_newest",
    "parse_compose_stacks",
    "parse_container_inspect",
    "parse_container_logs",
    "parse_container_stats",
    "parse_containers",
    "select_containers",
]
