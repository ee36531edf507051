"""Secrets at rest and master-key rotation, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import logging
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from mcp_server.db.credentials import AppCredential, credentials_path, read_credential, write_credential
from mcp_server.db.engine import Database
from mcp_server.db.tables import SecretRow
from mcp_server.devices import DeviceRegistry, DeviceSpec
from mcp_server.errors import ConfigurationError
from mcp_server.secrets import (
    KEY_FILE,
    SecretStore,
    key_fingerprint,
    load_master_keys,
    reencrypt,
    retire_keys,
    rotate_master_key,
    stage_key,
)
from mcp_server.settings import Settings
from tests.app_fixtures import make_settings

PLAINTEXTS = {"device:web1:password": "hunter2-web1", "jwt:hs256": "jwt-signing-key-value"}
DB_PASSWORD = "database-password-value"


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.resolved_database_url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


async def _fill(settings: Settings, db: Database) -> None:
    """Secrets of every kind under the current master key: rows, a device password, the db credential."""
    store = SecretStore(db, load_master_keys(settings))
    for name, value in PLAINTEXTS.items():
        await store.put(name, value)
    devices = DeviceRegistry(db, store, local_device=False)
    await devices.add("db1", DeviceSpec(hostname="127.0.0.1", password="device-db1-password"))
    fernet = MultiFernet([Fernet(k) for k in load_master_keys(settings)])
    write_credential(settings, AppCredential("app", "app_a", DB_PASSWORD, datetime.now(UTC)), fernet)


async def _assert_all_readable(settings: Settings, db: Database, keys: list[bytes] | None = None) -> None:
    keys = keys if keys is not None else load_master_keys(settings)
    store = SecretStore(db, keys)
    for name, value in PLAINTEXTS.items():
        assert await store.get(name) == value
    devices = DeviceRegistry(db, store, local_device=False)
    await devices.load()
    assert devices.get("db1").password == "device-db1-password"
    credential = read_credential(settings, MultiFernet([Fernet(k) for k in keys]))
    assert credential is not None and credential.password == DB_PASSWORD


async def _tokens(db: Database) -> list[str]:
    async with db.session() as session:
        return list((await session.scalars(select(SecretRow.ciphertext).order_by(SecretRow.name))).all())


def _key_file(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


async def test_rotation_keeps_every_secret_readable_and_retires_the_old_key(
    settings: Settings, db: Database
) -> None:
    await _fill(settings, db)
    (old,) = load_master_keys(settings)
    report = await rotate_master_key(settings, db)
    keys = load_master_keys(settings)
    assert len(keys) == 1 and keys[0] != old
    assert (report.rows, report.files, report.retired) == (3, ("database.credentials",), 1)
    assert report.fingerprint == key_fingerprint(keys[0]) and report.location == str(_key_file(settings))
    assert report.new_key is None
    assert stat.S_IMODE(_key_file(settings).stat().st_mode) == 0o600
    await _assert_all_readable(settings, db)
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt((await _tokens(db))[0].encode())
    with pytest.raises(ConfigurationError, match="cannot be decrypted"):
        read_credential(settings, MultiFernet([Fernet(old)]))


async def test_a_crash_after_any_step_leaves_every_secret_readable(settings: Settings, db: Database) -> None:
    await _fill(settings, db)
    (old,) = load_master_keys(settings)
    new = Fernet.generate_key()
    keys = stage_key(settings, new)
    assert load_master_keys(settings) == [new, old] == keys
    await _assert_all_readable(settings, db)
    before = await _tokens(db)
    assert await reencrypt(settings, db, keys) == (3, ("database.credentials",))
    assert await _tokens(db) != before
    await _assert_all_readable(settings, db)
    await _assert_all_readable(settings, db, [new])
    assert await retire_keys(settings, db) == (0, 1)
    assert load_master_keys(settings) == [new]
    await _assert_all_readable(settings, db)
    assert await retire_keys(settings, db) == (0, 0)


async def test_rotation_started_again_after_a_crash_finishes_under_the_newest_key(
    settings: Settings, db: Database
) -> None:
    await _fill(settings, db)
    stage_key(settings, Fernet.generate_key())
    report = await rotate_master_key(settings, db)
    assert report.retired == 2
    await _assert_all_readable(settings, db)


async def test_a_secret_written_under_the_old_key_mid_rotation_is_rotated_before_retiring(
    settings: Settings, db: Database
) -> None:
    await _fill(settings, db)
    (old,) = load_master_keys(settings)
    keys = stage_key(settings, Fernet.generate_key())
    await reencrypt(settings, db, keys)
    await SecretStore(db, [old]).put("late", "written by a process that still had the old key")
    assert await retire_keys(settings, db) == (1, 1)
    assert await SecretStore(db, load_master_keys(settings)).get("late") == (
        "written by a process that still had the old key"
    )


async def test_a_running_store_follows_the_key_file_through_rotation(
    settings: Settings, db: Database
) -> None:
    await _fill(settings, db)
    running = SecretStore.from_settings(db, settings)
    await rotate_master_key(settings, db)
    assert await running.get("jwt:hs256") == PLAINTEXTS["jwt:hs256"]
    await running.put("after", "written after the rotation")
    assert await SecretStore(db, load_master_keys(settings)).get("after") == "written after the rotation"


async def test_rotation_stops_before_retiring_when_a_secret_cannot_be_decrypted(
    settings: Settings, db: Database
) -> None:
    await _fill(settings, db)
    await SecretStore(db, [Fernet.generate_key()]).put("orphan", "under a key nobody has")
    with pytest.raises(ConfigurationError, match="'orphan'") as caught:
        await rotate_master_key(settings, db)
    assert "under a key nobody has" not in str(caught.value)
    assert len(load_master_keys(settings)) == 2
    await _assert_all_readable(settings, db)


async def test_env_key_rotation_returns_the_new_key_and_keeps_the_old_one_decrypting(
    tmp_path: Path, database_url: str
) -> None:
    old = Fernet.generate_key()
    settings = make_settings(tmp_path, database_url=database_url, master_key=old.decode())
    database = Database(database_url)
    await database.migrate()
    try:
        await _fill(settings, database)
        report = await rotate_master_key(settings, database)
        assert report.new_key is not None and report.new_key not in repr(report)
        new = report.new_key.encode()
        assert (report.location, report.retired, report.rows) == ("INFRA_MASTER_KEY", 0, 3)
        assert report.fingerprint == key_fingerprint(new)
        assert not _key_file(settings).exists()
        await _assert_all_readable(settings, database, [new])
        overlap = make_settings(
            tmp_path, database_url=database_url, master_key=f"{new.decode()},{old.decode()}"
        )
        await _assert_all_readable(overlap, database)
        with pytest.raises(InvalidToken):
            Fernet(old).decrypt(credentials_path(settings).read_bytes().strip())
    finally:
        await database.close()


async def test_env_keys_already_staged_are_finished_under_the_first_one(
    tmp_path: Path, database_url: str
) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before = make_settings(tmp_path, database_url=database_url, master_key=old.decode())
    staged = make_settings(tmp_path, database_url=database_url, master_key=f"{new.decode()},{old.decode()}")
    database = Database(database_url)
    await database.migrate()
    try:
        await _fill(before, database)
        report = await rotate_master_key(staged, database)
        assert (report.new_key, report.fingerprint, report.rows) == (None, key_fingerprint(new), 3)
        await _assert_all_readable(staged, database, [new])
    finally:
        await database.close()


async def test_rotation_logs_no_secret_value(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await _fill(settings, db)
    (old,) = load_master_keys(settings)
    new = Fernet.generate_key()
    with caplog.at_level(logging.DEBUG):
        report = await rotate_master_key(settings, db, new_key=new)
    assert report.fingerprint in caplog.text
    for value in (*PLAINTEXTS.values(), DB_PASSWORD, old.decode(), new.decode()):
        assert value not in caplog.text


async def test_a_new_key_that_is_not_a_fernet_key_is_refused(settings: Settings, db: Database) -> None:
    with pytest.raises(ConfigurationError, match="not a Fernet key"):
        await rotate_master_key(settings, db, new_key=b"too-short")
    assert len(load_master_keys(settings)) == 1
