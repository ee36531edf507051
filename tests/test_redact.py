"""redact_text: which secrets are masked in free text and configuration, and which ordinary text is left alone."""

from __future__ import annotations

import pytest

from mcp_server.redact import redact_text

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
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_secrets_in_free_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", UNTOUCHED)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text
