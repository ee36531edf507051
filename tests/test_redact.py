"""redact_text and redact_args: which secrets are masked in free text, command lines and configuration, which
ordinary text is left alone, and that every rule stays linear on adversarial input."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mcp_server.audit import AUDIT_ARGUMENTS_CHARS, _bounded_json, _json_value, storable
from mcp_server.db.tables import DataCollectionAudit
from mcp_server.parsers.config_files import redact_config
from mcp_server.parsers.config_paths import KINDS, ConfigKind
from mcp_server.redact import (
    REDACTED,
    _rules,
    json_might_hold_secret,
    might_hold_secret,
    redact,
    redact_args,
    redact_key_blocks,
    redact_text,
)
from tests.secret_corpus import CONTROL, NEAR_MISSES, SHAPES, Shape, command_argv, leaks

MASKED = [
    ("DATABASE_URL=postgres://app:s3cret@db/app", "DATABASE_URL=postgres://app:***@db/app"),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
    ("--password=hunter2 --user bob", "--password=*** --user bob"),
    ("token=abc&page=2", "token=***&page=2"),
    ('"password": "pw", "user": "bob"', '"password": "***", "user": "bob"'),
    ("export API_KEY=abc123", "export API_KEY=***"),
    ('OPTIONS="DB_PASSWORD=x --verbose"', 'OPTIONS="DB_PASSWORD=*** --verbose"'),  # nested in another value
    ("password secret123", "password ***"),  # a config directive on its own line
    ("  requirepass foo", "  requirepass ***"),  # redis.conf
    ("passwd abc;", "passwd ***;"),
    # what the outside review reproduced
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY-----",
    ),
    ("mysql -uroot -pSECRET appdb", "mysql -uroot -p*** appdb"),
    ("app --password X --db-password Y", "app --password *** --db-password ***"),
    ("curl -u user:pass https://nas", "curl -u user:*** https://nas"),
    ("redis-cli -a X ping", "redis-cli -a *** ping"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
    ("https://u:pa/ss@host/x", "https://u:***@host/x"),
    ("https://u:p@ss@host/x", "https://u:***@host/x"),
    ("DB_PASS=x APP_PWD=y", "DB_PASS=*** APP_PWD=***"),
    ("PASSWORD x", "PASSWORD ***"),
    ("sshpass -p X ssh nas", "sshpass -p *** ssh nas"),
    ("mysql --password=X db", "mysql --password=*** db"),
    ("PGPASSWORD=x psql", "PGPASSWORD=*** psql"),
    ("htpasswd -b /etc/.htpasswd bob X", "htpasswd -b /etc/.htpasswd bob ***"),
    ("openssl rsa -passin pass:X -in k", "openssl rsa -passin pass:*** -in k"),
    # the word's quotes stay, and a command string closes where its quote does
    ("ssh nas 'mysql -p$ecret db'", "ssh nas 'mysql -p*** db'"),
    ('{"cmd": "htpasswd -b f bob X", "n": 1}', '{"cmd": "htpasswd -b f bob ***", "n": 1}'),
]

UNTOUCHED = [
    "Password required",
    "password is wrong for user bob",
    "the token expired at noon",
    "listen 80;",
    "key_path=/home/bob/.ssh/id_ed25519",
    "POSTGRES_PASSWORD_FILE=/run/secrets/db",
    "monkey=banana",
    "https://example.org/path?page=2",
    "password=",
    CONTROL,
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_secrets_in_free_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", UNTOUCHED)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_every_secret_shape_of_the_corpus_is_masked_and_masking_again_changes_nothing(shape: Shape) -> None:
    shown = redact_text(shape.text)
    assert shape.leaked(shown) == [] and REDACTED in shown, shown
    assert redact_text(shown) == shown


@pytest.mark.parametrize("shape", [s for s in SHAPES if s.argv], ids=lambda s: s.name)
def test_every_command_line_of_the_corpus_is_masked_as_an_argv_list(shape: Shape) -> None:
    shown = redact_args(command_argv(shape))
    assert shape.leaked(" ".join(shown)) == [], shown
    assert redact({"argv": command_argv(shape)}) == {"argv": shown}  # an audited argument list


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_of_the_corpus_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_the_whole_corpus_in_one_text_leaks_nothing_and_keeps_every_near_miss() -> None:
    lines = [s.text for s in SHAPES]
    shown = redact_text("\n".join([*lines[:40], *NEAR_MISSES, *lines[40:]]))
    assert leaks(shown) == {}
    assert all(near in shown for near in NEAR_MISSES)


@pytest.mark.parametrize("kind", KINDS)
def test_a_configuration_file_of_every_kind_holding_the_corpus_leaks_nothing_and_keeps_the_near_misses(
    kind: ConfigKind,
) -> None:
    shown = redact_config(kind, "\n".join([*NEAR_MISSES, *(s.text for s in SHAPES)]) + "\n")
    assert leaks(shown) == {} and all(near in shown for near in NEAR_MISSES)


def test_a_private_key_printed_over_several_log_lines_is_masked_before_they_are_split() -> None:
    key = next(s for s in SHAPES if s.name.startswith("pem RSA"))
    lines = redact_key_blocks(f"2024-01-01T00:00:00Z starting\n{key.text}\nready\n").split("\n")
    assert lines == [
        "2024-01-01T00:00:00Z starting",
        "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY-----",
        "ready",
        "",
    ]


def test_commands_on_one_line_split_by_shell_operators_leak_nothing() -> None:
    line = " ; ".join(s.text for s in SHAPES if not s.own_line and not s.multiline)
    assert leaks(redact_text(line)) == {}


def test_argv_secrets_after_known_programs_only() -> None:
    assert redact_args(["mysql", "-uroot", "-pX", "db"]) == ["mysql", "-uroot", "-p***", "db"]
    assert redact_args(["sshpass", "-p", "X", "ssh", "nas"]) == ["sshpass", "-p", REDACTED, "ssh", "nas"]
    assert redact_args(["curl", "-u", "bob:X", "u"]) == ["curl", "-u", "bob:***", "u"]
    assert redact_args(["sh", "-c", "mysql -pX db"]) == ["sh", "-c", "mysql -p*** db"]
    assert redact_args(["ls", "-p", "X"]) == ["ls", "-p", "X"]
    assert redact_args(["docker", "run", "-p", "80:80", "img"]) == ["docker", "run", "-p", "80:80", "img"]
    assert redact_args(["docker", "login", "-p", "X"]) == ["docker", "login", "-p", REDACTED]
    assert redact_args(["app", "--password", "a b", "--verbose"]) == [
        "app",
        "--password",
        REDACTED,
        "--verbose",
    ]


def test_a_private_key_keeps_its_armour_and_loses_its_body_whatever_its_end() -> None:
    assert redact_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\nAAAA\n") == (
        "-----BEGIN OPENSSH PRIVATE KEY-----***"
    )
    cut = redact_text("x\n-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END PRIVATE KEY-----\nafter_this")
    assert cut == "x\n-----BEGIN EC PRIVATE KEY-----***-----END PRIVATE KEY-----\nafter_this"
    # a key block cut short loses its key lines and nothing after them, which keep their own context
    assert redact_text('[{"k": "-----BEGIN PRIVATE KEY-----\\nMIIE\\nAb"}, {"next": 1}]') == (
        '[{"k": "-----BEGIN PRIVATE KEY-----***"}, {"next": 1}]'
    )
    assert redact_text("-----BEGIN RSA PRIVATE KEY----- MIIEowIBAAKCAQEAxyz7 sshpass -p X ssh nas") == (
        "-----BEGIN RSA PRIVATE KEY-----*** sshpass -p *** ssh nas"
    )
    assert redact_text("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAxyz7\nmysql -pX db") == (
        "-----BEGIN RSA PRIVATE KEY-----***\nmysql -p*** db"
    )
    # PuTTY says how many private lines follow
    line = "AAAAIGkGb3Ho1Xq2e0sF9yT4"
    assert redact_text(f"Private-Lines: 1\n{line}\nmongosh -p X\nPrivate-Lines: 2 {line} AAA= {line}") == (
        f"Private-Lines: 1***\nmongosh -p ***\nPrivate-Lines: 2*** {line}"
    )


# ---- the screen: a text it passes holds nothing any rule masks -------------------------------------------------

SCREENED = settings(
    max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
# Random text built from pieces of the corpus, the literals the rules start from (in other cases, and after
# characters whose lower case changes length or is ASCII: İ, the Kelvin sign), quotes, escapes and blanks.
_PIECES = st.sampled_from(
    [
        *(s.text for s in SHAPES),
        *NEAR_MISSES,
        *("key", "KEY", "\u212aey", "İ", "pAsS", "masterauth", "requirepass", "Authorization", "bearer"),
        *("mysql", "curl", "-p", "-u", "://", "@", "=", ":", "[", "]", '"', "'", "\\", "\\u0070", ","),
        *(" ", "\t", "\n", "\r\n", "\x00", "eyJ", "ghp_", "sk-", "BEGIN", "PRIVATE KEY", "-----"),
        # whole shapes that only one literal of the screen lets through
        *("\nmasterauth Zq1x\n", '["mysql","-pZq2x"]', '["\\u006dysql", "-pZq3x"]', "mysql\t-pZq4x"),
    ]
)


def _walked(value: dict[str, object]) -> object:
    """A JSON column made storable the long way: every key and string redacted, then bounded."""
    return _bounded_json(_json_value(value, True), AUDIT_ARGUMENTS_CHARS)


_TEXTS = st.lists(st.one_of(_PIECES, st.text(max_size=6)), max_size=10).map("".join)


@SCREENED
@given(shape=st.sampled_from(SHAPES), before=_TEXTS, after=_TEXTS)
def test_the_screen_never_passes_a_corpus_secret_whatever_surrounds_it(
    shape: Shape, before: str, after: str
) -> None:
    text = before + shape.text + after
    assert might_hold_secret(text)
    assert redact_text(text) == _rules(text)
    # the same secret as an audited argument: one encoding of the whole value screens it
    assert storable(DataCollectionAudit, {"arguments": {"x": text}})["arguments"] == _walked({"x": text})


@SCREENED
@given(text=_TEXTS)
@example(text='["mysql","-pZq2x"]')
@example(text='["\\u006dysql", "-pZq3x"]')
@example(text="\nmasterauth Zq1x\n")
def test_the_screen_and_its_cache_change_nothing_redaction_would_not(text: str) -> None:
    if not might_hold_secret(text):
        assert _rules(text) == text
    assert (
        redact_text(text) == _rules(text) == redact_text(text)
    )  # the second time from the cache of passed texts


@SCREENED
@given(items=st.lists(_TEXTS, max_size=4), keys=st.lists(_TEXTS, min_size=1, max_size=4))
@example(items=['["\\u006dysql","-pZq3x"]'], keys=["a"])
@example(items=["mysql", "-pZq2x"], keys=["a"])
def test_a_json_value_the_screen_passes_is_left_as_it_is_by_redaction(
    items: list[str], keys: list[str]
) -> None:
    value: dict[str, object] = {"argv": items, **{key: key for key in keys}, "n": {"nested": items}}
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if text.isascii() and not json_might_hold_secret(text):
        assert redact(value) == value
    stored = storable(DataCollectionAudit, {"arguments": value, "ssh_commands": items})
    assert stored["arguments"] == _walked(value)
    assert stored["ssh_commands"] == _bounded_json(_json_value(items, True), 1024)


def test_ordinary_audit_values_pass_the_screen() -> None:
    for text in ("get_system_metrics", "bench/1.0", "/mcp", '{"interval":0.5}', "Connection refused by nas"):
        assert not might_hold_secret(text)
    assert not json_might_hold_secret('{"device":"dev01","interval":0.5,"lines":["sh -c x"]}')


# ---- linear time: 1 MB of adversarial text per rule -----------------------------------------------------------

MB = 1_000_000
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "dashes": lambda n: "-p" * (n // 2),
    "short options": lambda n: "-p " * (n // 3),
    "mysql -p": lambda n: "mysql -p" * (n // 8),
    "program names": lambda n: "mysql " * (n // 6),
    "sshpass": lambda n: "sshpass -p " * (n // 11),
    "htpasswd positionals": lambda n: "htpasswd -b " + "x " * (n // 2),
    "line continuations": lambda n: "curl \\\n" * (n // 7),
    "unclosed quotes": lambda n: "curl '" * (n // 6),
    "a long unclosed quote": lambda n: 'curl "' + "a" * n,
    "nested quoted commands": lambda n: "curl \"mysql 'a b' c\" " * (n // 22),
    "shell operators": lambda n: "curl | " * (n // 7),
    "BEGIN": lambda n: "BEGIN " * (n // 6),
    "-----BEGIN": lambda n: "-----BEGIN " * (n // 11),
    "BEGIN PRIVATE KEY without END": lambda n: "-----BEGIN RSA PRIVATE KEY-----\n" * (n // 32),
    "BEGIN PRIVATE KEY, END far away": lambda n: (
        "-----BEGIN RSA PRIVATE KEY-----\n" * (n // 64) + "x" * (n // 2) + "-----END RSA PRIVATE KEY-----"
    ),
    "BEGIN PRIVATE KEY, key lines, junk, END": lambda n: (
        ("-----BEGIN RSA PRIVATE KEY-----\n" + "QUJD\n" * 100 + "%\n") * (n // 640)
        + "-----END RSA PRIVATE KEY-----"
    ),
    "PuTTY private lines": lambda n: "Private-Lines: 1\n" + "AAAA\n" * (n // 5),
    "PuTTY headers": lambda n: "Private-Lines: 1" * (n // 16),
    "://a:": lambda n: "://a:" * (n // 5),
    "://a:b@": lambda n: "://a:b@" * (n // 7),
    "@ after a user": lambda n: "https://u:" + "@" * n,
    "@/ after a user": lambda n: "x://a:" + "@/" * (n // 2),
    "Authorization:": lambda n: "Authorization: " * (n // 15),
    "authorization digest": lambda n: "authorization=digest a=" * (n // 23),
    "Basic": lambda n: "Basic " * (n // 6),
    "Basic base64": lambda n: "Basic " + "A" * n,
    "Bearer": lambda n: "Bearer " * (n // 7),
    "eyJ": lambda n: "eyJ" * (n // 3),
    "ghp_": lambda n: "ghp_" * (n // 4),
    "sk-": lambda n: "sk-" * (n // 3),
    "AKIA": lambda n: "AKIA" * (n // 4),
    "password=": lambda n: "password=" * (n // 9),
    "--password": lambda n: "--password " * (n // 11),
    "glued stems": lambda n: "--passwordpasswordpassword" * (n // 26),
    "key words": lambda n: "key " * (n // 4),
    "directives": lambda n: "password x\n" * (n // 11),
    "colons": lambda n: "a:" * (n // 2),
    "spaces": lambda n: " " * n,
    "newlines": lambda n: "\n" * n,
    "everything": lambda n: (
        "curl -u a:b --password x https://u:p@h Authorization: Basic dXNlcjpwYXNz mysql -pX\n" * (n // 84)
    ),
}


@pytest.mark.parametrize("make", ADVERSARIAL.values(), ids=list(ADVERSARIAL))
def test_a_megabyte_of_adversarial_text_is_redacted_in_linear_time(make: Callable[[int], str]) -> None:
    text = make(MB)
    started = time.perf_counter()
    redact_text(text)
    # Generous: measured 0.03-0.7 s on a shared 2-core machine under load; a backtracking rule takes minutes.
    assert time.perf_counter() - started < 3.0
