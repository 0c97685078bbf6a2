"""Atomic replacement of the live data: fully the old state or fully the new.

Where the platform can exchange two paths in one step (``renameat2`` on Linux,
``renamex_np`` on macOS), the data folder is never missing or mixed, even if we
are killed mid-way. Where it
is unavailable, the old folder is renamed aside first and a crash between the
two renames is repaired by ``recover`` on the next run (the aside copy is
renamed back), which is the best a filesystem without exchange allows.

What a restore replaces is kept, by a rename (no copy), as the sibling
``<name>.cloudkeep-undo``: one generation, replaced by the next restore.
``swap_back`` exchanges it with the data again (undo; run again to redo).
A restore of chosen paths keeps what it replaced, entry by entry, in
``<name>.cloudkeep-undo-files`` instead (``restore.partial``); either restore
discards the other's undo folder, so there is one undo at a time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cloudkeep.errors import UserError
from cloudkeep.platform import exchange_paths as _exchange
from cloudkeep.platform import fsync_dir

ASIDE_SUFFIX = ".cloudkeep-old"
UNDO_SUFFIX = ".cloudkeep-undo"
PARTIAL_UNDO_SUFFIX = ".cloudkeep-undo-files"


def undo_path(live: Path) -> Path:
    """Where the state a restore replaced is kept."""
    return live.with_name(live.name + UNDO_SUFFIX)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def replace_atomically(staged: Path, live: Path, keep: Path | None = None) -> None:
    """Put ``staged`` at ``live``; what was at ``live`` becomes ``keep`` (else is removed)."""
    if not _present(live):
        os.rename(staged, live)
        fsync_dir(live.parent)
        return
    if _exchange(staged, live):
        fsync_dir(live.parent)
        _set_aside(staged, keep)  # now holds the previous state
        return
    aside = live.with_name(live.name + ASIDE_SUFFIX)
    remove_any(aside)
    os.rename(live, aside)
    os.rename(staged, live)
    fsync_dir(live.parent)
    _set_aside(aside, keep)


def _set_aside(previous: Path, keep: Path | None) -> None:
    """Keep ``previous`` at ``keep`` in place of an older generation, or remove it."""
    if keep is None:
        remove_any(previous)
        return
    if _present(keep) and _exchange(previous, keep):
        remove_any(previous)  # the older generation
    else:
        remove_any(keep)
        os.rename(previous, keep)
    fsync_dir(keep.parent)


def recover(live: Path) -> None:
    """Finish a non-atomic swap cut short between its renames."""
    aside = live.with_name(live.name + ASIDE_SUFFIX)
    if _present(aside) and not _present(live):
        os.rename(aside, live)
    elif _present(aside):
        _set_aside(aside, undo_path(live))


def swap_back(live: Path) -> Path:
    """Exchange the data folder with what the last restore replaced; returns the undo path.

    Afterwards the undo path holds the restored state, so running it again redoes.
    """
    keep = undo_path(live)
    if not keep.is_dir() or keep.is_symlink():
        raise UserError(f"nothing to undo: {keep} does not exist")
    if not _present(live):
        os.rename(keep, live)
    elif not _exchange(keep, live):
        aside = live.with_name(live.name + ASIDE_SUFFIX)
        remove_any(aside)
        os.rename(live, aside)
        os.rename(keep, live)
        os.rename(aside, keep)
    fsync_dir(live.parent)
    return keep


def remove_any(path: Path) -> None:
    """Remove a file, symlink or folder tree at ``path`` (never following a symlink)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def partial_undo_path(live: Path) -> Path:
    """Where a restore of chosen paths keeps what it replaced (see ``restore.partial``)."""
    return live.with_name(live.name + PARTIAL_UNDO_SUFFIX)
