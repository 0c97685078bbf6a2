"""Is the live data open in another program? Asked before a restore replaces it.

A restore swaps a new folder in; a program holding a database of the old one
open goes on reading and writing the old files, and every write it makes is
lost to the restored data. Two checks, as neither sees everything:

- Linux: the open files of every process (``platform.open_file_holders``:
  ``/proc/<pid>/fd``; those of the same user, or all as root). Catches a
  program holding a database or its ``-wal``, ``-shm`` or ``-journal`` open,
  idle or not, in either journal mode.
- Everywhere: SQLite's own locks. In WAL mode every connection holds a shared
  lock on the DMS byte of the ``-shm`` file for as long as it is open, so a
  non-blocking exclusive attempt on that byte fails exactly when another
  process has the database open (of any user, with or without ``/proc``). In
  rollback mode a connection holds locks only during a transaction: an
  exclusive attempt on the lock bytes catches one mid-transaction.

The probes are released at once (a connection opening in that instant sees
SQLITE_BUSY and retries). POSIX locks belong to a process and closing any
descriptor of a file drops them all: callers hold no SQLite connection to the
data (the CLI; the API's engine process, which runs one job at a time).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cloudkeep import platform
from cloudkeep.backups.sources import COMPANION_SUFFIXES, is_sqlite

# SQLite's os_unix.c: the DMS byte of the -shm file, and PENDING_BYTE followed by
# the RESERVED byte and the 510-byte SHARED range of the database file.
SHM_DMS_BYTE = 128
PENDING_BYTE = 0x40000000
LOCK_BYTES = 2 + 510
MAX_LISTED = 3


def databases(root: Path) -> list[Path]:
    """The SQLite databases of a data folder (or the data file itself), no symlink followed."""
    if root.is_file() and not root.is_symlink():
        return [root] if is_sqlite(root) else []
    found: list[Path] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if (
                not name.endswith(COMPANION_SUFFIXES)
                and not path.is_symlink()
                and path.is_file()
                and is_sqlite(path)
            ):
                found.append(path)
    return found


def _held(path: Path, start: int, length: int) -> bool:
    """True if another process holds a lock on bytes ``start`` to ``start+length``."""
    try:
        fd = platform.open_nofollow(path, os.O_RDWR | platform.O_NONBLOCK)
    except OSError:
        return False  # absent, or not ours to write: the /proc scan still looks
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return platform.range_locked(fd, start, length)
    finally:
        os.close(fd)


def _open_by_processes(paths: dict[str, Path]) -> dict[Path, str]:
    """Of ``paths`` (real path → database), those some other process has open, and who."""
    holders: dict[Path, list[str]] = {}
    for real, who in platform.open_file_holders(set(paths)).items():
        listed = holders.setdefault(paths[real], [])
        listed.extend(name for name in who if name not in listed)
    return {database: ", ".join(who) for database, who in holders.items()}


def users_of(root: Path) -> dict[Path, str]:
    """The databases of ``root`` that another process has open → who (as far as known)."""
    found = databases(root)
    paths: dict[str, Path] = {}
    for database in found:
        real = os.path.realpath(database)
        for suffix in ("", *COMPANION_SUFFIXES):
            paths[real + suffix] = database
    users = _open_by_processes(paths)
    for database in found:
        if database not in users and (
            _held(Path(f"{database}-shm"), SHM_DMS_BYTE, 1)
            or _held(database, PENDING_BYTE, LOCK_BYTES)
        ):
            users[database] = "another process"
    return users


def describe_users(root: Path, users: dict[Path, str]) -> str:
    """``a.db (pid 12 app), b.db (another process)``, the first few."""
    shown = [
        f"{path.relative_to(root).as_posix() if path != root else path.name} ({who})"
        for path, who in sorted(users.items())[:MAX_LISTED]
    ]
    more = len(users) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
