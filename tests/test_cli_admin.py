"""Operator commands end to end: `secrets rotate`, `db bootstrap-credentials` / `rotate-credentials`, and the
gates `collect` shares with the MCP tools."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import asyncpg

from mcp_server.devices import DeviceSpec
from mcp_server.secrets import key_fingerprint
from mcp_server.state import open_state
from tests.app_fixtures import PG_ADMIN_DSN, create_pg_database, drop_pg_database, make_settings
from tests.test_transports import run_cli


async def test_secrets_rotate_keeps_every_secret_readable_under_a_new_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with open_state(settings) as state:
        await state.devices.add(
            "nas", DeviceSpec(hostname="127.0.0.1", port=1, password="pw-before-rotation")
        )
    key_file = settings.data_dir / "master.key"
    before = key_file.read_text().split()
    result = run_cli(tmp_path, "secrets", "rotate")
    assert result.returncode == 0, result.stderr
    after = key_file.read_text().split()
    assert len(after) == 1 and after != before
    assert key_fingerprint(after[0].encode()) in result.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with open_state(settings) as state:
        assert state.devices.get("nas").password == "pw-before-rotation"


async def test_an_exported_master_key_and_a_copy_of_the_database_restore_every_secret_elsewhere(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "old")
    async with open_state(settings) as state:
        await state.devices.add("nas", DeviceSpec(hostname="127.0.0.1", port=1, password="pw-in-backup"))
    backup = tmp_path / "backup.key"
    result = run_cli(tmp_path / "old", "secrets", "export-key", "--out", str(backup))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert backup.read_text() == (settings.data_dir / "master.key").read_text()
    assert "keep them apart from the database backup" in result.stderr
    again = run_cli(tmp_path / "old", "secrets", "export-key", "--out", str(backup))
    assert again.returncode == 2 and "never overwritten" in again.stderr
    piped = run_cli(tmp_path / "old", "secrets", "export-key")  # standard output is a pipe here
    assert piped.returncode == 0 and piped.stdout == backup.read_text()
    # the restore: the database file and the exported key in a new data dir
    restored = make_settings(tmp_path / "new")
    restored.data_dir.mkdir(parents=True, exist_ok=True)
    (restored.data_dir / "infrastructor.db").write_bytes(
        (settings.data_dir / "infrastructor.db").read_bytes()
    )
    (restored.data_dir / "master.key").write_text(backup.read_text())
    async with open_state(restored) as state:
        assert state.devices.get("nas").password == "pw-in-backup"


async def test_db_credentials_bootstrap_and_rotation_through_the_cli(tmp_path: Path) -> None:
    url = await create_pg_database()
    name = url.rsplit("/", 1)[1]
    role_base = f"app_{name[-8:]}"
    env = {"INFRA_DATABASE_URL": url, "INFRA_DATABASE_ADMIN_URL": url}
    try:
        missing = run_cli(tmp_path, "db", "bootstrap-credentials", INFRA_DATABASE_URL=url)
        assert missing.returncode == 2 and "INFRA_DATABASE_ADMIN_URL" in missing.stderr
        boot = run_cli(tmp_path, "db", "bootstrap-credentials", "--role-base", role_base, **env)
        assert boot.returncode == 0, boot.stderr
        assert f"as {role_base}_a" in boot.stderr
        # from now on the server connects as the application role, without the admin URL
        listed = run_cli(tmp_path, "devices", "list", INFRA_DATABASE_URL=url)
        assert listed.returncode == 0 and "local" in listed.stdout, listed.stderr
        rotated = run_cli(tmp_path, "db", "rotate-credentials", **env)
        assert rotated.returncode == 0 and f"as {role_base}_b" in rotated.stderr, rotated.stderr
        collected = run_cli(tmp_path, "collect", "os_info", INFRA_DATABASE_URL=url)
        assert collected.returncode == 0, collected.stderr
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            flags = await admin.fetchrow(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1",
                f"{role_base}_b",
            )
            assert flags is not None and not any(flags)
        finally:
            await admin.close()
    finally:
        await drop_pg_database(url)
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            for role in (f"{role_base}_a", f"{role_base}_b", role_base):
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


def test_cli_collect_runs_run_command_only_when_enabled_and_allowlisted_like_the_mcp_tool(
    tmp_path: Path,
) -> None:
    argv = ["--param", 'argv=["id", "-u"]', "--json"]
    off = run_cli(tmp_path, "collect", "run_command", *argv)
    assert off.returncode == 2 and "run_command is disabled on this server" in off.stderr, off.stderr
    unlisted = run_cli(tmp_path, "collect", "run_command", *argv, INFRA_ALLOW_RUN_COMMAND="true")
    assert unlisted.returncode == 2 and "'id' is not in INFRA_RUN_COMMAND_ALLOWLIST" in unlisted.stderr
    listed = run_cli(
        tmp_path,
        "collect",
        "run_command",
        *argv,
        INFRA_ALLOW_RUN_COMMAND="true",
        INFRA_RUN_COMMAND_ALLOWLIST="id",
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["result"]["data"]["argv"] == ["id", "-u"]


def test_cli_collect_runs_read_commands_by_name_and_nothing_that_changes_or_is_internal(
    tmp_path: Path,
) -> None:
    change = run_cli(
        tmp_path, "collect", "restart_service", "--param", "unit=infrastructor-no-such-unit.service"
    )
    assert change.returncode == 2 and "changes things on the device" in change.stderr, change.stderr
    internal = run_cli(tmp_path, "collect", "config_hashes", "--param", 'files=["/etc/fstab"]')
    assert internal.returncode == 2 and "run only by the server itself" in internal.stderr, internal.stderr


async def test_cli_collect_reads_a_configuration_file_only_when_it_is_watched_and_allowed(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("mode=fast\nAPI_TOKEN=abc123\n")
    allow = {"INFRA_CONFIG_WATCH_ALLOW": f"{tmp_path}/*"}
    read = ["collect", "config_file", "--param", f"path={conf}", "--json"]

    unwatched = run_cli(tmp_path, *read, **allow)
    assert unwatched.returncode == 1 and "is not a watched file" in unwatched.stdout, unwatched.stdout
    async with open_state(make_settings(tmp_path, config_watch_allow=f"{tmp_path}/*")) as state:
        await state.config.watch("local", str(conf))
    watched = run_cli(tmp_path, *read, **allow)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert json.loads(watched.stdout)[0]["result"]["data"]["content"] == "mode=fast\nAPI_TOKEN=***\n"
    # without the setting that allowed it, the same target is no longer read
    refused = run_cli(tmp_path, *read)
    assert refused.returncode == 1 and "outside the places configuration is watched from" in refused.stdout
