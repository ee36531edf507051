"""`docker compose ls --all --format json` + `docker compose -p P ps --all --format json` -> ComposeStacks.

Compose before 2.21 printed `ps` as one JSON array without labels; later versions print one object per
line like `docker ps`, with labels that carry the working directory.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as, split_sections
from mcp_server.parsers.containers import health_from_status
from mcp_server.parsers.containers_common import json_lines, labels_from_string


class ComposeService(BaseModel):
    service: str = Field(description="Service name from the compose file.")
    container: str = Field(description="Container name (use it with the other container tools).")
    state: str = Field(description="running, exited, restarting, paused, created or dead.")
    status: str | None = Field(
        description="docker's status text, e.g. 'Up 2 hours (healthy)' (compose >= 2.21)."
    )
    health: str | None = Field(description="healthy, unhealthy or starting; null without a health check.")
    exit_code: int | None = Field(description="Exit code when the container has exited; else null.")
    image: str | None = Field(description="Image (compose >= 2.21).")


class ComposeStack(BaseModel):
    name: str = Field(description="Compose project name.")
    status: str = Field(description="compose's summary, e.g. 'running(3)' or 'exited(1), running(2)'.")
    config_files: list[str] = Field(description="Compose files the project was started from.")
    working_dir: str | None = Field(description="Project directory (from container labels; compose >= 2.21).")
    services: list[ComposeService] = Field(description="One entry per container, by service name.")
    running: int = Field(description="Containers running.")
    containers: int = Field(description="Containers in the project, in any state.")


class ComposeStacks(BaseModel):
    stacks: list[ComposeStack]
    total: int
    truncated: bool = Field(description="True when more stacks exist beyond this page.")


def _service(item: dict[str, Any]) -> ComposeService:
    state = str(item.get("State") or "").lower()
    status = item.get("Status")
    health = str(item.get("Health") or "") or (health_from_status(str(status)) if status else None)
    exit_code = item.get("ExitCode")
    return ComposeService(
        service=str(item["Service"]),
        container=str(item.get("Name") or item.get("Names") or item["ID"]),
        state=state,
        status=str(status) if status else None,
        health=health or None,
        exit_code=int(exit_code) if state == "exited" and exit_code is not None else None,
        image=str(item["Image"]) if item.get("Image") else None,
    )


def _stack(project: dict[str, Any], containers: list[dict[str, Any]]) -> ComposeStack:
    services = sorted((_service(c) for c in containers), key=lambda s: (s.service, s.container))
    labels = labels_from_string(str(containers[0].get("Labels") or "")) if containers else {}
    files = str(project.get("ConfigFiles") or "")
    return ComposeStack(
        name=str(project["Name"]),
        status=str(project.get("Status") or ""),
        config_files=[f for f in files.split(",") if f],
        working_dir=labels.get("com.docker.compose.project.working_dir"),
        services=services,
        running=sum(s.state == "running" for s in services),
        containers=len(services),
    )


@parse_errors_as("compose_stacks")
def parse_compose_stacks(stdout: str, params: BaseModel) -> ComposeStacks:
    """The `@@ls` section, then one `@@ps-<project>` section per project, then `@@end`."""
    sections = split_sections(stdout, ("ls",))
    projects = list(json_lines("\n".join(sections["ls"])))
    stacks = [
        _stack(project, list(json_lines("\n".join(sections.get(f"ps-{project['Name']}", [])))))
        for project in projects
    ]
    stacks.sort(key=lambda s: s.name)
    return ComposeStacks(stacks=stacks, total=len(stacks), truncated=False)
