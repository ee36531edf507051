"""MCP prompts: ready-made investigations an agent (or its user) can start from.

Each step names a tool in backticks followed by its arguments as JSON, so that the steps can be checked
against the real tools (tests/test_prompts.py) and copied into a call as they are.
"""

# No `from __future__ import annotations` here: FastMCP converts a prompt's string arguments with each
# parameter's annotation, and a string annotation (Annotated[Literal[...], ...]) cannot be resolved there.

import json
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastmcp import FastMCP
from fastmcp.prompts import prompt
from pydantic import Field

from mcp_server.settings import TOOLSETS


def call(tool: str, **arguments: Any) -> str:
    """A tool call as the prompts write it: `name` {"arg": value}."""
    return f"`{tool}` {json.dumps(arguments)}"


# The toolsets whose tools each prompt names: a prompt is offered only when all of them are.
NEEDS = {
    "diagnose_device": {"system", "storage", "config", "history"},
    "triage_container": {"containers", "config"},
    "review_config_changes": {"config", "containers", "services"},
}


@prompt
def diagnose_device(
    device: Annotated[str, Field(description="Device name, as listed by list_devices.")],
    symptom: Annotated[str, Field(description="What the user noticed, e.g. 'slow', 'disk full'.")] = "slow",
) -> str:
    """Investigate why a device misbehaves, using live data rather than guesses."""
    return (
        f"The device {device!r} is reported as: {symptom}. Find the cause with evidence.\n"
        f"1. {call('get_system_metrics', device=device, force_refresh=True)}: CPU busy/iowait/steal, load "
        "vs cpu_count, memory available and swap use.\n"
        f"2. {call('list_processes', device=device, sort_by='cpu')}, then "
        f"{call('list_processes', device=device, sort_by='memory')}: which processes account for it.\n"
        f"3. {call('get_disk_usage', device=device)}: any filesystem above 90% space or inodes; for a full "
        f"one, {call('get_directory_usage', device=device, path='/')} (with its mount point) shows what fills it.\n"
        f"4. {call('get_network_interfaces', device=device)}: interfaces down or with growing rx/tx errors "
        "or drops.\n"
        f"5. {call('list_config_changes', device=device, since='24h', min_risk='medium')}: a recent "
        "configuration change that lines up with the symptom.\n"
        f"6. {call('get_metrics_history', device=device, metric='cpu_percent', since='7d')} (and "
        "memory_percent, disk_used_percent with a mount): is this new or a slow creep, and since when.\n"
        f"7. {call('find_problems')} if other devices may be affected.\n"
        "Report the most likely cause first, quote the numbers that show it (with their collected_at), "
        "and say what you could not check. Do not suggest commands you have not verified are needed."
    )


@prompt
def triage_container(
    device: Annotated[str, Field(description="Device name, as listed by list_devices.")],
    container: Annotated[str, Field(description="Container name or id, as listed by list_containers.")],
) -> str:
    """Find out what is wrong with one container: state, health, logs, resource use, compose context."""
    return (
        f"Triage the container {container!r} on {device!r}. Go step by step and stop when the cause is clear.\n"
        f"1. Status: {call('list_containers', device=device, name=container, all=True)}: is it running, "
        "restarting, exited (with which code)?\n"
        f"2. Health and restarts: {call('get_container', device=device, container=container)}: health "
        "check results, restart count and policy, OOMKilled, exit code, mounts and ports.\n"
        f"3. Logs: {call('get_container_logs', device=device, container=container, tail=200)}; for errors "
        f"only, {call('get_container_logs', device=device, container=container, tail=100, grep='error')}.\n"
        f"4. Resource use: {call('get_container_stats', device=device)}: CPU and memory against its limit.\n"
        f"5. Compose context: {call('list_compose_stacks', device=device)}: its project, the other services "
        "and their states; a dependency that is down explains a lot.\n"
        f"6. Recent changes: {call('list_config_changes', device=device, since='7d')}: a compose or proxy "
        "change to this service (image, ports, volumes, environment) shortly before it broke.\n"
        "Answer with the cause, the evidence (log lines, exit codes, numbers with collected_at) and the "
        "smallest fix. Suggest restart_container only when the evidence says a restart will help."
    )


@prompt
def review_config_changes(
    device: Annotated[str | None, Field(description="Only this device (default: every device).")] = None,
    since: Annotated[str, Field(description="How far back: '24h', '7d' or an ISO 8601 time.")] = "24h",
    min_risk: Annotated[
        Literal["low", "medium", "high"], Field(description="Ignore changes below this risk.")
    ] = "low",
) -> str:
    """Walk through recent configuration changes, riskiest first, and say which need attention."""
    scope = {"device": device} if device else {}
    return (
        f"Review the configuration changes since {since}"
        + (f" on {device!r}" if device else " on every device")
        + ".\n"
        f"1. High risk first: {call('list_config_changes', **scope, since=since, min_risk='high')}. "
        "For each, read its diff with `get_config_diff` (arguments: device, path, and to = the change's "
        "to_version) and its reasons: an image or upstream change, published ports, mounts, privileged mode, "
        "TLS or authentication switched off, a removed service or server block, an ExecStart or User change.\n"
        f"2. Then medium: {call('list_config_changes', **scope, since=since, min_risk='medium')}: added "
        "services or locations, environment, restart policies, dependencies.\n"
        + (
            f"3. Then the rest: {call('list_config_changes', **scope, since=since, min_risk=min_risk)} "
            "(comments and whitespace only; mention them in one line).\n"
            if min_risk == "low"
            else ""
        )
        + f"4. Where a change touches a service, check it still runs: {call('list_watched_files', **scope)} "
        "shows what is watched and how; `list_containers`, `get_container_logs` or `get_service_status` "
        "show whether the affected service is healthy since the change.\n"
        "Report per change: when, which file, what changed in one sentence, the risk and why, the services "
        "affected, and whether it looks intended (a version bump) or needs a human (TLS or auth removed, a "
        "secret changed, a port opened to the world). Quote diff lines; never guess at secret values."
    )


PROMPTS = (diagnose_device, triage_container, review_config_changes)


def register(mcp: FastMCP, offered: Iterable[str] = TOOLSETS) -> None:
    """Add every prompt to the server, disabling those whose tools are not all offered."""
    for each in PROMPTS:
        mcp.add_prompt(each)
    unavailable = {name for name, needs in NEEDS.items() if not needs <= set(offered)}
    if unavailable:
        mcp.disable(names=unavailable, components={"prompt"})
