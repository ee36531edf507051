"""systemd commands: services (list-units), service_status, restart_service and journal_logs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from mcp_server.commands.base import Arg, ArgList, CommandDefinition, GrepText, NoParams
from mcp_server.parsers.services import (
    PRIORITY_NAMES,
    JournalLogs,
    RestartResult,
    ServiceStatus,
    UnitList,
    parse_journal,
    parse_restart,
    parse_service_status,
    parse_units,
)
from mcp_server.times import journal_time

UNIT_SUFFIXES = ("service", "socket", "timer", "mount", "target", "path", "slice", "scope", "device", "swap")
# letters, digits, ':_.@-' and systemd's own \xNN escapes, a known type suffix, and never a leading '-'
UNIT_PATTERN = (
    r"^(?:[A-Za-z0-9:_.@]|\\x[0-9a-fA-F]{2})(?:[A-Za-z0-9:_.@-]|\\x[0-9a-fA-F]{2}){0,239}\.(?:"
    + "|".join((*UNIT_SUFFIXES, "automount"))
    + r")$"
)
# systemd time specifications we pass on: dates, "-5min"-style offsets, "N units ago", and three keywords
TIME_PATTERN = (
    r"^(?:\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2}(?::\d{2})?)?"
    r"|-\d{1,6}(?:s|sec|m|min|h|d|w)"
    r"|\d{1,6} ?(?:s|sec|second|seconds|min|minute|minutes|h|hour|hours|d|day|days|w|week|weeks) ago"
    r"|today|yesterday|now)$"
)
UNIT_GLOB_PATTERN = r"^[A-Za-z0-9:_.@*?\[\]\\][A-Za-z0-9:_.@*?\[\]\\-]{0,254}$"
PRIORITY_DIGITS = tuple("01234567")
# journalctl --grep exits 1 when nothing matches (indistinguishable from a failure), so text filtering
# happens in the parser, over this many of the newest entries
GREP_SCAN_LINES = 10_000
JOURNAL_FIELDS = (
    "MESSAGE,PRIORITY,_SYSTEMD_UNIT,UNIT,_SYSTEMD_USER_UNIT,USER_UNIT,SYSLOG_IDENTIFIER,_COMM,_PID,SYSLOG_PID"
)

UnitName = Annotated[
    str,
    Field(
        min_length=3,
        max_length=255,
        pattern=UNIT_PATTERN,
        description="A systemd unit with its type suffix, e.g. 'nginx.service', 'backup.timer', 'mnt-data.mount'.",
    ),
]
TimeSpec = Annotated[
    str,
    Field(
        min_length=3,
        max_length=32,
        pattern=TIME_PATTERN,
        description="'2024-05-01', '2024-05-01 13:00[:00]', '-30min', '-2h', '-3d', '2 hours ago', "
        "'today', 'yesterday' or 'now' (device local time).",
    ),
    AfterValidator(journal_time),
]
UnitGlob = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        pattern=UNIT_GLOB_PATTERN,
        description="Shell-style pattern on the unit name, e.g. 'docker*', '*.timer', 'getty@*'.",
    ),
]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceStatusParams(_Params):
    unit: UnitName
    lines: int = Field(default=20, ge=0, le=200, description="Recent journal entries to include.")


class RestartParams(_Params):
    unit: UnitName


class JournalParams(_Params):
    unit: UnitName | None = None
    since: TimeSpec | None = None
    until: TimeSpec | None = None
    priority: str | None = Field(
        default=None,
        description="This priority and more severe: emerg, alert, crit, err, warning, notice, info, debug "
        "or 0..7.",
    )
    grep: GrepText | None = None
    lines: int = Field(default=100, ge=1, le=2000, description="Newest matching entries to return.")

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: object) -> object:
        if value is None or value in PRIORITY_NAMES or value in PRIORITY_DIGITS:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in PRIORITY_DIGITS:
            return str(value)
        raise ValueError(
            "priority must be one of emerg, alert, crit, err, warning, notice, info, debug or 0..7"
        )

    @property
    def scan_lines(self) -> int:
        """Entries journalctl returns: with grep, a wider window that the parser then filters."""
        return max(self.lines, GREP_SCAN_LINES) if self.grep is not None else self.lines

    @property
    def filters(self) -> list[str]:
        """journalctl options for the filters that were given (each value attached, never a separate word)."""
        words: list[str] = []
        if self.unit is not None:
            words.append(f"--unit={self.unit}")
        if self.since is not None:
            words.append(f"--since={self.since}")
        if self.until is not None:
            words.append(f"--until={self.until}")
        if self.priority is not None:
            words.append(f"--priority={self.priority}")
        return words


# systemd >= 246 prints JSON; older versions ignore the journal-style --output and print the table, which
# the parser also reads. When both fail, a missing /run/systemd/system means systemd is not the init system.
NO_SYSTEMD = (
    '{ s=$?; [ -d /run/systemd/system ] || { echo "systemd: not found (not running as init on this device)" >&2; '
    "exit 127; }; exit $s; }"
)
SERVICES_SCRIPT = "; ".join(
    (
        "export LC_ALL=C SYSTEMD_COLORS=0",
        'command -v systemctl >/dev/null 2>&1 || { echo "systemctl: not found" >&2; exit 127; }',
        "echo '@@units'",
        "systemctl list-units --all --full --plain --no-legend --no-pager --output=json 2>/dev/null"
        " || systemctl list-units --all --full --plain --no-legend --no-pager || " + NO_SYSTEMD,
        "echo '@@end'",
    )
)
STATUS_PROPERTIES = (
    "Id,Description,LoadState,ActiveState,SubState,UnitFileState,MainPID,MemoryCurrent,TasksCurrent,"
    "NRestarts,Result,ActiveEnterTimestamp,ActiveExitTimestamp,InactiveEnterTimestamp,InactiveExitTimestamp,"
    "StateChangeTimestamp,ExecMainStartTimestamp"
)
# --timestamp=unix (systemd >= 248) gives exact times; older versions get the same query without it.
SERVICE_STATUS_SCRIPT = "; ".join(
    (
        "export LC_ALL=C SYSTEMD_COLORS=0",
        'command -v systemctl >/dev/null 2>&1 || { echo "systemctl: not found" >&2; exit 127; }',
        "echo '@@show'",
        f'{{ systemctl show --no-pager --timestamp=unix --property={STATUS_PROPERTIES} -- "$1" 2>/dev/null'
        f' || systemctl show --no-pager --property={STATUS_PROPERTIES} -- "$1"; }} || ' + NO_SYSTEMD,
        "echo '@@journal'",
        'if [ "$2" -gt 0 ] && command -v journalctl >/dev/null 2>&1; then journalctl --no-pager -o json --all'
        f' --output-fields={JOURNAL_FIELDS} -n "$2" --unit="$1" 2>&1; fi',
        "echo '@@end'",
    )
)

SERVICES: CommandDefinition[UnitList] = CommandDefinition(
    name="services",
    category="services",
    summary="Every systemd unit systemd has loaded, with load, active and sub state; failed units first.",
    argv=("sh", "-c", SERVICES_SCRIPT),
    model=UnitList,
    parse=parse_units,
    params=NoParams,
    ttl=30.0,
    timeout=30.0,
)

SERVICE_STATUS: CommandDefinition[ServiceStatus] = CommandDefinition(
    name="service_status",
    category="services",
    summary="One systemd unit's state, since when, main PID, memory, tasks, enablement and recent journal.",
    argv=("sh", "-c", SERVICE_STATUS_SCRIPT, "sh", Arg("unit"), Arg("lines")),
    model=ServiceStatus,
    parse=parse_service_status,
    params=ServiceStatusParams,
    ttl=15.0,
    timeout=30.0,
)

RESTART_SERVICE: CommandDefinition[RestartResult] = CommandDefinition(
    name="restart_service",
    category="services",
    summary="Restart a systemd unit (systemctl restart); needs root, so use_sudo on non-root devices.",
    argv=("systemctl", "restart", "--", Arg("unit")),
    model=RestartResult,
    parse=parse_restart,
    params=RestartParams,
    ttl=0.0,
    timeout=120.0,
    root=True,
    invalidates=("services",),
)

JOURNAL_LOGS: CommandDefinition[JournalLogs] = CommandDefinition(
    name="journal_logs",
    category="services",
    summary="The newest systemd journal entries, filtered by unit, time, priority and text.",
    argv=(
        "journalctl",
        "--no-pager",
        "--output=json",
        "--all",
        f"--output-fields={JOURNAL_FIELDS}",
        "--lines",
        Arg("scan_lines"),
        ArgList("filters"),
    ),
    model=JournalLogs,
    parse=parse_journal,
    params=JournalParams,
    ttl=10.0,
    timeout=60.0,
    root=True,
)

COMMANDS: tuple[CommandDefinition[Any], ...] = (SERVICES, SERVICE_STATUS, RESTART_SERVICE, JOURNAL_LOGS)
