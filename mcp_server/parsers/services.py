"""Parsers for systemd: `systemctl list-units`, `systemctl show`, `journalctl -o json` and restarts."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from mcp_server.parsers.common import parse_errors_as, split_sections

MESSAGE_MAX_CHARS = 2000
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
UnitState = Literal["all", "active", "failed", "inactive"]
# systemctl's "unset" values: an empty string, "[not set]", or UINT64_MAX for counters it cannot read
_UNSET = {"", "[not set]", "n/a", "18446744073709551615", "infinity"}
_TIMESTAMP = re.compile(r"^\w{3} (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (UTC|GMT|[+-]\d{2}(?::?\d{2})?)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Unit(BaseModel):
    unit: str = Field(description="Unit name, e.g. nginx.service (escaped characters stay as \\x2d etc.).")
    load: str = Field(description="Whether the unit file was loaded: loaded, not-found, masked, bad-setting.")
    active: str = Field(description="High-level state: active, inactive, failed, activating, deactivating.")
    sub: str = Field(description="Type-specific low-level state: running, exited, dead, failed, waiting...")
    description: str = Field(description="The unit's Description= text.")


class UnitList(BaseModel):
    units: list[Unit] = Field(description="Units, failed ones first, then by name.")
    total: int = Field(description="Units matching the filters before paging.")
    truncated: bool = Field(description="True when more matching units exist beyond this page.")
    failed_total: int = Field(description="Failed units on the device, whatever the filters.")


def _units_from_json(text: str) -> list[Unit]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        # some systemd versions print unit-name escapes such as \x2d unescaped, which is not valid JSON
        rows = json.loads(re.sub(r"(?<!\\)\\x", r"\\\\x", text))
    if not isinstance(rows, list):
        raise ValueError("systemctl JSON output is not a list")
    return [
        Unit(
            unit=str(row["unit"]),
            load=str(row.get("load") or ""),
            active=str(row.get("active") or ""),
            sub=str(row.get("sub") or ""),
            description=str(row.get("description") or ""),
        )
        for row in rows
    ]


def _units_from_table(text: str) -> list[Unit]:
    units: list[Unit] = []
    for line in text.split("\n"):
        # a failed or not-found unit is marked with a bullet ("●", or "*" without UTF-8)
        stripped = line.strip().removeprefix("●").removeprefix("*").strip()
        if not stripped:
            if units:
                break  # the legend follows the first blank line
            continue
        words = stripped.split(None, 4)
        if words[0] == "UNIT" and words[1:4] == ["LOAD", "ACTIVE", "SUB"]:
            continue
        if len(words) < 4:
            raise ValueError(f"not a systemctl list-units row: {line[:80]!r}")
        units.append(
            Unit(
                unit=words[0],
                load=words[1],
                active=words[2],
                sub=words[3],
                description=(words[4:] or [""])[0],
            )
        )
    return units


def _failed_first(units: Iterable[Unit]) -> list[Unit]:
    return sorted(units, key=lambda u: (u.active != "failed", u.unit))


@parse_errors_as("services")
def parse_units(stdout: str, params: Any) -> UnitList:
    """`systemctl list-units --all` between @@units and @@end, as JSON (systemd >= 246) or the text table."""
    lines = stdout.rstrip("\n").split("\n")
    if lines[0] != "@@units" or lines[-1] != "@@end":
        raise ValueError("output is incomplete (no @@units ... @@end)")
    text = "\n".join(lines[1:-1]).strip()
    if not text:
        raise ValueError("systemctl printed nothing")
    units = _failed_first(_units_from_json(text) if text.startswith("[") else _units_from_table(text))
    failed = sum(u.active == "failed" for u in units)
    return UnitList(units=units, total=len(units), truncated=False, failed_total=failed)


def select_units(units: Iterable[Unit], state: UnitState, pattern: str | None) -> list[Unit]:
    """Units in `state` whose name matches the shell-style `pattern` (case-sensitive, like systemctl)."""
    return [
        u
        for u in units
        if (state == "all" or u.active == state) and (pattern is None or fnmatch.fnmatchcase(u.unit, pattern))
    ]


class JournalEntry(BaseModel):
    timestamp: datetime = Field(description="When journald received the entry (UTC).")
    priority: int | None = Field(description="Syslog priority 0 (emerg) .. 7 (debug); null when unset.")
    priority_name: str | None = Field(
        description="The priority's name: emerg, alert, crit, err, warning, ..."
    )
    unit: str | None = Field(description="The systemd unit the entry came from or is about.")
    identifier: str | None = Field(description="Syslog identifier or process name.")
    pid: int | None = Field(description="Process id that logged it.")
    message: str = Field(description=f"The message, cut to {MESSAGE_MAX_CHARS} characters.")
    message_truncated: bool = Field(description="True when the message was longer and was cut.")


class JournalLogs(BaseModel):
    entries: list[JournalEntry] = Field(description="The newest matching entries, oldest first.")
    total: int = Field(description="Matching entries found in the window read (before the `lines` limit).")
    truncated: bool = Field(
        description="True when older matching entries probably exist: more matched than `lines`, or the "
        "window journalctl returned was full."
    )


def _text(value: Any) -> str | None:
    """A journal field as text: strings as is, byte arrays decoded, repeated fields joined."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list):
        return "\n".join(t for t in (_text(v) for v in value) if t is not None)
    raise ValueError(f"unexpected journal field value {value!r:.80}")


