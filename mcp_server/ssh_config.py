"""Hosts of an OpenSSH client config, resolved as ssh_config(5) would resolve each alias.

Pure apart from the injected `read` and `glob`: every parameter takes the FIRST value obtained, scanning
the matching Host blocks in file order (Include splices files in place). Match blocks are skipped.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from glob import glob as _fs_glob
from pathlib import Path

from mcp_server.errors import InvalidParameter

# OpenSSH's READCONF_MAX_DEPTH; also what stops an Include cycle.
MAX_INCLUDE_DEPTH = 16
DEFAULT_PORT = 22
_WANTED = frozenset({"hostname", "port", "user", "identityfile", "proxyjump", "proxycommand"})
_WILDCARDS = frozenset("*?!")
_KEYWORD = re.compile(r"([^\s=]+)\s*(?:=\s*)?(.*)$", re.DOTALL)


@dataclass(frozen=True)
class SSHHostEntry:
    """One concrete Host alias with its effective connection settings."""

    alias: str
    hostname: str
    port: int
    user: str | None
    identity_file: str | None
    proxy_jump: str | None


@dataclass(frozen=True)
class _Option:
    keyword: str
    args: tuple[str, ...]
    origin: str


@dataclass
class _Section:
    """Options that apply to an alias matching every Host pattern list in `conditions`."""

    conditions: tuple[tuple[str, ...], ...]
    active: bool
    options: list[_Option] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)

    def applies_to(self, alias: str) -> bool:
        return self.active and all(_host_line_matches(patterns, alias) for patterns in self.conditions)


def _pattern_matches(pattern: str, name: str) -> bool:
    # ssh patterns know only `*` and `?`; fnmatch would also honour [...] classes.
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _host_line_matches(patterns: tuple[str, ...], alias: str) -> bool:
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_matches(pattern[1:] if negated else pattern, alias):
            if negated:
                return False
            matched = True
    return matched


def _argv_split(text: str) -> list[str]:
    """Split arguments as OpenSSH's argv_split: both quote kinds, backslash escapes, `#` starts a comment."""
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        quote, word = "", []
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n and (text[i + 1] in "'\"\\" or (not quote and text[i + 1] == " ")):
                word.append(text[i + 1])
                i += 2
                continue
            if not quote and c in " \t":
                break
            if not quote and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                word.append(c)
            i += 1
        if quote:
            raise ValueError("unterminated quote")
        args.append("".join(word))
    return args


def _split_line(line: str) -> tuple[str, list[str]] | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    match = _KEYWORD.match(stripped)
    assert match is not None
    return match.group(1).lower(), _argv_split(match.group(2))


class _Reader:
    def __init__(
        self,
        home: Path,
        read: Callable[[Path], str],
        glob: Callable[[str], Iterable[Path]],
        warnings: list[str],
    ) -> None:
        self.home, self.read, self.glob, self.warnings = home, read, glob, warnings
        self.sections: list[_Section] = []

    def _open(self, conditions: tuple[tuple[str, ...], ...], active: bool) -> _Section:
        section = _Section(conditions, active)
        self.sections.append(section)
        return section

    def parse(
        self, text: str, name: str, conditions: tuple[tuple[str, ...], ...], active: bool, depth: int
    ) -> None:
        section = self._open(conditions, active)
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{name}:{number}"
            try:
                split = _split_line(line)
            except ValueError as error:
                self.warnings.append(f"{where}: {error}; line ignored")
                continue
            if split is None:
                continue
            keyword, args = split
            if keyword == "host":
                if not args:
                    self.warnings.append(f"{where}: Host without patterns; the options under it are ignored")
                section = self._open((*conditions, tuple(args)), active and bool(args))
                section.aliases.extend(p for p in args if not _WILDCARDS.intersection(p))
            elif keyword == "match":
                self.warnings.append(
                    f"{where}: Match blocks are not supported; the options under it are ignored"
                )
                section = self._open(conditions, False)
            elif keyword == "include":
                if section.active:
                    for arg in args:
                        self._include(arg, where, section.conditions, depth)
                # Options after the Include come after the included ones in first-wins order.
                section = self._open(section.conditions, section.active)
            elif keyword in _WANTED and not args:
                self.warnings.append(f"{where}: {keyword} without a value; ignored")
            else:
                section.options.append(_Option(keyword, tuple(args), where))

    def _include(self, arg: str, where: str, conditions: tuple[tuple[str, ...], ...], depth: int) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            self.warnings.append(
                f"{where}: Include nested deeper than {MAX_INCLUDE_DEPTH} levels; {arg} ignored"
            )
            return
        pattern = Path(_expand_tilde(arg, self.home))
        if not pattern.is_absolute():
            pattern = self.home / ".ssh" / pattern
        for path in self.glob(str(pattern)):
            try:
                text = self.read(path)
            except OSError as error:
                self.warnings.append(f"{where}: cannot read included file {path}: {error.strerror or error}")
                continue
            self.parse(text, str(path), conditions, True, depth + 1)


def _expand_tilde(value: str, home: Path) -> str:
    if value == "~" or value.startswith("~/"):
        return str(home) + value[1:]
    return value


