"""Command lines read as argv: which arguments hold a secret, in an argv list or in the command lines of a text.

A secret-named option takes the next argument as its value (`--password X`, `-token X`). Programs with secret
options of their own are listed in TOOLS (`mysql -pX`, `sshpass -p X`, `curl -u user:X`, `htpasswd -b f u X`).
A command in free text (a process list, a log line, a shell script, an audited command) runs from a known
program's name to the end of its line or the first shell operator, at most MAX_WORDS words; its words are
shell words (quotes kept together) and the scan resumes after them. An argv written out as a JSON or Python
list of strings (a stored parameter key, a log line) is read item by item.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mcp_server.redact.names import ARG_VALUE, REDACTED, masked_value, secret_name


@dataclass(frozen=True)
class Tool:
    """Where a program's command line carries a secret."""

    # the next argument is the secret (sshpass -p X, keytool -storepass X)
    spaced: tuple[str, ...] = ()
    # the rest of the argument is (mysql -pX, xfreerdp /p:X); mysql's -p alone prompts
    glued: tuple[str, ...] = ()
    # the next (or glued) argument is user<sep>password (curl -u user:X, smbclient -U user%X)
    user: tuple[str, ...] = ()
    sep: str = ":"
    # the next argument is pass:X (openssl -passin); env:VAR and file:PATH name where it is
    passarg: tuple[str, ...] = ()
    # this flag makes the last positional argument the password (htpasswd -b)
    batch: str = ""
    # the options count only after this subcommand (docker login -p X, not docker run -p 80:80)
    after: str = ""
    # single-dash long options (openssl -passin, -check): no combined short flags
    long_options: bool = False


_MYSQL = Tool(glued=("-p",))
_LDAP = Tool(spaced=("-w",), glued=("-w",))
_MONGO = Tool(spaced=("-p",), glued=("-p",))
_SMB = Tool(user=("-U", "--user"), sep="%")
_SNMP = Tool(spaced=("-c", "-A", "-X"), glued=("-c", "-A", "-X"))
_LOGIN = Tool(spaced=("-p",), glued=("-p",), after="login")
_ARCHIVE = Tool(glued=("-p",))
_REDIS = Tool(spaced=("-a",))
_RDP = Tool(glued=("/p:",))
TOOLS: dict[str, Tool] = {
    "mysqladmin": Tool(glued=("-p",), spaced=("password",)),
    "mariadb-admin": Tool(glued=("-p",), spaced=("password",)),
    "sshpass": Tool(spaced=("-p",), glued=("-p",)),
    "redis-cli": _REDIS,
    "valkey-cli": _REDIS,
    "keydb-cli": _REDIS,
    "curl": Tool(user=("-u", "--user", "-U", "--proxy-user"), spaced=("--oauth2-bearer",)),
    "smbclient": _SMB,
    "rpcclient": _SMB,
    "smbcacls": _SMB,
    "smbget": _SMB,
    "net": _SMB,
    "lftp": Tool(user=("-u",), sep=","),
    "transmission-remote": Tool(user=("-n", "--auth")),
    "htpasswd": Tool(batch="b"),
    "openssl": Tool(spaced=("-k", "-K"), passarg=("-passin", "-passout", "-pass"), long_options=True),
    "ldappasswd": Tool(spaced=("-w", "-a", "-s"), glued=("-w", "-a", "-s")),
    "ipmitool": Tool(spaced=("-P", "-k", "-y"), glued=("-P",)),
    "sqlcmd": Tool(spaced=("-P",)),
    "bcp": Tool(spaced=("-P",)),
    "zip": Tool(spaced=("-P",)),
    "unzip": Tool(spaced=("-P",)),
    "7z": _ARCHIVE,
    "7za": _ARCHIVE,
    "7zr": _ARCHIVE,
    "rar": _ARCHIVE,
    "unrar": _ARCHIVE,
    "useradd": Tool(spaced=("-p",)),
    "usermod": Tool(spaced=("-p",)),
    "ssh-keygen": Tool(spaced=("-N", "-P")),
    "keytool": Tool(
        spaced=(
            "-storepass",
            "-keypass",
            "-srcstorepass",
            "-deststorepass",
            "-srckeypass",
            "-destkeypass",
            "-new",
        ),
        long_options=True,
    ),
    "docker": _LOGIN,
    "podman": _LOGIN,
    "nerdctl": _LOGIN,
    "buildah": _LOGIN,
    "skopeo": _LOGIN,
    "helm": _LOGIN,
    "nmcli": Tool(spaced=("password", "wifi-sec.psk", "802-1x.password"), long_options=True),
    "xfreerdp": _RDP,
    "wlfreerdp": _RDP,
    "sdl-freerdp": _RDP,
    "rdesktop": Tool(spaced=("-p",)),
    **dict.fromkeys(
        (
            "snmpget",
            "snmpgetnext",
            "snmpwalk",
            "snmpbulkwalk",
            "snmpbulkget",
            "snmpset",
            "snmptable",
            "snmptrap",
        ),
        _SNMP,
    ),
}
# Families by name prefix: mysql, mysqldump, mariadb-dump, ...; ldapsearch, ldapadd, ...; mongosh, mongodump...
_FAMILIES = (("mysql", _MYSQL), ("mariadb", _MYSQL), ("ldap", _LDAP), ("mongo", _MONGO), ("mosquitto_", Tool(spaced=("-P",))))  # fmt: skip
_FAMILY_PREFIXES = tuple(prefix for prefix, _ in _FAMILIES)
_FAMILY_NAME = re.compile("(?:" + "|".join(_FAMILY_PREFIXES) + r")[\w-]{0,24}+")
# Where a program's name may start: a bare alternation of literals, which the engine skips to at C speed; the
# boundary before it and the whole name (a word followed by white space) are checked after.
PROGRAM_START = re.compile(
    "|".join(re.escape(name) for name in sorted([*TOOLS, *_FAMILY_PREFIXES], key=len)[::-1])
)
_PROGRAM = re.compile(r"[\w.+-]{1,64}+(?=[ \t])")
# what may stand before a program's name in a word: $(mysql, `mysql, (curl
_OPENERS = "$()`{}[],;|&<>!"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_WORDS = 4096
# one shell word after white space (or a backslash-newline): quoted runs kept whole, a lone quote allowed
_WORD = re.compile(
    r"(?:[ \t]|\\\r?\n){1,64}+((?:'[^'\n]{0,2048}+'|\"[^\"\n]{0,2048}+\"|[^\s'\"]{1,2048}+|['\"]){1,32}+)"
)
_OPERATOR = re.compile(r"[|&;<>]|\d>")
_SEPARATORS = frozenset({";", "|", "||", "&&", "&", "|&"})
_FLAGS = re.compile(r"-[A-Za-z]+")
# a list of strings written out: ["mysql", "-pX"] (JSON) or ['mysql', '-pX'] (Python)
_LIST_START = re.compile(r"\[\s{0,8}+(?=[\"'])")
_LIST_ITEM = re.compile(r"\"((?:[^\"\\\n]|\\.){0,4096}+)\"|'((?:[^'\\\n]|\\.){0,4096}+)'")
_LIST_SEP = re.compile(r"\s{0,8}+,\s{0,8}+")


