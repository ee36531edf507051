"""Redaction of secrets before anything leaves the server, reaches the audit log or is stored.

One set of rules for every text: tool arguments, command lines, collected snapshots, container environments
and labels, configuration files and diffs, log records. Every pattern runs in time linear in its input: each
one starts at a literal (a word-boundary check follows it, so the engine skips to candidates at C speed) or at
a word start (a look-behind rejects every other position at once), its repetitions are possessive (no
backtracking) and bounded, and a text is cut to MAX_TEXT characters before it is scanned. Where a rule reads
on past its match (a key block, a command's arguments, a URL's user info), it reads a bounded stretch and the
scan resumes after it, so no character is read more than a few times. Each rule runs only when its literal
occurs in the text at all, and a text holding none of those literals is returned after one screen
(might_hold_secret): most of what the audit stores.

The rules live in three modules: names.py (which names say their value is secret, where a value ends),
shapes.py (credentials recognised by their shape: keys, URLs, headers, tokens) and commands.py (command lines
read as argv: `--password X`, and the secret options of known programs, `mysql -pX`, `curl -u user:X`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

from mcp_server.redact.commands import PROGRAM_START, argv_lists, argv_masks, command_lines
from mcp_server.redact.names import ARG_VALUE, REDACTED, VALUE, lowered, masked_value, secret_name
from mcp_server.redact.shapes import KNOWN_PREFIXES, redact_key_blocks, redact_shapes, replace

__all__ = [
    "MAX_TEXT",
    "REDACTED",
    "digest",
    "json_might_hold_secret",
    "might_hold_secret",
    "redact",
    "redact_args",
    "redact_key_blocks",
    "redact_pair",
    "redact_pairs",
    "redact_text",
    "secret_name",
    "secret_value",
]

# Longer texts are cut (with a note) before scanning: nothing the server stores or returns needs more.
MAX_TEXT = 1_000_000

# NAME=VALUE, NAME: VALUE, "NAME": "VALUE", --name=value, --name VALUE (run on the lower-cased text); the
# name decides (see secret_name), but one after a "/" and before a ":" is a path (cat: /etc/passwd: denied).
# Only the name and separator are matched, so an assignment inside another one's value is still found; the
# value is read (and skipped) only when the name says it is secret.
_NAMED = re.compile(
    r"(?<![\w.-])(?P<name>(?P<option>--?+)?[\w.-]{0,64}?(?:pass|secret|token|credential|key|pwd)[\w.-]{0,64}+)"
    r"(?P<sep>(?:\\{0,3}+\")?+[ \t]{0,4}+[=:][ \t]{0,4}+|(?(option)[ \t]{1,8}+(?=[^\s-])|(?!)))"
)
# A configuration directive and its one value on a line of their own, or as the whole of a quoted string (a
# JSON value, an echoed argument): `password secret123`, `requirepass foo` (redis.conf), `PASSWORD x`. Names
# in one case only, so a sentence ("Password required") is left alone.
_DIRECTIVE = re.compile(
    r"(?m)(?:^|(?<=[\"']))[ \t]{0,16}+(?P<name>[a-z_][a-z0-9_.-]{0,63}+|[A-Z_][A-Z0-9_.-]{0,63}+)[ \t]{1,16}+"
    r"(?=[^\s=:\"'][^\s\"']*+[ \t]*+(?:$|[\"']))"
)
# directives that hold a secret although their names do not say so
_SECRET_DIRECTIVES = frozenset({"requirepass", "masterauth", "pass", "passwd"})
# No secret name without one of these stems: a text without any is left alone at once.
_STEM = re.compile(r"pass|secret|token|credential|key|pwd")

# The screen: every rule is guarded by a literal its match cannot do without, and these are all of them, so a
# text holding none is returned as it is after a scan or two (most audit and metric strings: tool and
# command names, paths, user agents, plain messages). Case-sensitive ones, on the text: key armour, URLs,
# JWTs, known token prefixes (and "[" for an argv list written out, see might_hold_secret).
_SCREEN = re.compile(
    "|".join(
        re.escape(literal) for literal in ("PRIVATE KEY", "Private-Lines:", "://", "eyJ", *KNOWN_PREFIXES)
    )
)
# On the lower-cased text (as the rules read it): headers and credentials, secret names (the stems), and the
# directives whose names hold no stem.
_SCREEN_LOW = re.compile(r"authorization|bearer|basic|pass|secret|token|credential|key|pwd|masterauth")
# Texts the screen passed lately, up to _CLEAN_MAX of them of at most _CLEAN_CHARS each (repeated names,
# paths and messages skip even the screen); none holds anything a rule could mask.
_CLEAN: set[str] = set()
_CLEAN_JSON: set[str] = set()
_CLEAN_MAX = 8192
_CLEAN_CHARS = 512


def secret_value(value: str) -> bool:
    """Whether a value looks like a credential whatever its name (bearer token, URL password, JWT, key)."""
    return redact_text(value) != value


def _named_values(text: str, low: str) -> Iterator[tuple[int, int, str]]:
    """The values of secret-named assignments and options; an option's value (--name=value, --name value)
    ends at white space, any other at , ; & too."""
    pos = 0
    for match in _NAMED.finditer(low):
        name = text[match.start("name") : match.end("name")]
        if match.start() < pos or not secret_name(name.lstrip("-")):
            continue
        if match.start() and low[match.start() - 1] == "/" and ":" in match.group("sep"):
            continue
        masked = masked_value(text, match.end(), ARG_VALUE if match.group("option") else VALUE)
        if masked is not None:
            yield match.end(), masked[1], masked[0]
            pos = masked[1]


def _directives(text: str) -> Iterator[tuple[int, int, str]]:
    for match in _DIRECTIVE.finditer(text):
        name = match.group("name")
        if secret_name(name) or name.lower() in _SECRET_DIRECTIVES:
            masked = masked_value(text, match.end(), VALUE)
            if masked is not None:
                yield match.end(), masked[1], masked[0]


def redact_text(text: str) -> str:
    """Free text with embedded credentials replaced by ***: private keys, URL passwords, Authorization
    headers, bearer and basic credentials, JWTs, well-known token shapes, the secret options of known
    programs' command lines, the value of any NAME=VALUE, NAME: VALUE or --name VALUE whose name says it is
    secret, and a `NAME VALUE` directive on a line of its own (config files) or as a whole quoted string."""
    if text in _CLEAN:
        return text
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"…[{len(text) - MAX_TEXT} characters cut before redaction]"
    elif not might_hold_secret(text):
        if len(text) <= _CLEAN_CHARS:
            if len(_CLEAN) >= _CLEAN_MAX:
                _CLEAN.clear()
            _CLEAN.add(text)
        return text
    return _rules(text)


def might_hold_secret(text: str) -> bool:
    """False when no rule of redact_text can change `text`: it holds none of the literals they start from."""
    if "[" in text or _SCREEN.search(text) is not None or _SCREEN_LOW.search(lowered(text)) is not None:
        return True
    # a program's name counts only followed by a blank (see command_lines)
    return ("\t" in text or " " in text) and PROGRAM_START.search(text) is not None


def json_might_hold_secret(text: str) -> bool:
    """False when redact() (and storable) would leave every key and string of a value as they are, given the
    value's compact JSON `text` in ASCII. Without a backslash in it no string was escaped (no quote, backslash
    or control character in any), so each appears in it as it is, and the literals are searched as above; a
    program's name counts wherever it is. JSON texts that passed are remembered like texts (see _CLEAN)."""
    if text in _CLEAN_JSON:
        return False
    if (
        "\\" in text
        or _SCREEN.search(text) is not None
        or _SCREEN_LOW.search(text.lower()) is not None
        or PROGRAM_START.search(text) is not None
    ):
        return True
    if len(text) <= _CLEAN_CHARS:
        if len(_CLEAN_JSON) >= _CLEAN_MAX:
            _CLEAN_JSON.clear()
        _CLEAN_JSON.add(text)
    return False


