"""A systemd unit file's text -> SystemdUnitFile: sections, ExecStart, Restart, User and dependencies.

Follows systemd's own syntax rules: '#' and ';' comment lines, a trailing backslash continues a line,
a key may repeat (ExecStartPre=, After=), and an empty assignment resets the list before it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

_LIST_KEYS = {
    "After",
    "Before",
    "Requires",
    "Wants",
    "BindsTo",
    "PartOf",
    "Conflicts",
    "WantedBy",
    "RequiredBy",
}


class SystemdSyntaxError(ValueError):
    """Text systemd would not load as a unit file."""


class SystemdUnitFile(BaseModel):
    description: str | None
    type: str | None = Field(description="Service Type= (simple, forking, oneshot, notify, ...).")
    exec_start: list[str]
    exec_start_pre: list[str]
    exec_stop: list[str]
    restart: str | None
    user: str | None
    group: str | None
    working_directory: str | None
    environment: list[str] = Field(description="Environment= assignments (secret values masked).")
    environment_files: list[str]
    after: list[str]
    before: list[str]
    requires: list[str]
    wants: list[str]
    binds_to: list[str]
    part_of: list[str]
    conflicts: list[str]
    wanted_by: list[str]
    required_by: list[str]
    sections: dict[str, dict[str, list[str]]] = Field(
        description="Every section's keys and their values in file order."
    )


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values, with continuations joined and empty assignments resetting a key."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for number, raw in enumerate(text.split("\n"), start=1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise SystemdSyntaxError(f"line {number}: malformed section header {line[:60]!r}")
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SystemdSyntaxError(f"line {number}: expected KEY=VALUE, got {line[:60]!r}")
        if current is None:
            raise SystemdSyntaxError(f"line {number}: assignment before any [Section]")
        key, value = key.strip(), value.strip()
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


def _one(section: dict[str, list[str]], key: str) -> str | None:
    values = section.get(key)
    return values[-1] if values else None


def _words(section: dict[str, list[str]], key: str) -> list[str]:
    return [word for value in section.get(key, []) for word in value.split()]


def parse_systemd_unit(text: str) -> SystemdUnitFile:
    """Parse a unit file; raises SystemdSyntaxError (a ValueError) for text systemd would not load."""
    sections = unit_sections(text)
    unit = sections.get("Unit", {})
    service = sections.get("Service", {})
    install = sections.get("Install", {})
    return SystemdUnitFile(
        description=_one(unit, "Description"),
        type=_one(service, "Type"),
        exec_start=service.get("ExecStart", []),
        exec_start_pre=service.get("ExecStartPre", []),
        exec_stop=service.get("ExecStop", []),
        restart=_one(service, "Restart"),
        user=_one(service, "User"),
        group=_one(service, "Group"),
        working_directory=_one(service, "WorkingDirectory"),
        environment=service.get("Environment", []),
        environment_files=service.get("EnvironmentFile", []),
        after=_words(unit, "After"),
        before=_words(unit, "Before"),
        requires=_words(unit, "Requires"),
        wants=_words(unit, "Wants"),
        binds_to=_words(unit, "BindsTo"),
        part_of=_words(unit, "PartOf"),
        conflicts=_words(unit, "Conflicts"),
        wanted_by=_words(install, "WantedBy"),
        required_by=_words(install, "RequiredBy"),
        sections=sections,
    )
