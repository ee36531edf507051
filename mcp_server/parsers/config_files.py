"""Outputs of the configuration commands -> models: one file's content and hash, a batch of hashes, and inotify
events (the proxy scan is in config_proxy.py). File content is redacted before it is parsed or returned."""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcp_server.parsers.common import parse_errors_as
from mcp_server.parsers.config_compose import ComposeFile, parse_compose_file
from mcp_server.parsers.config_nginx import NginxConfig, parse_nginx
from mcp_server.parsers.config_paths import ConfigKind, ConfigPath, WatchPolicy, detect_kind, well_formed
from mcp_server.parsers.config_systemd import SystemdUnitFile, parse_systemd_unit
from mcp_server.redact import REDACTED, redact_text, secret_name

MAX_FILE_BYTES = 1_048_576
_HASH = re.compile(r"^[0-9a-f]{64}$")


class PolicyParams(BaseModel):
    """Parameters that carry the watch policy to the device, whose script checks resolved paths against it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: WatchPolicy = Field(default_factory=WatchPolicy)

    @property
    def allow_lines(self) -> str:
        return "\n".join(self.policy.allow)

    @property
    def own_lines(self) -> str:
        return "\n".join(self.policy.own)

    def check(self, path: str, directory: bool | None) -> None:
        reason = self.policy.refusal(path, directory=directory)
        if reason is not None:
            raise ValueError(reason)


class ConfigFileParams(PolicyParams):
    path: ConfigPath
    kind: ConfigKind | None = Field(default=None, description="How to parse it; default: judged by the path.")
    max_bytes: int = Field(default=MAX_FILE_BYTES, ge=1, le=16 * MAX_FILE_BYTES)
    watched_dir: ConfigPath | None = Field(
        default=None,
        description="The watched directory the file belongs to: its resolved path must stay inside it.",
    )

    @model_validator(mode="after")
    def _allowed(self) -> ConfigFileParams:
        self.check(self.path, None)
        if self.watched_dir is not None and posixpath.dirname(self.path) != self.watched_dir:
            raise ValueError(f"{self.path} is not a file of the directory {self.watched_dir}")
        return self

    @property
    def resolved_kind(self) -> ConfigKind:
        return self.kind or detect_kind(self.path)

    @property
    def watched_dir_word(self) -> str:
        return self.watched_dir or ""


class ConfigFile(BaseModel):
    """One configuration file as it is on the device now."""

    path: str
    kind: ConfigKind
    type: Literal["file", "directory", "missing", "refused"] = Field(
        description="What the path is on the device; refused: the watch policy does not allow reading it "
        "(see refused_reason)."
    )
    resolved_path: str | None = Field(description="The path with symlinks resolved.")
    size_bytes: int | None
    sha256: str | None = Field(description="sha256 of the whole file as stored on the device.")
    truncated: bool = Field(description="Only the first max_bytes were read.")
    binary: bool = Field(description="The file is not UTF-8 text (undecodable bytes were replaced).")
    consistent: bool = Field(
        description="The content read matches the hash; false when the file changed between the two reads."
    )
    content: str | None = Field(description="The text, secrets replaced by ***.")
    nginx: NginxConfig | None = None
    compose: ComposeFile | None = None
    systemd: SystemdUnitFile | None = None
    parse_error: str | None = Field(
        default=None, description="Why the content does not parse as its kind (the tool would refuse it)."
    )
    refused_reason: str | None = Field(
        default=None, description="Why the watch policy refused the path, as it resolved on the device."
    )

    def refusal(self) -> str:
        """What to tell a caller about a refused file."""
        if self.resolved_path is None or self.resolved_path == self.path:
            return f"{self.path}: {self.refused_reason}"
        return f"{self.path} resolves to {self.resolved_path}: {self.refused_reason}"

    @classmethod
    def without_content(
        cls,
        path: str,
        kind: ConfigKind,
        type: Literal["directory", "missing", "refused"],
        resolved: str | None,
        reason: str | None = None,
    ) -> ConfigFile:
        """What is known of a path that is not a readable file: a directory, nothing, or a refused path."""
        return cls(
            path=path,
            kind=kind,
            type=type,
            resolved_path=resolved,
            size_bytes=None,
            sha256=None,
            truncated=False,
            binary=False,
            consistent=True,
            content=None,
            refused_reason=reason,
        )


# nginx directives whose first argument names a header or variable and whose second carries its value
_NGINX_VALUE_DIRECTIVES = (
    "proxy_set_header",
    "add_header",
    "grpc_set_header",
    "fastcgi_param",
    "uwsgi_param",
    "scgi_param",
    "set",
    "env",
)
# Possessive throughout, so no two parts trade characters (a lazy value before `[ \t]*;` was cubic on a long
# line); the spaces an unquoted value ends with go back to the tail in _nginx_pair.
_NGINX_PAIR = re.compile(
    r"^(?P<head>[ \t]*+(?:"
    + "|".join(_NGINX_VALUE_DIRECTIVES)
    + r")[ \t]++(?P<q>[\"']?)(?P<name>[$\w.-]{1,64}+)(?P=q)[ \t]++)"
    r"(?P<value>\"[^\"\n]*+\"(?=[ \t]*+;)|'[^'\n]*+'(?=[ \t]*+;)|[^;\s][^;\n]*+)(?P<tail>[ \t]*+;)",
    re.M,
)
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
_ENV_ASSIGNMENT = re.compile(
    r"\"(?P<qname>[A-Za-z_]\w{0,63})=(?P<qvalue>[^\"\n]*)\"|(?P<name>[A-Za-z_]\w{0,63})=(?P<value>\"[^\"\n]*\"|[^\s\"']+)"
)


def _nginx_pair(match: re.Match[str]) -> str:
    name = match.group("name").lstrip("$")
    if name.lower() not in _CREDENTIAL_HEADERS and not secret_name(name):
        return match.group(0)
    value = match.group("value")
    quote = value[0] if value[0] in "\"'" else ""
    spaces = value[len(value.rstrip(" \t")) :]
    return f"{match.group('head')}{quote}{REDACTED}{quote}{spaces}{match.group('tail')}"


def _systemd_environment(line: str) -> str:
    key, sep, value = line.partition("=")
    if key.strip() != "Environment" or not sep:
        return line

    def one(match: re.Match[str]) -> str:
        if match.group("qname") is not None:  # "NAME=value with spaces"
            return (
                f'"{match.group("qname")}={REDACTED}"'
                if secret_name(match.group("qname"))
                else match.group(0)
            )
        if not secret_name(match.group("name")):
            return match.group(0)
        quote = '"' if match.group("value").startswith('"') else ""
        return f"{match.group('name')}={quote}{REDACTED}{quote}"

    return key + sep + _ENV_ASSIGNMENT.sub(one, value)


def redact_config(kind: ConfigKind, text: str) -> str:
    """A configuration text with its secrets replaced by ***: redact_text, plus what only the file's own
    syntax shows (nginx `proxy_set_header Authorization "Basic ..."`, `set $api_token ...`; every
    assignment of a systemd Environment= line)."""
    text = redact_text(text)
    if kind == "nginx" or "proxy_set_header" in text:
        text = _NGINX_PAIR.sub(_nginx_pair, text)
    if kind == "systemd" or "Environment=" in text:
        text = "\n".join(_systemd_environment(line) for line in text.split("\n"))
    return text


def parse_content(kind: ConfigKind, text: str) -> tuple[dict[str, object], str | None]:
    """The structured view of redacted text for its kind, or the reason it does not parse."""
    try:
        if kind == "nginx":
            return {"nginx": parse_nginx(text)}, None
        if kind == "compose":
            return {"compose": parse_compose_file(text)}, None
        if kind == "systemd":
            return {"systemd": parse_systemd_unit(text)}, None
    except ValueError as exc:
        return {}, str(exc)
    return {}, None


_META_KEYS = ("type", "resolved", "size", "sha256", "reason")


def _meta(stdout: str) -> tuple[dict[str, str], str | None]:
    """The NUL-separated key/value fields after `@@meta`, and the raw content after `@@content` (or None
    when the fields end with `@@end`)."""
    if not stdout.startswith("@@meta\0"):
        raise ValueError("no @@meta section")
    meta: dict[str, str] = {}
    at = len("@@meta\0")
    while True:
        end = stdout.find("\0", at)
        if end < 0:
            raise ValueError("output is incomplete (no @@content or @@end)")
        key = stdout[at:end]
        if key == "@@content":
            return meta, stdout[end + 1 :]
        if key == "@@end":
            if end + 1 != len(stdout):
                raise ValueError("output after @@end")
            return meta, None
        if key not in _META_KEYS or key in meta:
            raise ValueError(f"unexpected field {key[:80]!r}")
        value_end = stdout.find("\0", end + 1)
        if value_end < 0:
            raise ValueError(f"field {key} has no value")
        meta[key], at = stdout[end + 1 : value_end], value_end + 1


@parse_errors_as("config_file")
def parse_config_file(stdout: str, params: ConfigFileParams) -> ConfigFile:
    """NUL-separated: `@@meta`, key/value fields, then `@@content` and the raw bytes (files), or `@@end`."""
    return _config_file(stdout, params, unparsed=None)


@parse_errors_as("config_file")
def config_file_unparsed(stdout: str, params: ConfigFileParams, reason: str) -> ConfigFile:
    """parse_config_file without the structured view (its parse exceeded its budget: `reason`)."""
    return _config_file(stdout, params, unparsed=reason)


def _config_file(stdout: str, params: ConfigFileParams, unparsed: str | None) -> ConfigFile:
    meta, raw = _meta(stdout)
    kind = params.resolved_kind
    kind_of = meta.get("type")
    if kind_of not in ("file", "directory", "missing", "refused"):
        raise ValueError(f"unknown type {kind_of!r}")
    resolved = meta.get("resolved")
    reason = meta.get("reason")
    if kind_of != "refused" and resolved is not None:
        # the device applied the policy to the resolved path; so does the server, with the same patterns
        reason = params.policy.refusal(resolved, directory=kind_of == "directory")
        kind_of = "refused" if reason is not None else kind_of
    if kind_of == "refused":
        return ConfigFile.without_content(
            params.path, kind, "refused", resolved, reason or "refused by the watch policy"
        )
    if kind_of != "file":
        return ConfigFile.without_content(params.path, kind, kind_of, resolved)  # type: ignore[arg-type]
    if raw is None:
        raise ValueError("a file without @@content")
    size = int(meta["size"])
    digest = meta["sha256"]
    if not _HASH.match(digest):
        raise ValueError(f"bad sha256 {digest[:80]!r}")
    binary = "\ufffd" in raw or "\x00" in raw
    expected = min(size, params.max_bytes)
    got = len(raw.encode("utf-8"))
    if not binary and got < expected and got < size:
        # the read ended early: the file shrank while it was read, or the output was cut
        consistent = False
    else:
        consistent = binary or size > params.max_bytes or hashlib.sha256(raw.encode()).hexdigest() == digest
    content = redact_config(kind, raw) if not binary else None
    parsed, error = parse_content(kind, content) if content is not None and unparsed is None else ({}, None)
    if content is not None and unparsed is not None:
        error = unparsed
    return ConfigFile(
        path=params.path,
        kind=kind,
        type="file",
        resolved_path=resolved,
        size_bytes=size,
        sha256=digest,
        truncated=size > params.max_bytes,
        binary=binary,
        consistent=consistent,
        content=content,
        parse_error=error,
        **parsed,  # type: ignore[arg-type]
    )


# ---- a batch of hashes (the polling fallback) ---------------------------------------------------------------

DirPattern = Literal["conf", "all"]


class WatchDir(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: ConfigPath
    pattern: DirPattern = Field(default="all", description="conf: only *.conf files; all: every file.")


class ConfigHashesParams(PolicyParams):
    files: tuple[ConfigPath, ...] = ()
    dirs: tuple[WatchDir, ...] = ()

    @model_validator(mode="after")
    def _bounded(self) -> ConfigHashesParams:
        if len(self.files) + len(self.dirs) > 2000:
            raise ValueError("at most 2000 files and directories per device")
        for path in self.files:
            self.check(path, None)
        for d in self.dirs:
            self.check(d.path, True)
        return self

    # argv words: the file count, the files, then (pattern, directory) pairs
    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def words(self) -> list[str]:
        return [*self.files, *(w for d in self.dirs for w in (d.pattern, d.path))]


FileHash = Annotated[
    str | None,
    Field(
        description="sha256 of the file; null when it does not exist or the watch policy refuses it; '!' when "
        "it cannot be read."
    ),
]


class ConfigHashes(BaseModel):
    files: dict[str, FileHash] = Field(
        description="Every watched file and every file in a watched directory."
    )
    dirs: dict[str, bool] = Field(description="Each watched directory and whether it exists.")


def nul_records(stdout: str, arity: dict[str, int]) -> list[list[str]]:
    """NUL-separated records, each a tag and its fields (`arity` gives how many per tag), ended by `@@end`.
    Output that does not split into whole records is refused, never read in part."""
    tokens = stdout.split("\0")
    if len(tokens) < 2 or tokens[-1] != "" or tokens[-2] != "@@end":
        raise ValueError("output is incomplete (no @@end marker)")
    tokens = tokens[:-2]
    records: list[list[str]] = []
    at = 0
    while at < len(tokens):
        tag = tokens[at]
        if tag not in arity:
            raise ValueError(f"unexpected record {tag[:80]!r}")
        end = at + 1 + arity[tag]
        if end > len(tokens):
            raise ValueError(f"a {tag} record cut short")
        records.append(tokens[at:end])
        at = end
    return records


_HASH_FIELD = re.compile(r"^(?:[0-9a-f]{64}|-|!)$")


@parse_errors_as("config_hashes")
def parse_config_hashes(stdout: str, params: ConfigHashesParams) -> ConfigHashes:
    """NUL-separated `f HASH PATH` per file (`-` missing or refused, `!` unreadable) and `d +|- DIR` before a
    directory's files."""
    files: dict[str, str | None] = {}
    dirs: dict[str, bool] = {}
    wanted_files = set(params.files)
    wanted_dirs = {d.path for d in params.dirs}
    current: str | None = None
    for tag, value, path in nul_records(stdout, {"f": 2, "d": 2}):
        if not path.startswith("/"):
            raise ValueError(f"{tag} record with a relative path {path[:80]!r}")
        if tag == "d":
            if value not in "+-" or len(value) != 1:
                raise ValueError(f"bad directory state {value[:80]!r}")
            current = path if path in wanted_dirs else None
            if current is not None:
                dirs[current] = value == "+"
            continue
        if not _HASH_FIELD.match(value):
            raise ValueError(f"bad hash {value[:80]!r}")
        # a file belongs to the output only as a watched file or a direct child of the current directory
        if path in wanted_files or (current is not None and posixpath.dirname(path) == current):
            # a name no watched path can have (a newline in it) is never read: it counts as unreadable
            files[path] = None if value == "-" else value if well_formed(path) else "!"
    missing = wanted_files - files.keys()
    if missing:
        raise ValueError(f"no hash line for {sorted(missing)[0]}")
    return ConfigHashes(files=files, dirs=dirs)


