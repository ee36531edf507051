"""Data at rest stays private: the data dir is 0700 and everything in it 0600 (0700 for directories).

The process umask is 077 from the start (`restrict_umask`), the SQLite database is created 0600 before
SQLite opens it (its -wal and -shm files take the database file's mode), and an existing data dir with
looser modes is tightened at start, with a warning naming each path that other local users could read.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from mcp_server.errors import ConfigurationError

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def restrict_umask() -> None:
    """Files and directories the process creates from now on are its user's alone."""
    os.umask(0o077)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (in a private directory)."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0700 for the directory itself."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def secure_data_dir(path: Path) -> list[Path]:
    """Create the data dir 0700, or tighten it and everything under it; returns the paths tightened.

    A shared directory (world-writable with the sticky bit, such as /tmp) is refused rather than changed.
    Paths owned by another user are left alone with a warning; symbolic links are not followed.
    """
    private_dir(path)
    mode = path.stat().st_mode
    if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        raise ConfigurationError(
            f"INFRA_DATA_DIR: {path} is a shared directory (world-writable, sticky); point it at a private "
            "directory such as ~/.local/share/infrastructor"
        )
    tightened = []
    if _tighten(path, PRIVATE_DIR):
        tightened.append(path)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if _tighten(Path(root, name), PRIVATE_DIR):
                tightened.append(Path(root, name))
        for name in files:
            if _tighten(Path(root, name), PRIVATE_FILE):
                tightened.append(Path(root, name))
    return tightened


def _tighten(path: Path, wanted: int) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:  # e.g. a -wal file checkpointed away meanwhile
        return False
    if stat.S_ISLNK(st.st_mode):
        return False
    current = stat.S_IMODE(st.st_mode)
    loose = current & 0o077
    if not loose:
        return False
    if st.st_uid != os.geteuid():
        log.warning(
            "%s has mode %04o (other local users can reach it) but belongs to uid %d; tighten it by hand",
            path,
            current,
            st.st_uid,
        )
        return False
    new = current & ~0o077 & 0o7777
    if wanted == PRIVATE_DIR and stat.S_ISDIR(st.st_mode):
        new = PRIVATE_DIR
    os.chmod(path, new)
    log.warning("tightened %s from mode %04o to %04o: other local users could read it", path, current, new)
    return True