@functools.lru_cache(maxsize=4096)
def tool_for(word: str) -> Tool | None:
    """The Tool of a program named by `word` (a name or a path), if it is one."""
    name = word[word.rfind("/") + 1 :]
    tool = TOOLS.get(name)
    if tool is None and name.startswith(_FAMILY_PREFIXES) and _FAMILY_NAME.fullmatch(name):
        return next(tool for prefix, tool in _FAMILIES if name.startswith(prefix))
    return tool


def _secret_part(kind: str, arg: str, tool: Tool | None) -> str | None:
    """What of `arg` to keep before *** when it is the value `kind` says it is (None: nothing secret)."""
    if kind == "user" and tool is not None:
        at = arg.find(tool.sep)
        return arg[: at + 1] if 0 <= at < len(arg) - 1 else None
    if kind == "pass":
        return "pass:" if arg.startswith("pass:") and len(arg) > 5 else None
    return "" if arg else None


def _option(tool: Tool, arg: str) -> tuple[str, str | None]:
    """(what the next argument is, what of this one to keep before ***) for an argument of `tool`."""
    if arg in tool.spaced:
        return "secret", None
    if arg in tool.user:
        return "user", None
    if arg in tool.passarg:
        return "pass", None
    if arg[:1] not in ("-", "/"):
        return "", None
    option, equals, value = arg.partition("=")
    if equals and option.startswith("--") and value:  # --user=bob:X
        kind = "secret" if option in tool.spaced else "user" if option in tool.user else ""
        keep = _secret_part(kind, value, tool) if kind else None
        return "", None if keep is None else f"{option}={keep}"
    for option in tool.glued:
        if arg.startswith(option) and len(arg) > len(option):
            return "", option
    for option in tool.user:
        if len(option) == 2 and arg.startswith(option) and len(arg) > 2:
            keep = _secret_part("user", arg[2:], tool)
            return "", None if keep is None else option + keep
    if not tool.long_options and _FLAGS.fullmatch(arg):  # -sSu user:X: flags, then one taking a value
        last = "-" + arg[-1]
        return ("secret" if last in tool.spaced else "user" if last in tool.user else ""), None
    return "", None