def _int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text is not None and text.strip().isdigit() else None


def journal_entry(record: dict[str, Any]) -> JournalEntry:
    """One `journalctl -o json` object -> JournalEntry."""
    micros = int(_text(record["__REALTIME_TIMESTAMP"]) or "")
    priority = _int(record.get("PRIORITY"))
    message = _text(record.get("MESSAGE"))
    if message is None:
        message = "[message omitted: larger than journalctl prints without --all]"
    unit = next(
        (
            t
            for k in ("_SYSTEMD_UNIT", "UNIT", "_SYSTEMD_USER_UNIT", "USER_UNIT")
            if (t := _text(record.get(k)))
        ),
        None,
    )
    return JournalEntry(
        timestamp=_EPOCH + timedelta(microseconds=micros),
        priority=priority,
        priority_name=PRIORITY_NAMES[priority] if priority is not None and priority < 8 else None,
        unit=unit,
        identifier=_text(record.get("SYSLOG_IDENTIFIER")) or _text(record.get("_COMM")),
        pid=_int(record.get("_PID")) or _int(record.get("SYSLOG_PID")),
        message=message[:MESSAGE_MAX_CHARS],
        message_truncated=len(message) > MESSAGE_MAX_CHARS,
    )


def journal_lines(lines: Iterable[str]) -> tuple[list[JournalEntry], list[str]]:
    """JSON entries, and the other lines (journalctl's notices, e.g. about missing permissions)."""
    entries: list[JournalEntry] = []
    notes: list[str] = []
    for line in lines:
        if line.startswith("{"):
            entries.append(journal_entry(json.loads(line)))
        elif line.strip() and line.strip() != "-- No entries --":
            notes.append(line.strip())
    return entries, notes


class JournalQuery(Protocol):
    @property
    def lines(self) -> int: ...

    @property
    def grep(self) -> str | None: ...

    @property
    def scan_lines(self) -> int: ...


def _matches(entry: JournalEntry, needle: str) -> bool:
    # journalctl's own rule: a lower-case pattern matches any case
    return needle in (entry.message.lower() if needle == needle.lower() else entry.message)


@parse_errors_as("journal_logs")
def parse_journal(stdout: str, params: JournalQuery) -> JournalLogs:
    """`journalctl -o json` (one object per line) -> the newest `lines` entries that contain `grep`."""
    entries, notes = journal_lines(stdout.split("\n"))
    if notes:
        raise ValueError(f"not journal JSON: {notes[0][:80]!r}")
    scanned = len(entries)
    grep = params.grep
    if grep is not None:
        entries = [e for e in entries if _matches(e, grep)]
    newest = entries[-params.lines :]
    return JournalLogs(
        entries=newest,
        total=len(entries),
        truncated=len(entries) > len(newest) or scanned >= params.scan_lines,
    )


