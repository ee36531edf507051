"""Audit: who is calling (a context variable set at the edge), the audit record, and what may be stored of
any row (redacted, bounded). The durable writer is journal.py."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcp_server import NAME_PATTERN
from mcp_server.redact import (
    REDACTED,
    digest,
    json_might_hold_secret,
    redact,
    redact_args,
    redact_text,
    secret_name,
)

if TYPE_CHECKING:
    from mcp_server.db.tables import Base


@dataclass
class CallTrace:
    """What the collections of one call did, summed up in that call's audit row."""

    commands: list[str] = field(default_factory=list)
    ssh_commands: list[str] = field(default_factory=list)
    executions: int = 0
    cache_hits: int = 0

    @property
    def command(self) -> str | None:
        """The distinct commands collected, in order, comma-separated."""
        return ",".join(dict.fromkeys(self.commands)) or None

    @property
    def cache_hit(self) -> bool:
        """True when every collection of the call was served from the cache."""
        return self.executions == 0 and self.cache_hits > 0


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One row of the audit log (data_collection_audit) as every writer queues it, built by
    `CallContext.to_audit`. Its fields are the table's columns (less the id); the read model is
    db.queries.AuditEntry. What is stored is `storable(row())`: redacted and bounded."""

    occurred_at: datetime
    kind: str  # collection | tool | resource | subscription | session | auth | alert
    outcome: str  # ok | error | denied
    request_id: str | None = None
    transport: str | None = None
    tool: str | None = None
    subject: str | None = None
    client_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_path: str | None = None
    arguments: dict[str, Any] | None = None
    device: str | None = None
    command: str | None = None
    params: str | None = None
    cache_hit: bool = False
    ssh_commands: tuple[str, ...] = ()
    duration_ms: float = 0.0
    error_type: str | None = None
    error_message: str | None = None

    def row(self) -> dict[str, Any]:
        """The record as a row of data_collection_audit (before `storable`)."""
        row = {name: getattr(self, name) for name in AUDIT_FIELDS}
        row["ssh_commands"] = list(self.ssh_commands)
        return row


AUDIT_FIELDS = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True)
class CallContext:
    """Who asked, through what. Identity fields are filled by the transport edge when known; an event the
    HTTP edge decides on its own (a refused token, a session) has no request id."""

    request_id: str | None = field(default_factory=lambda: uuid.uuid4().hex)
    transport: str = "internal"
    tool: str | None = None
    subject: str | None = None
    client_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_path: str | None = None
    trace: CallTrace = field(default_factory=CallTrace, compare=False)

    def to_audit(
        self,
        kind: str,
        *,
        started: float | None = None,
        outcome: str = "ok",
        error_type: str | None = None,
        error_message: str | None = None,
        arguments: dict[str, Any] | None = None,
        device: object = None,
        command: str | None = None,
        params: str | None = None,
        cache_hit: bool = False,
        ssh_commands: Sequence[str] = (),
    ) -> AuditRecord:
        """The audit record of an event in this call: who and through what from the context, what and how
        it ended from the arguments. `started` is the event's time.perf_counter() start (None: decided at
        once); `device` is stored only when it is shaped like a device name (the column is not redacted:
        anything else the caller sent stays in the arguments or the error message, which are)."""
        return AuditRecord(
            occurred_at=datetime.now(UTC),
            kind=kind,
            outcome=outcome,
            request_id=self.request_id,
            transport=self.transport,
            tool=self.tool,
            subject=self.subject,
            client_id=self.client_id,
            client_ip=self.client_ip,
            user_agent=self.user_agent,
            request_path=self.request_path,
            arguments=arguments,
            device=device if isinstance(device, str) and _DEVICE_NAME.fullmatch(device) else None,
            command=command,
            params=params,
            cache_hit=cache_hit,
            ssh_commands=tuple(ssh_commands),
            duration_ms=0.0 if started is None else (time.perf_counter() - started) * 1000,
            error_type=error_type,
            error_message=error_message,
        )


_DEVICE_NAME = re.compile(NAME_PATTERN)


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("infra_call", default=None)


def current_call() -> CallContext:
    return _current.get() or CallContext()


@contextlib.contextmanager
def calling(ctx: CallContext) -> Iterator[CallContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


# Seconds a database read session may take, set for the length of a call; None: no deadline
_READ_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "infra_read_deadline", default=None
)


@contextlib.contextmanager
def read_deadline(seconds: float | None) -> Iterator[None]:
    """Within this block (a tool call or resource read), each read session must be done within `seconds`
    (INFRA_DB_READ_TIMEOUT): a database that hangs fails the call with DatabaseTimeout instead of holding it."""
    token = _READ_DEADLINE.set(seconds)
    try:
        yield
    finally:
        _READ_DEADLINE.reset(token)


def read_deadline_seconds() -> float | None:
    """The read deadline of the call under way (Database.read_session applies it), or None."""
    return _READ_DEADLINE.get()


# ---- what may be stored: every text column redacted, bounded and free of NUL ------------------------------

# Columns holding names, kinds, ids and hashes that the server produced or validated: bounded, never rewritten.
IDENTITY_COLUMNS = frozenset(
    {
        "device", "command", "kind", "outcome", "error_type", "request_id", "transport", "client_ip",
        "subject", "client_id", "name", "content_hash", "change_type", "risk", "source", "path",
    }
)  # fmt: skip
# Redacted where the value is produced, before it is cached or returned (collection.py): not redone here.
REDACTED_UPSTREAM = frozenset({("collection_snapshots", "data")})
# Every variable-size column of an audit row is bounded, in UTF-8 bytes, so a row stays under
# AUDIT_ROW_BYTES whatever a caller or a host sends: the String columns by their length, the rest by these.
AUDIT_TABLE = "data_collection_audit"
AUDIT_ROW_BYTES = 10_240
TEXT_LIMITS = {(AUDIT_TABLE, "error_message"): 1024, (AUDIT_TABLE, "params"): 1024}
# Compact JSON (non-ASCII escaped, so characters are bytes) of a row's arguments kept whole up to this; beyond
# it, a summary of each argument (see summarize_arguments).
AUDIT_ARGUMENTS_CHARS = 4096
# The SSH commands a row lists: distinct ones in order, each cut to SSH_COMMAND_CHARS, up to this in all.
SSH_COMMANDS_CHARS = 1024
SSH_COMMAND_CHARS = 256
JSON_LIMITS = {
    (AUDIT_TABLE, "arguments"): AUDIT_ARGUMENTS_CHARS,
    (AUDIT_TABLE, "ssh_commands"): SSH_COMMANDS_CHARS,
}
# Argument strings longer than this are audited as their start and a fingerprint.
AUDIT_STRING_CHARS = 1024
# What a summarized argument keeps of its start
SUMMARY_START_CHARS = 160
# Characters beyond a column's bound still scanned, so a secret that starts inside the bound is found whole.
_SCAN_MARGIN = 8192


@dataclass(frozen=True)
class _Column:
    json: bool
    limit: int | None
    rewrite: bool
    in_bytes: bool = False  # the limit counts UTF-8 bytes (audit rows), not characters


@functools.cache
def _columns(table: type[Base]) -> dict[str, _Column]:
    from sqlalchemy import JSON, String

    name = table.__tablename__
    plan: dict[str, _Column] = {}
    for column in table.__table__.columns:
        rewrite = column.name not in IDENTITY_COLUMNS and (name, column.name) not in REDACTED_UPSTREAM
        if isinstance(column.type, JSON):
            plan[column.name] = _Column(True, JSON_LIMITS.get((name, column.name)), rewrite)
        elif isinstance(column.type, String):
            limit = column.type.length or TEXT_LIMITS.get((name, column.name))
            plan[column.name] = _Column(False, limit, rewrite, in_bytes=name == AUDIT_TABLE)
    return plan


def _clean(text: str) -> str:
    # PostgreSQL refuses NUL in text and JSONB; one such character would fail the whole batch.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _bounded_text(value: str, column: _Column) -> str:
    if column.limit is None:
        return _clean(redact_text(value) if column.rewrite else value)
    value = value[: column.limit + _SCAN_MARGIN]
    if column.rewrite:
        value = redact_text(value)
    value = _clean(value)[: column.limit]
    if column.in_bytes and not value.isascii():
        # cut on a character boundary; lone surrogates (which no database stores) are dropped on the way
        value = value.encode("utf-8", "surrogatepass")[: column.limit].decode("utf-8", "ignore")
    return value


def _json_value(value: Any, rewrite: bool, name: str = "") -> Any:
    """A JSON value with its strings redacted (types kept: a secret-named string becomes ***) and NUL-free."""
    if isinstance(value, dict):
        return {
            _clean(redact_text(str(k)) if rewrite else str(k)): (
                REDACTED
                if rewrite and isinstance(v, str) and v and secret_name(str(k))
                else _json_value(v, rewrite, str(k))
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if rewrite and value and all(isinstance(item, str) for item in value):  # maybe an argv
            return [_clean(item) for item in redact_args(list(value))]
        return [_json_value(item, rewrite, name) for item in value]
    if isinstance(value, str):
        return _clean(redact_text(value) if rewrite else value)
    if value is None or isinstance(value, bool | int | float):
        return value
    # anything else JSON cannot hold (a datetime argument of a REST call, say) is stored as its text: one
    # such value must not make the row unstorable and hold up every row journaled after it
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return _clean(redact_text(text) if rewrite else text)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def _bounded_json(value: Any, limit: int) -> Any:
    if _json_size(value) <= limit:
        return value
    if isinstance(value, list):
        return bounded_commands([str(item) for item in value], limit)
    return summarize_arguments(value if isinstance(value, dict) else {"value": value}, limit)


def _plain_json(value: Any, column: _Column) -> bool:
    """Whether a JSON column's value may be stored as it is: plain JSON, no NUL, within its bound, and (when
    rewritten) in ASCII with no literal any redaction rule starts from (see json_might_hold_secret). One
    encoding at C speed instead of a walk through every key and string."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return False
    if "\\u0000" in text or (column.limit is not None and (len(text) > column.limit or not text.isascii())):
        return False
    return not column.rewrite or (text.isascii() and not json_might_hold_secret(text))


