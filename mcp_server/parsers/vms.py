"""Parser for vms: `virsh dominfo` of every libvirt domain, one `@@vm` block each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


class Vm(BaseModel):
    name: str = Field(description="Domain name.")
    state: str = Field(description="running, idle, paused, in shutdown, shut off, crashed, pmsuspended.")
    id: int | None = Field(description="Runtime id; null when the domain is not running.")
    uuid: str | None = Field(description="Domain UUID.")
    os_type: str | None = Field(description="hvm for full virtualisation, or the container/paravirt type.")
    vcpus: int | None = Field(description="Virtual CPUs.")
    max_memory_bytes: int | None = Field(description="Memory the domain may grow to.")
    used_memory_bytes: int | None = Field(
        description="Memory currently assigned (the configured size when off)."
    )
    persistent: bool | None = Field(description="True when defined permanently (survives shutdown).")
    autostart: bool | None = Field(description="True when libvirt starts the domain at host boot.")


class VmList(BaseModel):
    vms: list[Vm] = Field(description="Domains, running ones first, then by name.")
    total: int = Field(description="Domains on the device (before paging).")
    running: int = Field(description="Domains in the running state.")
    truncated: bool = Field(description="True when more domains exist beyond this page.")


def _bytes(text: str | None) -> int | None:
    if not text:
        return None
    number, _, unit = text.partition(" ")
    return int(number) * _UNITS[unit or "B"]


def _flag(text: str | None) -> bool | None:
    return {"yes": True, "enable": True, "no": False, "disable": False}.get(text or "")


def _vm(lines: Iterable[str]) -> Vm:
    info: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a virsh dominfo line: {line[:80]!r}")
        info[key.strip()] = value.strip()
    domain_id = info.get("Id", "-")
    vcpus = info.get("CPU(s)")
    return Vm(
        name=info["Name"],
        state=info["State"],
        id=int(domain_id) if domain_id.isdigit() else None,
        uuid=info.get("UUID") or None,
        os_type=info.get("OS Type") or None,
        vcpus=int(vcpus) if vcpus else None,
        max_memory_bytes=_bytes(info.get("Max memory")),
        used_memory_bytes=_bytes(info.get("Used memory")),
        persistent=_flag(info.get("Persistent")),
        autostart=_flag(info.get("Autostart")),
    )


@parse_errors_as("vms")
def parse_vms(stdout: str, params: Any) -> VmList:
    """`@@virsh`, then `@@vm` + dominfo per domain, then `@@end` -> VmList."""
    lines = stdout.rstrip("\n").split("\n")
    if lines[0] != "@@virsh" or lines[-1] != "@@end":
        raise ValueError("output is not the vms script's (no @@virsh ... @@end)")
    blocks: list[list[str]] = []
    for line in lines[1:-1]:
        if line == "@@vm":
            blocks.append([])
        elif line.strip():
            if not blocks:
                raise ValueError(f"dominfo line before any @@vm marker: {line[:80]!r}")
            blocks[-1].append(line)
    vms = sorted((_vm(block) for block in blocks), key=lambda v: (v.state != "running", v.name))
    return VmList(vms=vms, total=len(vms), running=sum(v.state == "running" for v in vms), truncated=False)
