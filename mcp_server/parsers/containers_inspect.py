"""`docker inspect --type container` JSON -> ContainerDetails, with secrets redacted before anything is kept."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as
from mcp_server.parsers.containers import PortMapping
from mcp_server.parsers.containers_common import cut, docker_time
from mcp_server.redact import REDACTED, redact_args, redact_pair, redact_pairs, redact_text

if TYPE_CHECKING:
    from mcp_server.commands.containers import ContainerParams

HEALTH_LOG_ENTRIES = 3
HEALTH_OUTPUT_CHARS = 500


class ContainerState(BaseModel):
    status: str = Field(description="created, running, paused, restarting, removing, exited or dead.")
    running: bool
    paused: bool
    restarting: bool
    oom_killed: bool = Field(description="True when the kernel killed it for exceeding its memory limit.")
    dead: bool
    pid: int | None = Field(description="Host PID of its main process while running.")
    exit_code: int = Field(description="Exit code of the last run (0 while running).")
    error: str | None = Field(description="Error the engine recorded when starting it failed.")
    started_at: datetime | None
    finished_at: datetime | None = Field(description="When the last run ended; null if it never stopped.")


class HealthCheck(BaseModel):
    start: datetime | None
    end: datetime | None
    exit_code: int = Field(description="0 = passed, 1 = failed.")
    output: str = Field(description="What the check printed (cut to 500 characters, secrets redacted).")


class Health(BaseModel):
    status: str = Field(description="healthy, unhealthy or starting.")
    failing_streak: int = Field(description="Consecutive failed checks.")
    recent_checks: list[HealthCheck] = Field(description="The last few checks, newest last.")


class Mount(BaseModel):
    type: str = Field(description="bind, volume or tmpfs.")
    source: str | None = Field(description="Host path (bind) or the volume's data directory.")
    destination: str = Field(description="Path inside the container.")
    name: str | None = Field(description="Volume name for named volumes.")
    read_write: bool


class NetworkAttachment(BaseModel):
    name: str
    ip_address: str | None
    gateway: str | None
    mac_address: str | None


class EnvVar(BaseModel):
    name: str
    value: str = Field(description="The value, or '***' when the name or value looks like a secret.")


class ContainerDetails(BaseModel):
    id: str
    name: str
    image: str = Field(description="Image reference from the container's config.")
    image_id: str
    created_at: datetime | None
    command: list[str] = Field(description="Entrypoint and arguments it runs (secrets redacted).")
    state: ContainerState
    health: Health | None = Field(description="Health-check state; null when no check is defined.")
    restart_count: int = Field(description="Restarts by the engine's restart policy; rising = crash loop.")
    restart_policy: str = Field(description="no, always, unless-stopped or on-failure[:N].")
    network_mode: str | None
    ports: list[PortMapping]
    mounts: list[Mount]
    networks: list[NetworkAttachment]
    env: list[EnvVar] = Field(description="Environment; values of secret-looking variables are '***'.")
    labels: dict[str, str]
    memory_limit_bytes: int | None = Field(description="Memory limit; null when unlimited.")
    cpu_limit: float | None = Field(description="CPU limit in cores; null when unlimited.")
    working_dir: str | None
    user: str | None


def _ports(settings: dict[str, Any]) -> list[PortMapping]:
    ports: list[PortMapping] = []
    for key, bindings in sorted((settings.get("Ports") or {}).items()):
        port, _, protocol = key.partition("/")
        for binding in bindings or [None]:
            ports.append(
                PortMapping(
                    container_port=port,
                    protocol=protocol or "tcp",
                    host_ip=binding.get("HostIp") or None if binding else None,
                    host_port=binding.get("HostPort") or None if binding else None,
                )
            )
    return ports


def _health(raw: dict[str, Any] | None) -> Health | None:
    if not raw or not raw.get("Status"):
        return None
    checks = [
        HealthCheck(
            start=docker_time(entry.get("Start")),
            end=docker_time(entry.get("End")),
            exit_code=int(entry.get("ExitCode", 0)),
            output=cut(redact_text(str(entry.get("Output") or "").strip()), HEALTH_OUTPUT_CHARS),
        )
        for entry in (raw.get("Log") or [])[-HEALTH_LOG_ENTRIES:]
    ]
    return Health(status=raw["Status"], failing_streak=int(raw.get("FailingStreak", 0)), recent_checks=checks)


def _restart_policy(host: dict[str, Any]) -> str:
    policy = host.get("RestartPolicy") or {}
    name = str(policy.get("Name") or "no")
    retries = int(policy.get("MaximumRetryCount") or 0)
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def _env(entries: list[str]) -> list[EnvVar]:
    env: list[EnvVar] = []
    for entry in entries:
        name, _, value = entry.partition("=")
        env.append(EnvVar(name=name, value=redact_pair(name, value)))
    return env


def details(item: dict[str, Any]) -> ContainerDetails:
    state, config, host = item["State"], item.get("Config") or {}, item.get("HostConfig") or {}
    settings = item.get("NetworkSettings") or {}
    memory, cpus = int(host.get("Memory") or 0), int(host.get("NanoCpus") or 0)
    return ContainerDetails(
        id=item["Id"],
        name=str(item["Name"]).removeprefix("/"),
        image=str(config.get("Image") or item.get("Image") or ""),
        image_id=str(item.get("Image") or ""),
        created_at=docker_time(item.get("Created")),
        command=redact_args([str(item.get("Path") or ""), *map(str, item.get("Args") or [])]),
        state=ContainerState(
            status=state["Status"],
            running=bool(state.get("Running")),
            paused=bool(state.get("Paused")),
            restarting=bool(state.get("Restarting")),
            oom_killed=bool(state.get("OOMKilled")),
            dead=bool(state.get("Dead")),
            pid=int(state["Pid"]) if state.get("Pid") else None,
            exit_code=int(state.get("ExitCode") or 0),
            error=state.get("Error") or None,
            started_at=docker_time(state.get("StartedAt")),
            finished_at=docker_time(state.get("FinishedAt")),
        ),
        health=_health(state.get("Health")),
        restart_count=int(item.get("RestartCount") or 0),
        restart_policy=_restart_policy(host),
        network_mode=host.get("NetworkMode") or None,
        ports=_ports(settings),
        mounts=[
            Mount(
                type=str(m.get("Type") or "bind"),
                source=m.get("Source") or None,
                destination=str(m["Destination"]),
                name=m.get("Name") or None,
                read_write=bool(m.get("RW", True)),
            )
            for m in item.get("Mounts") or []
        ],
        networks=[
            NetworkAttachment(
                name=name,
                ip_address=(net or {}).get("IPAddress") or None,
                gateway=(net or {}).get("Gateway") or None,
                mac_address=(net or {}).get("MacAddress") or None,
            )
            for name, net in sorted((settings.get("Networks") or {}).items())
        ],
        env=_env([str(e) for e in config.get("Env") or []]),
        labels=redact_pairs({str(k): str(v) for k, v in (config.get("Labels") or {}).items()}),
        memory_limit_bytes=memory or None,
        cpu_limit=cpus / 1e9 if cpus else None,
        working_dir=config.get("WorkingDir") or None,
        user=config.get("User") or None,
    )


@parse_errors_as("container_inspect")
def parse_container_inspect(stdout: str, params: ContainerParams) -> ContainerDetails:
    """The single-element array `docker inspect --type container NAME` prints."""
    items = json.loads(stdout)
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
        raise ValueError("expected a JSON array holding one container")
    return details(items[0])


__all__ = ["REDACTED", "ContainerDetails", "parse_container_inspect"]
