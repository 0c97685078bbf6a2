"""Atomic replacement of the live data: fully the old state or fully the new.

On Linux ``renameat2(RENAME_EXCHANGE)`` swaps two paths in one step, so the
data folder is never missing or mixed, even if we are killed mid-way. Where it
is unavailable, the old folder is renamed aside first and a crash between the
two renames is repaired by ``recover`` on the next run (the aside copy is
renamed back), which is the best a filesystem without exchange allows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)

ASIDE_SUFFIX = ".cloudkeep-old"


def _exchange(a: Path, b: Path) -> bool:
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: filesystem cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(staged: Path, live: Path) -> None:
    """Put ``staged`` at ``live``; whatever was at ``live`` is removed afterwards."""
    if not live.exists() and not live.is_symlink():
        os.rename(staged, live)
        fsync_dir(live.parent)
        return
    if _exchange(staged, live):
        fsync_dir(live.parent)
        _remove(staged)  # now holds the previous state
        return
    aside = live.with_name(live.name + ASIDE_SUFFIX)
    _remove(aside)
    os.rename(live, aside)
    os.rename(staged, live)
    fsync_dir(live.parent)
    _remove(aside)


def recover(live: Path) -> None:
    """Undo a non-atomic swap cut short between its two renames."""
    aside = live.with_name(live.name + ASIDE_SUFFIX)
    if aside.exists() and not live.exists():
        os.rename(aside, live)
    elif aside.exists():
        _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
