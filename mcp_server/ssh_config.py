"""Hosts of an OpenSSH client config, resolved as ssh_config(5) would resolve each alias.

Pure apart from the injected `read` and `glob`: every parameter takes the FIRST value obtained, scanning
the matching Host blocks in file order (Include splices files in place). Match blocks are skipped.

The config is input from whoever may write to the SSH file directories, so the work it can cause is
bounded: Include depth, files read (a file counts each time it is included), characters, lines, Host
aliases and alias-against-pattern checks each have a limit, and passing one is an InvalidParameter
naming the limit and the file. Within them a parse takes at most about a second; callers on an event loop
still run it in a worker thread.
"""

from __future__ import annotations

import getpass
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from glob import glob as _fs_glob
from pathlib import Path

from mcp_server.errors import InvalidParameter

# OpenSSH's READCONF_MAX_DEPTH; also what stops an Include cycle.
MAX_INCLUDE_DEPTH = 16
MAX_FILES = 64  # included files read, counting a file each time it is included
MAX_CHARS = 1024 * 1024  # characters read, over the config and everything it includes
MAX_LINES = 20_000
MAX_HOSTS = 2_000  # concrete Host aliases
# alias-against-block and alias-against-pattern checks (a pattern counts 1 per 16 characters); blocks that
# list plain names are looked up by name, so only wildcard blocks are checked against every alias
MAX_PATTERN_WORK = 500_000
MAX_WORD = 255  # characters in one Host pattern or alias
MAX_WARNINGS = 100
DEFAULT_PORT = 22
_WANTED = frozenset({"hostname", "port", "user", "identityfile", "proxyjump", "proxycommand"})
_WILDCARDS = frozenset("*?!")
_KEYWORD = re.compile(r"([^\s=]+)\s*(?:=\s*)?(.*)$", re.DOTALL)
_SPECIAL = re.compile(r"[\"'\\#]")
_PLAIN_WORD = re.compile(r"[^ \t]+")


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

    @property
    def slot(self) -> str:
        # ProxyJump and ProxyCommand exclude each other: whichever comes first wins.
        return "proxy" if self.keyword in ("proxyjump", "proxycommand") else self.keyword


_SLOTS = 5  # hostname, port, user, identityfile, proxy


class _Fuel:
    """The pattern-matching work a config may cause, spent as it is done."""

    def __init__(self, reader: _Reader) -> None:
        self.left = MAX_PATTERN_WORK
        self._reader = reader

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise self._reader.too_much(
                f"matching its Host aliases against its Host patterns takes more than {MAX_PATTERN_WORK:,} "
                "pattern checks (the limit; a long pattern counts as several)"
            )


