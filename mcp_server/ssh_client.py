"""The asyncssh client callbacks of a pooled connection; ssh.py imports this (and asyncssh) to connect."""

from __future__ import annotations

import asyncssh


class Client(asyncssh.SSHClient):
    """Records the host key the server presented and notices when the server drops the connection."""

    def __init__(self, accept_unknown: bool) -> None:
        self.accept_unknown = accept_unknown
        self.presented: asyncssh.SSHKey | None = None
        self.lost = False
        self.authenticating = False
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> None:
        self.authenticating = True

    @property
    def spoke_ssh(self) -> bool:
        """The server sent an SSH version line: an SSH server answered."""
        return self._conn is not None and bool(self._conn.get_extra_info("server_version"))

    @property
    def in_key_exchange(self) -> bool:
        """The server sent its version but authentication never began."""
        return self.spoke_ssh and not self.authenticating

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # only called for keys outside the trusted set: accepted solely under trust-on-first-use
        self.presented = key
        return self.accept_unknown

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
