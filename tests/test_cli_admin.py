"""Operator commands end to end: `secrets rotate` and `db bootstrap-credentials` / `rotate-credentials`."""

from __future__ import annotations

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