class _HostLine:
    """One Host line's patterns, compiled once: the plain names in a set, the others as regexes."""

    def __init__(self, patterns: Iterable[str]) -> None:
        names: set[str] = set()
        others: list[tuple[bool, re.Pattern[str], int]] = []
        for pattern in patterns:
            if _WILDCARDS.intersection(pattern):
                negated = pattern.startswith("!")
                body = pattern[1:] if negated else pattern
                others.append((negated, _compile(body), 1 + len(body) // 16))
            else:
                names.add(pattern)
        self.names = frozenset(names)
        self.others = tuple(others)

    @property
    def names_only(self) -> bool:
        """Matches exactly the names in `names` (no wildcard, no negation)."""
        return not self.others

    def matches(self, alias: str, fuel: _Fuel) -> bool:
        matched = alias in self.names
        for negated, regex, cost in self.others:
            fuel.spend(cost)
            if regex.fullmatch(alias):
                if negated:
                    return False
                matched = True
        return matched


def _compile(pattern: str) -> re.Pattern[str]:
    """An ssh pattern (`*` any run, `?` one character; no [...] classes) as a regex that cannot backtrack
    more than linearly: each piece between stars is matched at its leftmost place and kept (atomic group),
    which finds a match whenever there is one because the pieces have fixed lengths."""

    def piece(text: str) -> str:
        return "".join("." if c == "?" else re.escape(c) for c in text)

    head, *middle = pattern.split("*")
    if not middle:
        return re.compile(piece(head), re.DOTALL)
    *middle, tail = middle
    inner = "".join(f"(?>.*?{piece(m)})" for m in middle if m)
    return re.compile(f"{piece(head)}{inner}.*{piece(tail)}", re.DOTALL)


@dataclass
class _Section:
    """Options that apply to an alias matching every Host line in `conditions`."""

    conditions: tuple[_HostLine, ...]
    active: bool
    first: dict[str, _Option] = field(default_factory=dict)  # slot -> its first option in this section
    aliases: list[str] = field(default_factory=list)

    def applies_to(self, alias: str, fuel: _Fuel) -> bool:
        fuel.spend(1)
        return self.active and all(line.matches(alias, fuel) for line in self.conditions)

    def names(self) -> frozenset[str] | None:
        """The only aliases this section can apply to, when a Host line of it lists plain names alone."""
        return next((line.names for line in self.conditions if line.names_only), None)


def _argv_split(text: str) -> list[str]:
    """Split arguments as OpenSSH's argv_split: both quote kinds, backslash escapes, `#` starts a comment."""
    if not _SPECIAL.search(text):
        return _PLAIN_WORD.findall(text)
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
        root: str,
        home: Path,
        read: Callable[[Path], str],
        glob: Callable[[str], Iterable[Path]],
        warnings: list[str],
    ) -> None:
        self.root, self.home, self.read, self.glob, self.warnings = root, home, read, glob, warnings
        self.sections: list[_Section] = []
        self.files = self.chars = self.lines = 0
        self.fuel = _Fuel(self)

    def _open(self, conditions: tuple[_HostLine, ...], active: bool) -> _Section:
        section = _Section(conditions, active)
        self.sections.append(section)
        return section

    def too_much(self, what: str) -> InvalidParameter:
        return InvalidParameter(
            f"SSH config {self.root} is too large to import: {what}. Split it and import the parts one by one, "
            "or import only the hosts you need from a smaller file."
        )

    def parse(
        self, text: str, name: str, conditions: tuple[_HostLine, ...], active: bool, depth: int
    ) -> None:
        self.chars += len(text)
        if self.chars > MAX_CHARS:
            raise self.too_much(f"with {name} it holds more than {MAX_CHARS:,} characters (the limit)")
        lines = text.splitlines()
        self.lines += len(lines)
        if self.lines > MAX_LINES:
            raise self.too_much(f"with {name} it holds more than {MAX_LINES:,} lines (the limit)")
        section = self._open(conditions, active)
        for number, line in enumerate(lines, start=1):
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
                usable = bool(args)
                if not args:
                    self.warnings.append(f"{where}: Host without patterns; the options under it are ignored")
                elif max(len(a) for a in args) > MAX_WORD:
                    self.warnings.append(
                        f"{where}: Host pattern longer than {MAX_WORD} characters; the options under it are "
                        "ignored"
                    )
                    usable, args = False, []
                section = self._open((*conditions, _HostLine(args)), active and usable)
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
            elif keyword in _WANTED:
                if not args:
                    self.warnings.append(f"{where}: {keyword} without a value; ignored")
                    continue
                option = _Option(keyword, tuple(args), where)
                section.first.setdefault(option.slot, option)

    def _include(self, arg: str, where: str, conditions: tuple[_HostLine, ...], depth: int) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise InvalidParameter(
                f"SSH config {self.root}: {where}: Include {arg!r} nests files deeper than "
                f"{MAX_INCLUDE_DEPTH} levels (the limit, as in OpenSSH). Does a file include itself, or a "
                "file that includes it? Remove the Include that leads back."
            )
        pattern = Path(_expand_tilde(arg, self.home))
        if not pattern.is_absolute():
            pattern = self.home / ".ssh" / pattern
        for path in self.glob(str(pattern)):
            self.files += 1
            if self.files > MAX_FILES:
                raise self.too_much(
                    f"{where}: Include {arg!r} would read more than {MAX_FILES} included files in all "
                    "(the limit; a file counts each time it is included)"
                )
            try:
                text = self.read(path)
            except OSError as error:
                self.warnings.append(f"{where}: cannot read included file {path}: {error.strerror or error}")
                continue
            self.parse(text, str(path), conditions, True, depth + 1)

    def aliases(self) -> list[str]:
        """Every concrete alias of an active Host line that applies to it, in file order, once."""
        found: dict[str, None] = {}
        for section in self.sections:
            for alias in section.aliases:
                if alias not in found and section.applies_to(alias, self.fuel):
                    found[alias] = None
                    if len(found) > MAX_HOSTS:
                        raise self.too_much(f"it names more than {MAX_HOSTS:,} Host aliases (the limit)")
        return list(found)

    def chosen(self, aliases: list[str]) -> Iterator[tuple[str, dict[str, _Option]]]:
        """Each alias with the first value of each option that applies to it.

        A section whose Host lines include one of plain names is looked up by name; only the others
        (wildcards, negations, options before any Host line) are checked against every alias.
        """
        by_name: dict[str, list[int]] = {}
        everyone: list[int] = []
        for index, section in enumerate(self.sections):
            if not section.active or not section.first:
                continue
            names = section.names()
            if names is None:
                everyone.append(index)
            else:
                for name in names:
                    by_name.setdefault(name, []).append(index)
        for alias in aliases:
            chosen: dict[str, _Option] = {}
            for index in heapq.merge(by_name.get(alias, ()), everyone):
                section = self.sections[index]
                if section.applies_to(alias, self.fuel):
                    for slot, option in section.first.items():
                        chosen.setdefault(slot, option)
                    if len(chosen) == _SLOTS:
                        break
            yield alias, chosen


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


def _resolve(
    alias: str, chosen: dict[str, _Option], home: Path, local_user: str, warnings: list[str]
) -> SSHHostEntry | None:
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
    root = str(path) if path is not None else "<ssh config>"
    reader = _Reader(root, home, read or _read_text, glob or _sorted_glob, warnings)
    reader.parse(text, root, (), True, 0)
    user = local_user if local_user is not None else _current_user()
    entries = [
        _resolve(alias, chosen, home, user, warnings) for alias, chosen in reader.chosen(reader.aliases())
    ]
    if len(warnings) > MAX_WARNINGS:
        warnings[MAX_WARNINGS:] = [f"... and {len(warnings) - MAX_WARNINGS:,} more warnings"]
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
