"""Which names say their value is a secret (variables, fields, labels, options, directives), and where a value ends."""

from __future__ import annotations

import functools
import re
import string

REDACTED = "***"

# "key" counts as a whole segment (APP_KEY, key, api-key) or glued to a word that makes it one (apikey,
# privatekey), never inside another word (monkey, keyboard, KEYCLOAK_URL); "pass" and "pwd" as a last segment
# (DB_PASS, --pass, MYSQL_PWD; not PWD, the working directory) or a camel-case one (keystorePass).
_SECRET_NAME = re.compile(
    r"pass(?:word|wd|phrase)|secret|token|credential|(?:api|private|access|auth|secret|signing|encryption)"
    r"[_.-]?key|(?:^|[_.-])key(?:$|[_.-])|(?:^|[_.-])pass$|[_.-]pwd$|(?-i:[a-z](?:Pass|Pwd))$",
    re.I,
)
# ...unless it names where a secret lives or what kind it is rather than the secret itself (key_path,
# PASSWORD_FILE, token_id, KEY_TYPE, --password-stdin), negates or asks for one (--no-password, --ask-pass),
# or is an nginx directive that passes requests on (proxy_pass).
_NOT_SECRET = re.compile(
    r"[_.-](?:path|file|dir|id|name|url_env|env|length|len|expiry|expires|ttl|type|size|bits|format|fd|stdin"
    r"|prompt|server|header|file-\d)$|^(?:no|ask)[_-]|^(?:proxy|fastcgi|uwsgi|scgi|grpc|memcached)_pass$",
    re.I,
)

# A value: quoted (in escaped quotes too: JSON inside JSON), or a run that ends at white space and at , ; &
# (a query string, mount options)...
_QUOTED = r"\"[^\"\n]{0,2048}+\"|'[^'\n]{0,2048}+'|(\\{1,3}+\")(?:[^\"\\\n]|\\[^\"\n]){0,2048}+\\{1,3}+\""
VALUE = re.compile(rf"{_QUOTED}|[^\s,;&\"'<>]{{1,2048}}+")
# ...or, for an option's value, only at white space or a quote (a password may hold , ; &).
ARG_VALUE = re.compile(rf"{_QUOTED}|[^\s\"']{{1,2048}}+")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@functools.lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """Whether a variable, field, label or option name says its value is a secret."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET.search(name)


def masked_value(text: str, at: int, pattern: re.Pattern[str]) -> tuple[str, int] | None:
    """(*** inside the value's own quotes, where the value ends) for the value `pattern` finds at `at`."""
    value = pattern.match(text, at)
    if value is None or value.group(0) in ('""', "''") or value.group(0).replace("\\", "") == '""':
        return None
    quote = value.group(1) if value.lastindex else value.group(0)[0] if value.group(0)[0] in "\"'" else ""
    return f"{quote}{REDACTED}{quote}", value.end()


def lowered(text: str) -> str:
    """`text` in lower case, character for character, so that offsets into it are offsets into `text`.

    Case-insensitive patterns cannot skip ahead to their first literal; patterns run on this copy can."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)