def argv_masks(argv: Sequence[str]) -> dict[int, str]:
    """For each argument of `argv` that holds a secret, what of it to keep before ***: "" for all of it,
    "-p" for -pSECRET, "alice:" for curl's -u alice:SECRET, "pass:" for openssl's pass:SECRET."""
    masks: dict[int, str] = {}
    tool: Tool | None = None
    active = batch = False
    last = -1
    expect = ""  # what the argument at hand is, said by the one before it

    def finish() -> None:
        if batch and last >= 0:
            masks[last] = ""

    for index, arg in enumerate(argv):
        kind, expect = expect, ""
        dash = arg[:1] == "-"
        if kind == "value" and dash:
            kind = ""  # a flag after an option whose value is optional
        if kind:
            keep = _secret_part(kind, arg, tool)
            if keep is not None:
                masks[index] = keep
            continue
        found = tool_for(arg.lstrip(_OPENERS)) if not dash and "=" not in arg and ":" not in arg else None
        if found is not None or arg in _SEPARATORS:  # another command starts
            finish()
            tool, active, batch, last = found, found is not None and not found.after, False, -1
            continue
        if tool is not None and not active:
            active = arg == tool.after
        elif tool is not None:
            expect, keep = _option(tool, arg)
            if keep is not None:
                masks[index] = keep
                continue
            if tool.batch and dash and tool.batch in arg and _FLAGS.fullmatch(arg):
                batch = True
            elif not dash and not expect:
                last = index
        if (
            dash
            and not expect
            and "=" not in arg
            and len(arg.lstrip("-")) > 1
            and secret_name(arg.lstrip("-"))
        ):
            expect = "value"
    finish()
    return masks


def mask_word(word: str, keep: str) -> str:
    """A shell word with what follows `keep` in it masked (all of it when `keep` is ""), its own quotes kept:
    '-p$ecret' -> '-p***', and p", (the end of a quoted command) -> ***",."""
    at = word.find(keep) if keep else 0
    if at < 0:
        return REDACTED
    masked = masked_value(word, at + len(keep), ARG_VALUE)
    return word if masked is None else word[: at + len(keep)] + masked[0] + word[masked[1] :]


def command_lines(text: str) -> str:
    """`text` with the secrets in the command lines of known programs masked (see argv_masks)."""
    out: list[str] = []
    pos = search = 0
    while (hit := PROGRAM_START.search(text, search)) is not None:
        program = _PROGRAM.match(text, hit.start())
        if (
            (hit.start() and text[hit.start() - 1] in _NAME_CHARS)
            or program is None
            or not tool_for(program[0])
        ):
            search = hit.start() + 1  # inside a longer word, or not a program
            continue
        words: list[tuple[int, int]] = []
        argv = [program.group(0)]
        at = program.end()
        while len(words) < MAX_WORDS and (word := _WORD.match(text, at)) is not None:
            start, end = word.span(1)
            raw = text[start:end]
            quoted = "'" in raw or '"' in raw
            if _OPERATOR.match(raw) or (quoted and raw[0] in "'\"" and raw.count(raw[0]) % 2):
                break  # a shell operator, or an opening quote: a command of its own, for the next search
            at = end
            closes = raw.endswith(";")
            if closes:
                end, raw = end - 1, raw[:-1]
            words.append((start, end))
            argv.append(raw.replace("'", "").replace('"', "") if quoted else raw)
            if closes or (quoted and (raw.count('"') % 2 or raw.count("'") % 2)):
                break  # the end of the command, or of the string that holds it
        search = max(at, program.end())
        masks = argv_masks(argv) if words else {}
        for index, (start, end) in enumerate(words, 1):
            raw = text[start:end]
            if index in masks:
                shown = mask_word(raw, masks[index])
            elif " " in raw and ("'" in raw or '"' in raw):
                shown = command_lines(raw)  # sh -c "mysql -pX": a command inside a quoted argument
            else:
                continue
            out += (text[pos:start], shown)
            pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _decoded(item: re.Match[str]) -> str:
    """The text of a quoted list item (JSON escapes decoded; a Python one's escaped quotes)."""
    if item.group(1) is None:
        return item.group(2).replace("\\'", "'")
    try:
        return str(json.loads(item.group(0)))
    except ValueError:
        return item.group(1)


def _quoted(item: re.Match[str], text: str) -> str:
    return (
        json.dumps(text, ensure_ascii=False)
        if item.group(1) is not None
        else "'" + text.replace("'", "\\'") + "'"
    )


def argv_lists(text: str) -> str:
    """`text` with the secrets in each list of strings written out in it masked, read as an argv."""
    out: list[str] = []
    pos = search = 0
    while (start := _LIST_START.search(text, search)) is not None:
        items: list[re.Match[str]] = []
        at = start.end()
        while len(items) < MAX_WORDS and (item := _LIST_ITEM.match(text, at)) is not None:
            items.append(item)
            sep = _LIST_SEP.match(text, item.end())
            at = sep.end() if sep is not None else item.end()
            if sep is None:
                break
        search = max(at, start.end())
        args = [_decoded(item) for item in items]
        for index, keep in sorted(argv_masks(args).items()):
            item = items[index]
            out += (
                text[pos : item.start()],
                _quoted(item, args[index][: args[index].find(keep) + len(keep)] + REDACTED),
            )
            pos = item.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)
