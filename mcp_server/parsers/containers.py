"""`docker ps --format '{{json .}}'` (docker 17 to 28, and podman's Docker API behind it) -> ContainerList."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as
from mcp_server.parsers.containers_common import (
    cut,
    docker_time,
    json_lines,
    labels_from_string,
    ps_time,
)
from mcp_server.redact import redact_pairs, redact_text

if TYPE_CHECKING:
    from mcp_server.commands.containers import ContainersParams

COMMAND_MAX_CHARS = 300
ContainerState = Literal[
    "created", "running", "paused", "restarting", "removing", "exited", "dead", "unknown"
]
Health = Literal["healthy", "unhealthy", "starting"]
STATES: tuple[str, ...] = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
# podman's Docker API calls an exited container "stopped" (between restarts, or after `podman stop`)
STATE_ALIASES = {"stopped": "exited"}
# A container its restart policy restarted, whose last run ended this recently, is in a restart loop: docker
# shows "restarting" only during the back-off, podman never (it reports running or stopped between restarts).
RESTART_LOOP_WINDOW = timedelta(minutes=10)


class PortMapping(BaseModel):
    container_port: str = Field(description="Port or range inside the container, e.g. '80' or '8000-8010'.")
    protocol: str = Field(description="tcp, udp or sctp.")
    host_ip: str | None = Field(
        description="Host address it is published on ('0.0.0.0' or '::' = every address); null when only "
        "exposed."
    )
    host_port: str | None = Field(description="Host port or range; null when exposed but not published.")


class ContainerSummary(BaseModel):
    id: str = Field(description="Full container id.")
    name: str = Field(description="Container name (use it as `container` in the other container tools).")
    image: str = Field(description="Image reference the container was created from.")
    command: str = Field(description="Command it runs (secrets redacted, cut to 300 characters).")
    created_at: datetime | None = Field(description="When the container was created.")
    state: ContainerState = Field(description="Lifecycle state: running, exited, restarting, paused, ...")
    status: str = Field(
        description="docker's status text, e.g. 'Up 3 hours (healthy)', 'Exited (1) 2 min ago'."
    )
    health: Health | None = Field(description="Health-check result; null when the image defines no check.")
    exit_code: int | None = Field(description="Exit code of the last run when exited; else null.")
    ports: list[PortMapping] = Field(description="Exposed and published ports.")
    networks: list[str] = Field(
        description="Networks it is attached to (empty for host networking on podman)."
    )
    mounts: list[str] = Field(description="Volume names and bind-mount sources.")
    compose_project: str | None = Field(description="Compose project it belongs to, if any.")
    compose_service: str | None = Field(description="Compose service name, if any.")
    labels: dict[str, str] = Field(description="Labels (secret-looking values redacted); may be omitted.")
    restart_count: int | None = Field(
        default=None, description="Times its restart policy restarted it; null when the engine did not say."
    )
    restart_policy: str | None = Field(default=None, description="no, always, unless-stopped, on-failure.")
    last_exit_at: datetime | None = Field(default=None, description="When its last run ended.")
    restarting: bool = Field(
        default=False,
        description="In a restart loop: restarting now, or restarted by its policy within the last 10 minutes.",
    )


class ContainerList(BaseModel):
    all: bool = Field(description="Whether stopped containers were included.")
    containers: list[ContainerSummary]
    total: int = Field(description="Containers matching the filters, before pagination.")
    truncated: bool = Field(description="True when more matching containers exist beyond this page.")


_PORT = re.compile(
    r"^(?:(?P<ip>.*):(?P<hport>[0-9]+(?:-[0-9]+)?)->)?(?P<cport>[0-9]+(?:-[0-9]+)?)/(?P<proto>[a-z]+)$"
)
_EXITED = re.compile(r"^Exited \((-?[0-9]+)\)")
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def parse_ports(text: str) -> list[PortMapping]:
    """docker ps's Ports string: "0.0.0.0:8080->80/tcp, :::8080->80/tcp, 5432/tcp"."""
    ports: list[PortMapping] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        match = _PORT.match(entry)
        if not match:
            raise ValueError(f"unrecognised port mapping {entry!r}")
        ip = match.group("ip")
        ports.append(
            PortMapping(
                container_port=match.group("cport"),
                protocol=match.group("proto"),
                host_ip=ip.removeprefix("[").removesuffix("]") if ip is not None else None,
                host_port=match.group("hport"),
            )
        )
    return ports


def state_from_status(status: str) -> ContainerState:
    """The state docker < 20.10 left out of ps, read from its Status text."""
    if status.startswith("Up"):
        return "paused" if "(Paused)" in status else "running"
    for prefix, state in (
        ("Exited", "exited"),
        ("Created", "created"),
        ("Restarting", "restarting"),
        ("Removal", "removing"),
        ("Dead", "dead"),
    ):
        if status.startswith(prefix):
            return state  # type: ignore[return-value]
    return "unknown"


def health_from_status(status: str) -> Health | None:
    match = _HEALTH.search(status)
    if not match:
        return None
    return "starting" if match.group(1) == "health: starting" else match.group(1)  # type: ignore[return-value]


def _command(raw: str) -> str:
    text = raw
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        # docker Go-quotes it (strconv.Quote); JSON escapes cover all but the rare \xNN
        try:
            text = str(json.loads(raw))
        except ValueError:
            text = raw[1:-1]
    return cut(redact_text(text), COMMAND_MAX_CHARS)