def _rules(text: str) -> str:
    """Every rule of redact_text, in turn, on a text of at most MAX_TEXT characters."""
    text = command_lines(redact_shapes(text))
    if "[" in text:
        text = argv_lists(text)
    low = lowered(text)
    if _STEM.search(low):
        text = replace(text, _named_values(text, low))
    return replace(text, _directives(text))


def redact_pair(name: str, value: str) -> str:
    """The value to show for NAME=VALUE: *** when the name or the value's shape says it is a secret."""
    return REDACTED if (secret_name(name) and value) or secret_value(value) else value


def redact_pairs(pairs: dict[str, str]) -> dict[str, str]:
    """NAME -> VALUE pairs (labels, environment) with redact_pair applied to each."""
    return {name: redact_pair(name, value) for name, value in pairs.items()}


def redact_args(args: list[str]) -> list[str]:
    """An argv with secrets hidden: the argument after a secret-named option (`--password x`), the secret
    options of known programs (`sshpass -p x`, `mysql -px`), plus redact_text on every argument."""
    masks = argv_masks(args)
    return [
        arg[: arg.find(masks[i]) + len(masks[i])] + REDACTED if i in masks else redact_text(arg)
        for i, arg in enumerate(args)
    ]


def redact(value: Any, name: str = "") -> Any:
    """A copy of a JSON-like value with secret-named entries and secret-looking strings masked; a list of
    strings is read as an argv (redact_args)."""
    if isinstance(value, dict):
        return {
            k: REDACTED if secret_name(str(k)) and v not in (None, "", [], {}) else redact(v, str(k))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        if value and all(isinstance(item, str) for item in value):
            return redact_args(list(value))
        return [redact(item, name) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def digest(text: str) -> str:
    """A short, stable fingerprint of a text that is too long to keep whole (sha256, first 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
