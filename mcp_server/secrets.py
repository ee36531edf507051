"""Secrets at rest: Fernet-encrypted values in the `secrets` table under a master key that can rotate."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select

from mcp_server.db.engine import Database
from mcp_server.db.tables import SecretRow
from mcp_server.errors import ConfigurationError
from mcp_server.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = "master.key"
DB_CREDENTIALS_FILE = "database.credentials"
# Files in the data dir that hold one Fernet token each; key rotation re-encrypts them with the table.
ENCRYPTED_FILES: tuple[str, ...] = (DB_CREDENTIALS_FILE,)
ENV_LOCATION = "INFRA_MASTER_KEY"


def load_master_keys(settings: Settings) -> list[bytes]:
    """Master keys, newest first: INFRA_MASTER_KEY, else the key file (created 0600 on first start)."""
    if settings.master_key is not None:
        return _parse_keys(settings.master_key.get_secret_value().split(","), ENV_LOCATION)
    path = settings.data_dir / KEY_FILE
    if not path.exists():
        _create_private(path, Fernet.generate_key())
    return _parse_keys(path.read_text().splitlines(), str(path))


def _parse_keys(lines: list[str], where: str) -> list[bytes]:
    keys = [line.strip().encode() for line in lines if line.strip()]
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigurationError(
                f"{where}: not a Fernet key (32 url-safe base64-encoded bytes); "
                "generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None
    if not keys:
        raise ConfigurationError(f"{where}: empty")
    return keys


def key_fingerprint(key: bytes) -> str:
    """A name for a key that reveals nothing about it: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def _create_private(path: Path, data: bytes) -> None:
    # O_EXCL: two processes starting at once must not each generate a different first key.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data + b"\n")


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a 0600 file holding `data`: a crash leaves the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class MasterKeys:
    """The configured master keys; the key file is re-read whenever it is replaced (`secrets rotate`)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._path = None if settings.master_key is not None else settings.data_dir / KEY_FILE
        self._stamp: tuple[int, int, int] | None = None
        self._fernet = MultiFernet([Fernet(k) for k in load_master_keys(settings)])
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        st = self._path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def fernet(self) -> MultiFernet:
        if self._path is not None and self._current_stamp() != self._stamp:
            self._fernet = MultiFernet([Fernet(k) for k in load_master_keys(self._settings)])
            self._stamp = self._current_stamp()
        return self._fernet


class SecretStore:
    """Named secrets, encrypted with the newest master key, readable with any of them."""

    def __init__(self, db: Database, keys: list[bytes]) -> None:
        self._db = db
        fixed = MultiFernet([Fernet(k) for k in keys])
        self._fernet: Callable[[], MultiFernet] = lambda: fixed

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> SecretStore:
        """A store that follows the key file through a rotation run by another process."""
        store = cls(db, load_master_keys(settings))
        store._fernet = MasterKeys(settings).fernet
        return store

    def encrypt(self, value: str) -> str:
        return self._fernet().encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet().decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigurationError(
                "INFRA_MASTER_KEY: a stored secret cannot be decrypted with the configured master key(s)"
            ) from None

    async def put(self, name: str, value: str) -> None:
        now = datetime.now(UTC)
        async with self._db.session() as session, session.begin():
            row = await session.get(SecretRow, name)
            if row is None:
                session.add(
                    SecretRow(name=name, ciphertext=self.encrypt(value), created_at=now, updated_at=now)
                )
            else:
                row.ciphertext = self.encrypt(value)
                row.updated_at = now

    async def get(self, name: str) -> str | None:
        async with self._db.read_session() as session:
            token = await session.scalar(select(SecretRow.ciphertext).where(SecretRow.name == name))
        return None if token is None else self.decrypt(token)

    async def delete(self, name: str) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(delete(SecretRow).where(SecretRow.name == name))


# ---- master-key rotation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationReport:
    """What `secrets rotate` did. `new_key` is set only when the key lives in INFRA_MASTER_KEY."""

    rows: int
    files: tuple[str, ...]
    fingerprint: str
    location: str
    retired: int
    new_key: str | None = field(default=None, repr=False)


async def rotate_master_key(
    settings: Settings, db: Database, *, new_key: bytes | None = None
) -> RotationReport:
    """Re-encrypt every secret under a new master key while the old one still decrypts, then retire it.

    Key file: stage "new, old" -> re-encrypt -> keep only "new"; every step leaves all secrets readable.
    INFRA_MASTER_KEY: re-encrypt under a new key and return it for the operator to set (the environment
    cannot be rewritten from here). When the variable already lists several keys, its first key is taken
    as the staged new one.
    """
    if new_key is not None:
        _parse_keys([new_key.decode()], "new master key")
    if settings.master_key is not None:
        current = load_master_keys(settings)
        generated = None
        if new_key is not None or len(current) == 1:
            generated = new_key or Fernet.generate_key()
            current = [generated, *(k for k in current if k != generated)]
        rows, files = await reencrypt(settings, db, current)
        report = RotationReport(
            rows,
            files,
            key_fingerprint(current[0]),
            ENV_LOCATION,
            0,
            generated.decode() if generated else None,
        )
    else:
        keys = stage_key(settings, new_key or Fernet.generate_key())
        rows, files = await reencrypt(settings, db, keys)
        more, retired = await retire_keys(settings, db)
        path = str(settings.data_dir / KEY_FILE)
        report = RotationReport(rows + more, files, key_fingerprint(keys[0]), path, retired)
    log.info(
        "master key rotated: %d secrets and %d files re-encrypted under key %s (%s)",
        report.rows,
        len(report.files),
        report.fingerprint,
        report.location,
    )
    return report


def stage_key(settings: Settings, new_key: bytes) -> list[bytes]:
    """Step 1: put `new_key` first in the key file, keeping the old keys so both decrypt."""
    keys = [new_key, *(k for k in load_master_keys(settings) if k != new_key)]
    write_private(settings.data_dir / KEY_FILE, b"".join(k + b"\n" for k in keys))
    return keys


async def reencrypt(settings: Settings, db: Database, keys: list[bytes]) -> tuple[int, tuple[str, ...]]:
    """Step 2: every row and encrypted file that the newest key cannot read is rotated onto it.

    One transaction with the rows locked, so a concurrent `put` is neither lost nor overwritten.
    """
    newest = Fernet(keys[0])
    multi = MultiFernet([Fernet(k) for k in keys])
    rows = 0
    async with db.session() as session, session.begin():
        found = await session.scalars(select(SecretRow).order_by(SecretRow.name).with_for_update())
        for row in found.all():
            fresh = _rotated(newest, multi, row.ciphertext.encode(), f"secret {row.name!r}")
            if fresh is not None:
                row.ciphertext = fresh.decode()
                row.updated_at = datetime.now(UTC)
                rows += 1
    files = []
    for name in ENCRYPTED_FILES:
        path = settings.data_dir / name
        if not path.exists():
            continue
        fresh = _rotated(newest, multi, path.read_bytes().strip(), str(path))
        if fresh is not None:
            write_private(path, fresh + b"\n")
            files.append(name)
    return rows, tuple(files)


def _rotated(newest: Fernet, multi: MultiFernet, token: bytes, what: str) -> bytes | None:
    try:
        newest.decrypt(token)
        return None
    except InvalidToken:
        pass
    try:
        return multi.rotate(token)
    except InvalidToken:
        raise ConfigurationError(
            f"{what} cannot be decrypted with any configured master key; nothing was retired "
            "(restore the key that encrypted it, or delete that secret, and run the rotation again)"
        ) from None


async def retire_keys(settings: Settings, db: Database) -> tuple[int, int]:
    """Step 3: drop every key but the newest from the key file; returns (late rows rotated, keys retired).

    A process that still had the old key loaded may have written a secret after step 2; those are
    rotated first, while the old key is still in the file.
    """
    keys = load_master_keys(settings)
    if len(keys) == 1:
        return 0, 0
    rows, _ = await reencrypt(settings, db, keys)
    write_private(settings.data_dir / KEY_FILE, keys[0] + b"\n")
    return rows, len(keys) - 1
