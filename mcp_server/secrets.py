"""Secrets at rest: Fernet-encrypted values in the `secrets` table under a master key that can rotate."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import delete, select

from mcp_server.db.engine import Database
from mcp_server.db.tables import SecretRow
from mcp_server.errors import ConfigurationError
from mcp_server.settings import Settings

KEY_FILE = "master.key"


def load_master_keys(settings: Settings) -> list[bytes]:
    """Master keys, newest first: INFRA_MASTER_KEY, else the key file (created 0600 on first start)."""
    if settings.master_key is not None:
        raw = [k.strip() for k in settings.master_key.get_secret_value().split(",") if k.strip()]
    else:
        path = settings.data_dir / KEY_FILE
        if not path.exists():
            _write_private(path, Fernet.generate_key())
        raw = [k.strip() for k in path.read_text().splitlines() if k.strip()]
    keys = [k.encode() for k in raw]
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigurationError(
                "INFRA_MASTER_KEY: not a Fernet key (32 url-safe base64-encoded bytes); "
                "generate one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None
    if not keys:
        raise ConfigurationError("INFRA_MASTER_KEY: empty")
    return keys


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data + b"\n")


class SecretStore:
    """Named secrets, encrypted with the newest master key, readable with any of them."""

    def __init__(self, db: Database, keys: list[bytes]) -> None:
        self._db = db
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
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
        async with self._db.session() as session:
            token = await session.scalar(select(SecretRow.ciphertext).where(SecretRow.name == name))
        return None if token is None else self.decrypt(token)

    async def delete(self, name: str) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(delete(SecretRow).where(SecretRow.name == name))
