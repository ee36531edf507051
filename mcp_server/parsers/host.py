"""Host parsers: pending package updates (apt, dnf, pacman) and libvirt VMs (virsh dominfo)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as, split_sections

Manager = Literal["apt", "dnf", "pacman"]
_APT = re.compile(
    r"^(?P<name>[^/\s]+)/(?P<origins>\S+) (?P<candidate>\S+) (?P<arch>\S+)"
    r"(?: \[upgradable from: (?P<current>[^\]]+)\])?$"
)
_PACMAN = re.compile(r"^(?P<name>\S+) (?P<current>\S+) -> (?P<candidate>\S+)(?P<ignored> \[ignored\])?$")
_NAME_ARCH = re.compile(r"^(?P<name>\S+)\.(?P<arch>[A-Za-z0-9_]+)$")
# [epoch:]version-release: no spaces or further colons, and a '-' with something after it somewhere after the
# first digit. Written so no two parts compete for a character: one pass, where `[^\s:]*\d[^\s:]*-` took
# cubic time on a long word of digits and hyphens.
_EVR = re.compile(r"^(?:\d++:)?+(?=[^\s:]++$)\D*+\d.*-.")


class PackageUpdate(BaseModel):
    name: str = Field(description="Package name.")
    arch: str | None = Field(description="Architecture (amd64, x86_64, noarch, all); null when not reported.")
    current: str | None = Field(description="Installed version; null when the package manager does not say.")
    candidate: str = Field(description="Version an upgrade would install.")
    repository: str | None = Field(description="Where the candidate comes from (apt suites, dnf repo id).")
    security: bool | None = Field(
        description="True for a security update; null when the package manager cannot tell (pacman, or dnf "
        "repositories without advisories)."
    )
    held: bool = Field(description="True when configured to be kept back (pacman IgnorePkg).")


class PackageUpdates(BaseModel):
    manager: Manager = Field(description="Package manager found on the device.")
    updates: list[PackageUpdate] = Field(description="Pending updates, security updates first, then by name.")
    total: int = Field(description="Pending updates in all (before paging).")
    security_total: int | None = Field(description="Pending security updates; null when unknown.")
    truncated: bool = Field(description="True when more updates exist beyond this page.")


def _apt(lines: Iterable[str]) -> list[PackageUpdate]:
    updates: list[PackageUpdate] = []
    for line in lines:
        if line.startswith("Listing..."):
            continue
        match = _APT.match(line)
        if match is None:
            raise ValueError(f"not an apt list line: {line[:80]!r}")
        origins = match["origins"].split(",")
        updates.append(
            PackageUpdate(
                name=match["name"],
                arch=match["arch"],
                current=match["current"],
                candidate=match["candidate"],
                repository=match["origins"],
                # Debian and Ubuntu publish security fixes in suites named <release>-security
                security=any(origin.endswith("-security") for origin in origins),
                held=False,
            )
        )
    return updates


def _dnf_rows(lines: Iterable[str]) -> list[tuple[str, str, str]]:
    """(name.arch, version, repo) rows; a long name wraps its version and repo onto the next line."""
    rows: list[tuple[str, str, str]] = []
    pending: list[str] = []
    for line in lines:
        if line.strip().lower().startswith("obsoleting packages"):
            break  # what follows is replaced, not upgraded
        words = pending + line.split()
        if len(words) < 3:
            pending = words if _NAME_ARCH.match(words[0]) else []
            continue
        pending = []
        if _NAME_ARCH.match(words[0]) and _EVR.match(words[1]):
            rows.append((words[0], words[1], words[2]))
    return rows


def _without_epoch(version: str) -> str:
    return version.partition(":")[2] if ":" in version else version


def _dnf(sections: dict[str, list[str]]) -> list[PackageUpdate]:
    installed: dict[str, str] = {}
    for line in sections.get("rpm", []):
        name_arch, _, version = line.partition(" ")
        installed[name_arch] = version
    security_known = "dnf-security-unavailable" not in sections
    advisories = {word for line in sections.get("dnf-security", []) for word in line.split()}
    updates: list[PackageUpdate] = []
    for name_arch, version, repo in _dnf_rows(sections["dnf"]):
        match = _NAME_ARCH.match(name_arch)
        assert match is not None
        nevras = {f"{match['name']}-{v}.{match['arch']}" for v in (version, _without_epoch(version))}
        updates.append(
            PackageUpdate(
                name=match["name"],
                arch=match["arch"],
                current=installed.get(name_arch),
                candidate=version,
                repository=repo,
                security=bool(nevras & advisories) if security_known else None,
                held=False,
            )
        )
    return updates


def _pacman(lines: Iterable[str]) -> list[PackageUpdate]:
    updates: list[PackageUpdate] = []
    for line in lines:
        match = _PACMAN.match(line.strip())
        if match is None:
            raise ValueError(f"not a pacman update line: {line[:80]!r}")
        updates.append(
            PackageUpdate(
                name=match["name"],
                arch=None,
                current=match["current"],
                candidate=match["candidate"],
                repository=None,
                security=None,
                held=match["ignored"] is not None,
            )
        )
    return updates


@parse_errors_as("package_updates")
def parse_package_updates(stdout: str, params: Any) -> PackageUpdates:
    """The detection script's one section (@@apt, @@dnf + @@dnf-security + @@rpm, or @@pacman)."""
    sections = split_sections(stdout, ())
    manager: Manager
    if "apt" in sections:
        manager, updates = "apt", _apt(sections["apt"])
    elif "dnf" in sections:
        manager, updates = "dnf", _dnf(sections)
    elif "pacman" in sections:
        manager, updates = "pacman", _pacman(sections["pacman"])
    else:
        raise ValueError("no @@apt, @@dnf or @@pacman section")
    updates.sort(key=lambda u: (u.security is not True, u.name, u.arch or ""))
    known = manager == "apt" or (manager == "dnf" and "dnf-security-unavailable" not in sections)
    return PackageUpdates(
        manager=manager,
        updates=updates,
        total=len(updates),
        security_total=sum(u.security is True for u in updates) if known else None,
        truncated=False,
    )


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