def storable(table: type[Base], row: dict[str, Any]) -> dict[str, Any]:
    """`row` as it may be stored: secrets redacted in every text and JSON column but the identity ones,
    strings cut to their column's bound, JSON columns of the audit summarized past theirs (JSON_LIMITS), NUL
    characters replaced."""
    out = dict(row)
    for name, column in _columns(table).items():
        value = out.get(name)
        if value is None:
            continue
        if not column.json:
            if isinstance(value, str):
                out[name] = _bounded_text(value, column)
        elif not _plain_json(value, column):
            value = _json_value(value, column.rewrite)
            out[name] = value if column.limit is None else _bounded_json(value, column.limit)
    return out


def clip(text: str, keep: int = AUDIT_STRING_CHARS) -> str:
    """`text`, or its first `keep` characters and a fingerprint of the whole when it is longer."""
    if len(text) <= keep:
        return text
    return f"{text[:keep]}…[{len(text)} characters, sha256:{digest(text)}]"


def _clip_strings(value: Any) -> Any:
    if isinstance(value, dict):
        return {clip(str(k), 256): _clip_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_strings(item) for item in value]
    if isinstance(value, str):
        return clip(value)
    return value


def audit_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments as audited: secrets masked, long strings kept as their start and a fingerprint; past
    AUDIT_ARGUMENTS_CHARS of JSON in all, a summary of each argument (fingerprints of the values as sent)."""
    kept = dict(_clip_strings(redact(arguments)))
    return kept if _json_size(kept) <= AUDIT_ARGUMENTS_CHARS else summarize_arguments(arguments)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(value: Any) -> str:
    """digest() of a string, or of the compact JSON of any other value (json.dumps with separators (",",
    ":") and ensure_ascii=False): what an audit summary gives to match an argument as it was sent."""
    return digest(value if isinstance(value, str) else _compact(value))


def summarize_arguments(arguments: dict[str, Any], limit: int = AUDIT_ARGUMENTS_CHARS) -> dict[str, Any]:
    """Arguments too large to audit whole, as at most `limit` characters of JSON: the size and fingerprint of
    them all, then for each argument in turn (while they fit) its redacted start, size and fingerprint.

    A secret-named argument is only ever ***; the others' fingerprints are of the values as sent, so the
    operator can match a call they hold (see `fingerprint`)."""
    whole = _compact(arguments)
    summary: dict[str, Any] = {
        "$summary": f"arguments of {len(whole):,} characters (JSON), over the {limit:,} audited whole",
        "characters": len(whole),
        "sha256": digest(whole),
        "arguments": {},
    }
    kept: dict[str, Any] = summary["arguments"]
    for index, (name, value) in enumerate(arguments.items()):
        key = _clean(redact_text(str(name)[: 64 + _SCAN_MARGIN]))[:64]
        key = f"{key}#{index}" if key in kept else key
        if secret_name(str(name)) and value not in (None, "", [], {}):
            entry: Any = REDACTED
        else:
            text = value if isinstance(value, str) else _compact(value)
            start = _clean(redact_text(text[: SUMMARY_START_CHARS + _SCAN_MARGIN])[:SUMMARY_START_CHARS])
            entry = {"start": start, "characters": len(text), "sha256": fingerprint(value)}
        kept[key] = entry
        if _json_size(summary) > limit - 40:
            del kept[key]
            summary["more_arguments"] = len(arguments) - index
            break
    return summary


def bounded_commands(commands: list[str], limit: int = SSH_COMMANDS_CHARS) -> list[str]:
    """The SSH commands of an audit row within `limit` characters of JSON: distinct ones in order, each cut
    to SSH_COMMAND_CHARS (with a fingerprint), then a count of those left out."""
    distinct = list(dict.fromkeys(commands))
    kept: list[str] = []
    for index, command in enumerate(distinct):
        kept.append(clip(command, SSH_COMMAND_CHARS))
        if _json_size(kept) > limit - 60:
            kept[-1] = f"…[{len(distinct) - index} more distinct commands, {len(commands)} run in all]"
            break
    return kept


def oversized_arguments(text: str, keep: int = 512) -> dict[str, Any]:
    """What the audit keeps of arguments too large to accept: size, fingerprint and a redacted start."""
    head = redact_text(text[: keep + _SCAN_MARGIN])[:keep]
    return {"$oversized": True, "characters": len(text), "sha256": digest(text), "start": head}
