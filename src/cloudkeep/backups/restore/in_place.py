"""Putting restored data in place of the live data, and taking it back (undo).

A restore writes into a staging folder beside its destination; a killed one
leaves that folder behind, named for its process, and the next restore removes
it. A single-file SQLite database is replaced through SQLite's backup API (one
transaction a running app sees as an ordinary commit); other data is swapped in
(see ``cloudkeep.backups.swap``), and what the restore replaced is kept as the
undo copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import stat
import uuid
from pathlib import Path

from cloudkeep import platform
from cloudkeep.backups.restore.partial import UndoFolder, undo_partial
from cloudkeep.backups.restore.write import create_with_mode
from cloudkeep.backups.sources import is_sqlite
from cloudkeep.backups.sqlite_capture import BUSY_TIMEOUT_SECONDS
from cloudkeep.backups.swap import fsync_dir, recover, remove_any, swap_back, undo_path
from cloudkeep.errors import CloudkeepError
from cloudkeep.repository.locks import pid_alive

_STAGING = re.compile(
    r"^\.(?P<name>.+)\.cloudkeep-restore-(?P<pid>\d+)-[0-9a-f]+(-journal|-wal|-shm)?$"
)


def staging_path(destination: Path) -> Path:
    """A new name beside ``destination`` for data being restored, owned by this process."""
    return destination.parent / (
        f".{destination.name}.cloudkeep-restore-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )


def clean_stale_staging(destination: Path) -> None:
    """Remove staging folders of restores that were killed before their swap."""
    recover(destination)
    parent = destination.parent
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        match = _STAGING.match(path.name)
        if match and match["name"] == destination.name and not pid_alive(int(match["pid"])):
            remove_any(path)


def replace_single_file(staged: Path, live: Path, keep: Path) -> None:
    """Put the content of ``staged`` at ``live``, keeping the replaced content at ``keep``.

    A live SQLite database is written through SQLite's backup API (one transaction
    a running app sees as an ordinary commit), after a copy of it is taken the
    same way; another file is replaced by a rename, its old content kept by a
    hard link. ``staged`` may be ``keep`` itself (undo).
    """
    temp = staging_path(live)
    try:
        if live.exists() and is_sqlite(live) and is_sqlite(staged):
            # The copy gets the live file's permissions, not the umask's: a private
            # database must not leave a world-readable undo copy beside it.
            create_with_mode(temp, stat.S_IMODE(live.stat().st_mode) & 0o777)
            try:
                _sqlite_copy(live, temp, scratch=True)
                _sqlite_copy(staged, live)
            except sqlite3.Error as exc:
                raise CloudkeepError(
                    f"cannot write the restored database into {live}: {exc}"
                ) from exc
        else:
            if live.exists() and not platform.link_new(live, temp):
                _copy_synced(live, temp)
            os.replace(staged, live)
        if temp.exists():
            os.replace(temp, keep)
    finally:
        temp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        fsync_dir(live.parent)


def _copy_synced(source: Path, target: Path) -> None:
    """Copy ``source`` to the new file ``target`` (content, mode and times), flushed to
    disk: the kept content where the filesystem makes no hard links."""
    fd = platform.open_nofollow(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out, source.open("rb") as data:
        shutil.copyfileobj(data, out)
        out.flush()
        os.fsync(out.fileno())
    shutil.copystat(source, target, follow_symlinks=False)


def _sqlite_copy(source_path: Path, target_path: Path, scratch: bool = False) -> None:
    """Copy a database with SQLite's backup API; a ``scratch`` target (a new file only we
    use) is written without a journal."""
    source = sqlite3.connect(source_path, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        target = sqlite3.connect(target_path, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            if scratch:
                target.execute("PRAGMA journal_mode=OFF")
            source.backup(target, pages=-1)
        finally:
            target.close()
    finally:
        source.close()


def undo_restore(live: Path) -> Path:
    """Put back what the last in-place restore of ``live`` replaced; returns the undo path,
    which now holds the restored state (undo again to redo). After a restore of chosen
    paths, those entries are put back one by one (``partial.undo_partial``)."""
    partial = UndoFolder(live)
    if partial.exists():
        return undo_partial(partial)
    keep = undo_path(live)
    recover(live)
    if keep.is_file() and not keep.is_symlink() and (live.is_file() or not live.exists()):
        replace_single_file(keep, live, keep)
        return keep
    return swap_back(live)


def pending_undo(live: Path) -> tuple[Path, str, str | None] | None:
    """What ``undo_restore`` would put back: (where it is kept, ``"whole"`` or
    ``"paths"``, the partial undo's state: restored, undone or restoring); None if
    nothing."""
    partial = UndoFolder(live)
    if partial.exists():
        return partial.folder, "paths", partial.state
    keep = undo_path(live)
    if keep.exists() and not keep.is_symlink():
        return keep, "whole", None
    return None
