"""Outputs of the configuration commands -> models: one file's content and hash, a batch of hashes, inotify
events, and every nginx proxy conf on a device. File content is redacted before it is parsed or returned."""

from __future__ import annotations

import hashlib
import posixpath
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mcp_server.parsers.common import parse_errors_as
from mcp_server.parsers.config_compose import ComposeFile, parse_compose_file
from mcp_server.parsers.config_nginx import NginxConfig, NginxLocation, parse_nginx
from mcp_server.parsers.config_paths import ConfigKind, ConfigPath, detect_kind
from mcp_server.parsers.config_systemd import SystemdUnitFile, parse_systemd_unit
from mcp_server.redact import REDACTED, redact_text, secret_name

MAX_FILE_BYTES = 1_048_576
PROXY_FILE_BYTES = 262_144
_HASH = re.compile(r"^[0-9a-f]{64}$")


class ConfigFileParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: ConfigPath
    kind: ConfigKind | None = Field(default=None, description="How to parse it; default: judged by the path.")
    max_bytes: int = Field(default=MAX_FILE_BYTES, ge=1, le=16 * MAX_FILE_BYTES)

    @property
    def resolved_kind(self) -> ConfigKind:
        return self.kind or detect_kind(self.path)


class ConfigFile(BaseModel):
    """One configuration file as it is on the device now."""

    path: str
    kind: ConfigKind
    type: Literal["file", "directory", "missing"] = Field(description="What the path is on the device.")
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