# ---- inotifywait -m events (the streaming watcher) ----------------------------------------------------------


class ConfigWatchParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dirs: tuple[ConfigPath, ...] = Field(min_length=1, max_length=2000)


class InotifyEvent(BaseModel):
    path: str
    events: list[str] = Field(description="inotify event names, e.g. CLOSE_WRITE, MOVED_TO, DELETE_SELF.")
    is_dir: bool


class InotifyEvents(BaseModel):
    events: list[InotifyEvent]
    ready: bool = Field(description="inotifywait reported 'Watches established.'")
    errors: list[str] = Field(description="Lines inotifywait wrote about watches it could not set.")


_EVENT_HEAD = re.compile(r"([A-Z_]{1,32}+(?:,[A-Z_]{1,32}+){0,16}+) (?=/)")


@parse_errors_as("config_watch")
def parse_inotify_events(stdout: str, params: BaseModel) -> InotifyEvents:
    """`inotifywait -m --format '%e %w%f%0'` output (the stream hands over one NUL-ended record at a time):
    in each record, inotifywait's own status lines (newline-ended) and then at most one event, whose path
    runs to the end of the record (newlines and all)."""
    events: list[InotifyEvent] = []
    errors: list[str] = []
    ready = False
    for record in stdout.split("\0"):
        ready |= _inotify_record(record, events, errors)
    return InotifyEvents(events=events, ready=ready, errors=errors)


def _inotify_record(rest: str, events: list[InotifyEvent], errors: list[str]) -> bool:
    ready = False
    while rest:
        if match := _EVENT_HEAD.match(rest):
            names = match.group(1).split(",")
            path = rest[match.end() :]
            events.append(
                InotifyEvent(
                    path=path.rstrip("/") or "/",
                    events=[n for n in names if n != "ISDIR"],
                    is_dir="ISDIR" in names,
                )
            )
            break
        line, _, rest = rest.partition("\n")
        if line == "Watches established.":
            ready = True
        elif line and not line.startswith("Setting up watches"):
            errors.append(line[:300])
    return ready
