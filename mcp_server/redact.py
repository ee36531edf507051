"""Redaction of secrets before anything leaves the server, reaches the audit log or is stored.

One set of rules for every text: tool arguments, command lines, collected snapshots, container environments
and labels, configuration files and diffs. Every pattern runs in time linear in its input: each one starts
at a literal or at a word start (a look-behind rejects every other position at once), its repetitions are
possessive (no backtracking) and bounded, and a text is cut to MAX_TEXT characters before it is scanned.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any

REDACTED = "***"
# Longer texts are cut (with a note) before scanning: nothing the server stores or returns needs more.
MAX_TEXT = 1_000_000

# A name that says its value is secret. "key" counts as a whole segment (APP_KEY, key, api-key) or glued to
# a word that makes it one (apikey, privatekey), never inside another word (monkey, keyboard, KEYCLOAK_URL).
_SECRET_NAME = re.compile(
    r"pass(?:word|wd|phrase)|secret|token|credential|(?:api|private|access|auth|secret|signing|encryption)"
    r"[_.-]?key|(?:^|[_.-])key(?:$|[_.-])",
    re.I,
)
# ...unless it names where a secret lives rather than the secret itself (key_path, PASSWORD_FILE, token_id).
_NOT_SECRET = re.compile(r"[_.-](?:path|file|dir|id|name|url_env|length|len|expiry|expires|ttl)$", re.I)

_URL_PASSWORD = re.compile(r"://([^/\s:@]{0,256}+):([^/\s@]{1,1024}+)@")
_BEARER = re.compile(r"\b(bearer[ \t]{1,8}+)[^\s\"',;]{1,8192}+", re.I)
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]{8,}+\.eyJ[\w-]*+\.[\w-]*+")
_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z ]{0,40}+)PRIVATE KEY-----")
# NAME=VALUE, NAME: VALUE, "NAME": "VALUE", --name=value; the name decides (see _SECRET_NAME). Only the
# name and separator are matched, so an assignment inside another one's value is still found; the value
# is read (and skipped) only when the name says it is secret.
_ASSIGNMENT = re.compile(
    r"(?<![\w.-])(?P<name>[\w.-]{0,64}?(?i:pass|secret|token|credential|key)[\w.-]{0,64}+)"
    r"\"?[ \t]{0,4}+[=:][ \t]{0,4}+"
)
# A configuration directive and its one value on a line of their own: `password secret123`, `requirepass
# foo` (redis.conf). Lower-case names only, so a sentence ("Password required") is left alone.
_DIRECTIVE = re.compile(
    r"(?m)^[ \t]{0,16}+(?P<name>[a-z_][a-z0-9_.-]{0,63}+)[ \t]{1,16}+(?=[^\s=:][^\s]*+;?[ \t]*+$)"
)
_VALUE = re.compile(r"\"[^\"\n]{0,2048}+\"|'[^'\n]{0,2048}+'|[^\s,;&\"'<>]{1,2048}+")
# directives that hold a secret although their names do not say so
_SECRET_DIRECTIVES = frozenset({"requirepass", "masterauth", "pass", "passwd"})
# No secret name without one of these stems: a text without any is left alone at once.
_STEM = re.compile(r"pass|secret|token|credential|key", re.I)


@functools.lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """Whether a variable, field, label or option name says its value is a secret."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.search(name)


def secret_value(value: str) -> bool:
    """Whether a value looks like a credential whatever its name (bearer token, URL password, JWT, key)."""
    return redact_text(value) != value


def _secret_values(text: str, pattern: re.Pattern[str], secret: Callable[[str], bool]) -> str:
    """`text` with the value after each `pattern` match (name, separator) masked where `secret(name)`."""
    out: list[str] = []
    pos = 0
    for match in pattern.finditer(text):
        name = match.group("name")
        if match.start() < pos or not secret(name.lstrip("-")):
            continue
        value = _VALUE.match(text, match.end())
        if value is None or value.group(0) in ('""', "''"):
            continue
        quote = value.group(0)[0] if value.group(0)[0] in "\"'" else ""
        out.append(text[pos : match.end()])
        out.append(f"{quote}{REDACTED}{quote}")
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def _secret_directive(name: str) -> bool:
    return secret_name(name) or name.lower() in _SECRET_DIRECTIVES


def _private_keys(text: str) -> str:
    """PEM private key blocks, body and all, replaced (found with str.find: no pattern spans the body)."""
    out: list[str] = []
    pos = 0
    for begin in _PRIVATE_KEY.finditer(text):
        if begin.start() < pos:
            continue
        end_marker = f"-----END {begin.group(1)}PRIVATE KEY-----"
        end = text.find(end_marker, begin.end())
        stop = len(text) if end < 0 else end + len(end_marker)
        out.append(text[pos : begin.start()])
        out.append(f"-----BEGIN {begin.group(1)}PRIVATE KEY-----{REDACTED}{end_marker}")
        pos = stop
    out.append(text[pos:])
    return "".join(out)


def redact_text(text: str) -> str:
    """Free text with embedded credentials replaced by ***: URL passwords, bearer tokens, JWTs, private keys,
    the value of any NAME=VALUE or NAME: VALUE whose name says it is secret, and of a `NAME VALUE` directive
    on a line of its own (config files)."""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"…[{len(text) - MAX_TEXT} characters cut before redaction]"
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"://\1:{REDACTED}@", text)
    text = _BEARER.sub(rf"\1{REDACTED}", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "PRIVATE KEY-----" in text:
        text = _private_keys(text)
    if ("=" in text or ":" in text) and _STEM.search(text):
        text = _secret_values(text, _ASSIGNMENT, secret_name)
    return _secret_values(text, _DIRECTIVE, _secret_directive)


def redact_pair(name: str, value: str) -> str:
    """The value to show for NAME=VALUE: *** when the name or the value's shape says it is a secret."""
    return REDACTED if (secret_name(name) and value) or secret_value(value) else value


def redact_pairs(pairs: dict[str, str]) -> dict[str, str]:
    """NAME -> VALUE pairs (labels, environment) with redact_pair applied to each."""
    return {name: redact_pair(name, value) for name, value in pairs.items()}


def redact_args(args: list[str]) -> list[str]:
    """An argv with secrets hidden: `--password x` (the word after a secret-named option), plus redact_text."""
    shown: list[str] = []
    for index, arg in enumerate(args):
        previous = args[index - 1] if index else ""
        if previous.startswith("-") and "=" not in previous and secret_name(previous.lstrip("-")):
            shown.append(REDACTED if not arg.startswith("-") else redact_text(arg))
        else:
            shown.append(redact_text(arg))
    return shown


def redact(value: Any, name: str = "") -> Any:
    """A copy of a JSON-like value with secret-named entries and secret-looking strings masked."""
    if isinstance(value, dict):
        return {
            k: REDACTED if secret_name(str(k)) and v not in (None, "", [], {}) else redact(v, str(k))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, name) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def digest(text: str) -> str:
    """A short, stable fingerprint of a text that is too long to keep whole (sha256, first 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
