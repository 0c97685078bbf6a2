"""Restoring chosen paths in place, one entry at a time, and taking them back (undo).

The chosen entries are first written into a staging folder beside the data folder
(same filesystem) as a whole restore's are; then each is put at its place in the
live data by a rename, which replaces a file atomically: an app sees the old file or
the new one, never a mix. What each step replaces is kept in the undo folder
``<data>.cloudkeep-undo-files`` (``swap.partial_undo_path``):

- ``steps.jsonl``: one line per step, appended *before* the step is taken:
  ``{"path": ..., "op": "folder"|"put"|"remove"}``; step ``n`` keeps what it
  replaced as ``entries/<n>``;
- ``state``: ``restoring`` while steps are taken, then ``restored``; ``undone``
  after an undo (an undo again redoes).

Undo exchanges each step's path in the data with its kept entry, last step first
(redo: first step first), so a folder made for the restore is emptied before it is
taken away. A step that was begun but cut short (killed) is safe to take back: the
old entry is linked into the undo folder before the new one replaces it.

A restored SQLite database must not meet a stale ``-wal`` of the one it replaces:
SQLite would replay that log onto it (corruption). A database's companions the
backup does not hold are moved into the undo folder just before it is put in place;
those it holds are restored with it (``browse.select`` chooses them).

The data folder is never written through a symlink: every folder on a step's way
is checked with ``lstat`` (a symlink where the backup has a folder is itself
replaced, and kept for undo), and renames name entries, never follow them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from cloudkeep import platform
from cloudkeep.backups.manifest import FileEntry, Manifest
from cloudkeep.backups.sources import COMPANION_SUFFIXES, is_sqlite
from cloudkeep.backups.swap import fsync_dir, partial_undo_path, remove_any
from cloudkeep.errors import UserError

FOLDER, PUT, REMOVE = "folder", "put", "remove"
RESTORING, RESTORED, UNDONE = "restoring", "restored", "undone"
_STEPS = "steps.jsonl"
_STATE = "state"
_ENTRIES = "entries"


@dataclass(frozen=True, slots=True)
class Step:
    path: str
    op: str


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _is_folder(info: os.stat_result | None) -> bool:
    return info is not None and stat.S_ISDIR(info.st_mode)


def _check_way(live: Path, path: str) -> Path:
    """``live/path`` once every folder on its way is a real folder (never a symlink)."""
    current = live
    for name in path.split("/")[:-1]:
        current = current / name
        if not _is_folder(_lstat(current)):
            raise UserError(
                f"cannot restore {path!r} in place: {current} is not a folder "
                "(a symlink or file took its place); restore with --target instead"
            )
    return live / path


class UndoFolder:
    """The undo folder of a restore of chosen paths (see the module's docstring)."""

    def __init__(self, live: Path) -> None:
        self.live = live
        self.folder = partial_undo_path(live)

    def exists(self) -> bool:
        return (self.folder / _STATE).is_file()

    @property
    def state(self) -> str:
        return (self.folder / _STATE).read_text(encoding="ascii").strip()

    def set_state(self, state: str) -> None:
        fresh = self.folder / f"{_STATE}.new"
        fd = platform.open_nofollow(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="ascii") as out:
            out.write(state + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(fresh, self.folder / _STATE)
        fsync_dir(self.folder)

    def steps(self) -> list[Step]:
        """The steps recorded; a line cut short by a crash is the last and is left out."""
        steps = []
        with (self.folder / _STEPS).open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    item = json.loads(line)
                    steps.append(Step(str(item["path"]), str(item["op"])))
                except (ValueError, KeyError, TypeError):
                    break
        return steps

    def kept(self, number: int) -> Path:
        return self.folder / _ENTRIES / str(number)

    def refuse_interrupted(self) -> None:
        """An earlier restore of chosen paths was cut short: its undo must come first."""
        if self.exists() and self.state == RESTORING:
            raise UserError(
                f"an interrupted restore left {self.folder}: run 'cloudkeep restore --undo' "
                "to put back what it replaced before restoring again"
            )

    def discard(self) -> None:
        """Drop this undo generation (the next restore's replaces it)."""
        self.refuse_interrupted()
        remove_any(self.folder)

    def start(self) -> None:
        remove_any(self.folder)
        self.folder.mkdir(mode=0o700)
        (self.folder / _ENTRIES).mkdir(mode=0o700)
        (self.folder / _STEPS).touch(mode=0o600)
        self.set_state(RESTORING)


class Placer:
    """Puts the staged chosen entries into the live data, step by step."""

    def __init__(self, staging: Path, live: Path, undo: UndoFolder) -> None:
        self.staging = staging
        self.live = live
        self.undo = undo
        self.count = 0
        self._journal = (undo.folder / _STEPS).open("a", encoding="utf-8")
        self._touched: set[Path] = set()

    def close(self) -> None:
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self._journal.close()
        for folder in self._touched:
            if _is_folder(_lstat(folder)):
                fsync_dir(folder)
        fsync_dir(self.undo.folder / _ENTRIES)

    def _begin(self, path: str, op: str) -> Path:
        """Record the step (before it is taken); where it keeps what it replaces."""
        self._journal.write(json.dumps({"path": path, "op": op}) + "\n")
        self._journal.flush()
        kept = self.undo.kept(self.count)
        self.count += 1
        return kept

    def folder(self, path: str, mode: int) -> None:
        """Make ``path`` a folder; a symlink or file in its place is kept for undo."""
        target = _check_way(self.live, path)
        info = _lstat(target)
        if _is_folder(info):
            return
        kept = self._begin(path, FOLDER)
        if info is not None:
            os.rename(target, kept)
        os.mkdir(target, 0o700)
        os.chmod(target, mode)
        self._touched.add(target.parent)

    def remove(self, path: str) -> None:
        """Move ``path`` out of the data into the undo folder, if it is there."""
        target = _check_way(self.live, path)
        if _lstat(target) is None:
            return
        os.rename(target, self._begin(path, REMOVE))
        self._touched.add(target.parent)

    def put(self, path: str) -> None:
        """Put the staged entry ``path`` (a file or symlink) in place: one rename over a
        file, its old content kept by a hard link (a copy where there are none)."""
        target = _check_way(self.live, path)
        info = _lstat(target)
        kept = self._begin(path, PUT)
        if info is not None:
            if stat.S_ISREG(info.st_mode):
                if not platform.link_new(target, kept):
                    _copy_kept(target, kept)
            else:  # a folder, symlink or other entry: moved aside, then replaced
                os.rename(target, kept)
        os.replace(self.staging / path, target)
        self._touched.add(target.parent)


def _copy_kept(source: Path, kept: Path) -> None:
    fd = platform.open_nofollow(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    data_fd = platform.open_nofollow(source, os.O_RDONLY)
    with open(fd, "wb") as out, open(data_fd, "rb") as data:
        shutil.copyfileobj(data, out)
        out.flush()
        os.fsync(out.fileno())
    shutil.copystat(source, kept, follow_symlinks=False)


def refuse_orphan_logs(part: Manifest, live: Path) -> None:
    """A ``-wal``, ``-shm`` or ``-journal`` restored in place without its database, beside
    a live database of that name, would be replayed onto it by SQLite: a forged log (a
    key holder's backup) would rewrite the live database's pages."""
    chosen = {entry.path for entry in part.files}
    for path in sorted(chosen):
        for suffix in COMPANION_SUFFIXES:
            base = path.removesuffix(suffix)
            if base != path and base and base not in chosen and is_sqlite(live / base):
                raise UserError(
                    f"cannot restore {path!r} in place: the backup does not hold its "
                    f"database {base!r}, and SQLite would apply it to the live one; "
                    "restore it with --target instead"
                )


def _depth(path: str) -> tuple[int, str]:
    return path.count("/"), path


def place(
    part: Manifest, staging: Path, live: Path, umask: int, sqlite_names: set[str]
) -> UndoFolder:
    """Put every entry of ``part`` (written in ``staging``) into ``live``; returns the undo
    folder now holding what was replaced. ``sqlite_names``: the staged files that are
    SQLite databases (their live companions are moved out first)."""
    undo = UndoFolder(live)
    undo.start()
    placer = Placer(staging, live, undo)
    chosen = {entry.path for entry in part.files}
    entries: dict[str, FileEntry | None] = {entry.path: entry for entry in part.files}
    for path in list(chosen):
        parent = path
        while "/" in parent:  # folders the manifest leaves implicit
            parent = parent.rsplit("/", 1)[0]
            entries.setdefault(parent, None)
    try:
        for path in sorted(entries, key=_depth):
            entry = entries[path]
            if entry is None or entry.type == "dir":
                mode = 0o700 if entry is None else entry.mode & ~umask
                placer.folder(path, mode)
                continue
            if path in sqlite_names:
                for suffix in COMPANION_SUFFIXES:
                    if path + suffix not in chosen:
                        placer.remove(path + suffix)
            placer.put(path)
    finally:
        placer.close()
    undo.set_state(RESTORED)
    return undo


def undo_partial(undo: UndoFolder) -> Path:
    """Exchange every step's path in the data with what it kept: an undo (last step first),
    or after one a redo (first step first); an interrupted restore is taken back."""
    state = undo.state
    steps = undo.steps()
    order = range(len(steps)) if state == UNDONE else range(len(steps) - 1, -1, -1)
    touched: set[Path] = set()
    for number in order:
        step = steps[number]
        target = _check_way(undo.live, step.path)
        _exchange(target, undo.kept(number))
        touched.add(target.parent)
    for folder in touched:
        if _is_folder(_lstat(folder)):
            fsync_dir(folder)
    fsync_dir(undo.folder / _ENTRIES)
    undo.set_state(RESTORED if state == UNDONE else UNDONE)
    return undo.folder


def _exchange(a: Path, b: Path) -> None:
    """Swap what ``a`` and ``b`` hold; either may be absent."""
    has_a, has_b = _lstat(a) is not None, _lstat(b) is not None
    if has_a and has_b:
        if platform.exchange_paths(a, b):
            return
        aside = b.with_name(b.name + ".swap")
        remove_any(aside)
        os.rename(b, aside)
        os.rename(a, b)
        os.rename(aside, a)
    elif has_a:
        os.rename(a, b)
    elif has_b:
        os.rename(b, a)
