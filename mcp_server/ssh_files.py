"""Files read on a caller's behalf (SSH private keys, SSH client configs): confined and bounded.

A caller with write scope names these files (`add_device key_path`, `import_ssh_config path`), so the server
reads only regular files inside INFRA_SSH_FILE_DIRS (default ~/.ssh and <data dir>/keys), never anything
else in its own data dir, never more than a few kilobytes, and answers one message whether a file is
missing, unreadable or not what it should be: errors reveal nothing about files outside those directories.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from glob import glob
from pathlib import Path

from mcp_server.errors import InvalidParameter

MAX_KEY_BYTES = 64 * 1024
MAX_CONFIG_BYTES = 256 * 1024
KEYS_DIR = "keys"


def _absolute(text: str) -> Path | None:
    """`text` with ~ expanded and . / .. resolved lexically (no filesystem access); None if relative."""
    expanded = os.path.expanduser(text)
    if not os.path.isabs(expanded):
        return None
    return Path(os.path.normpath(expanded))


@dataclass(frozen=True)
class FilePolicy:
    """Where the server may read SSH files from."""

    dirs: tuple[Path, ...]
    data_dir: Path | None = None

    def describe(self) -> str:
        return ", ".join(str(d) for d in self.dirs) + " (INFRA_SSH_FILE_DIRS)"

    def _allowed(self, path: Path, roots: Iterable[Path]) -> bool:
        if self.data_dir is not None:
            data = Path(os.path.normpath(self.data_dir))
            if path.is_relative_to(data) and not path.is_relative_to(data / KEYS_DIR):
                return False
        return any(path.is_relative_to(root) for root in roots)

    def refusal(self, text: str, what: str) -> str | None:
        """Why `text` may not be read, judged from the path alone (so it says nothing about the file)."""
        path = _absolute(text)
        if path is None:
            return f"{what} {text!r} is not an absolute path (use /path or ~/path)."
        if self.data_dir is not None:
            data = Path(os.path.normpath(self.data_dir))
            if path.is_relative_to(data) and not path.is_relative_to(data / KEYS_DIR):
                return (
                    f"{what} {text!r} is inside the server's own data dir, which holds its database and "
                    f"master key; only {data / KEYS_DIR} there may be used."
                )
        if not self._allowed(path, (Path(os.path.normpath(d)) for d in self.dirs)):
            return f"{what} {text!r} is outside the directories the server reads SSH files from: {self.describe()}."
        return None

    def read(self, text: str, limit: int) -> bytes | None:
        """The content of a confined regular file of at most `limit` bytes, else None (for any reason)."""
        path = _absolute(text)
        if path is None or self.refusal(text, "") is not None:
            return None
        real = Path(os.path.realpath(path))
        if not self._allowed(real, (Path(os.path.realpath(d)) for d in self.dirs)):
            return None  # a symbolic link out of the allowed directories
        try:
            # O_NONBLOCK: a FIFO planted where a key should be must not hang the server
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            data = os.read(fd, limit + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) <= limit else None


def check_key_path(policy: FilePolicy, text: str) -> None:
    """Raise InvalidParameter unless `text` names a usable private key the server may read."""
    refusal = policy.refusal(text, "key_path")
    if refusal is not None:
        raise InvalidParameter(refusal)
    data = policy.read(text, MAX_KEY_BYTES)
    usable = False
    if data is not None:
        import asyncssh  # only to check a key: the module is loaded by every command that opens state

        try:
            asyncssh.import_private_key(data)
            usable = True
        except (asyncssh.KeyImportError, ValueError):
            usable = False
    if not usable:
        raise InvalidParameter(
            f"key_path {text!r} is not a usable private key: it must name an existing, readable, "
            f"unencrypted private key file (OpenSSH or PEM, at most {MAX_KEY_BYTES // 1024} KiB) on the server."
        )


def key_problem(policy: FilePolicy, text: str) -> str | None:
    """check_key_path's message, or None when the key is usable."""
    try:
        check_key_path(policy, text)
    except InvalidParameter as exc:
        return str(exc)
    return None


def read_ssh_config(policy: FilePolicy, text: str) -> str:
    """The text of an SSH client config the server may read; one InvalidParameter for any problem."""
    refusal = policy.refusal(text, "SSH config")
    if refusal is not None:
        raise InvalidParameter(refusal)
    data = policy.read(text, MAX_CONFIG_BYTES)
    if data is None:
        raise InvalidParameter(
            f"Cannot use SSH config {text!r}: it must be an existing, readable file of at most "
            f"{MAX_CONFIG_BYTES // 1024} KiB. Pass the path of an OpenSSH client config (default ~/.ssh/config)."
        )
    return data.decode("utf-8", errors="replace")


def include_access(policy: FilePolicy) -> tuple[Callable[[Path], str], Callable[[str], list[Path]]]:
    """(read, glob) for the config parser's Include: confined like the config itself.

    A pattern outside the allowed directories is never expanded; it comes back as itself, so the parser
    warns that it cannot be read instead of listing what it would have matched.
    """

    def read(path: Path) -> str:
        refusal = policy.refusal(str(path), "included file")
        if refusal is not None:
            raise OSError(errno.EACCES, f"outside {policy.describe()}")
        data = policy.read(str(path), MAX_CONFIG_BYTES)
        if data is None:
            raise OSError(errno.EINVAL, f"not a readable file of at most {MAX_CONFIG_BYTES // 1024} KiB")
        return data.decode("utf-8", errors="replace")

    def confined_glob(pattern: str) -> list[Path]:
        if policy.refusal(pattern, "Include") is not None:
            return [Path(pattern)]
        return sorted(Path(p) for p in glob(pattern))

    return read, confined_glob