def _summary(item: dict[str, Any]) -> ContainerSummary:
    status = str(item.get("Status", ""))
    state = str(item.get("State") or "").lower() or state_from_status(status)
    state = STATE_ALIASES.get(state, state)
    names = [n for n in str(item["Names"]).split(",") if n and "/" not in n] or [str(item["Names"])]
    labels = labels_from_string(str(item.get("Labels") or ""))
    exited = _EXITED.match(status)
    created = str(item.get("CreatedAt") or "")
    return ContainerSummary(
        id=str(item["ID"]),
        name=names[0],
        image=str(item["Image"]),
        command=_command(str(item.get("Command") or "")),
        created_at=ps_time(created) if created else None,
        state=state if state in STATES else "unknown",  # type: ignore[arg-type]
        status=status,
        health=health_from_status(status),
        exit_code=int(exited.group(1)) if exited else None,
        ports=parse_ports(str(item.get("Ports") or "")),
        networks=[n for n in str(item.get("Networks") or "").split(",") if n],
        mounts=[m for m in str(item.get("Mounts") or "").split(",") if m],
        compose_project=labels.get("com.docker.compose.project"),
        compose_service=labels.get("com.docker.compose.service"),
        labels=redact_pairs(labels),
    )


@parse_errors_as("containers")
def parse_containers(stdout: str, params: ContainersParams) -> ContainerList:
    """One JSON object per container, as `docker ps --format '{{json .}}'` prints them."""
    containers = [_summary(item) for item in json_lines(stdout)]
    return ContainerList(all=params.all, containers=containers, total=len(containers), truncated=False)


class ContainerRestarts(BaseModel):
    id: str = Field(description="Full container id.")
    name: str | None = Field(default=None, description="Container name.")
    restart_count: int = Field(description="Times the restart policy restarted it.")
    restart_policy: str | None = Field(description="no, always, unless-stopped, on-failure; null when unset.")
    max_retries: int = Field(description="on-failure's retry limit (0: none).")
    started_at: datetime | None = Field(description="When its current (or last) run started.")
    finished_at: datetime | None = Field(description="When its last run ended; null if it never ended.")
    exit_code: int = Field(description="Exit code of its last run.")
    oom_killed: bool = Field(description="True when the kernel killed its last run for lack of memory.")


class ContainerRestartList(BaseModel):
    containers: list[ContainerRestarts]


@parse_errors_as("container_restarts")
def parse_container_restarts(stdout: str, params: Any) -> ContainerRestartList:
    """One object per container, as the command's `docker inspect --format` template prints them."""
    return ContainerRestartList(
        containers=[
            ContainerRestarts(
                id=str(item["id"]),
                name=str(item.get("name") or "").lstrip("/") or None,  # docker says "/web", podman "web"
                restart_count=int(item["restart_count"]),
                restart_policy=str(item.get("policy") or "") or None,
                max_retries=int(item.get("max_retries") or 0),
                started_at=docker_time(item.get("started_at")),
                finished_at=docker_time(item.get("finished_at")),
                exit_code=int(item.get("exit_code") or 0),
                oom_killed=bool(item.get("oom_killed")),
            )
            for item in json_lines(stdout)
        ]
    )


def in_restart_loop(state: str, restarts: ContainerRestarts, now: datetime) -> bool:
    """Restarting now, or restarted by its policy and its last run ended within RESTART_LOOP_WINDOW (unless
    on-failure has used up its retries)."""
    if state == "restarting":
        return True
    gave_up = 0 < restarts.max_retries <= restarts.restart_count and state in ("exited", "dead")
    recent = restarts.finished_at is not None and now - restarts.finished_at <= RESTART_LOOP_WINDOW
    return (
        restarts.restart_count > 0 and restarts.restart_policy not in (None, "no") and recent and not gave_up
    )


def with_restarts(listing: ContainerList, restarts: ContainerRestartList, now: datetime) -> ContainerList:
    """The listing with each container's restart count, policy and last exit, and whether it is in a loop."""
    by_id = {r.id: r for r in restarts.containers}
    joined: list[ContainerSummary] = []
    for container in listing.containers:
        found = by_id.get(container.id)
        if found is None:  # created between the two commands
            joined.append(container.model_copy(update={"restarting": container.state == "restarting"}))
            continue
        joined.append(
            container.model_copy(
                update={
                    "restart_count": found.restart_count,
                    "restart_policy": found.restart_policy,
                    "last_exit_at": found.finished_at,
                    "restarting": in_restart_loop(container.state, found, now),
                }
            )
        )
    return listing.model_copy(update={"containers": joined})


def select_containers(
    listing: ContainerList,
    *,
    name: str | None = None,
    label: str | None = None,
    status: str | None = None,
) -> list[ContainerSummary]:
    """Containers whose name contains `name`, carrying `label` ("key" or "key=value"), in state `status`."""
    key, has_value, value = (label or "").partition("=")
    selected: list[ContainerSummary] = []
    for container in listing.containers:
        if name and name not in container.name:
            continue
        if status == "restarting" and not container.restarting:
            continue
        if status and status != "restarting" and container.state != status:
            continue
        if label and (key not in container.labels or (has_value and container.labels[key] != value)):
            continue
        selected.append(container)
    return selected