def _expand_tokens(value: str, tokens: dict[str, str], where: str, warnings: list[str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] != "%":
            out.append(value[i])
            i += 1
            continue
        token = value[i + 1 : i + 2]
        if token in tokens:
            out.append(tokens[token])
        else:
            warnings.append(f"{where}: unsupported token %{token} in {value!r} left as is")
            out.append("%" + token)
        i += 2
    return "".join(out)


def _parse_port(value: str) -> int | None:
    if not value.isascii() or not value.isdigit():
        return None
    port = int(value)
    return port if 1 <= port <= 65535 else None


def _first_values(alias: str, sections: list[_Section]) -> dict[str, _Option]:
    chosen: dict[str, _Option] = {}
    for section in sections:
        if section.applies_to(alias):
            for candidate in section.options:
                # ProxyJump and ProxyCommand exclude each other: whichever comes first wins.
                slot = "proxy" if candidate.keyword in ("proxyjump", "proxycommand") else candidate.keyword
                if candidate.keyword in _WANTED and slot not in chosen:
                    chosen[slot] = candidate
    return chosen


def _resolve(
    alias: str, sections: list[_Section], home: Path, local_user: str, warnings: list[str]
) -> SSHHostEntry | None:
    chosen = _first_values(alias, sections)
    hostname = alias
    if option := chosen.get("hostname"):
        hostname = _expand_tokens(option.args[0], {"h": alias, "%": "%"}, option.origin, warnings)
    port = DEFAULT_PORT
    if option := chosen.get("port"):
        parsed = _parse_port(option.args[0])
        if parsed is None:
            warnings.append(f"{option.origin}: bad Port {option.args[0]!r} for host {alias}; host skipped")
            return None
        port = parsed
    user = chosen["user"].args[0] if "user" in chosen else None
    identity_file = None
    if option := chosen.get("identityfile"):
        tokens = {
            "h": hostname, "n": alias, "p": str(port), "d": str(home),
            "u": local_user, "r": user or local_user, "%": "%",
        }  # fmt: skip
        identity_file = _expand_tokens(_expand_tilde(option.args[0], home), tokens, option.origin, warnings)
    proxy_jump = None
    if option := chosen.get("proxy"):
        value = option.args[0]
        if option.keyword == "proxycommand":
            if value.lower() != "none":
                warnings.append(
                    f"{option.origin}: ProxyCommand is not supported; {alias} imported without it"
                )
        elif value.lower() != "none":
            proxy_jump = value.split(",")[0]
            if "," in value:
                warnings.append(
                    f"{option.origin}: ProxyJump {value!r} has several hops; {alias} keeps only {proxy_jump!r}"
                )
    return SSHHostEntry(alias, hostname, port, user, identity_file, proxy_jump)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _sorted_glob(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in _fs_glob(pattern))


def parse_ssh_config_with_warnings(
    text: str,
    *,
    path: Path | None = None,
    home: Path | None = None,
    read: Callable[[Path], str] | None = None,
    local_user: str | None = None,
    glob: Callable[[str], Iterable[Path]] | None = None,
) -> tuple[list[SSHHostEntry], list[str]]:
    """Every concrete Host alias resolved to its effective settings, plus what was skipped and why."""
    home = home if home is not None else Path.home()
    warnings: list[str] = []
    reader = _Reader(home, read or _read_text, glob or _sorted_glob, warnings)
    reader.parse(text, str(path) if path is not None else "<ssh config>", (), True, 0)

    aliases: list[str] = []
    for section in reader.sections:
        for alias in section.aliases:
            if alias not in aliases and section.applies_to(alias):
                aliases.append(alias)
    user = local_user if local_user is not None else _current_user()
    entries = [_resolve(alias, reader.sections, home, user, warnings) for alias in aliases]
    return [entry for entry in entries if entry is not None], warnings


def parse_ssh_config(
    text: str,
    *,
    path: Path | None = None,
    home: Path | None = None,
    read: Callable[[Path], str] | None = None,
    local_user: str | None = None,
    glob: Callable[[str], Iterable[Path]] | None = None,
) -> list[SSHHostEntry]:
    """Every concrete Host alias resolved to its effective settings."""
    entries, _ = parse_ssh_config_with_warnings(
        text, path=path, home=home, read=read, local_user=local_user, glob=glob
    )
    return entries


def load_ssh_config_with_warnings(path: Path) -> tuple[list[SSHHostEntry], list[str]]:
    """Read and resolve the config at `path` (`~` allowed); raises InvalidParameter when it is unreadable."""
    path = path.expanduser()
    try:
        text = _read_text(path)
    except OSError as error:
        raise InvalidParameter(
            f"Cannot read SSH config {path}: {error.strerror or error}. "
            "Pass the path of an OpenSSH client config (default ~/.ssh/config)."
        ) from error
    return parse_ssh_config_with_warnings(text, path=path)


def load_ssh_config(path: Path) -> list[SSHHostEntry]:
    """Read and resolve the config at `path`; raises InvalidParameter when it is unreadable."""
    return load_ssh_config_with_warnings(path)[0]