def _meta(lines: list[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if key not in ("type", "resolved", "size", "sha256"):
            raise ValueError(f"unexpected line {line[:80]!r}")
        meta[key] = value.strip()
    return meta


@parse_errors_as("config_file")
def parse_config_file(stdout: str, params: ConfigFileParams) -> ConfigFile:
    """`@@meta` key lines, then `@@content` and the raw bytes (files), or `@@end` (anything else)."""
    if not stdout.startswith("@@meta\n"):
        raise ValueError("no @@meta section")
    head, marker, raw = stdout[len("@@meta\n") :].partition("@@content\n")
    if marker:
        meta = _meta(head.rstrip("\n").split("\n") if head.strip() else [])
    else:
        lines = head.rstrip("\n").split("\n")
        if not lines or lines[-1] != "@@end":
            raise ValueError("output is incomplete (no @@content or @@end)")
        meta = _meta(lines[:-1])
    kind = params.resolved_kind
    kind_of = meta.get("type")
    if kind_of not in ("file", "directory", "missing"):
        raise ValueError(f"unknown type {kind_of!r}")
    if kind_of != "file":
        return ConfigFile(
            path=params.path,
            kind=kind,
            type=kind_of,  # type: ignore[arg-type]
            resolved_path=meta.get("resolved"),
            size_bytes=None,
            sha256=None,
            truncated=False,
            binary=False,
            consistent=True,
            content=None,
        )
    if not marker:
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
    parsed, error = parse_content(kind, content) if content is not None else ({}, None)
    return ConfigFile(
        path=params.path,
        kind=kind,
        type="file",
        resolved_path=meta.get("resolved"),
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


class ConfigHashesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    files: tuple[ConfigPath, ...] = ()
    dirs: tuple[WatchDir, ...] = ()

    @model_validator(mode="after")
    def _bounded(self) -> ConfigHashesParams:
        if len(self.files) + len(self.dirs) > 2000:
            raise ValueError("at most 2000 files and directories per device")
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
    Field(description="sha256 of the file; null when it does not exist; '!' when it cannot be read."),
]


class ConfigHashes(BaseModel):
    files: dict[str, FileHash] = Field(
        description="Every watched file and every file in a watched directory."
    )
    dirs: dict[str, bool] = Field(description="Each watched directory and whether it exists.")


_HASH_LINE = re.compile(r"^f ([0-9a-f]{64}|-|!) (/.*)$")
_DIR_LINE = re.compile(r"^d ([+-]) (/.*)$")


@parse_errors_as("config_hashes")
def parse_config_hashes(stdout: str, params: ConfigHashesParams) -> ConfigHashes:
    """`f HASH PATH` per file (`-` missing, `!` unreadable) and `d +|- DIR` before a directory's files."""
    lines = stdout.rstrip("\n").split("\n")
    if lines[-1] != "@@end":
        raise ValueError("output is incomplete (no @@end marker)")
    files: dict[str, str | None] = {}
    dirs: dict[str, bool] = {}
    wanted_files = set(params.files)
    wanted_dirs = {d.path for d in params.dirs}
    current: str | None = None
    for line in lines[:-1]:
        if match := _DIR_LINE.match(line):
            current = match.group(2) if match.group(2) in wanted_dirs else None
            if current is not None:
                dirs[current] = match.group(1) == "+"
        elif match := _HASH_LINE.match(line):
            path, value = match.group(2), match.group(1)
            # a file belongs to the output only as a watched file or a direct child of the current directory
            if path in wanted_files or (current is not None and posixpath.dirname(path) == current):
                files[path] = None if value == "-" else value
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


_EVENT_LINE = re.compile(r"^([A-Z_]+(?:,[A-Z_]+)*) (/.*)$")


@parse_errors_as("config_watch")
def parse_inotify_events(stdout: str, params: BaseModel) -> InotifyEvents:
    """`inotifywait -m --format '%e %w%f'` lines, with its own status lines on the same stream."""
    events: list[InotifyEvent] = []
    errors: list[str] = []
    ready = False
    for line in stdout.split("\n"):
        if not line or line.startswith("Setting up watches"):
            continue
        if line == "Watches established.":
            ready = True
        elif match := _EVENT_LINE.match(line):
            names = match.group(1).split(",")
            path = match.group(2)
            events.append(
                InotifyEvent(
                    path=path.rstrip("/") or "/",
                    events=[n for n in names if n != "ISDIR"],
                    is_dir="ISDIR" in names,
                )
            )
        else:
            errors.append(line[:300])
    return InotifyEvents(events=events, ready=ready, errors=errors)


# ---- every nginx proxy conf on a device ---------------------------------------------------------------------


class ProxyConfigsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dirs: tuple[ConfigPath, ...] = Field(
        default=(),
        max_length=20,
        description="More directories of *.conf files to read besides the usual ones.",
    )


class ProxyRoute(BaseModel):
    """One way into the proxy: a domain (or a subfolder path) and where it leads."""

    domain: str = Field(description="server_name, or '(subfolder)' for a location included in a server.")
    location: str = Field(description="The location path.")
    upstream: str | None = Field(description="host:port the location proxies to.")
    redirect: str | None = Field(description="A `return` (redirect) instead of an upstream, if any.")
    ssl: bool | None = Field(
        description="TLS on the server block; null for a subfolder conf (its includer's)."
    )
    auth: list[str] = Field(description="Authentication in force: empty means none.")
    file: str


class ProxyConfigFile(BaseModel):
    path: str
    name: str = Field(description="File name, e.g. grafana.subdomain.conf.")
    server_names: list[str]
    upstreams: list[str]
    ssl: bool
    auth: list[str]
    config: NginxConfig | None
    parse_error: str | None


class ProxyConfigs(BaseModel):
    dirs: list[str] = Field(description="Directories read.")
    files: list[ProxyConfigFile]
    routes: list[ProxyRoute] = Field(description="Every domain/location -> upstream, with TLS and auth.")
    total: int
    truncated: bool


def _routes(name: str, path: str, config: NginxConfig) -> list[ProxyRoute]:
    routes: list[ProxyRoute] = []
    for server in config.servers:
        for domain in server.server_names or ["_"]:
            for loc in server.locations or [
                NginxLocation(path="/", proxy_pass=None, upstream=None, auth=[], includes=[], redirect=None)
            ]:
                routes.append(
                    ProxyRoute(
                        domain=domain,
                        location=loc.path,
                        upstream=loc.upstream,
                        redirect=loc.redirect,
                        ssl=server.ssl,
                        auth=loc.auth,
                        file=path,
                    )
                )
    for loc in config.locations:
        routes.append(
            ProxyRoute(
                domain="(subfolder)",
                location=loc.path,
                upstream=loc.upstream,
                redirect=loc.redirect,
                ssl=None,
                auth=loc.auth,
                file=path,
            )
        )
    return routes


def proxy_file(path: str, text: str) -> ProxyConfigFile:
    """One proxy conf's summary from its (already redacted) text."""
    name = posixpath.basename(path)
    try:
        config = parse_nginx(text)
    except ValueError as exc:
        return ProxyConfigFile(
            path=path,
            name=name,
            server_names=[],
            upstreams=[],
            ssl=False,
            auth=[],
            config=None,
            parse_error=str(exc),
        )
    servers = config.servers
    return ProxyConfigFile(
        path=path,
        name=name,
        server_names=[n for s in servers for n in s.server_names],
        upstreams=list(
            dict.fromkeys(
                [u for s in servers for u in s.upstreams]
                + [loc.upstream for loc in config.locations if loc.upstream]
            )
        ),
        ssl=any(s.ssl for s in servers),
        auth=list(
            dict.fromkeys(
                [a for s in servers for a in s.auth] + [a for loc in config.locations for a in loc.auth]
            )
        ),
        config=config,
        parse_error=None,
    )


@parse_errors_as("proxy_configs")
def parse_proxy_configs(stdout: str, params: ProxyConfigsParams) -> ProxyConfigs:
    """`@@dir PATH`, then `@@file PATH` and the file's lines each prefixed with '|'; `@@end` last."""
    lines = stdout.rstrip("\n").split("\n")
    if lines[-1] != "@@end":
        raise ValueError("output is incomplete (no @@end marker)")
    dirs: list[str] = []
    texts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[:-1]:
        if line.startswith("|"):
            if current is None:
                raise ValueError("file content before any @@file line")
            current.append(line[1:])
        elif line.startswith("@@dir /"):
            dirs.append(line[len("@@dir ") :])
            current = None
        elif line.startswith("@@file /"):
            current = texts.setdefault(line[len("@@file ") :], [])
        elif line:
            raise ValueError(f"unexpected line {line[:80]!r}")
    files = [proxy_file(path, redact_config("nginx", "\n".join(body) + "\n")) for path, body in texts.items()]
    routes = [r for f in files if f.config is not None for r in _routes(f.name, f.path, f.config)]
    return ProxyConfigs(dirs=dirs, files=files, routes=routes, total=len(files), truncated=False)
