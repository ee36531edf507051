"""Files: the data dir is private at rest, and the server reads SSH keys and configs only where it may.

Data dir 0700 and its files 0600 however the server is started (the library path without the CLI's umask,
and the CLI tightening what an older version left readable); `add_device key_path` and `import_ssh_config
path` confined to INFRA_SSH_FILE_DIRS, bounded in size, and answering one message for every kind of bad file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.audit import AuditRecord
from mcp_server.db.engine import Database
from mcp_server.db.tables import DataCollectionAudit
from mcp_server.journal import BatchWriter
from mcp_server.server import build_server
from mcp_server.state import AppState, open_state
from tests.app_fixtures import make_settings
from tests.test_transports import run_cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that leaves new files readable by everyone, as many shells have: what the code must overcome."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ---- 4. data at rest ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("loose_umask")
async def test_a_new_data_dir_and_everything_written_in_it_are_private(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with open_state(settings) as state:
        state.writer.audit(AuditRecord(occurred_at=_now(), kind="tool", outcome="ok", duration_ms=1.0))
        await state.writer.flush()
        data = settings.data_dir
        assert mode(data) == 0o700
        for name in ("infrastructor.db", "infrastructor.db-wal", "infrastructor.db-shm", "master.key"):
            assert mode(data / name) == 0o600, name
    # rows spooled while the database is unreachable are private too
    writer = BatchWriter(
        Database("postgresql+asyncpg://nobody@127.0.0.1:1/none"), settings.data_dir / "spool"
    )
    writer.add(
        DataCollectionAudit, {"occurred_at": _now(), "kind": "tool", "duration_ms": 1.0, "outcome": "ok"}
    )
    with pytest.raises(OSError):
        await writer.flush()
    await writer.close(timeout=0)
    (segment,) = writer.segments()
    assert mode(settings.data_dir / "spool") == 0o700 and mode(segment) == 0o600


def test_loose_permissions_left_by_an_older_version_are_tightened_at_start_with_a_warning(
    tmp_path: Path,
) -> None:
    assert run_cli(tmp_path, "migrate").returncode == 0
    data = tmp_path / "data"
    (data / "spool").mkdir()
    (data / "spool" / "segment-old.jsonl").write_text("")
    loose = {data: 0o755, data / "infrastructor.db": 0o644, data / "spool": 0o755}
    loose[data / "spool" / "segment-old.jsonl"] = 0o644
    for path, wanted in loose.items():
        path.chmod(wanted)
    result = run_cli(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    for path in loose:
        assert mode(path) & 0o077 == 0, path
        assert f"tightened {path} from mode" in result.stderr
    assert mode(data) == 0o700 and mode(data / "infrastructor.db") == 0o600


def test_a_shared_world_writable_data_dir_is_refused_and_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    result = run_cli(tmp_path, "migrate", INFRA_DATA_DIR=str(shared))
    assert result.returncode == 2
    assert "INFRA_DATA_DIR" in result.stderr and "shared directory" in result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def _now() -> datetime:
    return datetime.now(UTC)


# ---- 8. key files and SSH configs ---------------------------------------------------------------------------


@pytest.fixture
async def confined(tmp_path: Path) -> AsyncIterator[tuple[Client[Any], AppState, Path]]:
    """An MCP client on a server that may read SSH files from tmp_path/ssh only (and its data dir's keys/)."""
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    settings = make_settings(tmp_path, ssh_file_dirs=f"{ssh},{tmp_path / 'data' / 'keys'}")
    async with open_state(settings) as state, Client(build_server(settings, state=state)) as client:
        yield client, state, ssh


def _key(path: Path) -> Path:
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    return path


async def _refusal(client: Client[Any], tool: str, arguments: dict[str, Any]) -> str:
    with pytest.raises(ToolError) as caught:
        await client.call_tool(tool, arguments)
    return str(caught.value)


async def test_key_paths_outside_the_allowed_directories_are_refused_without_saying_if_they_exist(
    confined: tuple[Client[Any], AppState, Path],
) -> None:
    client, state, _ = confined
    messages = {}
    for path in ("/etc/passwd", "/etc/no-such-file", "/proc/self/environ"):
        message = await _refusal(client, "add_device", {"name": "k", "hostname": "h", "key_path": path})
        messages[path] = message.replace(path, "PATH")
    assert len(set(messages.values())) == 1
    assert "outside the directories the server reads SSH files from" in messages["/etc/passwd"]
    assert "INFRA_SSH_FILE_DIRS" in messages["/etc/passwd"]
    relative = await _refusal(client, "add_device", {"name": "k", "hostname": "h", "key_path": "id_ed25519"})
    assert "not an absolute path" in relative
    master = str(state.settings.data_dir / "master.key")
    inside_data = await _refusal(client, "add_device", {"name": "k", "hostname": "h", "key_path": master})
    assert "the server's own data dir" in inside_data
    assert state.devices.names() == ["local"]


async def test_every_bad_key_file_inside_the_allowed_directories_gets_the_same_answer(
    confined: tuple[Client[Any], AppState, Path],
) -> None:
    client, state, ssh = confined
    (ssh / "not_a_key").write_text("Host *\n  User me\n")
    (ssh / "too_big").write_bytes(_key(ssh / "seed").read_bytes() + b"#" * 70_000)
    (ssh / "a_directory").mkdir()
    os.mkfifo(ssh / "a_fifo")  # a reader that blocked on it would hang the server
    (ssh / "link_out").symlink_to("/etc/passwd")
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key()
    (ssh / "id.pub").write_bytes(public)
    messages = {}
    for name in ("missing", "not_a_key", "too_big", "a_directory", "a_fifo", "link_out", "id.pub"):
        path = str(ssh / name)
        message = await _refusal(client, "add_device", {"name": "k", "hostname": "h", "key_path": path})
        messages[name] = message.replace(path, "PATH")
    assert len(set(messages.values())) == 1, messages
    assert "is not a usable private key" in messages["missing"] and "64 KiB" in messages["missing"]
    # a real key inside the allowed directories, or in the data dir's keys/, is accepted
    good = _key(ssh / "id_ed25519")
    (ssh / "link_in").symlink_to(good)
    keys = state.settings.data_dir / "keys"
    keys.mkdir()
    for name, key_file in (("k1", good), ("k2", ssh / "link_in"), ("k3", _key(keys / "fleet"))):
        await client.call_tool("add_device", {"name": name, "hostname": "h", "key_path": str(key_file)})
    # update_device goes through the same check
    changed = await _refusal(client, "update_device", {"device": "k1", "key_path": "/etc/passwd"})
    assert "outside the directories" in changed
    assert state.devices.get("k1").key_path == str(good)


async def test_ssh_configs_are_read_only_from_the_allowed_directories_with_one_answer_for_bad_files(
    confined: tuple[Client[Any], AppState, Path],
) -> None:
    client, _, ssh = confined
    outside = {}
    for path in ("/etc/passwd", "/etc/no-such-config"):
        outside[path] = (await _refusal(client, "import_ssh_config", {"path": path})).replace(path, "PATH")
    assert len(set(outside.values())) == 1 and "INFRA_SSH_FILE_DIRS" in outside["/etc/passwd"]
    (ssh / "conf_dir").mkdir()
    (ssh / "huge").write_text("# padding\n" * 30_000)
    bad = {}
    for name in ("missing", "conf_dir", "huge"):
        path = str(ssh / name)
        bad[name] = (await _refusal(client, "import_ssh_config", {"path": path})).replace(path, "PATH")
    assert len(set(bad.values())) == 1 and "at most 256 KiB" in bad["missing"]


async def test_includes_and_identity_files_of_an_imported_config_are_confined_too(
    confined: tuple[Client[Any], AppState, Path],
) -> None:
    client, state, ssh = confined
    good = _key(ssh / "id_ed25519")
    (ssh / "conf.d").mkdir()
    (ssh / "conf.d" / "lab").write_text(f"Host lab1\n  HostName 10.0.0.1\n  IdentityFile {good}\n")
    config = ssh / "config"
    config.write_text(
        f"Include /etc/*\nInclude {ssh}/conf.d/*\n"
        "Host stolen\n  HostName 10.0.0.2\n  IdentityFile /etc/ssh/ssh_host_ed25519_key\n"
    )
    result = (await client.call_tool("import_ssh_config", {"path": str(config)})).structured_content
    assert result is not None
    assert {h["alias"]: h["status"] for h in result["hosts"]} == {"lab1": "added", "stolen": "added"}
    warnings = "\n".join(result["warnings"])
    assert "cannot read included file /etc/*: outside" in warnings
    assert "/etc/passwd" not in warnings and "/etc/hostname" not in warnings  # /etc was never listed
    assert "stolen: IdentityFile not used" in warnings and "outside the directories" in warnings
    assert state.devices.get("stolen").key_path is None
    assert state.devices.get("lab1").key_path == str(good)