class ServiceStatus(BaseModel):
    unit: str = Field(description="The unit asked about.")
    description: str | None = Field(description="The unit's Description= text.")
    load_state: str | None = Field(
        description="loaded, not-found (no such unit), masked, bad-setting (broken unit file) or error."
    )
    active_state: str | None = Field(description="active, inactive, failed, activating, deactivating.")
    sub_state: str | None = Field(description="running, exited, dead, failed, auto-restart, ...")
    enabled_state: str | None = Field(
        description="Whether it starts at boot: enabled, disabled, static, masked, indirect, generated..."
    )
    since: datetime | None = Field(
        description="When the unit entered its current state (UTC); null when unknown or never."
    )
    since_text: str | None = Field(description="The same timestamp as systemctl printed it.")
    main_pid: int | None = Field(description="Main process id; null when nothing runs.")
    memory_bytes: int | None = Field(description="Memory used by the unit's cgroup; null when not accounted.")
    tasks: int | None = Field(description="Processes and threads in the unit's cgroup.")
    restarts: int | None = Field(description="Automatic restarts since the unit was last started by hand.")
    result: str | None = Field(
        description="Outcome of the last run: success, exit-code, signal, timeout, oom-kill, core-dump..."
    )
    journal: list[JournalEntry] = Field(description="The unit's most recent journal entries, oldest first.")
    journal_note: str | None = Field(
        description="Why journal entries may be missing (e.g. the SSH user may not read the system journal; "
        "add it to the systemd-journal group or enable use_sudo and use get_journal_logs)."
    )


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    if text.startswith("@") and text[1:].isdigit():
        return datetime.fromtimestamp(int(text[1:]), UTC)
    match = _TIMESTAMP.match(text)
    if match is None:
        return None
    local, zone = match.groups()
    if zone in ("UTC", "GMT"):
        offset = "+00:00"
    else:
        digits = zone[1:].replace(":", "")
        offset = f"{zone[0]}{digits[:2]}:{digits[2:] or '00'}"
    return datetime.fromisoformat(f"{local}{offset}").astimezone(UTC)


def _state_timestamp(props: dict[str, str], active: str | None) -> str | None:
    """The timestamp `systemctl status` shows after "since" for this state (or the nearest one we have)."""
    first = {
        None: "ActiveEnterTimestamp",
        "active": "ActiveEnterTimestamp",
        "reloading": "ActiveEnterTimestamp",
        "activating": "InactiveExitTimestamp",
        "deactivating": "ActiveExitTimestamp",
    }.get(active, "InactiveEnterTimestamp")
    fallbacks = (
        ("StateChangeTimestamp", "ExecMainStartTimestamp")
        if active == "active"
        else ("StateChangeTimestamp",)
    )
    for name in (first, *fallbacks):
        value = props.get(name)
        if value is not None and value not in _UNSET:
            return value
    return None


def _value(props: dict[str, str], key: str) -> str | None:
    value = props.get(key)
    return None if value is None or value in _UNSET else value


def _number(props: dict[str, str], key: str) -> int | None:
    value = _value(props, key)
    return int(value) if value is not None else None


class UnitStatusParams(Protocol):
    @property
    def unit(self) -> str: ...


@parse_errors_as("service_status")
def parse_service_status(stdout: str, params: UnitStatusParams) -> ServiceStatus:
    """`systemctl show --property=...` plus `journalctl -u UNIT -o json` -> ServiceStatus."""
    sections = split_sections(stdout, ("show", "journal"))
    props: dict[str, str] = {}
    for line in sections["show"]:
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z]+", key):
            raise ValueError(f"not a systemctl show property: {line[:80]!r}")
        props[key] = value
    if not props:
        raise ValueError("systemctl show printed no properties")
    entries, notes = journal_lines(sections["journal"])
    active = _value(props, "ActiveState")
    since_text = _state_timestamp(props, active)
    main_pid = _number(props, "MainPID")
    return ServiceStatus(
        unit=props.get("Id") or params.unit,
        description=_value(props, "Description"),
        load_state=_value(props, "LoadState"),
        active_state=active,
        sub_state=_value(props, "SubState"),
        enabled_state=_value(props, "UnitFileState"),
        since=_timestamp(since_text),
        since_text=since_text,
        main_pid=main_pid or None,
        memory_bytes=_number(props, "MemoryCurrent"),
        tasks=_number(props, "TasksCurrent"),
        restarts=_number(props, "NRestarts"),
        result=_value(props, "Result"),
        journal=entries,
        journal_note=" ".join(notes) or None,
    )


class RestartResult(BaseModel):
    unit: str = Field(description="The unit that was restarted.")
    restarted: bool = Field(description="True: systemctl restart finished without an error.")


def parse_restart(stdout: str, params: UnitStatusParams) -> RestartResult:
    """`systemctl restart` prints nothing on success; failures arrive as a non-zero exit instead."""
    return RestartResult(unit=params.unit, restarted=True)
